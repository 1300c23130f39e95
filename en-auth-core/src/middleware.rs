//! [`AuthMiddleware`]: the `reqwest-middleware` adapter over [`TokenCache`].
//!
//! It holds no token logic of its own: it asks the cache for a token, sets the headers, and
//! on a 401 reports the rejected token and replays the request once with a new one.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Extensions, HeaderName, HeaderValue, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::endpoint::is_loopback;
use crate::{Authorizer, CachedToken, Error, LifecyclePolicy, TokenCache, TokenStats};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Authorizes every request of a `reqwest-middleware` client.
///
/// Sets `Authorization: Bearer <token>` (replacing any the request had) and, when the client
/// has an API key, `X-Api-Key`. On a 401 the token is dropped (if still current), a new one is
/// obtained, and the request is sent once more — when its body can be cloned; a streaming body
/// is not replayed and the 401 is returned. Clones share one token cache.
///
/// Credentials stay on the origin of the request: build the client with [`client`]
/// (or give your reqwest client [`same_origin_redirects`]); a redirect to another origin is
/// then returned to you instead of being followed with the credentials. reqwest's default
/// policy would follow it and send `X-Api-Key` along, so a response that such a client
/// fetched from another origin is refused with [`Error::InvalidConfiguration`].
///
/// Credentials never go over plain `http://` except to loopback (see
/// [`allow_plain_http`](AuthMiddleware::allow_plain_http)).
///
/// [`client`]: AuthMiddleware::client
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, Authorizer};
/// # async fn demo(my_authorizer: impl Authorizer) -> Result<(), Box<dyn std::error::Error>> {
/// let auth = AuthMiddleware::new(my_authorizer);
/// let http = reqwest::Client::builder()
///     .redirect(en_auth_core::same_origin_redirects())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(http)
///     .with(auth.clone())
///     .build();
/// let response = client.get("https://api.example.com/orders").send().await?;
/// # let _ = response; Ok(()) }
/// ```
pub struct AuthMiddleware<A: Authorizer> {
    cache: TokenCache<A>,
    api_key: Option<HeaderValue>,
    /// Why the client's API key cannot be sent, if it cannot: every request fails with it.
    api_key_error: Option<Arc<str>>,
    replay_on_unauthorized: bool,
    allow_plain_http: bool,
    /// The authorizer wants a proof per request (DPoP): requests take the proof path.
    proofs: bool,
}

impl<A: Authorizer> Clone for AuthMiddleware<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            api_key: self.api_key.clone(),
            api_key_error: self.api_key_error.clone(),
            replay_on_unauthorized: self.replay_on_unauthorized,
            allow_plain_http: self.allow_plain_http,
            proofs: self.proofs,
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthMiddleware<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("cache", &self.cache)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("api_key_error", &self.api_key_error)
            .field("replay_on_unauthorized", &self.replay_on_unauthorized)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("proofs", &self.proofs)
            .finish()
    }
}

impl<A: Authorizer> AuthMiddleware<A> {
    /// Middleware with its own token cache and the default policy.
    ///
    /// If the client's API key cannot be sent as a header value, every request fails with
    /// [`Error::InvalidConfiguration`] before anything is sent; [`try_new`](Self::try_new)
    /// reports it here instead.
    pub fn new(authorizer: A) -> Self {
        Self::from_cache(TokenCache::new(authorizer))
    }

    /// Like [`new`](Self::new), but fails with [`Error::InvalidConfiguration`] when the
    /// client's API key cannot be sent as a header value.
    pub fn try_new(authorizer: A) -> Result<Self, Error> {
        Self::try_from_cache(TokenCache::new(authorizer))
    }

    /// Like [`from_cache`](Self::from_cache), but fails with [`Error::InvalidConfiguration`]
    /// when the client's API key cannot be sent as a header value.
    pub fn try_from_cache(cache: TokenCache<A>) -> Result<Self, Error> {
        cache.authorizer().client_info().api_key_header()?;
        Ok(Self::from_cache(cache))
    }

    /// Middleware with its own token cache and the given policy.
    pub fn with_policy(authorizer: A, policy: LifecyclePolicy) -> Self {
        Self::from_cache(TokenCache::builder(authorizer).policy(policy).build())
    }

    /// Middleware over an existing cache (e.g. one built with a shared store). An API key
    /// that cannot be sent makes every request fail, as with [`new`](Self::new).
    pub fn from_cache(cache: TokenCache<A>) -> Self {
        let (api_key, api_key_error) = match cache.authorizer().client_info().api_key_header() {
            Ok(key) => (key, None),
            Err(err) => {
                tracing::error!(error = %err, "every request of this AuthMiddleware will fail");
                let reason = match err {
                    Error::InvalidConfiguration { reason, .. } => reason,
                    other => other.to_string(),
                };
                (None, Some(Arc::from(reason)))
            }
        };
        Self {
            proofs: cache.uses_request_proofs(),
            cache,
            api_key,
            api_key_error,
            replay_on_unauthorized: true,
            allow_plain_http: false,
        }
    }

    /// Whether to replay a request once after a 401 (default `true`). Turning it off saves
    /// cloning each request before it is sent.
    pub fn replay_on_unauthorized(mut self, replay: bool) -> Self {
        self.replay_on_unauthorized = replay;
        self
    }

    /// Whether credentials may go over plain `http://` to hosts other than loopback (default
    /// `false`). By default such a request fails with [`Error::InvalidConfiguration`] before
    /// anything is sent — before a token is even fetched — because a bearer token or API key
    /// sent in clear can be read and replayed by anyone on the path. `http://localhost` and
    /// loopback addresses are always allowed. Turn this on only for test networks you trust.
    pub fn allow_plain_http(mut self, allow: bool) -> Self {
        self.allow_plain_http = allow;
        self
    }

    /// Refuses, before any I/O, requests that cannot carry the credentials safely: an API key
    /// that cannot be sent, plain http to anything but loopback (unless allowed).
    fn check_request(&self, url: &reqwest::Url) -> Result<(), Error> {
        if let Some(reason) = &self.api_key_error {
            return Err(Error::InvalidConfiguration {
                setting: "api_key".into(),
                reason: reason.to_string(),
            });
        }
        if self.allow_plain_http || url.scheme() == "https" || is_loopback(url) {
            return Ok(());
        }
        Err(Error::InvalidConfiguration {
            setting: "request URL".into(),
            reason: format!(
                "credentials are not sent over `{}://` to {}, which is not loopback; use https \
                 (or AuthMiddleware::allow_plain_http(true) on a test network you trust)",
                url.scheme(),
                url.host_str().unwrap_or("a URL without a host"),
            ),
        })
    }

    /// A `reqwest-middleware` client with this middleware, on a reqwest client that follows
    /// redirects only within the request's origin ([`same_origin_redirects`]): the credentials
    /// never reach another host, port or scheme. Clones of the middleware share one cache.
    ///
    /// To configure the reqwest client yourself (timeouts, proxies, TLS roots), build it with
    /// `.redirect(en_auth_core::same_origin_redirects())` and attach the middleware with
    /// `reqwest_middleware::ClientBuilder`.
    ///
    /// ```no_run
    /// # use en_auth_core::{AuthMiddleware, Authorizer};
    /// # async fn demo(my_authorizer: impl Authorizer) -> Result<(), Box<dyn std::error::Error>> {
    /// let auth = AuthMiddleware::new(my_authorizer);
    /// let client = auth.client()?;
    /// let response = client.get("https://api.example.com/orders").send().await?;
    /// # let _ = response; Ok(()) }
    /// ```
    pub fn client(&self) -> Result<reqwest_middleware::ClientWithMiddleware, Error> {
        let http = reqwest::Client::builder()
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| Error::InvalidConfiguration {
                setting: "HTTP client".into(),
                reason: format!("reqwest could not build a client: {e}"),
            })?;
        Ok(reqwest_middleware::ClientBuilder::new(http)
            .with(self.clone())
            .build())
    }

    /// The current access token, fetched if needed (en_auth's `access_token` property).
    pub async fn access_token(&self) -> Result<String, Error> {
        self.cache.access_token().await
    }

    /// The token cache behind this middleware.
    pub fn cache(&self) -> &TokenCache<A> {
        &self.cache
    }

    /// What the lifecycle has done so far.
    pub fn stats(&self) -> TokenStats {
        self.cache.stats()
    }

    fn authorize_request(&self, request: &mut Request, token: &CachedToken<A::Token>) {
        let headers = request.headers_mut();
        headers.insert(http::header::AUTHORIZATION, token.authorization().clone());
        if let Some(key) = &self.api_key {
            headers.insert(X_API_KEY, key.clone());
        }
    }

    /// What a replay after a 401 will need, unless replays are off.
    fn prepare_replay(&self, request: &Request) -> Replay {
        if self.replay_on_unauthorized {
            Replay::prepare(request)
        } else {
            Replay::Impossible
        }
    }

    async fn fresh_token(&self) -> reqwest_middleware::Result<Arc<CachedToken<A::Token>>> {
        self.cache
            .get()
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}

#[async_trait]
impl<A: Authorizer> Middleware for AuthMiddleware<A> {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.check_request(request.url())
            .map_err(reqwest_middleware::Error::middleware)?;
        if self.proofs {
            // Boxed: the bearer path's future stays as small as it was.
            return Box::pin(self.handle_with_proofs(request, extensions, next)).await;
        }
        let token = self.fresh_token().await?;
        let sent_to = KeptUrl::new(request.url());
        let replay = self.prepare_replay(&request);
        self.authorize_request(&mut request, &token);
        let response = next.clone().run(request, extensions).await?;
        sent_to.check_answered_from(response.url())?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }

        let Some(mut replay) = replay.into_request(&sent_to, &response) else {
            self.cache.invalidate(&token).await;
            tracing::debug!(
                "401 not replayed: the body cannot be cloned, or the request was redirected"
            );
            return Ok(response);
        };
        // The lifecycle's one replay rule: the current token if a refresh already replaced
        // this one, else the replacement, unless the 401-storm bound holds it back.
        let Some(new_token) = self.cache.token_after_rejection(&token).await else {
            return Ok(response);
        };
        self.authorize_request(&mut replay, &new_token);
        self.cache.record_replay();
        tracing::debug!("replaying request after 401 with a new token");
        drop(response);
        next.run(replay, extensions).await
    }
}

impl<A: Authorizer> AuthMiddleware<A> {
    /// Adds the authorizer's proof for this request (DPoP: method, URL and token bound).
    fn add_proof(
        &self,
        request: &mut Request,
        token: &CachedToken<A::Token>,
    ) -> reqwest_middleware::Result<()> {
        let proof = self
            .cache
            .request_proof(token, request.method(), request.url().as_str())
            .map_err(reqwest_middleware::Error::middleware)?;
        if let Some((name, value)) = proof {
            request.headers_mut().insert(name, value);
        }
        Ok(())
    }

    /// The request path for authorizers that prove possession of a key per request (DPoP):
    /// a fresh proof on every request; a server nonce challenge (`use_dpop_nonce`) is
    /// answered by sending the request once more with the same token and a new proof; any
    /// other 401 is handled as on the bearer path (new token, one replay).
    async fn handle_with_proofs(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let token = self.fresh_token().await?;
        let sent_to = KeptUrl::new(request.url());
        let replay = self.prepare_replay(&request);
        self.authorize_request(&mut request, &token);
        self.add_proof(&mut request, &token)?;
        let response = next.clone().run(request, extensions).await?;
        sent_to.check_answered_from(response.url())?;
        let challenged = self.cache.proof_challenge(
            response.url().as_str(),
            response.status().as_u16(),
            response.headers(),
        );
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(mut again) = replay.into_request(&sent_to, &response) else {
            if !challenged {
                self.cache.invalidate(&token).await;
            }
            return Ok(response);
        };
        let new_token = if challenged {
            tracing::debug!("the API asked for a DPoP nonce: sending once more with it");
            Arc::clone(&token)
        } else {
            match self.cache.token_after_rejection(&token).await {
                Some(new_token) => new_token,
                None => return Ok(response),
            }
        };
        self.authorize_request(&mut again, &new_token);
        self.add_proof(&mut again, &new_token)?;
        self.cache.record_replay();
        drop(response);
        let response = next.run(again, extensions).await?;
        // Keep the nonce the server may have rotated; no further retry.
        self.cache.proof_challenge(
            response.url().as_str(),
            response.status().as_u16(),
            response.headers(),
        );
        Ok(response)
    }
}

/// The error for a response that came from another origin than the request went to: the
/// client followed a redirect across origins with the credentials on board.
fn followed_elsewhere(final_url: &reqwest::Url) -> reqwest_middleware::Error {
    let origin = final_url.origin().ascii_serialization();
    tracing::warn!(
        %origin,
        "the HTTP client followed a redirect to another origin with the request's credentials; \
         build it with en_auth::same_origin_redirects() or use AuthMiddleware::client()"
    );
    reqwest_middleware::Error::middleware(Error::InvalidConfiguration {
        setting: "redirect policy of the HTTP client".into(),
        reason: format!(
            "it followed a redirect to {origin}, another origin, carrying the credentials; \
             build the reqwest client with `.redirect(en_auth::same_origin_redirects())` \
             or use `AuthMiddleware::client()`, which stop at cross-origin redirects"
        ),
    })
}

/// A redirect policy that never lets credentials leave the origin a request was sent to.
///
/// reqwest's default policy follows up to 10 redirects anywhere, and on a redirect to another
/// host it removes only `Authorization`, `Cookie` and `Proxy-Authorization`: an `X-Api-Key`
/// (and any header of your own) goes along to the redirect target — a pre-signed storage URL,
/// an open redirect, or plain `http://`. This policy follows redirects (up to 10) only while
/// they stay on the same origin (scheme, host and port) as the request; a redirect anywhere
/// else is not followed and its `3xx` response is returned to the caller, who can decide to
/// fetch the `Location` without credentials.
///
/// [`AuthMiddleware`] refuses (with [`Error::InvalidConfiguration`]) a response that a client
/// with another policy fetched from a different origin — but by then the client has sent the
/// credentials there, so build the client with this policy, or with
/// [`AuthMiddleware::client`].
///
/// ```
/// let client = reqwest::Client::builder()
///     .redirect(en_auth_core::same_origin_redirects())
///     .build()
///     .expect("client");
/// # let _ = client;
/// ```
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    const MAX_REDIRECTS: usize = 10;
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| same_origin(first, attempt.url()));
        if !same {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// What it takes to send a request again after a 401, saved before the request is sent.
///
/// A request with a body is cloned (when the body allows it: a stream does not). A body-less
/// request — the common case — keeps only its method, version, timeout, headers and a copy of
/// its URL's text (inline, without an allocation, for URLs up to [`INLINE_URL`] bytes; the
/// headers cost nothing unless the request carries some of its own). The replay happens only
/// when the 401 came from exactly that URL, compared byte for byte: a request that was
/// redirected is not replayed.
enum Replay {
    Cloned(Request),
    BodyLess {
        method: http::Method,
        version: http::Version,
        timeout: Option<std::time::Duration>,
        headers: http::HeaderMap,
    },
    Impossible,
}

impl Replay {
    fn prepare(request: &Request) -> Self {
        if request.body().is_some() {
            return request
                .try_clone()
                .map_or(Replay::Impossible, Replay::Cloned);
        }
        Replay::BodyLess {
            method: request.method().clone(),
            version: request.version(),
            timeout: request.timeout().copied(),
            headers: request.headers().clone(),
        }
    }

    /// The request to send again, if there is one. (In reqwest 0.13 the timeout is the only
    /// per-request config; `a_replayed_request_keeps_its_method_headers_and_timeout` guards
    /// that nothing else is lost.)
    fn into_request(self, sent_to: &KeptUrl, response: &Response) -> Option<Request> {
        match self {
            Replay::Cloned(request) => Some(request),
            Replay::BodyLess {
                method,
                version,
                timeout,
                headers,
            } => {
                if !sent_to.is(response.url()) {
                    return None;
                }
                let mut request = Request::new(method, response.url().clone());
                *request.headers_mut() = headers;
                *request.version_mut() = version;
                if timeout.is_some() {
                    *request.timeout_mut() = timeout;
                }
                Some(request)
            }
            Replay::Impossible => None,
        }
    }
}

/// URLs up to this many bytes are kept for a replay without an allocation. (96 measured
/// cheaper than 128 per request with `scripts/bench-instructions`: the kept text travels in the
/// request's future.)
const INLINE_URL: usize = 96;

/// The text of a request's URL up to its query (a fragment is never sent, and the response's
/// URL has none), kept to compare with the URL a 401 came from.
enum KeptUrl {
    Inline { len: u8, bytes: [u8; INLINE_URL] },
    Heap(Box<str>),
}

impl KeptUrl {
    fn new(url: &reqwest::Url) -> Self {
        let text = &url[..url::Position::AfterQuery];
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_URL => {
                let mut bytes = [0u8; INLINE_URL];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                KeptUrl::Inline { len, bytes }
            }
            _ => KeptUrl::Heap(text.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            KeptUrl::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeptUrl::Heap(text) => text.as_bytes(),
        }
    }

    /// Whether `url` is the kept URL, byte for byte.
    fn is(&self, url: &reqwest::Url) -> bool {
        self.bytes() == url.as_str().as_bytes()
    }

    /// Whether `url` has the kept URL's origin (scheme, host, port). Only asked after a
    /// redirect, so parsing the kept text again costs nothing on the hot path.
    fn same_origin(&self, url: &reqwest::Url) -> bool {
        std::str::from_utf8(self.bytes())
            .ok()
            .and_then(|text| reqwest::Url::parse(text).ok())
            .is_some_and(|kept| same_origin(&kept, url))
    }

    /// Refuses a response that came from another origin than the request went to: a
    /// permissive client followed a redirect with the credentials on board.
    fn check_answered_from(&self, url: &reqwest::Url) -> reqwest_middleware::Result<()> {
        if self.is(url) || self.same_origin(url) {
            Ok(())
        } else {
            Err(followed_elsewhere(url))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::ResponseBuilderExt;

    fn response_from(url: &str) -> Response {
        let response = http::Response::builder()
            .status(401)
            .url(reqwest::Url::parse(url).expect("url"))
            .body("")
            .expect("response");
        Response::from(response)
    }

    #[test]
    fn a_body_less_replay_goes_to_the_kept_url_and_only_when_the_401_came_from_it() {
        let mut request = Request::new(
            http::Method::DELETE,
            reqwest::Url::parse("http://127.0.0.1:9/orders/7?x=1").expect("url"),
        );
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r-1"));

        let sent_to = KeptUrl::new(request.url());
        let replay = Replay::prepare(&request);
        assert!(
            replay
                .into_request(&sent_to, &response_from("http://127.0.0.1:9/orders/8?x=1"))
                .is_none(),
            "a 401 from another URL (a redirect) is not replayed"
        );

        let replay = Replay::prepare(&request);
        let again = replay
            .into_request(&sent_to, &response_from("http://127.0.0.1:9/orders/7?x=1"))
            .expect("replayed");
        assert_eq!(again.url(), request.url(), "the request's own URL");
        assert_eq!(again.method(), http::Method::DELETE);
        assert_eq!(again.headers().get("x-request-id").unwrap(), "r-1");

        // A long URL (kept on the heap) is compared the same way.
        let long = format!("http://127.0.0.1:9/{}", "a".repeat(300));
        let request = Request::new(http::Method::GET, reqwest::Url::parse(&long).expect("url"));
        let sent_to = KeptUrl::new(request.url());
        let replay = Replay::prepare(&request);
        assert!(
            replay
                .into_request(&sent_to, &response_from(&format!("{long}b")))
                .is_none()
        );
        let replay = Replay::prepare(&request);
        assert!(
            replay
                .into_request(&sent_to, &response_from(&long))
                .is_some()
        );
        assert!(sent_to.same_origin(&reqwest::Url::parse("http://127.0.0.1:9/x").expect("url")));
        assert!(!sent_to.same_origin(&reqwest::Url::parse("http://127.0.0.1:10/").expect("url")));
        assert!(!sent_to.same_origin(&reqwest::Url::parse("https://127.0.0.1:9/").expect("url")));
    }
}

//! [`AuthMiddleware`]: the `reqwest-middleware` adapter over [`TokenCache`].
//!
//! It holds no token logic of its own: the [`AdapterCore`] decides which headers a request
//! carries and what follows a response; this file only saves, sends and rebuilds reqwest
//! requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Extensions, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{
    AdapterCore, AfterResponse, Authorizer, CachedToken, Error, LifecyclePolicy, ResponseHead,
    TokenCache, TokenStats,
};

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
/// With mutual TLS authentication and certificate-bound tokens (`cnf.x5t#S256`, RFC 8705),
/// API requests must present the authorizer's client certificate or the API refuses the
/// token: [`client`] / [`client_with`](AuthMiddleware::client_with) build a client that
/// does; a client of your own, as below, needs
/// `.identity(..)` with [`Authorizer::tls_client_identity`].
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
    core: AdapterCore<A>,
}

impl<A: Authorizer> Clone for AuthMiddleware<A> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthMiddleware<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("core", &self.core)
            .finish()
    }
}

const ADAPTER: &str = "AuthMiddleware";

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
        Ok(Self {
            core: AdapterCore::try_new(cache, ADAPTER)?,
        })
    }

    /// Middleware with its own token cache and the given policy.
    pub fn with_policy(authorizer: A, policy: LifecyclePolicy) -> Self {
        Self::from_cache(TokenCache::builder(authorizer).policy(policy).build())
    }

    /// Middleware over an existing cache (e.g. one built with a shared store). An API key
    /// that cannot be sent makes every request fail, as with [`new`](Self::new).
    pub fn from_cache(cache: TokenCache<A>) -> Self {
        Self {
            core: AdapterCore::new(cache, ADAPTER),
        }
    }

    /// Whether to replay a request once after a 401 (default `true`). Turning it off saves
    /// keeping a copy of each request while it is sent.
    pub fn replay_on_unauthorized(self, replay: bool) -> Self {
        Self {
            core: self.core.replay_on_unauthorized(replay),
        }
    }

    /// Whether credentials may go over plain `http://` to hosts other than loopback (default
    /// `false`). By default such a request fails with [`Error::InvalidConfiguration`] before
    /// anything is sent — before a token is even fetched — because a bearer token or API key
    /// sent in clear can be read and replayed by anyone on the path. `http://localhost` and
    /// loopback addresses are always allowed. Turn this on only for test networks you trust.
    pub fn allow_plain_http(self, allow: bool) -> Self {
        Self {
            core: self.core.allow_plain_http(allow),
        }
    }

    /// A `reqwest-middleware` client with this middleware, on a reqwest client that follows
    /// redirects only within the request's origin ([`same_origin_redirects`]): the credentials
    /// never reach another host, port or scheme. Clones of the middleware share one cache.
    ///
    /// When the authorizer's tokens are bound to a client certificate (mutual TLS, RFC 8705:
    /// [`Authorizer::tls_client_identity`]), the client presents that certificate, as the
    /// API requires for such tokens.
    ///
    /// To configure the reqwest client further (timeouts, proxies, TLS roots), use
    /// [`client_with`](Self::client_with), which keeps both.
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
        self.client_with(|builder| builder)
    }

    /// Like [`client`](Self::client), with the reqwest builder handed to `configure` first:
    /// it arrives with the same-origin redirect policy and the authorizer's client
    /// certificate, if any, and `configure` adds what it wants (a timeout, a private CA).
    ///
    /// ```no_run
    /// # use en_auth_core::{AuthMiddleware, Authorizer};
    /// # fn demo(my_authorizer: impl Authorizer, ca_pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    /// let auth = AuthMiddleware::new(my_authorizer);
    /// let ca = reqwest::Certificate::from_pem(ca_pem)?;
    /// let client = auth.client_with(|builder| {
    ///     builder
    ///         .add_root_certificate(ca)
    ///         .timeout(std::time::Duration::from_secs(10))
    /// })?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn client_with(
        &self,
        configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Result<reqwest_middleware::ClientWithMiddleware, Error> {
        let mut builder = reqwest::Client::builder().redirect(same_origin_redirects());
        if let Some(identity) = self.cache().authorizer().tls_client_identity() {
            builder = builder.identity(identity);
        }
        let http = configure(builder)
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
        self.core.access_token().await
    }

    /// The token cache behind this middleware.
    pub fn cache(&self) -> &TokenCache<A> {
        self.core.cache()
    }

    /// What the lifecycle has done so far.
    pub fn stats(&self) -> TokenStats {
        self.core.stats()
    }

    /// Sets the request's credentials for `token` when the authorizer makes no proof per
    /// request: no waiting.
    #[inline]
    fn authorize(
        &self,
        request: &mut Request,
        token: &CachedToken<A::Token>,
    ) -> reqwest_middleware::Result<()> {
        let credentials = self
            .core
            .bearer_credentials(token)
            .map_err(reqwest_middleware::Error::middleware)?;
        credentials.apply(request.headers_mut());
        Ok(())
    }

    /// Sets the request's credentials for `token`, with a proof (DPoP) made for it when the
    /// authorizer makes one per request (which may wait for a signer outside the process).
    async fn authorize_with_proof(
        &self,
        request: &mut Request,
        token: &CachedToken<A::Token>,
    ) -> reqwest_middleware::Result<()> {
        let credentials = self
            .core
            .credentials(token, request.method(), request.url().as_str())
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        credentials.apply(request.headers_mut());
        Ok(())
    }

    /// After a response the core wants to read (a 401, or any response when requests carry
    /// proofs): sends the request once more when the core says so and it can be rebuilt.
    async fn after_response(
        &self,
        token: Arc<CachedToken<A::Token>>,
        sent_to: KeptUrl,
        replay: Replay,
        response: Response,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let replayable = replay.possible(&sent_to, response.url());
        let head = ResponseHead::new(
            response.url().as_str(),
            response.status().as_u16(),
            response.headers(),
        );
        let (AfterResponse::Replay(token) | AfterResponse::Resend(token)) =
            self.core.after_response(&token, head, replayable).await
        else {
            return Ok(response);
        };
        let Some(mut again) = replay.into_request(response.url()) else {
            return Ok(response);
        };
        drop(response);
        self.authorize_with_proof(&mut again, &token).await?;
        let response = next.run(again, extensions).await?;
        self.core.after_final_response(ResponseHead::new(
            response.url().as_str(),
            response.status().as_u16(),
            response.headers(),
        ));
        Ok(response)
    }
}

type BoxFuture<'a> =
    Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'a>>;

fn failed<'a>(err: Error) -> BoxFuture<'a> {
    Box::pin(std::future::ready(Err(
        reqwest_middleware::Error::middleware(err),
    )))
}

impl<A: Authorizer> AuthMiddleware<A> {
    /// Sends `request` with `token`: the one path of every request, whether its token was
    /// cached or awaited. What needs no waiting is done before the future is made, so the
    /// future holds only what the response needs (one allocation per request, and a small
    /// one).
    fn send<'a>(
        &'a self,
        mut request: Request,
        token: Arc<CachedToken<A::Token>>,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> BoxFuture<'a> {
        let sent_to = KeptUrl::new(request.url());
        let replay = if self.core.replays() {
            Replay::prepare(&request)
        } else {
            Replay::Impossible
        };
        let proofs = self.core.uses_request_proofs();
        if !proofs {
            if let Err(err) = self.authorize(&mut request, &token) {
                return Box::pin(std::future::ready(Err(err)));
            }
        }
        Box::pin(async move {
            if proofs {
                self.authorize_with_proof(&mut request, &token).await?;
            }
            let response = next.clone().run(request, extensions).await?;
            sent_to.check_answered_from(response.url())?;
            if !self
                .core
                .reads_response(response.status() == StatusCode::UNAUTHORIZED)
            {
                return Ok(response);
            }
            // Boxed: the common path's future stays small.
            Box::pin(self.after_response(token, sent_to, replay, response, extensions, next)).await
        })
    }
}

// Written out instead of with `#[async_trait]`: the checks and the cached token need no
// future, and the request is then moved straight into the one future that sends it.
impl<A: Authorizer> Middleware for AuthMiddleware<A> {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> BoxFuture<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let url = request.url();
        if let Err(err) = self
            .core
            .check_request(Some(url.scheme()), || url.host_str())
        {
            return failed(err);
        }
        match self.core.cached_token() {
            Some(token) => self.send(request, token, extensions, next),
            None => Box::pin(async move {
                let token = self
                    .core
                    .token()
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                self.send(request, token, extensions, next).await
            }),
        }
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
/// headers cost nothing unless the request carries some of its own, and then they are boxed,
/// so that the future every request travels in stays small). The replay happens only
/// when the 401 came from exactly that URL, compared byte for byte: a request that was
/// redirected is not replayed.
enum Replay {
    Cloned(Box<Request>),
    BodyLess {
        method: http::Method,
        version: http::Version,
        timeout: Option<std::time::Duration>,
        /// `None`: the request had no headers of its own.
        headers: Option<Box<http::HeaderMap>>,
    },
    Impossible,
}

impl Replay {
    fn prepare(request: &Request) -> Self {
        if request.body().is_some() {
            return request
                .try_clone()
                .map_or(Replay::Impossible, |copy| Replay::Cloned(Box::new(copy)));
        }
        Replay::BodyLess {
            method: request.method().clone(),
            version: request.version(),
            timeout: request.timeout().copied(),
            headers: (!request.headers().is_empty()).then(|| Box::new(request.headers().clone())),
        }
    }

    /// Whether the request can be sent again after a response from `answered_from`: a copy
    /// was kept, and a body-less request is replayed only to exactly the URL it went to (a
    /// request that was redirected is not).
    fn possible(&self, sent_to: &KeptUrl, answered_from: &reqwest::Url) -> bool {
        match self {
            Replay::Cloned(_) => true,
            Replay::BodyLess { .. } => sent_to.is(answered_from),
            Replay::Impossible => false,
        }
    }

    /// The request to send again to `url` (the one it went to: see
    /// [`possible`](Self::possible)), if a copy was kept. (In reqwest 0.13 the timeout is the
    /// only per-request config; `a_replayed_request_keeps_its_method_headers_and_timeout`
    /// guards that nothing else is lost.)
    fn into_request(self, url: &reqwest::Url) -> Option<Request> {
        match self {
            Replay::Cloned(request) => Some(*request),
            Replay::BodyLess {
                method,
                version,
                timeout,
                headers,
            } => {
                let mut request = Request::new(method, url.clone());
                if let Some(headers) = headers {
                    *request.headers_mut() = *headers;
                }
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
#[path = "middleware_tests.rs"]
mod tests;

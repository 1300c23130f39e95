//! [`AdapterCore`]: what every adapter does around a request, without an HTTP client.
//!
//! The reqwest middleware, the tower layer and the tonic interceptor differ only in how they
//! hold, send and rebuild a request. Which credentials a request carries, which requests are
//! refused before any I/O, and what to do after a response are decided here, once.
//!
//! # Usage
//!
//! An adapter builds one [`AdapterCore`] over a [`TokenCache`] and, for each request:
//!
//! 1. [`check_request`](AdapterCore::check_request) before any I/O (an API key that cannot
//!    be sent, plain `http://` to a host that is not loopback);
//! 2. takes a token: [`cached_token`](AdapterCore::cached_token) without waiting, else
//!    [`token`](AdapterCore::token)`.await`;
//! 3. sets the [`Credentials`] from [`credentials`](AdapterCore::credentials) and sends;
//! 4. when [`reads_response`](AdapterCore::reads_response) says so, asks
//!    [`after_response`](AdapterCore::after_response) what next: [`AfterResponse`].
//!
//! # Replays
//!
//! A rejected request (HTTP 401, or what the transport counts as one, such as gRPC
//! `UNAUTHENTICATED`) is sent once more only when the adapter can rebuild it (replays on, a
//! body that can be sent twice, no redirect). Either way the rejection is reported to the
//! cache. A replayed or resent request is final: its response is only read
//! ([`after_final_response`](AdapterCore::after_final_response)), never retried.
//!
//! # Proofs
//!
//! When the authorizer proves possession of a key per request (DPoP), every request gets a
//! fresh proof bound to its method and URL, and every response is shown to the authorizer
//! (it may carry a new server nonce). A rejection that asks for a nonce is answered by
//! sending the request again with the same token and a new proof
//! ([`AfterResponse::Resend`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::{Authorizer, CachedToken, Error, TokenCache, TokenStats, is_loopback_host};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The transport-neutral part of an adapter over a [`TokenCache`].
///
/// It owns the rules; the adapter owns the framework glue (saving and rebuilding requests,
/// driving services, reading protocol-specific rejections). Clones share one cache.
///
/// ```no_run
/// use en_auth_core::{AdapterCore, AfterResponse, Authorizer, TokenCache};
/// # async fn demo<A: Authorizer>(authorizer: A) -> Result<(), en_auth_core::Error> {
/// let core = AdapterCore::new(TokenCache::new(authorizer), "MyAdapter");
/// let (method, url) = (http::Method::GET, "https://api.example.com/orders");
/// core.check_request(Some("https"), || Some("api.example.com"))?;
/// let token = core.token().await?;
/// let mut headers = http::HeaderMap::new();
/// core.credentials(&token, &method, url).await?.apply(&mut headers);
/// // … send; then, for a response with status 401:
/// let empty = http::HeaderMap::new();
/// let answer = en_auth_core::ResponseHead::new(url, 401, &empty);
/// if core.reads_response(answer.is_rejection()) {
///     match core.after_response(&token, answer, true).await {
///         AfterResponse::Done => {}
///         AfterResponse::Replay(token) | AfterResponse::Resend(token) => {
///             // rebuild the request, set core.credentials(&token, ..) and send it once more
///             # let _ = token;
///         }
///     }
/// }
/// # Ok(()) }
/// ```
pub struct AdapterCore<A: Authorizer> {
    cache: TokenCache<A>,
    /// The adapter's type name, for error messages that say which switch to use.
    adapter: &'static str,
    api_key: Option<HeaderValue>,
    /// Why the client's API key cannot be sent, if it cannot: every request fails with it.
    api_key_error: Option<Arc<str>>,
    replay: bool,
    allow_plain_http: bool,
    /// The authorizer wants a proof per request (DPoP); read once, at construction.
    proofs: bool,
    /// How long one request waits for its proof ([`LifecyclePolicy::proof_timeout`]).
    ///
    /// [`LifecyclePolicy::proof_timeout`]: crate::LifecyclePolicy::proof_timeout
    proof_timeout: Duration,
}

impl<A: Authorizer> Clone for AdapterCore<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            adapter: self.adapter,
            api_key: self.api_key.clone(),
            api_key_error: self.api_key_error.clone(),
            replay: self.replay,
            allow_plain_http: self.allow_plain_http,
            proofs: self.proofs,
            proof_timeout: self.proof_timeout,
        }
    }
}

impl<A: Authorizer> fmt::Debug for AdapterCore<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterCore")
            .field("adapter", &self.adapter)
            .field("cache", &self.cache)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("api_key_error", &self.api_key_error)
            .field("replay_on_unauthorized", &self.replay)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("proofs", &self.proofs)
            .field("proof_timeout", &self.proof_timeout)
            .finish()
    }
}

impl<A: Authorizer> AdapterCore<A> {
    /// A core over `cache` for the adapter type named `adapter` (used in error messages, e.g.
    /// `"AuthLayer"`). Replays are on and plain http is refused, as in every adapter.
    ///
    /// If the client's API key cannot be sent as a header value, the core is still built and
    /// every [`check_request`](Self::check_request) fails with
    /// [`Error::InvalidConfiguration`] (never a request without the key);
    /// [`try_new`](Self::try_new) reports it here instead.
    pub fn new(cache: TokenCache<A>, adapter: &'static str) -> Self {
        let (api_key, api_key_error) = match cache.authorizer().client_info().api_key_header() {
            Ok(key) => (key, None),
            Err(err) => {
                tracing::error!(error = %err, adapter, "every request of this adapter will fail");
                (None, Some(Arc::from(configuration_reason(err))))
            }
        };
        Self {
            proofs: cache.uses_request_proofs(),
            proof_timeout: cache.policy().proof_timeout,
            cache,
            adapter,
            api_key,
            api_key_error,
            replay: true,
            allow_plain_http: false,
        }
    }

    /// Like [`new`](Self::new), but fails with [`Error::InvalidConfiguration`] when the
    /// client's API key cannot be sent as a header value.
    pub fn try_new(cache: TokenCache<A>, adapter: &'static str) -> Result<Self, Error> {
        cache.authorizer().client_info().api_key_header()?;
        Ok(Self::new(cache, adapter))
    }

    /// Whether a rejected request may be sent once more (default `true`).
    pub fn replay_on_unauthorized(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// Whether credentials may go over plain `http://` to hosts other than loopback (default
    /// `false`).
    pub fn allow_plain_http(mut self, allow: bool) -> Self {
        self.allow_plain_http = allow;
        self
    }

    /// Whether rejected requests are replayed: when `false`, adapters need not save requests.
    #[inline]
    pub fn replays(&self) -> bool {
        self.replay
    }

    /// Whether each request carries a proof (DPoP): then [`credentials`](Self::credentials)
    /// reads the URL, and every response goes to [`after_response`](Self::after_response).
    #[inline]
    pub fn uses_request_proofs(&self) -> bool {
        self.proofs
    }

    /// The token cache behind this core.
    pub fn cache(&self) -> &TokenCache<A> {
        &self.cache
    }

    /// What the lifecycle has done so far.
    pub fn stats(&self) -> TokenStats {
        self.cache.stats()
    }

    /// Refuses, before any I/O (and before a token is fetched), a request that cannot carry
    /// the credentials safely: the API key cannot be sent, or the request goes over a scheme
    /// other than `https` to a host that is not loopback (unless plain http is allowed).
    /// `scheme` is the request URL's and `host` gives its host, asked only for a scheme other
    /// than `https`; a request without a scheme (a path-only URI, as a tonic `Channel` passes
    /// on) cannot be checked and passes.
    ///
    /// ```
    /// # fn demo<A: en_auth_core::Authorizer>(core: en_auth_core::AdapterCore<A>) {
    /// let url = reqwest::Url::parse("http://127.0.0.1:8080/orders").expect("url");
    /// assert!(core.check_request(Some(url.scheme()), || url.host_str()).is_ok());
    /// # }
    /// ```
    #[inline]
    pub fn check_request<'h>(
        &self,
        scheme: Option<&str>,
        host: impl FnOnce() -> Option<&'h str>,
    ) -> Result<(), Error> {
        if let Some(reason) = &self.api_key_error {
            return Err(api_key_error(reason));
        }
        match scheme {
            Some(scheme) if scheme != "https" && !self.allow_plain_http => {
                let host = host();
                if host.is_some_and(is_loopback_host) {
                    Ok(())
                } else {
                    Err(self.plain_http_error(scheme, host))
                }
            }
            _ => Ok(()),
        }
    }

    #[cold]
    fn plain_http_error(&self, scheme: &str, host: Option<&str>) -> Error {
        let host = host.map_or_else(|| "a URL without a host".to_owned(), crate::untrusted_text);
        Error::InvalidConfiguration {
            setting: "request URL".into(),
            reason: format!(
                "credentials are not sent over `{}://` to {host}, which is not loopback; use \
                 https (or {}::allow_plain_http(true) on a test network you trust)",
                crate::untrusted_text(scheme),
                self.adapter,
            ),
        }
    }

    /// The cached token if one may be sent now, without waiting (the hot path; it may start
    /// a refresh in the background). `None`: await [`token`](Self::token).
    #[inline]
    pub fn cached_token(&self) -> Option<Arc<CachedToken<A::Token>>> {
        self.cache.cached()
    }

    /// A usable token: the cached one, or the outcome of the one shared fetch.
    pub async fn token(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        self.cache.get().await
    }

    /// For adapters that cannot wait (tonic interceptors): a token that may be sent now, or
    /// else the one shared fetch started without waiting (`Ok(None)`), or the remembered
    /// failure while one is backed off. Call it when [`cached_token`](Self::cached_token)
    /// had none.
    pub fn start_fetch(&self) -> Result<Option<Arc<CachedToken<A::Token>>>, Error> {
        self.cache.start_fetch()
    }

    /// The current access token, fetched if needed.
    pub async fn access_token(&self) -> Result<String, Error> {
        self.cache.access_token().await
    }

    /// The headers a request to `url` with `method` carries: `Authorization` from `token`,
    /// `X-Api-Key` when the client has one, and the authorizer's proof when it makes one per
    /// request (DPoP, signed by a key that may live outside the process: hence async). `url`
    /// is the request's absolute URL; it is read only for a proof.
    ///
    /// A proof not made within the cache policy's
    /// [`proof_timeout`](crate::LifecyclePolicy::proof_timeout) (default
    /// [`DEFAULT_PROOF_TIMEOUT`](crate::DEFAULT_PROOF_TIMEOUT), 5 s) fails with a timeout
    /// [`Error::Transport`]: a hung KMS fails requests, it does not hang them, and no request
    /// goes out without its proof.
    ///
    /// Adapters whose hot path cannot await use
    /// [`bearer_credentials`](Self::bearer_credentials) when
    /// [`uses_request_proofs`](Self::uses_request_proofs) is `false`.
    pub async fn credentials(
        &self,
        token: &CachedToken<A::Token>,
        method: &Method,
        url: &str,
    ) -> Result<Credentials, Error> {
        let proof = if self.proofs {
            tokio::time::timeout(
                self.proof_timeout,
                self.cache.request_proof(token, method, url),
            )
            .await
            .map_err(|_| self.proof_timed_out())??
        } else {
            None
        };
        Ok(Credentials {
            authorization: token.authorization().clone(),
            api_key: self.api_key.clone(),
            proof,
        })
    }

    /// The headers of a request when the authorizer makes no proof per request
    /// ([`uses_request_proofs`](Self::uses_request_proofs) is `false`): `Authorization` from
    /// `token` and `X-Api-Key`, without waiting. With an authorizer that makes proofs it
    /// fails with [`Error::InvalidConfiguration`] — never credentials without their proof:
    /// use [`credentials`](Self::credentials) there.
    #[inline]
    pub fn bearer_credentials(&self, token: &CachedToken<A::Token>) -> Result<Credentials, Error> {
        if self.proofs {
            return Err(self.proof_needed());
        }
        Ok(Credentials {
            authorization: token.authorization().clone(),
            api_key: self.api_key.clone(),
            proof: None,
        })
    }

    #[cold]
    fn proof_timed_out(&self) -> Error {
        tracing::debug!(
            timeout_ms = self.proof_timeout.as_millis() as u64,
            "no DPoP proof within the proof timeout; the request is not sent"
        );
        Error::Transport {
            message: format!(
                "the request's proof (DPoP) was not signed within {} ms \
                 (LifecyclePolicy::proof_timeout); the request was not sent",
                self.proof_timeout.as_millis()
            ),
            timeout: true,
            source: None,
        }
    }

    #[cold]
    fn proof_needed(&self) -> Error {
        Error::InvalidConfiguration {
            setting: "authorizer".into(),
            reason: format!(
                "this authorizer needs a proof per request (DPoP), which {} did not ask for",
                self.adapter
            ),
        }
    }

    /// Whether a response needs [`after_response`](Self::after_response): it is a rejection,
    /// or the authorizer reads every response (DPoP nonces). Otherwise the response is final.
    #[inline]
    pub fn reads_response(&self, rejected: bool) -> bool {
        rejected || self.proofs
    }

    /// What to do after `response` to a request sent with `token`. `replayable`: the
    /// adapter can send the request once more (ignored when replays are off).
    ///
    /// A rejection is always reported to the cache. The answer is
    /// [`Replay`](AfterResponse::Replay) with a new token, [`Resend`](AfterResponse::Resend)
    /// with the same token and a fresh proof (the server asked for a DPoP nonce), or
    /// [`Done`](AfterResponse::Done): return the response as it is.
    pub async fn after_response(
        &self,
        token: &Arc<CachedToken<A::Token>>,
        response: ResponseHead<'_>,
        replayable: bool,
    ) -> AfterResponse<A::Token> {
        let challenged = self.proofs
            && self
                .cache
                .proof_challenge(response.url, response.status, response.headers);
        match decide(response.rejected, challenged, replayable && self.replay) {
            Decision::Accept => AfterResponse::Done,
            Decision::Keep => {
                tracing::debug!("the API asked for a DPoP nonce; the request cannot be resent");
                AfterResponse::Done
            }
            Decision::Report => {
                self.cache.invalidate(token).await;
                tracing::debug!(
                    "rejected request not replayed: its body cannot be sent twice, replays \
                     are off, or it was redirected"
                );
                AfterResponse::Done
            }
            Decision::Resend => {
                tracing::debug!("the API asked for a DPoP nonce: sending once more with it");
                self.cache.record_replay();
                AfterResponse::Resend(Arc::clone(token))
            }
            Decision::Replay => {
                // The lifecycle's one replay rule: the current token if a refresh already
                // replaced this one, else the replacement, unless the 401-storm bound holds
                // it back.
                match self.cache.token_after_rejection(token).await {
                    Some(new_token) => {
                        tracing::debug!("replaying the rejected request with a new token");
                        self.cache.record_replay();
                        AfterResponse::Replay(new_token)
                    }
                    None => AfterResponse::Done,
                }
            }
        }
    }

    /// Reads the response to a replayed or resent request: the authorizer keeps a nonce the
    /// server may have rotated. Nothing is retried.
    pub fn after_final_response(&self, response: ResponseHead<'_>) {
        if self.proofs {
            self.cache
                .proof_challenge(response.url, response.status, response.headers);
        }
    }
}

/// The decision after a response, before any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Not a rejection: the response is final.
    Accept,
    /// Rejected with a nonce challenge, but the request cannot be sent again: the token is
    /// fine, so it is not reported.
    Keep,
    /// Rejected and not sent again: report the token to the cache.
    Report,
    /// Send again with the same token and a fresh proof.
    Resend,
    /// Report the token and send again with its replacement.
    Replay,
}

fn decide(rejected: bool, challenged: bool, replayable: bool) -> Decision {
    match (rejected, challenged, replayable) {
        (false, _, _) => Decision::Accept,
        (true, true, false) => Decision::Keep,
        (true, false, false) => Decision::Report,
        (true, true, true) => Decision::Resend,
        (true, false, true) => Decision::Replay,
    }
}

/// The reason inside a configuration error (the API key's), for errors repeated per request.
fn configuration_reason(err: Error) -> String {
    match err {
        Error::InvalidConfiguration { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[cold]
fn api_key_error(reason: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "api_key".into(),
        reason: reason.to_owned(),
    }
}

/// The headers that authorize one request, from [`AdapterCore::credentials`] or
/// [`AdapterCore::bearer_credentials`].
///
/// `Debug` shows only which headers there are, never their values.
#[must_use = "credentials authorize nothing until applied to a request"]
pub struct Credentials {
    authorization: HeaderValue,
    api_key: Option<HeaderValue>,
    proof: Option<(HeaderName, HeaderValue)>,
}

impl Credentials {
    /// Sets the headers on `headers`, replacing any of the same names.
    #[inline]
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(http::header::AUTHORIZATION, self.authorization);
        if let Some(key) = self.api_key {
            headers.insert(X_API_KEY, key);
        }
        if let Some((name, value)) = self.proof {
            headers.insert(name, value);
        }
    }

    /// The `Authorization` value (marked sensitive).
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// The `X-Api-Key` value, when the client has an API key.
    pub fn api_key(&self) -> Option<&HeaderValue> {
        self.api_key.as_ref()
    }

    /// The proof header (DPoP), when the authorizer makes one per request.
    pub fn proof(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.proof.as_ref().map(|(name, value)| (name, value))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &"[REDACTED]")
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("proof", &self.proof.as_ref().map(|(name, _)| name.as_str()))
            .finish()
    }
}

/// What [`AdapterCore`] reads of a response: the URL it came from, its status and headers,
/// and whether it rejects the credentials.
#[derive(Clone, Copy)]
pub struct ResponseHead<'a> {
    url: &'a str,
    status: u16,
    headers: &'a HeaderMap,
    rejected: bool,
}

impl<'a> ResponseHead<'a> {
    /// A response from `url` (the request's absolute URL) with `status` and `headers`. A 401
    /// counts as a rejection.
    #[inline]
    pub fn new(url: &'a str, status: u16, headers: &'a HeaderMap) -> Self {
        Self {
            url,
            status,
            headers,
            rejected: status == 401,
        }
    }

    /// Counts the response as a rejection also when `rejected` (a transport's own signal,
    /// such as gRPC `UNAUTHENTICATED` in a 200 response).
    #[inline]
    pub fn rejected_if(mut self, rejected: bool) -> Self {
        self.rejected |= rejected;
        self
    }

    /// Whether the response rejects the credentials.
    #[inline]
    pub fn is_rejection(&self) -> bool {
        self.rejected
    }
}

impl fmt::Debug for ResponseHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseHead")
            .field("status", &self.status)
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

/// What an adapter does after a response, from [`AdapterCore::after_response`].
#[must_use]
pub enum AfterResponse<T> {
    /// Return the response as it is.
    Done,
    /// The credentials were rejected: send the request once more with this new token.
    Replay(Arc<CachedToken<T>>),
    /// The server asked for a proof with its nonce: send the request once more with the same
    /// token and a fresh proof.
    Resend(Arc<CachedToken<T>>),
}

impl<T> fmt::Debug for AfterResponse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterResponse::Done => f.write_str("Done"),
            AfterResponse::Replay(_) => f.write_str("Replay([REDACTED])"),
            AfterResponse::Resend(_) => f.write_str("Resend([REDACTED])"),
        }
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;

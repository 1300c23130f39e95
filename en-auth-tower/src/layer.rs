//! [`AuthLayer`] and its service: the tower adapter over [`TokenCache`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use en_auth_core::{Authorizer, CachedToken, TokenCache};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::ReplayBody;

/// The error type of [`AuthService`]: the inner service's error, or an
/// [`en_auth_core::Error`] when no token could be obtained — tell them apart with
/// `err.downcast_ref::<en_auth_core::Error>()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC status code 16, `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: &[u8] = b"16";

/// A `tower` layer that authorizes every request of the service it wraps.
///
/// Each request gets `Authorization: Bearer <token>` (replacing any it had) and, when the
/// client has an API key, `X-Api-Key`. The token comes from a [`TokenCache`]: with a cached
/// token the request goes straight on — no waiting; nothing is allocated unless the request
/// can be replayed (then its head is kept for that); it waits only when there is no usable
/// token at all, joining the one shared fetch. The token is
/// looked up per request, never captured when the layer is built.
///
/// A response with status 401, or a gRPC trailers-only response with `grpc-status: 16`
/// (`UNAUTHENTICATED`), is reported to the cache (which drops the token under its rules) and,
/// when the request body can be copied ([`ReplayBody`]), the request is sent once more with a
/// new token. Replayed requests keep method, URI, version and headers; request extensions are
/// not carried over. gRPC calls are never replayed.
///
/// Errors: the service's error is [`BoxError`], holding either the inner service's error or
/// an [`en_auth_core::Error`] when no token could be obtained (tonic turns it into a
/// `Status` with the error's text).
///
/// ```no_run
/// use en_auth_core::TokenCache;
/// use en_auth_tower::AuthLayer;
/// # fn demo<A: en_auth_core::Authorizer, S: Clone>(authorizer: A, channel: S) {
/// let cache = TokenCache::new(authorizer);
/// let layer = AuthLayer::from_cache(cache.clone()); // the same cache can back an AuthMiddleware
/// let service = tower_layer::Layer::layer(&layer, channel);
/// # let _ = service; }
/// ```
pub struct AuthLayer<A: Authorizer> {
    cache: TokenCache<A>,
    api_key: Option<HeaderValue>,
    /// Why the client's API key cannot be sent, if it cannot: every request fails with it.
    api_key_error: Option<Arc<str>>,
    replay: bool,
    allow_plain_http: bool,
    /// The authorizer wants a proof per request (DPoP): requests take the proof path.
    proofs: bool,
}

impl<A: Authorizer> Clone for AuthLayer<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            api_key: self.api_key.clone(),
            api_key_error: self.api_key_error.clone(),
            replay: self.replay,
            allow_plain_http: self.allow_plain_http,
            proofs: self.proofs,
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthLayer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cache", &self.cache)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("replay", &self.replay)
            .field("proofs", &self.proofs)
            .finish()
    }
}

impl<A: Authorizer> AuthLayer<A> {
    /// A layer with its own token cache and the default lifecycle policy.
    pub fn new(authorizer: A) -> Self {
        Self::from_cache(TokenCache::new(authorizer))
    }

    /// A layer over an existing cache, shared with other adapters. An API key that cannot be
    /// sent as a header value makes every request fail with
    /// [`en_auth_core::Error::InvalidConfiguration`] before anything is sent (never a request
    /// without the key); [`try_from_cache`](Self::try_from_cache) reports it here instead.
    pub fn from_cache(cache: TokenCache<A>) -> Self {
        let (api_key, api_key_error) = match cache.authorizer().client_info().api_key_header() {
            Ok(key) => (key, None),
            Err(err) => {
                tracing::error!(error = %err, "every request of this AuthLayer will fail");
                (None, Some(Arc::from(api_key_reason(err))))
            }
        };
        Self {
            proofs: cache.uses_request_proofs(),
            cache,
            api_key,
            api_key_error,
            replay: true,
            allow_plain_http: false,
        }
    }

    /// Like [`from_cache`](Self::from_cache), but fails with
    /// [`en_auth_core::Error::InvalidConfiguration`] when the client's API key cannot be sent
    /// as a header value.
    pub fn try_from_cache(cache: TokenCache<A>) -> Result<Self, en_auth_core::Error> {
        cache.authorizer().client_info().api_key_header()?;
        Ok(Self::from_cache(cache))
    }

    /// Whether to replay a rejected request once with a new token (default `true`).
    pub fn replay_on_unauthorized(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// Whether credentials may go over plain `http://` to hosts that are not loopback
    /// (default `false`: such requests fail with
    /// [`en_auth_core::Error::InvalidConfiguration`] before any I/O, and no token is fetched
    /// for them). Only requests with an absolute URI can be checked: a tonic `Channel` hands
    /// the layer path-only URIs, so give it an `https://` endpoint.
    pub fn allow_plain_http(mut self, allow: bool) -> Self {
        self.allow_plain_http = allow;
        self
    }

    /// The token cache behind this layer.
    pub fn cache(&self) -> &TokenCache<A> {
        &self.cache
    }

    /// A copy of the request's head and body for a replay after a 401, when replays are on
    /// and the body can be sent twice.
    fn prepare_replay<B: ReplayBody>(&self, request: &Request<B>) -> Option<(Saved, B)> {
        if self.replay {
            Saved::prepare(request)
        } else {
            None
        }
    }

    fn authorize<B>(&self, request: &mut Request<B>, token: &CachedToken<A::Token>) {
        let headers = request.headers_mut();
        headers.insert(http::header::AUTHORIZATION, token.authorization().clone());
        if let Some(key) = &self.api_key {
            headers.insert(X_API_KEY, key.clone());
        }
    }
}

impl<S, A: Authorizer> Layer<S> for AuthLayer<A> {
    type Service = AuthService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::new(self.clone()),
        }
    }
}

/// The service [`AuthLayer`] builds around `S`.
pub struct AuthService<S, A: Authorizer> {
    inner: S,
    auth: Arc<AuthLayer<A>>,
}

impl<S: Clone, A: Authorizer> Clone for AuthService<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            auth: Arc::clone(&self.auth),
        }
    }
}

impl<S: std::fmt::Debug, A: Authorizer> std::fmt::Debug for AuthService<S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("auth", &self.auth)
            .finish()
    }
}

impl<S, A, ReqB, ResB> Service<Request<ReqB>> for AuthService<S, A>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, A, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        call_authorized(&self.auth, &mut self.inner, request)
    }
}

/// Sends `request` through `inner` (polled ready) with a token from `auth`: the body of
/// [`AuthService::call`], shared with the per-audience service.
pub(crate) fn call_authorized<S, A, ReqB, ResB>(
    auth: &Arc<AuthLayer<A>>,
    inner: &mut S,
    mut request: Request<ReqB>,
) -> ResponseFuture<S, A, ReqB, ResB>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    if let Some(reason) = &auth.api_key_error {
        let err: BoxError = Box::new(api_key_error(reason));
        return ResponseFuture::slow(Box::pin(std::future::ready(Err(err))));
    }
    if !auth.allow_plain_http && request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
        if let Some(err) = plain_http_error(request.uri()) {
            let err: BoxError = Box::new(err);
            return ResponseFuture::slow(Box::pin(std::future::ready(Err(err))));
        }
    }
    if auth.proofs {
        // A proof per request (DPoP): its own path, with the service that was polled ready.
        let fresh = inner.clone();
        let ready = std::mem::replace(inner, fresh);
        let auth = Arc::clone(auth);
        return ResponseFuture::slow(Box::pin(send_with_proofs(auth, ready, request)));
    }
    let Some(token) = auth.cache.cached() else {
        // No usable token: the request waits for the shared fetch, so it takes the service
        // that was polled ready along, and a fresh clone stays behind for the next
        // poll_ready (calling an unpolled clone breaks buffered services).
        let fresh = inner.clone();
        let ready = std::mem::replace(inner, fresh);
        let auth = Arc::clone(auth);
        return ResponseFuture::slow(Box::pin(authorize_then_send(auth, ready, request)));
    };
    // A copy of the request and a spare service for the replay, only when the body can be
    // sent twice; the spare is polled ready before it is used.
    let replay = auth
        .prepare_replay(&request)
        .map(|(saved, body)| Box::new((saved, body, inner.clone())));
    auth.authorize(&mut request, &token);
    let future = inner.call(request);
    ResponseFuture {
        state: State::Sent {
            future,
            rejection: Some(Rejection {
                auth: Arc::clone(auth),
                token,
                replay,
            }),
        },
    }
}

/// The refusal of a plain-http request to `uri`, unless its host is loopback.
#[cold]
fn plain_http_error(uri: &Uri) -> Option<en_auth_core::Error> {
    let host = uri.host().unwrap_or("");
    (!en_auth_core::is_loopback_host(host)).then(|| en_auth_core::Error::InvalidConfiguration {
        setting: "request URL".into(),
        reason: format!(
            "credentials are not sent over `http://` to {}, which is not loopback; use https \
             (or AuthLayer::allow_plain_http(true) on a test network you trust)",
            en_auth_core::untrusted_text(host)
        ),
    })
}

/// The reason inside an API-key configuration error.
pub(crate) fn api_key_reason(err: en_auth_core::Error) -> String {
    match err {
        en_auth_core::Error::InvalidConfiguration { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The error every request gets when the API key cannot be sent.
pub(crate) fn api_key_error(reason: &str) -> en_auth_core::Error {
    en_auth_core::Error::InvalidConfiguration {
        setting: "api_key".into(),
        reason: reason.to_owned(),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// What is needed if the API rejects the token: whom to tell, and how to send again.
struct Rejection<S, A: Authorizer, ReqB> {
    auth: Arc<AuthLayer<A>>,
    token: Arc<CachedToken<A::Token>>,
    replay: Option<Box<(Saved, ReqB, S)>>,
}

pin_project! {
    /// The future of [`AuthService::call`]. With a cached token it is the inner service's
    /// future plus a check of the response status; it boxes only when there was no token
    /// or the API rejected it (and keeps a boxed copy of a replayable request's head).
    pub struct ResponseFuture<S, A, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        A: Authorizer,
    {
        #[pin]
        state: State<S, A, ReqB, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, A, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        A: Authorizer,
    {
        Sent {
            #[pin]
            future: S::Future,
            rejection: Option<Rejection<S, A, ReqB>>,
        },
        Slow {
            future: BoxFuture<Response<ResB>>,
        },
    }
}

impl<S, A, ReqB, ResB> ResponseFuture<S, A, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    A: Authorizer,
{
    pub(crate) fn slow(future: BoxFuture<Response<ResB>>) -> Self {
        Self {
            state: State::Slow { future },
        }
    }
}

impl<S, A, ReqB, ResB> Future for ResponseFuture<S, A, ReqB, ResB>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Sent { future, rejection } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if !is_rejection(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    match rejection.take() {
                        Some(r) => Box::pin(after_rejection(r.auth, r.token, r.replay, response))
                            as BoxFuture<Response<ResB>>,
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::Slow { future } => return future.as_mut().poll(cx),
            };
            self.as_mut()
                .project()
                .state
                .set(State::Slow { future: next });
        }
    }
}

/// Whether the API refused the token: HTTP 401, or gRPC `UNAUTHENTICATED` in a trailers-only
/// response (gRPC runs over HTTP/2 only, so HTTP/1 answers skip the header lookup).
fn is_rejection<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        || (response.version() == Version::HTTP_2
            && response
                .headers()
                .get(GRPC_STATUS)
                .is_some_and(|status| status.as_bytes() == GRPC_UNAUTHENTICATED))
}

/// What it takes to send a request again, saved before it is sent.
struct Saved {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Saved {
    fn prepare<B: ReplayBody>(request: &Request<B>) -> Option<(Self, B)> {
        let body = request.body().try_clone_body()?;
        Some((
            Saved {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                headers: request.headers().clone(),
            },
            body,
        ))
    }

    fn into_request<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// No usable token when the request arrived: wait for the shared fetch, then send.
async fn authorize_then_send<S, A, ReqB, ResB>(
    auth: Arc<AuthLayer<A>>,
    mut service: S,
    mut request: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    let token = auth.cache.get().await.map_err(BoxError::from)?;
    let replay = auth.prepare_replay(&request);
    auth.authorize(&mut request, &token);
    let response = service.call(request).await.map_err(Into::into)?;
    if !is_rejection(&response) {
        return Ok(response);
    }
    let replay = replay.map(|(saved, body)| Box::new((saved, body, service)));
    after_rejection(auth, token, replay, response).await
}

/// The API refused `token`: report it, and replay the request once with a new token when
/// it can be replayed and the cache has a different token to offer.
async fn after_rejection<S, A, ReqB, ResB>(
    auth: Arc<AuthLayer<A>>,
    token: Arc<CachedToken<A::Token>>,
    replay: Option<Box<(Saved, ReqB, S)>>,
    response: Response<ResB>,
) -> Result<Response<ResB>, BoxError>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    let Some((saved, body, mut service)) = replay.map(|boxed| *boxed) else {
        auth.cache.invalidate(&token).await;
        tracing::debug!("rejected request not replayed: its body cannot be sent twice");
        return Ok(response);
    };
    // The lifecycle's one replay rule (see TokenCache::token_after_rejection).
    let Some(new_token) = auth.cache.token_after_rejection(&token).await else {
        return Ok(response);
    };
    let mut request = saved.into_request(body);
    auth.authorize(&mut request, &new_token);
    auth.cache.record_replay();
    drop(response);
    call_when_ready(&mut service, request).await
}

/// Waits for `service` to be ready, then calls it (the replay's spare service was never
/// polled).
async fn call_when_ready<S, ReqB, ResB>(
    service: &mut S,
    request: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(request).await.map_err(Into::into)
}

/// Adds the authorizer's proof (DPoP) for this request to it.
fn add_proof<A: Authorizer, B>(
    auth: &AuthLayer<A>,
    request: &mut Request<B>,
    token: &CachedToken<A::Token>,
    url: &str,
) -> Result<(), BoxError> {
    if let Some((name, value)) = auth.cache.request_proof(token, request.method(), url)? {
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// The request path for authorizers that prove possession of a key per request (DPoP): a
/// fresh proof on every request (the request's URI must be absolute, as a client's is); a
/// server nonce challenge (`use_dpop_nonce`) is answered by sending the request once more
/// with the same token and a new proof; any other rejection is handled as on the bearer
/// path (new token, one replay).
async fn send_with_proofs<S, A, ReqB, ResB>(
    auth: Arc<AuthLayer<A>>,
    mut service: S,
    mut request: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    let token = auth.cache.get().await.map_err(BoxError::from)?;
    let url = request.uri().to_string();
    let replay = auth.prepare_replay(&request);
    auth.authorize(&mut request, &token);
    add_proof(&auth, &mut request, &token, &url)?;
    let response = service.call(request).await.map_err(Into::into)?;
    let challenged =
        auth.cache
            .proof_challenge(&url, response.status().as_u16(), response.headers());
    if !is_rejection(&response) {
        return Ok(response);
    }
    let Some((saved, body)) = replay else {
        if !challenged {
            auth.cache.invalidate(&token).await;
        }
        return Ok(response);
    };
    let new_token = if challenged {
        tracing::debug!("the API asked for a DPoP nonce: sending once more with it");
        Arc::clone(&token)
    } else {
        match auth.cache.token_after_rejection(&token).await {
            Some(new_token) => new_token,
            None => return Ok(response),
        }
    };
    let mut again = saved.into_request(body);
    auth.authorize(&mut again, &new_token);
    add_proof(&auth, &mut again, &new_token, &url)?;
    auth.cache.record_replay();
    drop(response);
    let response = call_when_ready(&mut service, again).await?;
    auth.cache
        .proof_challenge(&url, response.status().as_u16(), response.headers());
    Ok(response)
}

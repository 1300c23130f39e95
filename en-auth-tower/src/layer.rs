//! [`AuthLayer`] and its service: the tower adapter over [`TokenCache`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use en_auth_core::{AdapterCore, AfterResponse, Authorizer, CachedToken, ResponseHead, TokenCache};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::ReplayBody;

/// The error type of [`AuthService`]: the inner service's error, or an
/// [`en_auth_core::Error`] when no token could be obtained — tell them apart with
/// `err.downcast_ref::<en_auth_core::Error>()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    core: AdapterCore<A>,
}

impl<A: Authorizer> Clone for AuthLayer<A> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthLayer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("core", &self.core)
            .finish()
    }
}

const ADAPTER: &str = "AuthLayer";

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
        Self {
            core: AdapterCore::new(cache, ADAPTER),
        }
    }

    /// Like [`from_cache`](Self::from_cache), but fails with
    /// [`en_auth_core::Error::InvalidConfiguration`] when the client's API key cannot be sent
    /// as a header value.
    pub fn try_from_cache(cache: TokenCache<A>) -> Result<Self, en_auth_core::Error> {
        Ok(Self {
            core: AdapterCore::try_new(cache, ADAPTER)?,
        })
    }

    /// Whether to replay a rejected request once with a new token (default `true`).
    pub fn replay_on_unauthorized(self, replay: bool) -> Self {
        Self {
            core: self.core.replay_on_unauthorized(replay),
        }
    }

    /// Whether credentials may go over plain `http://` to hosts that are not loopback
    /// (default `false`: such requests fail with
    /// [`en_auth_core::Error::InvalidConfiguration`] before any I/O, and no token is fetched
    /// for them). Only requests with an absolute URI can be checked: a tonic `Channel` hands
    /// the layer path-only URIs, so give it an `https://` endpoint.
    pub fn allow_plain_http(self, allow: bool) -> Self {
        Self {
            core: self.core.allow_plain_http(allow),
        }
    }

    /// The token cache behind this layer.
    pub fn cache(&self) -> &TokenCache<A> {
        self.core.cache()
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
    request: Request<ReqB>,
) -> ResponseFuture<S, A, ReqB, ResB>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    let uri = request.uri();
    let host = || uri.authority().map(|authority| host_of(authority.as_str()));
    if let Err(err) = auth.core.check_request(uri.scheme_str(), host) {
        return ResponseFuture::failed(err);
    }
    if auth.core.uses_request_proofs() {
        // A proof per request (DPoP), signed by a key that may live outside the process: the
        // request waits for it, so it takes the service polled ready along (as below).
        let fresh = inner.clone();
        let ready = std::mem::replace(inner, fresh);
        let auth = Arc::clone(auth);
        return ResponseFuture::slow(Box::pin(authorize_then_send(auth, ready, request)));
    }
    let Some(token) = auth.core.cached_token() else {
        // No usable token: the request waits for the shared fetch, so it takes the service
        // that was polled ready along, and a fresh clone stays behind for the next
        // poll_ready (calling an unpolled clone breaks buffered services).
        let fresh = inner.clone();
        let ready = std::mem::replace(inner, fresh);
        let auth = Arc::clone(auth);
        return ResponseFuture::slow(Box::pin(authorize_then_send(auth, ready, request)));
    };
    send(auth, inner, request, token)
}

/// The host of an authority (`userinfo@host:port`, the host possibly a bracketed IPv6
/// address): what `http::uri::Authority::host` returns, found in one pass over the bytes.
fn host_of(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let start = bytes
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |at| at + 1);
    let rest = &authority[start..];
    let end = if rest.starts_with('[') {
        rest.bytes()
            .position(|b| b == b']')
            .map_or(rest.len(), |at| at + 1)
    } else {
        rest.bytes().position(|b| b == b':').unwrap_or(rest.len())
    };
    &rest[..end]
}

/// Sends `request` with `token` through `inner` (polled ready): the one path of every
/// request, whether its token was cached or awaited.
fn send<S, A, ReqB, ResB>(
    auth: &Arc<AuthLayer<A>>,
    inner: &mut S,
    request: Request<ReqB>,
    token: Arc<CachedToken<A::Token>>,
) -> ResponseFuture<S, A, ReqB, ResB>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    let credentials = match auth.core.bearer_credentials(&token) {
        Ok(credentials) => credentials,
        Err(err) => return ResponseFuture::failed(err),
    };
    send_authorized(auth, inner, request, token, String::new(), credentials)
}

/// Sends `request` with `credentials` (made for `token`; `url`: the request's absolute URI
/// when requests carry proofs, which the authorizer reads in responses, else empty).
fn send_authorized<S, A, ReqB, ResB>(
    auth: &Arc<AuthLayer<A>>,
    inner: &mut S,
    mut request: Request<ReqB>,
    token: Arc<CachedToken<A::Token>>,
    url: String,
    credentials: en_auth_core::Credentials,
) -> ResponseFuture<S, A, ReqB, ResB>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    // A copy of the request and a spare service for the replay, only when the body can be
    // sent twice; the spare is polled ready before it is used.
    let replay = if auth.core.replays() {
        Saved::prepare(&request).map(|(saved, body)| Box::new((saved, body, inner.clone())))
    } else {
        None
    };
    credentials.apply(request.headers_mut());
    let future = inner.call(request);
    ResponseFuture {
        state: State::Sent {
            future,
            rejection: Some(Rejection {
                auth: Arc::clone(auth),
                token,
                url,
                replay,
            }),
        },
    }
}

/// Sets the request's credentials for `token` (`url`: see [`send_authorized`]).
async fn authorize<A: Authorizer, B>(
    core: &AdapterCore<A>,
    request: &mut Request<B>,
    token: &CachedToken<A::Token>,
    url: &str,
) -> Result<(), en_auth_core::Error> {
    let credentials = core.credentials(token, request.method(), url).await?;
    credentials.apply(request.headers_mut());
    Ok(())
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// What is needed if the API rejects the token: whom to tell, and how to send again.
struct Rejection<S, A: Authorizer, ReqB> {
    auth: Arc<AuthLayer<A>>,
    token: Arc<CachedToken<A::Token>>,
    /// The request's absolute URI when requests carry proofs, else empty.
    url: String,
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

    /// A future that fails with `err` (a request refused before any I/O).
    #[cold]
    pub(crate) fn failed(err: impl Into<BoxError>) -> Self
    where
        ResB: Send + 'static,
    {
        Self::slow(Box::pin(std::future::ready(Err(err.into()))))
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
                    let rejected = is_rejection(&response);
                    match rejection.take() {
                        Some(r) if r.auth.core.reads_response(rejected) => {
                            Box::pin(after_response(r, response, rejected))
                                as BoxFuture<Response<ResB>>
                        }
                        _ => return Poll::Ready(Ok(response)),
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
    request: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Send + 'static,
    ResB: Send + 'static,
{
    let token = match auth.core.cached_token() {
        Some(token) => token,
        None => auth.core.token().await?,
    };
    if auth.core.uses_request_proofs() {
        let url = request.uri().to_string();
        let credentials = auth
            .core
            .credentials(&token, request.method(), &url)
            .await?;
        return send_authorized(&auth, &mut service, request, token, url, credentials).await;
    }
    send(&auth, &mut service, request, token).await
}

/// A response the core reads (a rejection, or any response when requests carry proofs):
/// send the request once more when the core says so and a copy was kept.
async fn after_response<S, A, ReqB, ResB>(
    rejection: Rejection<S, A, ReqB>,
    response: Response<ResB>,
    rejected: bool,
) -> Result<Response<ResB>, BoxError>
where
    A: Authorizer,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    let Rejection {
        auth,
        token,
        url,
        replay,
    } = rejection;
    let head = ResponseHead::new(&url, response.status().as_u16(), response.headers())
        .rejected_if(rejected);
    let (AfterResponse::Replay(token) | AfterResponse::Resend(token)) = auth
        .core
        .after_response(&token, head, replay.is_some())
        .await
    else {
        return Ok(response);
    };
    let Some((saved, body, mut service)) = replay.map(|boxed| *boxed) else {
        return Ok(response);
    };
    // The rejected response (and the connection it may hold) is let go before the proof is
    // signed, which may wait for a KMS.
    drop(response);
    let mut again = saved.into_request(body);
    authorize(&auth.core, &mut again, &token, &url).await?;
    let response = call_when_ready(&mut service, again).await?;
    auth.core.after_final_response(ResponseHead::new(
        &url,
        response.status().as_u16(),
        response.headers(),
    ));
    Ok(response)
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

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_authority_is_what_http_finds() {
        for authority in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost",
            "user:pw@api.example.com:443",
            "a@b@[::1]:9",
            "[::1]",
            "[fe80::1%25eth0]:80",
            "api.example.com",
        ] {
            let uri: http::Uri = format!("http://{authority}/x").parse().expect("uri");
            let expected = uri.host().expect("host");
            assert_eq!(host_of(authority), expected, "{authority}");
        }
        assert_eq!(host_of(""), "");
    }
}

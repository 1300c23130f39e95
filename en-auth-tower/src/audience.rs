//! [`AudienceLayer`]: one client, many APIs, for tower clients — a token lifecycle per
//! audience, picked per request.

use std::sync::Arc;
use std::task::{Context, Poll};

use en_auth_core::{Audience, AudienceRouter, Authorizer, DefaultAudience, LifecyclePolicy};
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::call_authorized;
use crate::{AuthLayer, BoxError, ReplayBody, ResponseFuture};

/// A `tower` layer with one [`AuthLayer`] (one token lifecycle) per audience.
///
/// The audience of a request is its [`Audience`] extension
/// (`request.extensions_mut().insert(Audience::new(..))`), else the longest configured URL
/// prefix that matches, else the default ([`DefaultAudience::Refuse`] unless set). Each
/// audience's authorizer comes from your factory on first use; at most
/// [`max_audiences`](Self::max_audiences) are created.
///
/// ```no_run
/// use en_auth_core::{Audience, Authorizer};
/// use en_auth_tower::AudienceLayer;
/// # fn demo<A: Authorizer>(make: impl Fn(&Audience) -> A + Send + Sync + 'static) {
/// let layer = AudienceLayer::new(make)
///     .route("https://billing.example.com/", "https://billing.example.com")
///     .max_audiences(8);
/// # let _ = layer; }
/// ```
pub struct AudienceLayer<A: Authorizer> {
    router: Arc<AudienceRouter<A, Arc<AuthLayer<A>>>>,
}

impl<A: Authorizer> Clone for AudienceLayer<A> {
    fn clone(&self) -> Self {
        Self {
            router: Arc::clone(&self.router),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AudienceLayer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceLayer")
            .field("router", &self.router)
            .finish()
    }
}

fn adapt<A: Authorizer>(cache: en_auth_core::TokenCache<A>) -> Arc<AuthLayer<A>> {
    Arc::new(AuthLayer::from_cache(cache))
}

impl<A: Authorizer> AudienceLayer<A> {
    /// A layer that builds each audience's authorizer with `make`.
    pub fn new(make: impl Fn(&Audience) -> A + Send + Sync + 'static) -> Self {
        Self {
            router: Arc::new(AudienceRouter::new(make, adapt::<A>)),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut AudienceRouter<A, Arc<AuthLayer<A>>>)) -> Self {
        match Arc::get_mut(&mut self.router) {
            Some(router) => change(router),
            None => {
                tracing::warn!(
                    "AudienceLayer configured after it was cloned; the change is ignored"
                )
            }
        }
        self
    }

    /// Requests whose URL starts with `url_prefix` get `audience`.
    pub fn route(self, url_prefix: impl Into<String>, audience: impl AsRef<str>) -> Self {
        self.configure(|router| router.add_route(url_prefix, audience))
    }

    /// What requests with no audience get (default: [`DefaultAudience::Refuse`]).
    pub fn default_audience(self, default: DefaultAudience) -> Self {
        self.configure(|router| router.set_default(default))
    }

    /// The most audiences (token lifecycles) this layer creates. Default 32.
    pub fn max_audiences(self, max: usize) -> Self {
        self.configure(|router| router.set_max_audiences(max))
    }

    /// The lifecycle policy of every audience's cache.
    pub fn policy(self, policy: LifecyclePolicy) -> Self {
        self.configure(|router| router.set_policy(policy))
    }

    /// The layer of `audience`, if it was created (for its cache and stats).
    pub fn audience(&self, audience: &Audience) -> Option<Arc<AuthLayer<A>>> {
        self.router.adapter(audience)
    }
}

impl<S, A: Authorizer> Layer<S> for AudienceLayer<A> {
    type Service = AudienceService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AudienceService {
            inner,
            router: Arc::clone(&self.router),
        }
    }
}

/// The service [`AudienceLayer`] builds around `S`.
pub struct AudienceService<S, A: Authorizer> {
    inner: S,
    router: Arc<AudienceRouter<A, Arc<AuthLayer<A>>>>,
}

impl<S: Clone, A: Authorizer> Clone for AudienceService<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            router: Arc::clone(&self.router),
        }
    }
}

impl<S, A, ReqB, ResB> Service<Request<ReqB>> for AudienceService<S, A>
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
        let extension = request.extensions().get::<Audience>();
        let url = (extension.is_none() && self.router.has_routes())
            .then(|| url::Url::parse(&request.uri().to_string()).ok())
            .flatten();
        let auth = self
            .router
            .audience_for(url.as_ref(), extension)
            .and_then(|audience| self.router.adapter_for(&audience));
        match auth {
            Ok(auth) => call_authorized(&auth, &mut self.inner, request),
            Err(err) => ResponseFuture::slow(Box::pin(async move { Err(BoxError::from(err)) })),
        }
    }
}

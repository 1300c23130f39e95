//! [`AudienceLayer`]: one client, many APIs, for tower clients — a token lifecycle per
//! audience, picked per request.

use std::sync::Arc;
use std::task::{Context, Poll};

use en_auth_core::{Audience, AudienceRouter, Authorizer, DefaultAudience, Error, LifecyclePolicy};
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

    /// Applies `change` to the router; fails when the layer was cloned or applied already
    /// (its clones and services share the router, and a change only some of them saw would
    /// send one API's token to another).
    fn try_configure(
        mut self,
        change: impl FnOnce(&mut AudienceRouter<A, Arc<AuthLayer<A>>>) -> Result<(), Error>,
    ) -> Result<Self, Error> {
        let router = Arc::get_mut(&mut self.router).ok_or_else(|| Error::InvalidConfiguration {
            setting: "audience routing".into(),
            reason: "AudienceLayer configured after it was cloned or applied to a service; its \
                     clones share one router, so configure it completely first"
                .into(),
        })?;
        change(router)?;
        Ok(self)
    }

    fn configure(self, change: impl FnOnce(&mut AudienceRouter<A, Arc<AuthLayer<A>>>)) -> Self {
        self.try_configure(|router| {
            change(router);
            Ok(())
        })
        .unwrap_or_else(|err| panic!("AudienceLayer: {err}"))
    }

    /// Requests whose URL starts with `url_prefix` get `audience`. For prefixes that come
    /// from configuration, use [`try_route`](Self::try_route).
    ///
    /// # Panics
    ///
    /// When `url_prefix` is not an absolute `http://` or `https://` URL with a host and
    /// without user info, when `audience` is empty, and when the layer was cloned or applied
    /// to a service before this call.
    pub fn route(self, url_prefix: impl Into<String>, audience: impl AsRef<str>) -> Self {
        self.try_route(url_prefix, audience)
            .unwrap_or_else(|err| panic!("AudienceLayer::route: {err}"))
    }

    /// Like [`route`](Self::route), failing with [`Error::InvalidConfiguration`] instead of
    /// panicking.
    pub fn try_route(
        self,
        url_prefix: impl Into<String>,
        audience: impl AsRef<str>,
    ) -> Result<Self, Error> {
        self.try_configure(|router| router.add_route(url_prefix, audience))
    }

    /// What requests with no audience get (default: [`DefaultAudience::Refuse`]).
    ///
    /// # Panics
    ///
    /// When the layer was cloned or applied to a service before this call.
    pub fn default_audience(self, default: DefaultAudience) -> Self {
        self.configure(|router| router.set_default(default))
    }

    /// The most audiences (token lifecycles) this layer creates. Default 32.
    ///
    /// # Panics
    ///
    /// When the layer was cloned or applied to a service before this call.
    pub fn max_audiences(self, max: usize) -> Self {
        self.configure(|router| router.set_max_audiences(max))
    }

    /// The lifecycle policy of every audience's cache.
    ///
    /// # Panics
    ///
    /// When the layer was cloned or applied to a service before this call.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use en_auth_core::{BearerToken, ClientInfo};

    use super::*;

    struct Fixed(ClientInfo);

    #[en_auth_core::async_trait]
    impl Authorizer for Fixed {
        type Token = BearerToken;
        fn client_info(&self) -> &ClientInfo {
            &self.0
        }
        async fn authorize(&self) -> Result<BearerToken, Error> {
            Ok(BearerToken::new("t", Some(Duration::from_secs(60))))
        }
    }

    fn layer() -> AudienceLayer<Fixed> {
        AudienceLayer::new(|_: &Audience| Fixed(ClientInfo::new("id", "secret")))
    }

    fn reason(result: Result<AudienceLayer<Fixed>, Error>) -> String {
        match result {
            Err(err @ Error::InvalidConfiguration { .. }) => err.to_string(),
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        }
    }

    #[test]
    fn prefixes_without_scheme_are_refused() {
        let text = reason(layer().try_route("billing.example.com/", "https://billing"));
        assert!(text.contains("not an absolute URL"), "{text}");
        let text = reason(layer().try_route("localhost:8080/", "https://billing"));
        assert!(text.contains("http:// or https://"), "{text}");
        assert!(
            layer()
                .try_route("https://billing.example.com/", "https://billing")
                .is_ok()
        );
    }

    #[test]
    fn configuring_after_a_clone_or_layering_fails() {
        let original = layer();
        let clone = original.clone();
        let text = reason(original.try_route("https://billing.example.com/", "https://billing"));
        assert!(text.contains("after it was cloned"), "{text}");
        drop(clone);

        let original = layer();
        let _service = original.layer(());
        let text = reason(original.try_route("https://billing.example.com/", "https://billing"));
        assert!(text.contains("after it was cloned"), "{text}");
    }

    #[test]
    #[should_panic(expected = "not an absolute URL")]
    fn route_panics_on_a_prefix_without_scheme() {
        let _ = layer().route("billing.example.com/", "https://billing");
    }

    #[test]
    #[should_panic(expected = "after it was cloned")]
    fn settings_panic_after_a_clone() {
        let original = layer();
        let _clone = original.clone();
        let _ = original.policy(LifecyclePolicy::default());
    }
}

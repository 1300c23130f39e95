//! One client, many APIs: [`AudienceMiddleware`] keeps one token lifecycle per audience.
//!
//! A service that calls several APIs needs a token per API (Auth0's `audience`, RFC 8707's
//! `resource`). This middleware picks the audience of each request — from an [`Audience`]
//! extension on the request, else from the first configured route whose prefix matches the
//! URL, else the default — and sends the request through that audience's own
//! [`AuthMiddleware`], created on first use by a factory you give. The audiences share
//! nothing but what the factory shares (typically the HTTP client inside the authorizer).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::Extensions;
use parking_lot::RwLock;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{AuthMiddleware, Authorizer, Error, LifecyclePolicy, TokenCache};

/// The audience (API identifier) a request needs a token for. Attach it per request:
///
/// ```no_run
/// # async fn demo(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use en_auth_core::Audience;
/// client
///     .get("https://billing.example.com/invoices")
///     .with_extension(Audience::new("https://billing.example.com"))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Audience(Arc<str>);

impl Audience {
    /// The audience `value`, e.g. `https://billing.example.com`.
    pub fn new(value: impl AsRef<str>) -> Self {
        Self(Arc::from(value.as_ref()))
    }

    /// The audience as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request with no [`Audience`] extension and no matching route gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultAudience {
    /// Use this audience.
    Use(Audience),
    /// Fail the request with [`Error::InvalidConfiguration`] before anything is sent.
    Refuse,
}

type Factory<A> = dyn Fn(&Audience) -> A + Send + Sync;

/// A configured URL prefix, compared by parts: scheme, host and port exactly, the path on
/// segment boundaries — so `https://billing.example.com` never matches
/// `https://billing.example.com.evil.net/` or `https://billing.example.com@evil.net/`.
#[derive(Clone, Debug)]
struct RoutePrefix {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl RoutePrefix {
    /// The prefix, if it is an absolute `http`/`https` URL with a host and no user info.
    fn parse(prefix: &str) -> Result<Self, Error> {
        let refuse = |why: &str| Error::InvalidConfiguration {
            setting: "audience route".into(),
            reason: format!(
                "the URL prefix {} {why}; write it as an absolute URL such as \
                 https://api.example.com/",
                crate::str_for_logs(prefix)
            ),
        };
        let url = url::Url::parse(prefix).map_err(|_| refuse("is not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("does not start with http:// or https://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("carries user info"));
        }
        let Some(host) = url.host_str() else {
            return Err(refuse("has no host"));
        };
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            port: url.port_or_known_default(),
            path: url.path().to_owned(),
        })
    }

    fn matches(&self, url: &url::Url) -> bool {
        if url.scheme() != self.scheme
            || url.host_str() != Some(self.host.as_str())
            || url.port_or_known_default() != self.port
        {
            return false;
        }
        let path = url.path();
        path.starts_with(self.path.as_str())
            && (self.path.ends_with('/')
                || path.len() == self.path.len()
                || path.as_bytes().get(self.path.len()) == Some(&b'/'))
    }

    fn len(&self) -> usize {
        self.path.len()
    }
}

/// The routing behind [`AudienceMiddleware`] (and the tower `AudienceLayer`): which audience a
/// request gets, and one adapter `T` per audience — created on first use from a factory,
/// capped in number. Adapters share nothing but what the factory shares.
pub struct AudienceRouter<A: Authorizer, T> {
    make: Box<Factory<A>>,
    adapt: fn(TokenCache<A>) -> T,
    policy: LifecyclePolicy,
    routes: Vec<(RoutePrefix, Audience)>,
    default: DefaultAudience,
    max_audiences: usize,
    adapters: RwLock<HashMap<Audience, T>>,
}

impl<A: Authorizer, T: Clone> AudienceRouter<A, T> {
    /// A router building each audience's authorizer with `make` and its adapter with
    /// `adapt`. Requests without an audience are refused until a default is set.
    pub fn new(
        make: impl Fn(&Audience) -> A + Send + Sync + 'static,
        adapt: fn(TokenCache<A>) -> T,
    ) -> Self {
        Self {
            make: Box::new(make),
            adapt,
            policy: LifecyclePolicy::default(),
            routes: Vec::new(),
            default: DefaultAudience::Refuse,
            max_audiences: 32,
            adapters: RwLock::new(HashMap::new()),
        }
    }

    /// Requests to `url_prefix` get `audience`: same scheme, host and port, and a path
    /// under the prefix's path on a segment boundary (the longest matching prefix wins; an
    /// [`Audience`] extension on the request wins over any route).
    ///
    /// Fails with [`Error::InvalidConfiguration`], adding nothing, when the prefix is not an
    /// absolute `http://` or `https://` URL with a host and without user info (a prefix
    /// without a scheme, such as `api.example.com/`, would never match), or when the
    /// audience is empty.
    pub fn add_route(
        &mut self,
        url_prefix: impl Into<String>,
        audience: impl AsRef<str>,
    ) -> Result<(), Error> {
        let prefix = RoutePrefix::parse(&url_prefix.into())?;
        if audience.as_ref().is_empty() {
            return Err(Error::InvalidConfiguration {
                setting: "audience route".into(),
                reason: "the audience is empty".into(),
            });
        }
        self.routes.push((prefix, Audience::new(audience)));
        self.routes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(())
    }

    /// Sets what requests with no audience get.
    pub fn set_default(&mut self, default: DefaultAudience) {
        self.default = default;
    }

    /// Sets the most audiences this router creates (default 32).
    pub fn set_max_audiences(&mut self, max: usize) {
        self.max_audiences = max;
    }

    /// Sets the lifecycle policy of every audience's cache.
    pub fn set_policy(&mut self, policy: LifecyclePolicy) {
        self.policy = policy;
    }

    /// Whether any URL routes are configured (adapters can skip formatting URLs otherwise).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The adapter of `audience`, if it was created.
    pub fn adapter(&self, audience: &Audience) -> Option<T> {
        self.adapters.read().get(audience).cloned()
    }

    /// The audience of a request to `url` carrying `extension`.
    pub fn audience_for(
        &self,
        url: Option<&url::Url>,
        extension: Option<&Audience>,
    ) -> Result<Audience, Error> {
        if let Some(audience) = extension {
            return Ok(audience.clone());
        }
        if let Some((_, audience)) =
            url.and_then(|url| self.routes.iter().find(|(prefix, _)| prefix.matches(url)))
        {
            return Ok(audience.clone());
        }
        match &self.default {
            DefaultAudience::Use(audience) => Ok(audience.clone()),
            DefaultAudience::Refuse => Err(Error::InvalidConfiguration {
                setting: "audience".into(),
                reason: "the request has no Audience extension and matches no configured route"
                    .into(),
            }),
        }
    }

    /// The adapter of `audience`, created on first use within the cap.
    pub fn adapter_for(&self, audience: &Audience) -> Result<T, Error> {
        if let Some(found) = self.adapters.read().get(audience) {
            return Ok(found.clone());
        }
        let mut adapters = self.adapters.write();
        if let Some(found) = adapters.get(audience) {
            return Ok(found.clone());
        }
        if adapters.len() >= self.max_audiences {
            return Err(Error::InvalidConfiguration {
                setting: "max_audiences".into(),
                reason: format!(
                    "already {} audiences; raise max_audiences if this is intended",
                    adapters.len()
                ),
            });
        }
        let cache = TokenCache::builder((self.make)(audience))
            .policy(self.policy.clone())
            .build();
        let adapter = (self.adapt)(cache);
        adapters.insert(audience.clone(), adapter.clone());
        Ok(adapter)
    }
}

impl<A: Authorizer, T> std::fmt::Debug for AudienceRouter<A, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceRouter")
            .field("routes", &self.routes)
            .field("default", &self.default)
            .field("max_audiences", &self.max_audiences)
            .field("audiences", &self.adapters.read().len())
            .finish()
    }
}

/// The error of a configuring call made after the adapter (`what`) was cloned: its clones
/// share one router, so the change cannot reach them all.
fn configured_after_clone(what: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "audience routing".into(),
        reason: format!(
            "{what} configured after it was cloned or attached to a client; its clones share \
             one router, so configure it completely before cloning it"
        ),
    }
}

/// A `reqwest-middleware` middleware with one token lifecycle per audience.
///
/// ```no_run
/// use en_auth_core::{AudienceMiddleware, Authorizer, DefaultAudience};
/// # fn demo<A: Authorizer>(make: impl Fn(&str) -> A + Send + Sync + 'static) {
/// // `make` builds an authorizer for one audience, e.g.
/// // |aud| ServiceAccountAuthorizer::new(info.clone(), token_url).with_audience(aud)
/// let auth = AudienceMiddleware::new(move |audience| make(audience.as_str()))
///     .route("https://billing.example.com/", "https://billing.example.com")
///     .route("https://orders.example.com/", "https://orders.example.com")
///     .default_audience(DefaultAudience::Refuse)
///     .max_audiences(16);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth)
///     .build();
/// # let _ = client; }
/// ```
///
/// Bounded: at most [`max_audiences`](Self::max_audiences) lifecycles (default 32) are
/// created; a request for one more audience fails with [`Error::InvalidConfiguration`], so a
/// bug that invents audiences cannot grow memory or hammer the provider.
pub struct AudienceMiddleware<A: Authorizer> {
    router: Arc<AudienceRouter<A, AuthMiddleware<A>>>,
}

impl<A: Authorizer> Clone for AudienceMiddleware<A> {
    fn clone(&self) -> Self {
        Self {
            router: Arc::clone(&self.router),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AudienceMiddleware<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceMiddleware")
            .field("router", &self.router)
            .finish()
    }
}

impl<A: Authorizer> AudienceMiddleware<A> {
    /// A middleware that builds each audience's authorizer with `make`. Requests without an
    /// audience are refused until [`default_audience`](Self::default_audience) says otherwise.
    pub fn new(make: impl Fn(&Audience) -> A + Send + Sync + 'static) -> Self {
        Self {
            router: Arc::new(AudienceRouter::new(make, AuthMiddleware::from_cache)),
        }
    }

    /// Applies `change` to the router; fails when the middleware was cloned already (the
    /// clones share the router, and a change only some of them saw would send one API's
    /// token to another).
    fn try_configure(
        mut self,
        change: impl FnOnce(&mut AudienceRouter<A, AuthMiddleware<A>>) -> Result<(), Error>,
    ) -> Result<Self, Error> {
        let router = Arc::get_mut(&mut self.router)
            .ok_or_else(|| configured_after_clone("AudienceMiddleware"))?;
        change(router)?;
        Ok(self)
    }

    fn configure(self, change: impl FnOnce(&mut AudienceRouter<A, AuthMiddleware<A>>)) -> Self {
        self.try_configure(|router| {
            change(router);
            Ok(())
        })
        .unwrap_or_else(|err| panic!("AudienceMiddleware: {err}"))
    }

    /// Requests whose URL starts with `url_prefix` get `audience` (the longest matching
    /// prefix wins; an [`Audience`] extension on the request wins over any route). For
    /// prefixes that come from configuration, use [`try_route`](Self::try_route).
    ///
    /// # Panics
    ///
    /// When `url_prefix` is not an absolute `http://` or `https://` URL with a host and
    /// without user info, when `audience` is empty, and when the middleware was cloned (or
    /// attached to a client) before this call: configure it completely first.
    pub fn route(self, url_prefix: impl Into<String>, audience: impl AsRef<str>) -> Self {
        self.try_route(url_prefix, audience)
            .unwrap_or_else(|err| panic!("AudienceMiddleware::route: {err}"))
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
    /// When the middleware was cloned (or attached to a client) before this call.
    pub fn default_audience(self, default: DefaultAudience) -> Self {
        self.configure(|router| router.set_default(default))
    }

    /// The most audiences (token lifecycles) this middleware creates. Default 32.
    ///
    /// # Panics
    ///
    /// When the middleware was cloned (or attached to a client) before this call.
    pub fn max_audiences(self, max: usize) -> Self {
        self.configure(|router| router.set_max_audiences(max))
    }

    /// The lifecycle policy of every audience's cache.
    ///
    /// # Panics
    ///
    /// When the middleware was cloned (or attached to a client) before this call.
    pub fn policy(self, policy: LifecyclePolicy) -> Self {
        self.configure(|router| router.set_policy(policy))
    }

    /// The lifecycle of `audience`, if it was created.
    pub fn cache(&self, audience: &Audience) -> Option<TokenCache<A>> {
        self.router.adapter(audience).map(|m| m.cache().clone())
    }
}

#[async_trait]
impl<A: Authorizer> Middleware for AudienceMiddleware<A> {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let middleware = self
            .router
            .audience_for(Some(request.url()), extensions.get::<Audience>())
            .and_then(|audience| self.router.adapter_for(&audience))
            .map_err(reqwest_middleware::Error::middleware)?;
        middleware.handle(request, extensions, next).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{BearerToken, ClientInfo};

    struct Fixed(ClientInfo);

    #[async_trait]
    impl Authorizer for Fixed {
        type Token = BearerToken;
        fn client_info(&self) -> &ClientInfo {
            &self.0
        }
        async fn authorize(&self) -> Result<BearerToken, Error> {
            Ok(BearerToken::new("t", Some(Duration::from_secs(60))))
        }
    }

    fn middleware() -> AudienceMiddleware<Fixed> {
        AudienceMiddleware::new(|_: &Audience| Fixed(ClientInfo::new("id", "secret")))
    }

    fn is_invalid(result: Result<AudienceMiddleware<Fixed>, Error>, mentions: &str) {
        match result {
            Err(err @ Error::InvalidConfiguration { .. }) => {
                assert!(err.to_string().contains(mentions), "{err}");
            }
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        }
    }

    #[test]
    fn prefixes_without_scheme_or_host_are_refused() {
        is_invalid(
            middleware().try_route("billing.example.com/", "https://billing"),
            "not an absolute URL",
        );
        is_invalid(
            middleware().try_route("localhost:8080/", "https://billing"),
            "http:// or https://",
        );
        is_invalid(
            middleware().try_route("ftp://billing.example.com/", "https://billing"),
            "http:// or https://",
        );
        is_invalid(
            middleware().try_route("https://user:pw@billing.example.com/", "https://billing"),
            "user info",
        );
        is_invalid(
            middleware().try_route("https://billing.example.com/", ""),
            "audience is empty",
        );
        let err = middleware()
            .try_route("https://user:pw@billing.example.com/", "https://billing")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn a_valid_route_is_kept() {
        let auth = middleware()
            .try_route("https://billing.example.com/v1", "https://billing")
            .unwrap();
        let url = url::Url::parse("https://billing.example.com/v1/invoices").unwrap();
        assert_eq!(
            auth.router.audience_for(Some(&url), None).unwrap(),
            Audience::new("https://billing")
        );
    }

    #[test]
    #[should_panic(expected = "not an absolute URL")]
    fn route_panics_on_a_prefix_without_scheme() {
        let _ = middleware().route("billing.example.com/", "https://billing");
    }

    #[test]
    fn configuring_after_a_clone_fails_instead_of_dropping_the_route() {
        let auth = middleware();
        let clone = auth.clone();
        is_invalid(
            auth.try_route("https://billing.example.com/", "https://billing"),
            "after it was cloned",
        );
        drop(clone);
    }

    #[test]
    #[should_panic(expected = "after it was cloned")]
    fn route_panics_after_a_clone() {
        let auth = middleware();
        let _clone = auth.clone();
        let _ = auth.route("https://billing.example.com/", "https://billing");
    }

    #[test]
    #[should_panic(expected = "after it was cloned")]
    fn other_settings_panic_after_a_clone() {
        let auth = middleware();
        let _clone = auth.clone();
        let _ = auth.max_audiences(4);
    }

    /// Attached to a client, the middleware is shared: configuring the original then fails.
    #[test]
    #[should_panic(expected = "after it was cloned")]
    fn route_panics_after_the_middleware_was_attached() {
        let auth = middleware();
        let _client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .build();
        let _ = auth.default_audience(DefaultAudience::Refuse);
    }
}

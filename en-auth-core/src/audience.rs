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
    inner: Arc<Shared<A>>,
}

struct Shared<A: Authorizer> {
    make: Box<Factory<A>>,
    policy: LifecyclePolicy,
    routes: Vec<(String, Audience)>,
    default: DefaultAudience,
    max_audiences: usize,
    caches: RwLock<HashMap<Audience, AuthMiddleware<A>>>,
}

impl<A: Authorizer> Clone for AudienceMiddleware<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AudienceMiddleware<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceMiddleware")
            .field("routes", &self.inner.routes)
            .field("default", &self.inner.default)
            .field("audiences", &self.inner.caches.read().len())
            .finish()
    }
}

impl<A: Authorizer> AudienceMiddleware<A> {
    /// A middleware that builds each audience's authorizer with `make`. Requests without an
    /// audience are refused until [`default_audience`](Self::default_audience) says otherwise.
    pub fn new(make: impl Fn(&Audience) -> A + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Shared {
                make: Box::new(make),
                policy: LifecyclePolicy::default(),
                routes: Vec::new(),
                default: DefaultAudience::Refuse,
                max_audiences: 32,
                caches: RwLock::new(HashMap::new()),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut Shared<A>)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(shared) => change(shared),
            None => tracing::warn!(
                "AudienceMiddleware configured after it was cloned; the change is ignored"
            ),
        }
        self
    }

    /// Requests whose URL starts with `url_prefix` get `audience` (the longest matching
    /// prefix wins; an [`Audience`] extension on the request wins over any route).
    pub fn route(self, url_prefix: impl Into<String>, audience: impl AsRef<str>) -> Self {
        let route = (url_prefix.into(), Audience::new(audience));
        self.configure(|shared| {
            shared.routes.push(route);
            shared
                .routes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        })
    }

    /// What requests with no audience get (default: [`DefaultAudience::Refuse`]).
    pub fn default_audience(self, default: DefaultAudience) -> Self {
        self.configure(|shared| shared.default = default)
    }

    /// The most audiences (token lifecycles) this middleware creates. Default 32.
    pub fn max_audiences(self, max: usize) -> Self {
        self.configure(|shared| shared.max_audiences = max)
    }

    /// The lifecycle policy of every audience's cache.
    pub fn policy(self, policy: LifecyclePolicy) -> Self {
        self.configure(|shared| shared.policy = policy)
    }

    /// The lifecycle of `audience`, if it was created.
    pub fn cache(&self, audience: &Audience) -> Option<TokenCache<A>> {
        self.inner
            .caches
            .read()
            .get(audience)
            .map(|m| m.cache().clone())
    }

    /// The audience a request to `url` with `extensions` gets.
    fn audience_for(&self, url: &str, extensions: &Extensions) -> Result<Audience, Error> {
        if let Some(audience) = extensions.get::<Audience>() {
            return Ok(audience.clone());
        }
        if let Some((_, audience)) = self
            .inner
            .routes
            .iter()
            .find(|(prefix, _)| url.starts_with(prefix.as_str()))
        {
            return Ok(audience.clone());
        }
        match &self.inner.default {
            DefaultAudience::Use(audience) => Ok(audience.clone()),
            DefaultAudience::Refuse => Err(Error::InvalidConfiguration {
                setting: "audience".into(),
                reason: "the request has no Audience extension and matches no configured route"
                    .into(),
            }),
        }
    }

    /// The middleware of `audience`, created on first use within the cap.
    fn middleware_for(&self, audience: &Audience) -> Result<AuthMiddleware<A>, Error> {
        if let Some(found) = self.inner.caches.read().get(audience) {
            return Ok(found.clone());
        }
        let mut caches = self.inner.caches.write();
        if let Some(found) = caches.get(audience) {
            return Ok(found.clone());
        }
        if caches.len() >= self.inner.max_audiences {
            return Err(Error::InvalidConfiguration {
                setting: "max_audiences".into(),
                reason: format!(
                    "already {} audiences; raise AudienceMiddleware::max_audiences if this is intended",
                    caches.len()
                ),
            });
        }
        let authorizer = (self.inner.make)(audience);
        let middleware = AuthMiddleware::with_policy(authorizer, self.inner.policy.clone());
        caches.insert(audience.clone(), middleware.clone());
        Ok(middleware)
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
            .audience_for(request.url().as_str(), extensions)
            .and_then(|audience| self.middleware_for(&audience))
            .map_err(reqwest_middleware::Error::middleware)?;
        middleware.handle(request, extensions, next).await
    }
}

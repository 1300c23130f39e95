//! [`AuthMiddleware`]: the `reqwest-middleware` adapter over [`TokenCache`].
//!
//! It holds no token logic of its own: it asks the cache for a token, sets the headers, and
//! on a 401 reports the rejected token and replays the request once with a new one.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Extensions, HeaderName, HeaderValue, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use secrecy::ExposeSecret;

use crate::{Authorizer, CachedToken, Error, LifecyclePolicy, TokenCache, TokenStats};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Authorizes every request of a `reqwest-middleware` client.
///
/// Sets `Authorization: Bearer <token>` (replacing any the request had) and, when the client
/// has an API key, `X-Api-Key`. On a 401 the token is dropped (if still current), a new one is
/// obtained, and the request is sent once more — when its body can be cloned; a streaming body
/// is not replayed and the 401 is returned. Clones share one token cache.
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, Authorizer};
/// # async fn demo(my_authorizer: impl Authorizer) -> Result<(), Box<dyn std::error::Error>> {
/// let auth = AuthMiddleware::new(my_authorizer);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
/// let response = client.get("https://api.example.com/orders").send().await?;
/// # let _ = response; Ok(()) }
/// ```
pub struct AuthMiddleware<A: Authorizer> {
    cache: TokenCache<A>,
    api_key: Option<HeaderValue>,
    replay_on_unauthorized: bool,
}

impl<A: Authorizer> Clone for AuthMiddleware<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            api_key: self.api_key.clone(),
            replay_on_unauthorized: self.replay_on_unauthorized,
        }
    }
}

impl<A: Authorizer> std::fmt::Debug for AuthMiddleware<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("cache", &self.cache)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("replay_on_unauthorized", &self.replay_on_unauthorized)
            .finish()
    }
}

impl<A: Authorizer> AuthMiddleware<A> {
    /// Middleware with its own token cache and the default policy.
    pub fn new(authorizer: A) -> Self {
        Self::from_cache(TokenCache::new(authorizer))
    }

    /// Middleware with its own token cache and the given policy.
    pub fn with_policy(authorizer: A, policy: LifecyclePolicy) -> Self {
        Self::from_cache(TokenCache::builder(authorizer).policy(policy).build())
    }

    /// Middleware over an existing cache (e.g. one built with a shared store).
    pub fn from_cache(cache: TokenCache<A>) -> Self {
        let api_key = cache
            .authorizer()
            .client_info()
            .api_key()
            .and_then(|key| HeaderValue::from_str(key.expose_secret()).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Self {
            cache,
            api_key,
            replay_on_unauthorized: true,
        }
    }

    /// Whether to replay a request once after a 401 (default `true`). Turning it off saves
    /// cloning each request before it is sent.
    pub fn replay_on_unauthorized(mut self, replay: bool) -> Self {
        self.replay_on_unauthorized = replay;
        self
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
        let token = match self.cache.cached() {
            Some(token) => token,
            None => self.fresh_token().await?,
        };
        let replay = if self.replay_on_unauthorized {
            replayable_copy(&request)
        } else {
            None
        };
        self.authorize_request(&mut request, &token);
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }

        self.cache.invalidate(&token).await;
        let Some(mut replay) = replay else {
            tracing::debug!("401 not replayed: the request body cannot be cloned");
            return Ok(response);
        };
        let new_token = self.fresh_token().await?;
        if new_token.same_token(&token) {
            tracing::debug!("401 not replayed: the provider returned the same token");
            return Ok(response);
        }
        self.authorize_request(&mut replay, &new_token);
        self.cache.record_replay();
        tracing::debug!("replaying request after 401 with a new token");
        drop(response);
        next.run(replay, extensions).await
    }
}

/// A copy of `request` to replay after a 401, or `None` when its body cannot be cloned (a
/// stream). Body-less requests — the common case — are copied field by field, which is what
/// `Request::try_clone` does, minus the per-request config map it allocates even when no
/// timeout is set. (In reqwest 0.13 the timeout is the only per-request config; the test
/// `a_replayed_request_keeps_its_method_headers_and_timeout` guards this.)
fn replayable_copy(request: &Request) -> Option<Request> {
    if request.body().is_some() {
        return request.try_clone();
    }
    let mut copy = Request::new(request.method().clone(), request.url().clone());
    *copy.headers_mut() = request.headers().clone();
    *copy.version_mut() = request.version();
    if let Some(timeout) = request.timeout() {
        *copy.timeout_mut() = Some(*timeout);
    }
    Some(copy)
}

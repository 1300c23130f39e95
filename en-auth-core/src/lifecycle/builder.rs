//! [`TokenCacheBuilder`]: policy, shared store and background refresh of a [`TokenCache`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::cache::{Driven, Inner, TokenCache};
use super::fleet::Fleet;
use super::policy::LifecyclePolicy;
use super::state::TokenState;
use super::stats::Counters;
use crate::{Authorizer, Error, RetryPolicy, TokenStore};

/// Configures a [`TokenCache`]: policy, shared store, background refresh.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use en_auth_core::{Authorizer, MemoryTokenStore, TokenCache};
/// # async fn demo(authorizer: impl Authorizer<Token = en_auth_core::BearerToken>) -> Result<(), en_auth_core::Error> {
/// let cache = TokenCache::builder(authorizer)
///     .store(Arc::new(MemoryTokenStore::new()))
///     .background_refresh(true)
///     .try_build()?;
/// cache.warm_up().await?; // from here on, no request waits on the provider
/// # Ok(()) }
/// ```
pub struct TokenCacheBuilder<A: Authorizer> {
    authorizer: A,
    policy: LifecyclePolicy,
    fleet: Option<Fleet<A::Token>>,
}

impl<A: Authorizer> TokenCacheBuilder<A> {
    /// Replaces the whole policy.
    pub fn policy(mut self, policy: LifecyclePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Refresh this long before expiry (see [`LifecyclePolicy::expiration_gap`]).
    pub fn expiration_gap(mut self, gap: Duration) -> Self {
        self.policy.expiration_gap = Some(gap);
        self
    }

    /// Lifetime of tokens without an expiry (see [`LifecyclePolicy::default_lifetime`]).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.policy.default_lifetime = lifetime;
        self
    }

    /// Retry policy for transient failures.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.policy.retry = retry;
        self
    }

    /// Refresh ahead of expiry in a background task (see
    /// [`LifecyclePolicy::background_refresh`]). The task starts with the first
    /// [`TokenCache::get`] or [`TokenCache::warm_up`].
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.policy.background_refresh = enabled;
        self
    }

    /// Shares tokens through `store`, under the authorizer's [`Authorizer::cache_key`].
    pub fn store(mut self, store: Arc<dyn TokenStore>) -> Self
    where
        A::Token: Serialize + DeserializeOwned,
    {
        self.fleet = Some(Fleet::new(
            store,
            self.authorizer.cache_key(),
            serde_json::to_string::<A::Token>,
            |s| serde_json::from_str::<A::Token>(s),
        ));
        self
    }

    /// The cache, or [`Error::InvalidConfiguration`] when the policy cannot work (a default
    /// lifetime under [`MIN_DEFAULT_LIFETIME`](crate::MIN_DEFAULT_LIFETIME), a failure backoff under
    /// [`MIN_FAILURE_BACKOFF`](crate::MIN_FAILURE_BACKOFF)).
    pub fn try_build(self) -> Result<TokenCache<A>, Error> {
        if let Some(reason) = self.policy.problem() {
            return Err(Error::InvalidConfiguration {
                setting: "LifecyclePolicy".into(),
                reason,
            });
        }
        Ok(self.build())
    }

    /// The cache. A policy that [`try_build`](Self::try_build) would refuse is corrected
    /// (a default lifetime raised to [`MIN_DEFAULT_LIFETIME`](crate::MIN_DEFAULT_LIFETIME), failure backoffs to
    /// [`MIN_FAILURE_BACKOFF`](crate::MIN_FAILURE_BACKOFF)) and a warning is logged.
    pub fn build(mut self) -> TokenCache<A> {
        if let Some(reason) = self.policy.problem() {
            tracing::warn!(%reason, "token cache policy corrected");
            self.policy = self.policy.corrected();
        }
        let (alive_tx, alive_rx) = watch::channel(());
        TokenCache::from_inner(Arc::new(Inner {
            authorizer: self.authorizer,
            current: RwLock::new(None),
            state: Mutex::new(Driven::new(TokenState::new(self.policy.clone()))),
            quiet_until: AtomicU64::new(0),
            clock_base: tokio::time::Instant::now(),
            policy: self.policy,
            fleet: self.fleet,
            counters: Counters::default(),
            background_started: AtomicBool::new(false),
            _alive: alive_tx,
            alive: alive_rx,
        }))
    }
}

impl<A: Authorizer> TokenCache<A> {
    /// Starts configuring a cache.
    pub fn builder(authorizer: A) -> TokenCacheBuilder<A> {
        TokenCacheBuilder {
            authorizer,
            policy: LifecyclePolicy::default(),
            fleet: None,
        }
    }
}

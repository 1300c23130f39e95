//! The token lifecycle: when a token is fetched, reused, refreshed and dropped.
//!
//! [`TokenCache`] owns these rules; the reqwest middleware (and any other adapter) only asks
//! it for a token and reports a 401. The rules:
//!
//! 1. **Cheap hot path.** A request reads the cached token under a short `parking_lot` read
//!    lock, clones an `Arc` and checks expiry against the clock. No lock is held across I/O,
//!    nothing is allocated or formatted: the `Authorization` header value is built once, when
//!    the token arrives.
//! 2. **Single flight.** However many tasks find the token missing or stale at once, one of
//!    them calls `authorize`/`refresh`; the others wait on an async mutex and, once inside,
//!    re-check the cache first — the token they need is usually there by then.
//! 3. **Refresh ahead.** A token counts as stale [`EXPIRATION_GAP`](crate::EXPIRATION_GAP)
//!    before it expires (per-cache override: [`LifecyclePolicy::expiration_gap`]), the gap
//!    clamped to half the token's lifetime so short tokens are still used.
//! 4. **Default lifetime.** A token without an expiry lives
//!    [`LifecyclePolicy::default_lifetime`] — never forever, never zero.
//! 5. **Failures are not cached.** A failed fetch returns its error to the callers waiting on
//!    it; the next call tries again. Transient failures are retried first (see
//!    [`RetryPolicy`]).
//! 6. **Serve while valid.** When a refresh fails but the current token has not actually
//!    expired, that token keeps being served, and the next refresh attempt waits
//!    [`LifecyclePolicy::failure_cooldown`] so a struggling provider is not hammered.
//! 7. **Rejection.** When an API rejects a token (401), [`TokenCache::invalidate`] drops it
//!    only if it is still the cached one, so a burst of 401s for one token causes one fetch.
//! 8. **Sharing.** With a [`TokenStore`], a missing or stale token is first looked up in the
//!    store, and the store's lock makes one holder fetch while the others wait for its result.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderValue;
use parking_lot::RwLock;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::token::now_millis;
use crate::{
    AccessToken, Authorizer, CacheKey, Error, RetryPolicy, TokenStore, expires_within_now,
};

/// The tunable parts of the lifecycle, with defaults that suit most services.
///
/// ```
/// use std::time::Duration;
/// use en_auth_core::LifecyclePolicy;
/// let policy = LifecyclePolicy::default()
///     .with_expiration_gap(Duration::from_secs(120))
///     .with_default_lifetime(Duration::from_secs(600));
/// assert_eq!(policy.default_lifetime, Duration::from_secs(600));
/// ```
#[derive(Clone, Debug)]
pub struct LifecyclePolicy {
    /// Refresh this long before expiry instead of asking [`Authorizer::expired`]. `None`
    /// (default) lets the authorizer decide, which by default means
    /// [`EXPIRATION_GAP`](crate::EXPIRATION_GAP).
    pub expiration_gap: Option<Duration>,
    /// Lifetime of a token whose provider gave no expiry. Default 300 s: short enough that a
    /// revoked token is replaced soon, long enough not to refetch on every request.
    pub default_lifetime: Duration,
    /// Retries of transient `authorize`/`refresh` failures.
    pub retry: RetryPolicy,
    /// After a failed refresh while a still-valid token is served, wait this long before the
    /// next refresh attempt. Default 1 s.
    pub failure_cooldown: Duration,
    /// With a shared store: how long to wait for another holder of the store lock to publish
    /// a token before fetching anyway. Default 10 s.
    pub store_lock_wait: Duration,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            expiration_gap: None,
            default_lifetime: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            failure_cooldown: Duration::from_secs(1),
            store_lock_wait: Duration::from_secs(10),
        }
    }
}

impl LifecyclePolicy {
    /// Sets [`expiration_gap`](Self::expiration_gap).
    pub fn with_expiration_gap(mut self, gap: Duration) -> Self {
        self.expiration_gap = Some(gap);
        self
    }

    /// Sets [`default_lifetime`](Self::default_lifetime).
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// Sets [`retry`](Self::retry).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`failure_cooldown`](Self::failure_cooldown).
    pub fn with_failure_cooldown(mut self, cooldown: Duration) -> Self {
        self.failure_cooldown = cooldown;
        self
    }
}

/// A token as the cache holds it: the token, its ready-made `Authorization` value, and when
/// it stops being usable.
pub struct CachedToken<T> {
    token: T,
    authorization: HeaderValue,
    /// Hard expiry: the token's own, or obtained-at + default lifetime.
    expires_at: DateTime<Utc>,
    /// For tokens without an expiry: when to refresh (default lifetime minus the gap), in
    /// milliseconds since the epoch, so the per-request check is an integer comparison.
    fallback_refresh_at_ms: Option<i64>,
    rejected: AtomicBool,
}

impl<T: AccessToken> CachedToken<T> {
    fn new(token: T, policy: &LifecyclePolicy) -> Result<Self, Error> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", token.access_token()))
            .map_err(|_| Error::InvalidResponse {
            status: None,
            reason: "the access token contains characters not allowed in an HTTP header".into(),
        })?;
        authorization.set_sensitive(true);
        let now = Utc::now();
        let (expires_at, fallback_refresh_at_ms) = match token.expires_at() {
            Some(at) => (at, None),
            None => {
                let lifetime = chrono::Duration::from_std(policy.default_lifetime)
                    .unwrap_or(chrono::Duration::days(1));
                let gap = chrono::Duration::from_std(
                    policy.expiration_gap.unwrap_or(crate::EXPIRATION_GAP),
                )
                .unwrap_or_default()
                .min(lifetime / 2);
                (
                    now + lifetime,
                    Some((now + lifetime - gap).timestamp_millis()),
                )
            }
        };
        Ok(Self {
            token,
            authorization,
            expires_at,
            fallback_refresh_at_ms,
            rejected: AtomicBool::new(false),
        })
    }

    /// The token.
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The `Authorization` header value, `Bearer <token>`, marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// When the token stops being usable (its own expiry or the default lifetime).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Whether the token may still be sent at `now`: not expired and not rejected by an API.
    fn valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at && !self.rejected.load(Ordering::Relaxed)
    }

    /// Whether `other` carries the same access token.
    pub fn same_token(&self, other: &Self) -> bool {
        self.token.access_token() == other.token.access_token()
    }
}

impl<T> fmt::Debug for CachedToken<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("rejected", &self.rejected.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counters of what the lifecycle did, for logs, tests and dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Calls of [`Authorizer::authorize`] (each retry counts).
    pub authorizations: u64,
    /// Calls of [`Authorizer::refresh`] (each retry counts).
    pub refreshes: u64,
    /// Fetches that failed after retries.
    pub failures: u64,
    /// Tokens taken from the shared store instead of the provider.
    pub store_hits: u64,
    /// Tokens dropped because an API rejected them.
    pub invalidations: u64,
    /// Requests replayed with a new token after a 401 (counted by the middleware).
    pub replays: u64,
}

#[derive(Default)]
struct Counters {
    authorizations: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    store_hits: AtomicU64,
    invalidations: AtomicU64,
    replays: AtomicU64,
}

struct StoreBinding<T> {
    store: Arc<dyn TokenStore>,
    key: CacheKey,
    encode: fn(&T) -> serde_json::Result<String>,
    decode: fn(&str) -> serde_json::Result<T>,
}

struct Inner<A: Authorizer> {
    authorizer: A,
    policy: LifecyclePolicy,
    current: RwLock<Option<Arc<CachedToken<A::Token>>>>,
    flight: tokio::sync::Mutex<()>,
    /// Unix millis before which no new refresh is attempted while a valid token is served.
    cooldown_until_ms: AtomicI64,
    store: Option<StoreBinding<A::Token>>,
    counters: Counters,
}

/// Caches one authorizer's token and keeps it fresh, following the rules at the top of this
/// module. Clones share the cache.
///
/// ```no_run
/// # use en_auth_core::{Authorizer, TokenCache};
/// # async fn demo(authorizer: impl Authorizer) -> Result<(), en_auth_core::Error> {
/// let cache = TokenCache::new(authorizer);
/// let token = cache.get().await?;          // fetched once, then served from memory
/// let header = token.authorization();      // "Bearer …", ready to send
/// # let _ = header; Ok(()) }
/// ```
pub struct TokenCache<A: Authorizer> {
    inner: Arc<Inner<A>>,
}

impl<A: Authorizer> Clone for TokenCache<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Authorizer> fmt::Debug for TokenCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field(
                "client_id",
                &self.inner.authorizer.client_info().client_id(),
            )
            .field("policy", &self.inner.policy)
            .field("current", &*self.inner.current.read())
            .finish()
    }
}

/// Configures a [`TokenCache`]: policy and shared store.
pub struct TokenCacheBuilder<A: Authorizer> {
    authorizer: A,
    policy: LifecyclePolicy,
    store: Option<StoreBinding<A::Token>>,
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

    /// Shares tokens through `store`, under the authorizer's [`Authorizer::cache_key`].
    pub fn store(mut self, store: Arc<dyn TokenStore>) -> Self
    where
        A::Token: Serialize + DeserializeOwned,
    {
        self.store = Some(StoreBinding {
            key: self.authorizer.cache_key(),
            store,
            encode: serde_json::to_string::<A::Token>,
            decode: |s| serde_json::from_str::<A::Token>(s),
        });
        self
    }

    /// The cache.
    pub fn build(self) -> TokenCache<A> {
        TokenCache {
            inner: Arc::new(Inner {
                authorizer: self.authorizer,
                policy: self.policy,
                current: RwLock::new(None),
                flight: tokio::sync::Mutex::new(()),
                cooldown_until_ms: AtomicI64::new(i64::MIN),
                store: self.store,
                counters: Counters::default(),
            }),
        }
    }
}

impl<A: Authorizer> TokenCache<A> {
    /// A cache with the default [`LifecyclePolicy`] and no shared store.
    pub fn new(authorizer: A) -> Self {
        Self::builder(authorizer).build()
    }

    /// Starts configuring a cache.
    pub fn builder(authorizer: A) -> TokenCacheBuilder<A> {
        TokenCacheBuilder {
            authorizer,
            policy: LifecyclePolicy::default(),
            store: None,
        }
    }

    /// The authorizer behind this cache.
    pub fn authorizer(&self) -> &A {
        &self.inner.authorizer
    }

    /// The policy in force.
    pub fn policy(&self) -> &LifecyclePolicy {
        &self.inner.policy
    }

    /// What the lifecycle has done so far.
    pub fn stats(&self) -> TokenStats {
        let c = &self.inner.counters;
        TokenStats {
            authorizations: c.authorizations.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            store_hits: c.store_hits.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            replays: c.replays.load(Ordering::Relaxed),
        }
    }

    /// Counts a request replayed after a 401 (for adapters).
    pub fn record_replay(&self) {
        self.inner.counters.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// A usable token: the cached one if fresh, otherwise one fetched (once, for all callers).
    pub async fn get(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        match self.cached() {
            Some(token) => Ok(token),
            None => self.obtain().await,
        }
    }

    /// The access token string, fetching one if needed (en_auth's `access_token`).
    pub async fn access_token(&self) -> Result<String, Error> {
        Ok(self.get().await?.token().access_token().to_owned())
    }

    /// Drops `rejected` (a token an API refused) if it is still the cached token, here and in
    /// the shared store. A token already replaced is left alone.
    pub async fn invalidate(&self, rejected: &Arc<CachedToken<A::Token>>) {
        let is_current = self
            .inner
            .current
            .read()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, rejected));
        if !is_current || rejected.rejected.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner
            .counters
            .invalidations
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            client_id = self.client_id(),
            "token rejected by the API; dropped"
        );
        if let Some(binding) = &self.inner.store {
            if let Ok(encoded) = (binding.encode)(rejected.token()) {
                let encoded = SecretString::from(encoded);
                if let Err(err) = binding.store.remove_if(&binding.key, &encoded).await {
                    tracing::warn!(error = %err, "could not remove a rejected token from the store");
                }
            }
        }
    }

    fn client_id(&self) -> &str {
        self.inner.authorizer.client_info().client_id()
    }

    /// Whether `entry` must be replaced now (rejected, or within the refresh gap). Reads the
    /// clock once.
    fn is_stale(&self, entry: &CachedToken<A::Token>) -> bool {
        if entry.rejected.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(refresh_at_ms) = entry.fallback_refresh_at_ms {
            return now_millis() >= refresh_at_ms;
        }
        match self.inner.policy.expiration_gap {
            Some(gap) => expires_within_now(&entry.token, gap),
            None => self.inner.authorizer.expired(&entry.token),
        }
    }

    /// The cached token if it may be used now — fresh, or stale but still valid during a
    /// refresh cooldown — without waiting or fetching: the hot path.
    pub fn cached(&self) -> Option<Arc<CachedToken<A::Token>>> {
        let current = self.inner.current.read();
        let entry = current.as_ref()?;
        if !self.is_stale(entry) {
            return Some(Arc::clone(entry));
        }
        let now = Utc::now();
        let cooling_down =
            now.timestamp_millis() < self.inner.cooldown_until_ms.load(Ordering::Relaxed);
        (cooling_down && entry.valid_at(now)).then(|| Arc::clone(entry))
    }

    /// Slow path: one caller at a time fetches; the others find its result on re-check.
    async fn obtain(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        let _flight = self.inner.flight.lock().await;
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let previous = self.inner.current.read().clone();
        match self.fetch(previous.as_deref()).await {
            Ok(entry) => {
                let entry = Arc::new(entry);
                *self.inner.current.write() = Some(Arc::clone(&entry));
                self.inner
                    .cooldown_until_ms
                    .store(i64::MIN, Ordering::Relaxed);
                Ok(entry)
            }
            Err(err) => {
                self.inner.counters.failures.fetch_add(1, Ordering::Relaxed);
                let now = Utc::now();
                if let Some(previous) = previous.filter(|p| p.valid_at(now)) {
                    let cooldown = chrono::Duration::from_std(self.inner.policy.failure_cooldown)
                        .unwrap_or_default();
                    self.inner
                        .cooldown_until_ms
                        .store((now + cooldown).timestamp_millis(), Ordering::Relaxed);
                    tracing::warn!(client_id = self.client_id(), error = %err, expires_at = %previous.expires_at,
                        "token refresh failed; serving the current token until it expires");
                    return Ok(previous);
                }
                tracing::warn!(client_id = self.client_id(), error = %err, "could not obtain a token");
                Err(err)
            }
        }
    }

    /// Gets a new token: from the shared store if another holder published one, else from the
    /// provider (refresh when there is a previous token, authorize otherwise), with retries.
    async fn fetch(
        &self,
        previous: Option<&CachedToken<A::Token>>,
    ) -> Result<CachedToken<A::Token>, Error> {
        let Some(binding) = &self.inner.store else {
            return self.fetch_from_provider(previous).await;
        };
        if let Some(entry) = self.load_from_store(binding, previous).await {
            return Ok(entry);
        }
        let lock_ttl = self.inner.policy.store_lock_wait;
        let lock = match binding.store.try_lock(&binding.key, lock_ttl).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                // Another holder is fetching: wait for it to publish, then fetch ourselves.
                let deadline = tokio::time::Instant::now() + lock_ttl;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(entry) = self.load_from_store(binding, previous).await {
                        return Ok(entry);
                    }
                }
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "token store lock failed; fetching without it");
                None
            }
        };
        // Re-check after taking the lock: the previous holder may have just published.
        let result = match self.load_from_store(binding, previous).await {
            Some(entry) => Ok(entry),
            None => self.fetch_from_provider(previous).await,
        };
        if let Ok(entry) = &result {
            self.save_to_store(binding, entry).await;
        }
        if let Some(lock) = lock {
            if let Err(err) = binding.store.unlock(&binding.key, lock).await {
                tracing::warn!(error = %err, "could not release the token store lock");
            }
        }
        result
    }

    async fn fetch_from_provider(
        &self,
        previous: Option<&CachedToken<A::Token>>,
    ) -> Result<CachedToken<A::Token>, Error> {
        let authorizer = &self.inner.authorizer;
        let counters = &self.inner.counters;
        let started = std::time::Instant::now();
        let token = self
            .inner
            .policy
            .retry
            .run(|| async {
                match previous {
                    Some(previous) => {
                        counters.refreshes.fetch_add(1, Ordering::Relaxed);
                        authorizer.refresh(&previous.token).await
                    }
                    None => {
                        counters.authorizations.fetch_add(1, Ordering::Relaxed);
                        authorizer.authorize().await
                    }
                }
            })
            .await?;
        let entry = CachedToken::new(token, &self.inner.policy)?;
        tracing::debug!(
            client_id = self.client_id(),
            refreshed = previous.is_some(),
            expires_at = %entry.expires_at,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "token obtained"
        );
        Ok(entry)
    }

    async fn load_from_store(
        &self,
        binding: &StoreBinding<A::Token>,
        previous: Option<&CachedToken<A::Token>>,
    ) -> Option<CachedToken<A::Token>> {
        let encoded = match binding.store.load(&binding.key).await {
            Ok(found) => found?,
            Err(err) => {
                tracing::warn!(error = %err, "token store read failed");
                return None;
            }
        };
        let token = match (binding.decode)(encoded.expose_secret()) {
            Ok(token) => token,
            Err(_) => {
                tracing::warn!(key = %binding.key, "token store holds an unreadable value; ignoring it");
                return None;
            }
        };
        if previous.is_some_and(|p| p.token.access_token() == token.access_token()) {
            return None; // the one we are replacing
        }
        let entry = CachedToken::new(token, &self.inner.policy).ok()?;
        if self.is_stale(&entry) {
            return None;
        }
        self.inner
            .counters
            .store_hits
            .fetch_add(1, Ordering::Relaxed);
        Some(entry)
    }

    async fn save_to_store(&self, binding: &StoreBinding<A::Token>, entry: &CachedToken<A::Token>) {
        let Ok(ttl) = (entry.expires_at - Utc::now()).to_std() else {
            return;
        };
        let encoded = match (binding.encode)(&entry.token) {
            Ok(encoded) => SecretString::from(encoded),
            Err(_) => return,
        };
        if let Err(err) = binding.store.save(&binding.key, &encoded, ttl).await {
            tracing::warn!(error = %err, "token store write failed");
        }
    }
}

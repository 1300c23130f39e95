//! [`LifecyclePolicy`]: the tunable numbers of the lifecycle, with defaults that suit most
//! services. What each number does is in `docs/lifecycle.md`; how they combine is decided in
//! [`state`](super::state) alone.

use std::time::Duration;

use super::backoff::Backoff;
use crate::{Error, RetryPolicy};

/// The shortest [`LifecyclePolicy::default_lifetime`] a cache accepts: below it, a token
/// without an expiry would be refetched on nearly every request.
pub const MIN_DEFAULT_LIFETIME: Duration = Duration::from_secs(1);

/// The shortest failure backoff a cache accepts ([`LifecyclePolicy::failure_cooldown`],
/// [`LifecyclePolicy::permanent_failure_backoff`], [`LifecyclePolicy::max_failure_backoff`]):
/// with zero, a failing provider would be asked again in a tight loop.
pub const MIN_FAILURE_BACKOFF: Duration = Duration::from_millis(50);

/// The default [`LifecyclePolicy::proof_timeout`]: how long one request waits for its DPoP
/// proof to be signed.
pub const DEFAULT_PROOF_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Refresh this long before expiry instead of asking [`Authorizer::expired`](crate::Authorizer::expired). `None`
    /// (default) lets the authorizer decide, which by default means
    /// [`EXPIRATION_GAP`](crate::EXPIRATION_GAP).
    pub expiration_gap: Option<Duration>,
    /// Lifetime of a token whose provider gave no expiry. Default 300 s: short enough that a
    /// revoked token is replaced soon, long enough not to refetch on every request. Values
    /// below [`MIN_DEFAULT_LIFETIME`] are raised to it (and refused by
    /// [`TokenCacheBuilder::try_build`](crate::TokenCacheBuilder::try_build)).
    pub default_lifetime: Duration,
    /// Retries of transient failures inside one fetch; its `max_elapsed` is the fetch's
    /// deadline.
    pub retry: RetryPolicy,
    /// After a fetch failed with a transient error (and no server-named delay), no new fetch
    /// starts for this long; doubled (with jitter) on each consecutive failure. Default 1 s.
    pub failure_cooldown: Duration,
    /// After a fetch failed permanently (wrong client secret or password, refused scope, a
    /// useless answer), no new fetch starts for this long; doubled on each consecutive
    /// failure. Default 30 s: long enough that a wrong password does not become one login
    /// attempt per request (and lock the account), short enough to recover soon after the
    /// credentials are fixed at the provider.
    pub permanent_failure_backoff: Duration,
    /// Upper bound of every failure backoff, including server-named delays. Default 300 s.
    pub max_failure_backoff: Duration,
    /// At most one token is dropped because of a 401 per this interval.
    /// Default 10 s.
    pub rejection_interval: Duration,
    /// With a shared store: the least time to live of the store lock; the lock lives at
    /// least as long as one fetch with all its retries may take
    /// ([`store_lock_ttl`](Self::store_lock_ttl)). Default 10 s.
    pub store_lock_wait: Duration,
    /// Refresh in a background task ahead of expiry. Default `false`.
    pub background_refresh: bool,
    /// For adapters that pass tokens on to others (the token proxy): a token is handed on
    /// only while it has at least this much life left (at most a quarter of its lifetime, so
    /// short tokens still serve). Default zero. Used by
    /// [`TokenCache::get_to_pass_on`](crate::TokenCache::get_to_pass_on).
    pub min_pass_on_lifetime: Duration,
    /// For authorizers that sign a proof per request (DPoP): how long an adapter waits for
    /// one request's proof ([`Authorizer::request_proof`](crate::Authorizer::request_proof),
    /// possibly a KMS or HSM call) before it fails that request with a timeout
    /// [`Error::Transport`] — never sending it without its proof. Default 5 s. Bearer requests
    /// never wait for a proof and are not affected.
    pub proof_timeout: Duration,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            expiration_gap: None,
            default_lifetime: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            failure_cooldown: Duration::from_secs(1),
            permanent_failure_backoff: Duration::from_secs(30),
            max_failure_backoff: Duration::from_secs(300),
            rejection_interval: Duration::from_secs(10),
            store_lock_wait: Duration::from_secs(10),
            background_refresh: false,
            min_pass_on_lifetime: Duration::ZERO,
            proof_timeout: DEFAULT_PROOF_TIMEOUT,
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

    /// Sets [`permanent_failure_backoff`](Self::permanent_failure_backoff).
    pub fn with_permanent_failure_backoff(mut self, backoff: Duration) -> Self {
        self.permanent_failure_backoff = backoff;
        self
    }

    /// Sets [`max_failure_backoff`](Self::max_failure_backoff).
    pub fn with_max_failure_backoff(mut self, backoff: Duration) -> Self {
        self.max_failure_backoff = backoff;
        self
    }

    /// Sets [`rejection_interval`](Self::rejection_interval).
    pub fn with_rejection_interval(mut self, interval: Duration) -> Self {
        self.rejection_interval = interval;
        self
    }

    /// Sets [`store_lock_wait`](Self::store_lock_wait).
    pub fn with_store_lock_wait(mut self, wait: Duration) -> Self {
        self.store_lock_wait = wait;
        self
    }

    /// The store lock's time to live: [`store_lock_wait`](Self::store_lock_wait), or one
    /// whole fetch ([`RetryPolicy::max_elapsed`] plus 5 s for the last attempt's request)
    /// when that is longer, so that a live holder never loses its lock mid-fetch.
    pub fn store_lock_ttl(&self) -> Duration {
        self.store_lock_wait.max(
            self.retry
                .max_elapsed
                .saturating_add(Duration::from_secs(5)),
        )
    }

    /// Sets [`min_pass_on_lifetime`](Self::min_pass_on_lifetime).
    pub fn with_min_pass_on_lifetime(mut self, floor: Duration) -> Self {
        self.min_pass_on_lifetime = floor;
        self
    }

    /// Sets [`proof_timeout`](Self::proof_timeout).
    pub fn with_proof_timeout(mut self, timeout: Duration) -> Self {
        self.proof_timeout = timeout;
        self
    }

    /// Sets [`background_refresh`](Self::background_refresh).
    pub fn with_background_refresh(mut self, enabled: bool) -> Self {
        self.background_refresh = enabled;
        self
    }

    /// Why this policy cannot be used, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.default_lifetime < MIN_DEFAULT_LIFETIME {
            return Some(format!(
                "default_lifetime must be at least {} s (got {} ms): a shorter lifetime \
                 refetches the token on nearly every request",
                MIN_DEFAULT_LIFETIME.as_secs(),
                self.default_lifetime.as_millis()
            ));
        }
        for (name, value) in [
            ("failure_cooldown", self.failure_cooldown),
            ("permanent_failure_backoff", self.permanent_failure_backoff),
            ("max_failure_backoff", self.max_failure_backoff),
        ] {
            if value < MIN_FAILURE_BACKOFF {
                return Some(format!(
                    "{name} must be at least {} ms (got {} ms): a failing provider would be \
                     asked again in a tight loop",
                    MIN_FAILURE_BACKOFF.as_millis(),
                    value.as_millis()
                ));
            }
        }
        None
    }

    /// This policy with every value [`problem`](Self::problem) refuses raised to its minimum.
    pub(crate) fn corrected(mut self) -> Self {
        self.default_lifetime = self.default_lifetime.max(MIN_DEFAULT_LIFETIME);
        self.failure_cooldown = self.failure_cooldown.max(MIN_FAILURE_BACKOFF);
        self.permanent_failure_backoff = self.permanent_failure_backoff.max(MIN_FAILURE_BACKOFF);
        self.max_failure_backoff = self.max_failure_backoff.max(MIN_FAILURE_BACKOFF);
        self
    }

    /// The failure-memory schedule for `err`: transient errors start at
    /// [`failure_cooldown`](Self::failure_cooldown), permanent ones at
    /// [`permanent_failure_backoff`](Self::permanent_failure_backoff); both stop at
    /// [`max_failure_backoff`](Self::max_failure_backoff).
    pub(crate) fn failure_schedule(&self, err: &Error) -> Backoff {
        let initial = if err.is_transient() {
            self.failure_cooldown
        } else {
            self.permanent_failure_backoff
        };
        Backoff::new(initial, self.max_failure_backoff)
    }
}

//! The token lifecycle: when a token is fetched, reused, refreshed and dropped.
//!
//! [`TokenCache`] owns these rules; the reqwest middleware (and any other adapter) only asks
//! it for a token and reports a 401. They hold when the identity provider is slow, down or
//! rate-limiting, and when callers give up halfway (see `docs/lifecycle.md` for a timeline):
//!
//! 1. **Cheap hot path.** A request reads the cached token under a short `parking_lot` read
//!    lock, clones an `Arc` and compares integer milliseconds against the clock. No lock is
//!    held across I/O, nothing is allocated or formatted: the `Authorization` header value is
//!    built once, when the token arrives.
//! 2. **One shared fetch.** A fetch (`authorize`/`refresh`, with its retries) runs in a task
//!    of its own, at most one per cache at a time. Callers that need a token await its
//!    outcome through a shared handle; a caller that gives up (its own timeout, a dropped
//!    request) cancels nothing — the fetch finishes, its token lands in the cache and serves
//!    whoever comes next. The fetch has its own deadline: [`RetryPolicy::max_elapsed`] bounds
//!    every attempt and the waits between them; with a store, each store call is cut off
//!    after [`STORE_CALL_TIMEOUT`] (and counts as a store failure), and the whole fetch
//!    after the retry budget plus the store's share.
//! 3. **Stale-while-revalidate.** A token counts as stale [`EXPIRATION_GAP`](crate::EXPIRATION_GAP)
//!    before it expires (per-cache override: [`LifecyclePolicy::expiration_gap`]; the gap is
//!    clamped to half the token's lifetime so short tokens are still used). A stale token that
//!    has not expired is still served at once; seeing it only *starts* a refresh in the
//!    background (at most one, and never sooner than a second — or half its life — after the
//!    token arrived, so a token that looks stale on arrival is not refetched back to back).
//!    Requests wait only when there is no usable token at all.
//! 4. **Default lifetime; no dead tokens.** A token without an expiry lives
//!    [`LifecyclePolicy::default_lifetime`] (at least [`MIN_DEFAULT_LIFETIME`]). A token that
//!    arrives already expired (`expires_in: 0`, or an expiry in the past) is refused as
//!    [`Error::InvalidResponse`]: it is never cached, and it is remembered like any failure.
//! 5. **Failures are shared and remembered.** A failed fetch hands its error to every caller
//!    waiting on it. Until the next attempt is due, callers without a usable token get that
//!    error at once instead of a new provider call. The next attempt is due after the
//!    server's `Retry-After` / rate-limit reset (plus jitter), or after a backoff that starts
//!    at [`LifecyclePolicy::failure_cooldown`] for transient errors and at
//!    [`LifecyclePolicy::permanent_failure_backoff`] for permanent ones (wrong secret or
//!    password, refused scope), doubling with jitter on each consecutive failure, capped at
//!    [`LifecyclePolicy::max_failure_backoff`]. A wrong password therefore costs a handful of
//!    login attempts an hour, not one per request.
//! 6. **Serve while valid.** A token that has not actually expired keeps being served
//!    through all failures; only its hard expiry ends it.
//! 7. **Rejection, bounded.** When an API rejects a token (401), [`TokenCache::invalidate`]
//!    marks it rejected only if it is still the cached one — a burst of 401s for one token
//!    causes one fetch — and at most once per [`LifecyclePolicy::rejection_interval`]: an API
//!    that answers 401 to everything costs one provider call per interval, not one per
//!    request. A rejected token is replaced at once: requests wait for the one refresh (the
//!    rejected request is replayed with the new token). If that refresh fails, the rejected
//!    token goes on serving the other APIs until it expires, like a stale token (rule 3):
//!    later attempts run in the background, never in front of every request, so one API's
//!    401 during a provider outage does not become an outage of every API.
//! 8. **Background refresh (opt-in).** With [`TokenCacheBuilder::background_refresh`], a task
//!    refreshes the token shortly before it turns stale (jittered, so a fleet does not
//!    refresh in lockstep) and keeps retrying failures on the backoff schedule; once warm
//!    ([`TokenCache::warm_up`]), no request waits on the provider. The task holds only a weak
//!    reference and ends when the last handle of the cache is dropped.
//! 9. **Sharing.** With a [`TokenStore`], a missing or stale token is first looked up in the
//!    store, and the store's lock makes one holder fetch while the others wait for its
//!    result. The lock is taken and released inside the fetch task, so it is released even
//!    when every caller has gone. Its time to live outlasts one whole fetch with its retries
//!    ([`LifecyclePolicy::store_lock_ttl`]). The holder reads the store once more after
//!    taking the lock, before calling the provider. Only a token obtained from the provider
//!    is written to the store — never one just read from it (that could bring back a token
//!    another process removed as rejected).
//! 10. **Waiting on another process.** A waiter polls the store (with jitter) for the token,
//!     for a failure the holder published, and for the lock itself: when the holder died its
//!     lock runs out and one waiter takes over; when the holder failed, every waiter gets the
//!     holder's error at once and backs off on the same schedule (a published failure is
//!     honoured before any new fetch, fleet-wide). A lock still held one
//!     [`LifecyclePolicy::store_lock_ttl`] (plus a second) after a waiter started belongs to
//!     a holder that took over from a dead one: the waiter waits for it once more, then
//!     fetches on its own.
//! 11. **Availability over sharing.** A store that fails (down, slow, circuit open) never
//!     fails a request: the fetch goes on without the store, i.e. with the in-process single
//!     flight of rule 2. One warning is logged when the store starts failing and one info
//!     line when it works again, not one per request; [`TokenStats::store_errors`] counts
//!     every failed store call.
//! 12. **Rejections travel.** A token dropped after a 401 is removed from the store only if
//!     it is still the stored one; stores that deliver [`StoreEvent`](crate::StoreEvent)s tell
//!     the other processes, whose caches drop their copy of that token (compared by
//!     [`value_fingerprint`](crate::value_fingerprint), never by the token itself).
//!
//! Fetches run on the tokio runtime of the caller that starts them (`tokio::spawn`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderValue;
use parking_lot::{Mutex, RwLock};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::token::now_millis;
use crate::{
    AccessToken, Authorizer, CacheKey, Error, RetryPolicy, TokenStore, expires_within_now,
};

/// The shortest [`LifecyclePolicy::default_lifetime`] a cache accepts: below it, a token
/// without an expiry would be refetched on nearly every request.
pub const MIN_DEFAULT_LIFETIME: Duration = Duration::from_secs(1);

/// The shortest failure backoff a cache accepts ([`LifecyclePolicy::failure_cooldown`],
/// [`LifecyclePolicy::permanent_failure_backoff`], [`LifecyclePolicy::max_failure_backoff`]):
/// with zero, a failing provider would be asked again in a tight loop.
pub const MIN_FAILURE_BACKOFF: Duration = Duration::from_millis(50);

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
    /// revoked token is replaced soon, long enough not to refetch on every request. Values
    /// below [`MIN_DEFAULT_LIFETIME`] are raised to it (and refused by
    /// [`TokenCacheBuilder::try_build`]).
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
    /// At most one token is dropped because of a 401 per this interval (see rule 7).
    /// Default 10 s.
    pub rejection_interval: Duration,
    /// With a shared store: the least time to live of the store lock; the lock lives at
    /// least as long as one fetch with all its retries may take
    /// ([`store_lock_ttl`](Self::store_lock_ttl)). Default 10 s.
    pub store_lock_wait: Duration,
    /// Refresh in a background task ahead of expiry (rule 8). Default `false`.
    pub background_refresh: bool,
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

    /// Sets [`background_refresh`](Self::background_refresh).
    pub fn with_background_refresh(mut self, enabled: bool) -> Self {
        self.background_refresh = enabled;
        self
    }

    /// Why this policy cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
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
    fn corrected(mut self) -> Self {
        self.default_lifetime = self.default_lifetime.max(MIN_DEFAULT_LIFETIME);
        self.failure_cooldown = self.failure_cooldown.max(MIN_FAILURE_BACKOFF);
        self.permanent_failure_backoff = self.permanent_failure_backoff.max(MIN_FAILURE_BACKOFF);
        self.max_failure_backoff = self.max_failure_backoff.max(MIN_FAILURE_BACKOFF);
        self
    }

    /// The delay before the next fetch after `consecutive` failures in a row ending in `err`.
    fn failure_backoff(&self, err: &Error, consecutive: u32) -> Duration {
        let base = if err.is_transient() {
            self.failure_cooldown
        } else {
            self.permanent_failure_backoff
        };
        let ceiling = base
            .saturating_mul(2u32.saturating_pow(consecutive.min(16)))
            .min(self.max_failure_backoff);
        let backoff = jitter_down(ceiling).max(MIN_FAILURE_BACKOFF);
        match err.retry_after() {
            // A server-named delay, plus up to 10 % (at most 1 s) so a fleet that was told the
            // same time does not come back in the same millisecond.
            Some(named) => {
                let named = named.min(self.max_failure_backoff);
                let spread = (named / 10).min(Duration::from_secs(1));
                named.saturating_add(jitter_up_to(spread)).max(backoff)
            }
            None => backoff,
        }
    }
}

/// A random duration in `[d/2, d]`.
fn jitter_down(d: Duration) -> Duration {
    let ns = d.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(fastrand::u64(ns / 2..=ns))
}

/// A random duration in `[0, d]`.
fn jitter_up_to(d: Duration) -> Duration {
    let ns = d.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(fastrand::u64(0..=ns))
}

/// See [`CachedToken::min_refresh_at_ms`].
const MIN_REFRESH_SPACING_MS: i64 = 1_000;

/// Each call to a [`TokenStore`] is given this long; a store that takes longer counts as
/// failing, and the fetch goes on without it.
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// `now + d`, or a day from now when `d` is too large to add.
fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A token as the cache holds it: the token, its ready-made `Authorization` value, and when
/// it stops being usable.
pub struct CachedToken<T> {
    token: T,
    authorization: HeaderValue,
    /// Hard expiry: the token's own, or obtained-at + default lifetime.
    expires_at: DateTime<Utc>,
    /// The same, in milliseconds since the epoch, for the per-request check.
    expires_at_ms: i64,
    /// When the token turns stale by the gap rule, in milliseconds since the epoch: the
    /// background refresh's schedule.
    refresh_at_ms: i64,
    /// For tokens without an expiry: `refresh_at_ms` is authoritative (the authorizer cannot
    /// judge a token without an expiry).
    no_own_expiry: bool,
    /// When this cache obtained it, in milliseconds since the epoch.
    obtained_at_ms: i64,
    /// An API refused it: replace it now (it is still served to others until replaced).
    rejected: AtomicBool,
    /// Set when a fetch to replace this (rejected) token failed: from then on it is served
    /// like a stale token (rule 7) while further attempts run in the background.
    replacement_failed: AtomicBool,
}

impl<T: AccessToken> CachedToken<T> {
    fn new(token: T, policy: &LifecyclePolicy, scheme: &str) -> Result<Self, Error> {
        let mut authorization = HeaderValue::try_from(format!("{scheme} {}", token.access_token()))
            .map_err(|_| Error::InvalidResponse {
                status: None,
                reason: "the access token contains characters not allowed in an HTTP header".into(),
            })?;
        authorization.set_sensitive(true);
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let configured_gap = millis(policy.expiration_gap.unwrap_or(crate::EXPIRATION_GAP));
        // When the token was issued, as far as we know (never later than now): a token read
        // from a shared store keeps the default lifetime counted from its issue, not from
        // each read.
        let issued = token.issued_at().filter(|at| *at <= now).unwrap_or(now);
        let (expires_at, no_own_expiry) = match token.expires_at() {
            Some(at) => (at, false),
            None => {
                let lifetime =
                    chrono::Duration::from_std(policy.default_lifetime.max(MIN_DEFAULT_LIFETIME))
                        .unwrap_or(chrono::Duration::days(1));
                (issued.checked_add_signed(lifetime).unwrap_or(now), true)
            }
        };
        let expires_at_ms = expires_at.timestamp_millis();
        if expires_at_ms <= now_ms {
            return Err(Error::InvalidResponse {
                status: None,
                reason: "the identity provider issued a token that has already expired \
                         (expires_in of 0 or less, or an expiry in the past: check the \
                         provider's token lifetime and both clocks)"
                    .into(),
            });
        }
        // The gap, clamped to half the token's life as far as we know it.
        let born_ms = issued.timestamp_millis();
        let half_life = (expires_at_ms.saturating_sub(born_ms) / 2).max(0);
        let refresh_at_ms = expires_at_ms.saturating_sub(configured_gap.min(half_life));
        Ok(Self {
            token,
            authorization,
            expires_at,
            expires_at_ms,
            refresh_at_ms,
            no_own_expiry,
            obtained_at_ms: now_ms,
            rejected: AtomicBool::new(false),
            replacement_failed: AtomicBool::new(false),
        })
    }

    /// The token.
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The `Authorization` header value, `Bearer <token>` (or `DPoP <token>`, see
    /// [`Authorizer::token_scheme`]), marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// When the token stops being usable (its own expiry or the default lifetime).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Whether the token may still be sent: it has not expired. (A token an API rejected
    /// stays usable for the other APIs until its replacement arrives; see
    /// [`is_rejected`](Self::is_rejected).)
    pub fn is_usable(&self) -> bool {
        self.unexpired_at_ms(now_millis())
    }

    /// Whether an API rejected this token (reported through [`TokenCache::invalidate`]).
    pub fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Acquire)
    }

    /// Rejected, and no replacement has failed yet: callers wait for the replacement.
    fn awaits_replacement(&self) -> bool {
        self.is_rejected() && !self.replacement_failed.load(Ordering::Acquire)
    }

    fn unexpired_at_ms(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// The earliest time a refresh for staleness may start: however stale a token looks on
    /// arrival (a custom `expired`, a gap as long as the lifetime), it is used for at least
    /// a second, or half its life when that is shorter, so refreshes never run back to back.
    fn min_refresh_at_ms(&self) -> i64 {
        let half_life = (self.expires_at_ms.saturating_sub(self.obtained_at_ms) / 2).max(0);
        self.obtained_at_ms
            .saturating_add(half_life.min(MIN_REFRESH_SPACING_MS))
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
    /// Fetches started (each may make several provider calls when it retries).
    pub fetches: u64,
    /// Fetches that failed after retries.
    pub failures: u64,
    /// Callers answered at once with a remembered failure instead of a new fetch.
    pub failures_served: u64,
    /// Callers that had no usable token and waited for a fetch.
    pub waits: u64,
    /// Tokens taken from the shared store instead of the provider.
    pub store_hits: u64,
    /// Tokens dropped because an API rejected them.
    pub invalidations: u64,
    /// Rejections (401s) that did not drop the token because one was dropped less than
    /// [`LifecyclePolicy::rejection_interval`] ago.
    pub rejections_absorbed: u64,
    /// Requests replayed with a new token after a 401 (counted by the middleware).
    pub replays: u64,
    /// Fetches that found the store lock held by another process and waited for it.
    pub lock_waits: u64,
    /// Waits for another lock holder that ran out (twice [`LifecyclePolicy::store_lock_ttl`]
    /// plus a second: the holder and one that took over from it) without a token or failure;
    /// the fetch went on without the lock.
    pub lock_timeouts: u64,
    /// Failures published by another process's fetch, answered here without a provider call.
    pub shared_failures: u64,
    /// Store calls that failed (store down or slow); each was worked around.
    pub store_errors: u64,
    /// Tokens dropped because another process reported them rejected.
    pub remote_invalidations: u64,
}

#[derive(Default)]
struct Counters {
    authorizations: AtomicU64,
    refreshes: AtomicU64,
    fetches: AtomicU64,
    failures: AtomicU64,
    failures_served: AtomicU64,
    waits: AtomicU64,
    store_hits: AtomicU64,
    invalidations: AtomicU64,
    rejections_absorbed: AtomicU64,
    replays: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    shared_failures: AtomicU64,
    store_errors: AtomicU64,
    remote_invalidations: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct StoreBinding<T> {
    store: Arc<dyn TokenStore>,
    key: CacheKey,
    encode: fn(&T) -> serde_json::Result<String>,
    decode: fn(&str) -> serde_json::Result<T>,
}

/// What a fetch ends with; shared by everyone waiting on it.
type Outcome<T> = Result<Arc<CachedToken<T>>, Arc<Error>>;

/// Where a fetch's outcome appears.
type OutcomeReceiver<T> = watch::Receiver<Option<Outcome<T>>>;

/// The fetch in progress: where its outcome will appear.
struct Flight<T> {
    id: u64,
    outcome: watch::Receiver<Option<Outcome<T>>>,
}

/// The last fetch failure, kept until the next attempt is due.
struct Failure {
    error: Arc<Error>,
    failed_at: Instant,
    retry_at: Instant,
}

/// Everything about fetching that is not the token itself. Guarded by a `parking_lot` mutex
/// that is never held across an `.await`.
struct FetchState<T> {
    flight: Option<Flight<T>>,
    next_flight_id: u64,
    failure: Option<Failure>,
    consecutive_failures: u32,
    last_rejection: Option<Instant>,
}

struct Inner<A: Authorizer> {
    authorizer: A,
    policy: LifecyclePolicy,
    current: RwLock<Option<Arc<CachedToken<A::Token>>>>,
    /// Unix millis before which no background refresh is started (a failure is remembered).
    next_attempt_ms: AtomicI64,
    state: Mutex<FetchState<A::Token>>,
    /// Whether a fetch is running (read without the lock on the stale path).
    flight_running: AtomicBool,
    store: Option<StoreBinding<A::Token>>,
    counters: Counters,
    background_started: AtomicBool,
    /// Whether the store listener (rule 12) was started.
    listener_started: AtomicBool,
    /// Whether the last store call failed (for one warning per outage, rule 11).
    store_failing: AtomicBool,
    /// Dropped with the cache; the background task watches it to end.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
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
        self.store = Some(StoreBinding {
            key: self.authorizer.cache_key(),
            store,
            encode: serde_json::to_string::<A::Token>,
            decode: |s| serde_json::from_str::<A::Token>(s),
        });
        self
    }

    /// The cache, or [`Error::InvalidConfiguration`] when the policy cannot work (a default
    /// lifetime under [`MIN_DEFAULT_LIFETIME`], a failure backoff under
    /// [`MIN_FAILURE_BACKOFF`]).
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
    /// (a default lifetime raised to [`MIN_DEFAULT_LIFETIME`], failure backoffs to
    /// [`MIN_FAILURE_BACKOFF`]) and a warning is logged.
    pub fn build(mut self) -> TokenCache<A> {
        if let Some(reason) = self.policy.problem() {
            tracing::warn!(%reason, "token cache policy corrected");
            self.policy = self.policy.corrected();
        }
        let (alive_tx, alive_rx) = watch::channel(());
        TokenCache {
            inner: Arc::new(Inner {
                authorizer: self.authorizer,
                policy: self.policy,
                current: RwLock::new(None),
                next_attempt_ms: AtomicI64::new(i64::MIN),
                state: Mutex::new(FetchState {
                    flight: None,
                    next_flight_id: 0,
                    failure: None,
                    consecutive_failures: 0,
                    last_rejection: None,
                }),
                flight_running: AtomicBool::new(false),
                store: self.store,
                counters: Counters::default(),
                background_started: AtomicBool::new(false),
                listener_started: AtomicBool::new(false),
                store_failing: AtomicBool::new(false),
                _alive: alive_tx,
                alive: alive_rx,
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
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TokenStats {
            authorizations: load(&c.authorizations),
            refreshes: load(&c.refreshes),
            fetches: load(&c.fetches),
            failures: load(&c.failures),
            failures_served: load(&c.failures_served),
            waits: load(&c.waits),
            store_hits: load(&c.store_hits),
            invalidations: load(&c.invalidations),
            rejections_absorbed: load(&c.rejections_absorbed),
            replays: load(&c.replays),
            lock_waits: load(&c.lock_waits),
            lock_timeouts: load(&c.lock_timeouts),
            shared_failures: load(&c.shared_failures),
            store_errors: load(&c.store_errors),
            remote_invalidations: load(&c.remote_invalidations),
        }
    }

    /// Whether requests need a proof each ([`Authorizer::uses_request_proofs`], DPoP). Adapters
    /// read it once when they are built and take the proof path only when it is `true`.
    pub fn uses_request_proofs(&self) -> bool {
        self.inner.authorizer.uses_request_proofs()
    }

    /// The proof header for one request with `token` ([`Authorizer::request_proof`]).
    pub fn request_proof(
        &self,
        token: &CachedToken<A::Token>,
        method: &http::Method,
        url: &str,
    ) -> Result<Option<(http::HeaderName, HeaderValue)>, Error> {
        self.inner
            .authorizer
            .request_proof(&token.token, method, url)
    }

    /// Lets the authorizer read a response to a proof-carrying request; `true` asks for one
    /// more try with a fresh proof ([`Authorizer::proof_challenge`]).
    pub fn proof_challenge(&self, url: &str, status: u16, headers: &http::HeaderMap) -> bool {
        self.inner.authorizer.proof_challenge(url, status, headers)
    }

    /// Counts a request replayed after a 401 (for adapters).
    pub fn record_replay(&self) {
        bump(&self.inner.counters.replays);
    }

    /// A usable token: the cached one if usable, otherwise the outcome of the one shared
    /// fetch (started now if none is running and no failure is being backed off).
    pub async fn get(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        match self.cached() {
            Some(token) => Ok(token),
            // Boxed so that the hot path's future stays small: every adapter's per-request
            // future embeds this one, and moving a large state costs on every request.
            None => Box::pin(self.obtain(None, false)).await,
        }
    }

    /// Like [`get`](Self::get), but a stale token (one in its refresh gap) is not handed out
    /// while a fresh one can be had: the caller waits for the refresh instead. When the
    /// refresh fails, or a failure is being backed off, the stale token is returned as long
    /// as it has not expired (rule 6). For adapters that pass tokens on to others, such as
    /// the token proxy, whose callers must not receive a token about to expire.
    pub async fn get_fresh(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        match self.cached_fresh() {
            Some(token) => Ok(token),
            None => Box::pin(self.obtain(None, true)).await,
        }
    }

    /// The cached token if it is usable and not stale, without waiting and without starting
    /// a refresh. `None` means [`get_fresh`](Self::get_fresh) would have to wait.
    pub fn cached_fresh(&self) -> Option<Arc<CachedToken<A::Token>>> {
        self.inner
            .current
            .read()
            .as_ref()
            .filter(|entry| entry.is_usable() && !self.is_stale(entry))
            .cloned()
    }

    /// Fetches a token now if there is none, and starts the background refresh when it is
    /// enabled. Call it before a readiness probe reports ready.
    pub async fn warm_up(&self) -> Result<(), Error> {
        self.start_background_refresh();
        self.start_store_listener();
        self.get().await.map(drop)
    }

    /// The access token string, fetching one if needed (en_auth's `access_token`).
    pub async fn access_token(&self) -> Result<String, Error> {
        Ok(self.get().await?.token().access_token().to_owned())
    }

    /// Reports that an API rejected `rejected` (a 401). If it is still the cached token and
    /// no token was rejected in the last [`LifecyclePolicy::rejection_interval`], it is
    /// marked rejected, removed from the shared store and one refresh starts; until the
    /// refresh succeeds, the token is still served to other requests (other APIs may accept
    /// it, and a failing provider must not turn one API's 401 into an outage of all).
    /// Returns whether the token was marked. Either way, a caller holding a rejected token
    /// ([`CachedToken::is_rejected`]) can wait for its [`replacement`](Self::replacement).
    pub async fn invalidate(&self, rejected: &Arc<CachedToken<A::Token>>) -> bool {
        let pending = {
            let mut state = self.inner.state.lock();
            let is_current = self
                .inner
                .current
                .read()
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, rejected));
            if !is_current || rejected.is_rejected() {
                return false;
            }
            let now = Instant::now();
            if state
                .last_rejection
                .is_some_and(|at| now.duration_since(at) < self.inner.policy.rejection_interval)
            {
                bump(&self.inner.counters.rejections_absorbed);
                tracing::debug!(
                    client_id = self.client_id(),
                    "token rejected by an API again within the rejection interval; kept"
                );
                return false;
            }
            rejected.rejected.store(true, Ordering::Release);
            state.last_rejection = Some(now);
            if state.flight.is_none() && !self.backing_off(&state) {
                self.register_flight(&mut state).ok()
            } else {
                None
            }
        };
        if let Some((_, pending)) = pending {
            pending.spawn();
        }
        bump(&self.inner.counters.invalidations);
        tracing::debug!(
            client_id = self.client_id(),
            "token rejected by an API; refreshing"
        );
        if let Some(binding) = &self.inner.store {
            if let Ok(encoded) = (binding.encode)(rejected.token()) {
                let encoded = SecretString::from(encoded);
                self.store_call(
                    "remove rejected token",
                    binding.store.remove_if(&binding.key, &encoded),
                )
                .await;
            }
        }
        true
    }

    /// After an API answered 401 to `rejected`: reports it ([`invalidate`](Self::invalidate))
    /// and returns the token to replay the request with, or `None` when the request should
    /// not be replayed. The current token is returned at once when it is already another one
    /// (a refresh replaced `rejected` while the request was in flight: no provider call);
    /// otherwise the outcome of the one shared fetch, unless the rejection was absorbed by the
    /// 401-storm bound ([`LifecyclePolicy::rejection_interval`]) or no new token came. The
    /// adapters' one rule for replays.
    pub async fn token_after_rejection(
        &self,
        rejected: &Arc<CachedToken<A::Token>>,
    ) -> Option<Arc<CachedToken<A::Token>>> {
        self.invalidate(rejected).await;
        if let Some(current) = self.cached() {
            if !current.same_token(rejected) {
                return Some(current);
            }
        }
        if !rejected.is_rejected() {
            tracing::debug!("401 not replayed: a token was rejected moments ago (401 storm bound)");
            return None;
        }
        match self.replacement(rejected).await {
            Ok(token) if !token.same_token(rejected) => Some(token),
            Ok(_) => {
                tracing::debug!("401 not replayed: the provider returned the same token");
                None
            }
            Err(err) => {
                tracing::debug!(error = %err, "401 not replayed: no new token");
                None
            }
        }
    }

    /// A token to use instead of `rejected`: the current one if it is another, otherwise the
    /// outcome of the one shared fetch (joined or started), or the remembered failure while
    /// it is backed off.
    pub async fn replacement(
        &self,
        rejected: &Arc<CachedToken<A::Token>>,
    ) -> Result<Arc<CachedToken<A::Token>>, Error> {
        Box::pin(self.obtain(Some(rejected), false)).await
    }

    /// Starts the one shared fetch in the background if no usable token is cached and none
    /// is running, without waiting (for synchronous callers such as interceptors). Returns
    /// the remembered failure while one is being backed off.
    pub fn start_fetch(&self) -> Result<(), Error> {
        self.start_background_refresh();
        self.start_store_listener();
        let pending = {
            let mut state = self.inner.state.lock();
            if self.usable(&state, None).is_some() || state.flight.is_some() {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                if Instant::now() < failure.retry_at {
                    return Err(failure.error.shared_copy(failure.failed_at.elapsed()));
                }
            }
            self.register_flight(&mut state)?.1
        };
        pending.spawn();
        Ok(())
    }

    fn client_id(&self) -> &str {
        self.inner.authorizer.client_info().client_id()
    }

    /// Whether `entry` should be replaced (rejected, or within the refresh gap). Reads the
    /// clock once.
    fn is_stale(&self, entry: &CachedToken<A::Token>) -> bool {
        if entry.rejected.load(Ordering::Relaxed) {
            return true;
        }
        if entry.no_own_expiry {
            return now_millis() >= entry.refresh_at_ms;
        }
        match self.inner.policy.expiration_gap {
            Some(gap) => expires_within_now(&entry.token, gap),
            None => self.inner.authorizer.expired(&entry.token),
        }
    }

    /// The cached token if it may be sent now, without waiting: the hot path. A token in its
    /// refresh gap (or rejected by an API) is returned too while it has not expired; seeing
    /// it starts one refresh in the background (rule 3).
    pub fn cached(&self) -> Option<Arc<CachedToken<A::Token>>> {
        let current = self.inner.current.read();
        let entry = current.as_ref()?;
        if !self.is_stale(entry) {
            return Some(Arc::clone(entry));
        }
        let entry = Arc::clone(entry);
        drop(current);
        self.stale(entry)
    }

    #[cold]
    fn stale(&self, entry: Arc<CachedToken<A::Token>>) -> Option<Arc<CachedToken<A::Token>>> {
        let now_ms = now_millis();
        if !entry.unexpired_at_ms(now_ms) {
            return None;
        }
        if entry.awaits_replacement() {
            // An API refused it: callers wait for the replacement (the slow path), unless
            // the provider is failing — then the token still serves the other APIs. Once a
            // replacement has failed, the token is treated as stale (below): served while
            // the next attempts run in the background, not in front of every request.
            let state = self.inner.state.lock();
            return self.backing_off(&state).then_some(entry);
        }
        let due = now_ms >= entry.min_refresh_at_ms();
        if due
            && now_ms >= self.inner.next_attempt_ms.load(Ordering::Relaxed)
            && !self.inner.flight_running.load(Ordering::Relaxed)
        {
            let pending = {
                let mut state = self.inner.state.lock();
                if state.flight.is_none() && !self.backing_off(&state) {
                    // No runtime (a synchronous caller): serve the token, refresh later.
                    self.register_flight(&mut state).ok()
                } else {
                    None
                }
            };
            if let Some((_, pending)) = pending {
                pending.spawn();
            }
        }
        Some(entry)
    }

    /// The cached token if it may be handed out: not expired, not `instead_of`, and not
    /// rejected by an API unless a failure is being backed off (then it is the best there
    /// is). The caller holds the state lock.
    fn usable(
        &self,
        state: &FetchState<A::Token>,
        instead_of: Option<&Arc<CachedToken<A::Token>>>,
    ) -> Option<Arc<CachedToken<A::Token>>> {
        self.inner
            .current
            .read()
            .as_ref()
            .filter(|entry| entry.is_usable())
            .filter(|entry| instead_of.is_none_or(|old| !Arc::ptr_eq(entry, old)))
            .filter(|entry| !entry.awaits_replacement() || self.backing_off(state))
            .cloned()
    }

    fn backing_off(&self, state: &FetchState<A::Token>) -> bool {
        state
            .failure
            .as_ref()
            .is_some_and(|failure| Instant::now() < failure.retry_at)
    }

    /// Slow path: join the running fetch, start one, or answer with the remembered failure.
    /// With `instead_of`, the cached token does not count while it is that one. `fresh`: a
    /// stale token does not count while a fetch can run (see [`get_fresh`](Self::get_fresh)).
    async fn obtain(
        &self,
        instead_of: Option<&Arc<CachedToken<A::Token>>>,
        fresh: bool,
    ) -> Result<Arc<CachedToken<A::Token>>, Error> {
        self.start_background_refresh();
        self.start_store_listener();
        let (mut outcome, pending) = {
            let mut state = self.inner.state.lock();
            let usable = if fresh {
                self.cached_fresh()
            } else {
                self.usable(&state, instead_of)
            };
            if let Some(token) = usable {
                return Ok(token);
            }
            match &state.flight {
                Some(flight) => (flight.outcome.clone(), None),
                None => match &state.failure {
                    Some(failure) if Instant::now() < failure.retry_at => {
                        if fresh {
                            if let Some(token) = self.usable(&state, instead_of) {
                                return Ok(token); // serve while valid (rule 6)
                            }
                        }
                        bump(&self.inner.counters.failures_served);
                        return Err(failure.error.shared_copy(failure.failed_at.elapsed()));
                    }
                    _ => {
                        let (outcome, pending) = self.register_flight(&mut state)?;
                        (outcome, Some(pending))
                    }
                },
            }
        };
        // Spawned with the lock released: a runtime that is shutting down drops the task at
        // once, and its guard takes the lock to record that.
        if let Some(pending) = pending {
            pending.spawn();
        }
        bump(&self.inner.counters.waits);
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(settled) => settled.clone(),
            Err(_) => None, // the fetch task ended without an outcome; its guard recorded why
        };
        match result {
            Some(Ok(token)) if instead_of.is_none_or(|old| !Arc::ptr_eq(&token, old)) => Ok(token),
            Some(Ok(_)) => Err(Error::InvalidResponse {
                status: None,
                reason: "the provider returned the token that was just rejected".into(),
            }),
            Some(Err(err)) => match self.usable(&self.inner.state.lock(), instead_of) {
                Some(token) => Ok(token),
                None => Err(err.shared_copy(Duration::ZERO)),
            },
            None => match self.usable(&self.inner.state.lock(), instead_of) {
                Some(token) => Ok(token),
                None => Err(abandoned_fetch()),
            },
        }
    }

    /// Registers the one fetch (the caller holds the state lock and has checked that none is
    /// running) and returns where its outcome will appear, and the task to spawn once the
    /// lock is released. Fails only without a tokio runtime.
    fn register_flight(
        &self,
        state: &mut FetchState<A::Token>,
    ) -> Result<(OutcomeReceiver<A::Token>, PendingFlight<A>), Error> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidConfiguration {
                setting: "runtime".into(),
                reason: "fetching a token needs a tokio runtime; call from within one".into(),
            })?;
        let (publish, outcome) = watch::channel(None);
        let id = state.next_flight_id;
        state.next_flight_id = id.wrapping_add(1);
        state.flight = Some(Flight {
            id,
            outcome: outcome.clone(),
        });
        self.inner.flight_running.store(true, Ordering::Relaxed);
        bump(&self.inner.counters.fetches);
        let guard = FlightGuard {
            cache: self.clone(),
            id,
            publish,
            settled: false,
        };
        Ok((outcome, PendingFlight { runtime, guard }))
    }

    /// The longest a fetch may take, store included: past it the fetch fails as timed out.
    fn fetch_deadline(&self) -> Duration {
        let policy = &self.inner.policy;
        let store = if self.inner.store.is_some() {
            // Waiting for another holder and for one that took over from it (twice the
            // lock's TTL and a second), then our own store calls, each cut off after
            // STORE_CALL_TIMEOUT.
            policy
                .store_lock_ttl()
                .saturating_add(Duration::from_secs(1))
                .saturating_mul(2)
                .saturating_add(STORE_CALL_TIMEOUT.saturating_mul(8))
        } else {
            Duration::ZERO
        };
        policy
            .retry
            .max_elapsed
            .saturating_add(store)
            .saturating_add(Duration::from_secs(1))
    }

    /// Records a fetch's result: the new token, or the failure and when to try again.
    fn settle(
        &self,
        id: u64,
        previous: Option<Arc<CachedToken<A::Token>>>,
        result: Result<CachedToken<A::Token>, Error>,
    ) -> Outcome<A::Token> {
        let mut state = self.inner.state.lock();
        if state.flight.as_ref().is_some_and(|f| f.id == id) {
            state.flight = None;
            self.inner.flight_running.store(false, Ordering::Relaxed);
        }
        match result {
            Ok(entry) => {
                let entry = Arc::new(entry);
                *self.inner.current.write() = Some(Arc::clone(&entry));
                state.failure = None;
                state.consecutive_failures = 0;
                self.inner
                    .next_attempt_ms
                    .store(i64::MIN, Ordering::Relaxed);
                Ok(entry)
            }
            Err(err) => {
                bump(&self.inner.counters.failures);
                let delay = self
                    .inner
                    .policy
                    .failure_backoff(&err, state.consecutive_failures);
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                let failed_at = Instant::now();
                let retry_at = instant_after(delay);
                self.inner.next_attempt_ms.store(
                    now_millis().saturating_add(millis(delay)),
                    Ordering::Relaxed,
                );
                match previous.filter(|p| p.is_usable()) {
                    Some(previous) => tracing::warn!(
                        client_id = self.client_id(), error = %err,
                        expires_at = %previous.expires_at, next_attempt_in_ms = millis(delay),
                        "token refresh failed; serving the current token until it expires"),
                    None => tracing::warn!(
                        client_id = self.client_id(), error = %err,
                        next_attempt_in_ms = millis(delay), "could not obtain a token"),
                }
                if let Some(current) = self.inner.current.read().as_ref() {
                    if current.is_rejected() {
                        current.replacement_failed.store(true, Ordering::Release);
                    }
                }
                let error = Arc::new(err);
                state.failure = Some(Failure {
                    error: Arc::clone(&error),
                    failed_at,
                    retry_at,
                });
                Err(error)
            }
        }
    }

    /// Starts the background refresh task once, if the policy asks for it and a runtime is
    /// at hand. The task holds only a weak reference to the cache.
    fn start_background_refresh(&self) {
        if !self.inner.policy.background_refresh
            || self.inner.background_started.load(Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let alive = self.inner.alive.clone();
        runtime.spawn(background_refresh(weak, alive));
    }

    /// When the background task should next act: the failure's retry time, shortly before
    /// the token turns stale (jittered), or now when there is no token.
    fn next_background_wake(&self) -> Instant {
        let now = Instant::now();
        let state = self.inner.state.lock();
        if let Some(failure) = &state.failure {
            if failure.retry_at > now {
                return failure.retry_at;
            }
        }
        drop(state);
        let Some(entry) = self.inner.current.read().clone() else {
            return now;
        };
        if entry.is_rejected() {
            return now;
        }
        let now_ms = now_millis();
        // Up to a quarter of the refresh window early (at most 30 s), so that a fleet whose
        // tokens were fetched together spreads its refreshes; never before the minimum
        // spacing after the token arrived.
        let window = entry
            .expires_at_ms
            .saturating_sub(entry.refresh_at_ms)
            .max(0);
        let spread = u64::try_from((window / 4).min(30_000)).unwrap_or(0);
        let wake_ms = entry
            .refresh_at_ms
            .saturating_sub(i64::try_from(fastrand::u64(0..=spread)).unwrap_or(0))
            .max(entry.min_refresh_at_ms());
        let wait = u64::try_from(wake_ms.saturating_sub(now_ms)).unwrap_or(0);
        now.checked_add(Duration::from_millis(wait)).unwrap_or(now)
    }

    /// One background step: join the running fetch or start one. Returns `None` when
    /// nothing could be started (a failure is being backed off).
    fn background_fetch(&self) -> Option<OutcomeReceiver<A::Token>> {
        let (outcome, pending) = {
            let mut state = self.inner.state.lock();
            if let Some(flight) = &state.flight {
                return Some(flight.outcome.clone());
            }
            if self.backing_off(&state) {
                return None;
            }
            self.register_flight(&mut state).ok()?
        };
        pending.spawn();
        Some(outcome)
    }

    /// Gets a new token: from the shared store if another holder published one, else from the
    /// provider (refresh when there is a previous token, authorize otherwise), with retries.
    /// With a store, follows rules 9–11.
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
        if let Some(err) = self.load_shared_failure(binding).await {
            return Err(err);
        }
        let lock_ttl = self.inner.policy.store_lock_ttl();
        let mut lock = match self.try_store_lock(binding, lock_ttl).await {
            LockAttempt::Taken(lock) => Some(lock),
            LockAttempt::Unavailable => None,
            LockAttempt::Busy => {
                // Another holder is fetching: wait for its token or failure; take over the
                // lock when it runs out (the holder died); fetch anyway after the deadline.
                bump(&self.inner.counters.lock_waits);
                let wait = lock_ttl + Duration::from_secs(1);
                let mut deadline = Instant::now() + wait;
                // A lock still held after one TTL belongs to a holder that took over from a
                // dead one (the first lock has run out): wait for that holder too, once.
                let mut take_overs_left = 1;
                // Poll quickly at first (most fetches take well under a second), then back
                // off to at most twice a second so a cold start with many keys and processes
                // does not flood the store.
                let mut poll_ms: u64 = 50;
                loop {
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(poll_ms / 2..=poll_ms)))
                        .await;
                    poll_ms = (poll_ms * 3 / 2).min(500);
                    if let Some(entry) = self.load_from_store(binding, previous).await {
                        return Ok(entry);
                    }
                    if let Some(err) = self.load_shared_failure(binding).await {
                        return Err(err);
                    }
                    match self.try_store_lock(binding, lock_ttl).await {
                        LockAttempt::Taken(lock) => break Some(lock),
                        LockAttempt::Unavailable => break None,
                        LockAttempt::Busy if Instant::now() >= deadline && take_overs_left > 0 => {
                            take_overs_left -= 1;
                            deadline = Instant::now() + wait;
                        }
                        LockAttempt::Busy if Instant::now() >= deadline => {
                            bump(&self.inner.counters.lock_timeouts);
                            tracing::warn!(
                                client_id = self.client_id(),
                                waited_ms = millis(wait) * 2,
                                "another process held the token store lock for too long; \
                                 fetching without it"
                            );
                            break None;
                        }
                        LockAttempt::Busy => {}
                    }
                }
            }
        };
        // Re-check after taking the lock: the previous holder may have just published its
        // token, or its failure (which it publishes before unlocking, so a waiter that read
        // "no failure" just before may take the lock right after it). A token read here is not
        // written back (rule 9).
        let settled = match self.load_from_store(binding, previous).await {
            Some(entry) => Some(Ok(entry)),
            None if lock.is_some() => self.load_shared_failure(binding).await.map(Err),
            None => None,
        };
        let result = match settled {
            Some(outcome) => outcome,
            None => {
                let result = self.fetch_from_provider(previous).await;
                match &result {
                    Ok(entry) => self.save_to_store(binding, entry).await,
                    Err(err) => self.publish_failure(binding, err).await,
                }
                result
            }
        };
        if let Some(lock) = lock.take() {
            self.store_call("unlock", binding.store.unlock(&binding.key, lock))
                .await;
        }
        result
    }

    /// Takes the store lock, reporting a store failure as `Unavailable` (rule 11).
    async fn try_store_lock(&self, binding: &StoreBinding<A::Token>, ttl: Duration) -> LockAttempt {
        match self
            .store_call("lock", binding.store.try_lock(&binding.key, ttl))
            .await
        {
            Some(Some(lock)) => LockAttempt::Taken(lock),
            Some(None) => LockAttempt::Busy,
            None => LockAttempt::Unavailable,
        }
    }

    /// One store call, cut off after [`STORE_CALL_TIMEOUT`]; a failure or timeout is counted
    /// and logged (once per outage) and comes back as `None` (rule 11).
    async fn store_call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Option<T> {
        match tokio::time::timeout(STORE_CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.store_ok();
                Some(value)
            }
            Ok(Err(err)) => {
                self.store_failed(what, &err);
                None
            }
            Err(_) => {
                let err = Error::Store {
                    message: format!("no answer within {} ms", STORE_CALL_TIMEOUT.as_millis()),
                    source: None,
                };
                self.store_failed(what, &err);
                None
            }
        }
    }

    /// A failure another process published for this key and that is still being waited out.
    async fn load_shared_failure(&self, binding: &StoreBinding<A::Token>) -> Option<Error> {
        match self
            .store_call("read failure", binding.store.load_failure(&binding.key))
            .await
        {
            Some(Some(failure)) if failure.retry_at > Utc::now() => {
                bump(&self.inner.counters.shared_failures);
                tracing::debug!(
                    client_id = self.client_id(),
                    kind = %failure.kind,
                    "another process's token fetch failed; backing off with it"
                );
                Some(failure.to_error())
            }
            _ => None,
        }
    }

    /// Tells the other processes that the fetch failed and how long to back off.
    async fn publish_failure(&self, binding: &StoreBinding<A::Token>, err: &Error) {
        let policy = &self.inner.policy;
        let delay = match err.retry_after() {
            Some(named) => named,
            None if err.is_transient() => policy.failure_cooldown,
            None => policy.permanent_failure_backoff,
        }
        .min(policy.max_failure_backoff);
        let Ok(delay) = chrono::Duration::from_std(delay) else {
            return;
        };
        let failure = crate::SharedFailure::from_error(err, Utc::now() + delay);
        self.store_call(
            "publish failure",
            binding.store.publish_failure(&binding.key, &failure),
        )
        .await;
    }

    /// Counts a failed store call; warns only on the first of an outage (rule 11).
    fn store_failed(&self, what: &str, err: &Error) {
        bump(&self.inner.counters.store_errors);
        if !self.inner.store_failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                client_id = self.client_id(), operation = what, error = %err,
                "token store unavailable; fetching without it (tokens are not shared with \
                 other processes until it is back)"
            );
        } else {
            tracing::debug!(operation = what, error = %err, "token store call failed");
        }
    }

    /// Notes a working store call; logs once when the store works again.
    fn store_ok(&self) {
        if self.inner.store_failing.load(Ordering::Relaxed)
            && self.inner.store_failing.swap(false, Ordering::AcqRel)
        {
            tracing::info!(
                client_id = self.client_id(),
                "token store reachable again; sharing tokens"
            );
        }
    }

    /// Starts, once, the task that applies the store's events to this cache (rule 12). It
    /// holds the cache weakly and ends with it.
    fn start_store_listener(&self) {
        if self.inner.listener_started.load(Ordering::Relaxed) {
            return;
        }
        let Some(binding) = &self.inner.store else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.listener_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(events) = binding.store.events() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let alive = self.inner.alive.clone();
        runtime.spawn(store_listener(weak, alive, events));
    }

    /// Drops the current token if it is the one with `fingerprint` (rejected elsewhere).
    fn apply_remote_invalidation(&self, key: &str, fingerprint: &str) {
        let Some(binding) = &self.inner.store else {
            return;
        };
        if binding.key.as_str() != key {
            return;
        }
        let Some(current) = self.inner.current.read().clone() else {
            return;
        };
        let Ok(encoded) = (binding.encode)(&current.token) else {
            return;
        };
        if crate::value_fingerprint(&encoded) == fingerprint
            && !current.rejected.swap(true, Ordering::AcqRel)
        {
            bump(&self.inner.counters.remote_invalidations);
            tracing::debug!(
                client_id = self.client_id(),
                "token rejected in another process; dropped"
            );
        }
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
                        bump(&counters.refreshes);
                        authorizer.refresh(&previous.token).await
                    }
                    None => {
                        bump(&counters.authorizations);
                        authorizer.authorize().await
                    }
                }
            })
            .await?;
        let entry = CachedToken::new(
            token,
            &self.inner.policy,
            self.inner.authorizer.token_scheme(),
        )?;
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
        let encoded = self
            .store_call("read", binding.store.load(&binding.key))
            .await??;
        let token = match (binding.decode)(encoded.expose_secret()) {
            Ok(token) => token,
            Err(_) => {
                tracing::warn!("token store holds an unreadable value; ignoring it");
                return None;
            }
        };
        if previous.is_some_and(|p| p.token.access_token() == token.access_token()) {
            return None; // the one we are replacing
        }
        let entry = CachedToken::new(
            token,
            &self.inner.policy,
            self.inner.authorizer.token_scheme(),
        )
        .ok()?;
        if self.is_stale(&entry) {
            return None;
        }
        bump(&self.inner.counters.store_hits);
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
        self.store_call("write", binding.store.save(&binding.key, &encoded, ttl))
            .await;
    }
}

/// A registered fetch, to be spawned once the state lock is released.
struct PendingFlight<A: Authorizer> {
    runtime: tokio::runtime::Handle,
    guard: FlightGuard<A>,
}

impl<A: Authorizer> PendingFlight<A> {
    fn spawn(self) {
        let PendingFlight { runtime, mut guard } = self;
        runtime.spawn(async move {
            let cache = guard.cache.clone();
            let previous = cache.inner.current.read().clone();
            let deadline = cache.fetch_deadline();
            let result =
                match tokio::time::timeout(deadline, cache.fetch(previous.as_deref())).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Transport {
                        message: format!(
                            "the token fetch did not finish within its deadline of {} s (provider \
                         and token store included)",
                            deadline.as_secs()
                        ),
                        timeout: true,
                        source: None,
                    }),
                };
            let outcome = cache.settle(guard.id, previous, result);
            guard.settled = true;
            guard.publish.send_replace(Some(outcome));
        });
    }
}

/// Owned by a fetch task. If the task ends without settling — it panicked, or its runtime
/// shut down — the drop frees the flight slot and records a transient failure (so a
/// panicking authorizer is not called again on every request), and the next caller is not
/// left waiting on a fetch that will never finish. Never dropped with the state lock held.
struct FlightGuard<A: Authorizer> {
    cache: TokenCache<A>,
    id: u64,
    publish: watch::Sender<Option<Outcome<A::Token>>>,
    settled: bool,
}

impl<A: Authorizer> Drop for FlightGuard<A> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let outcome = self.cache.settle(self.id, None, Err(abandoned_fetch()));
        self.publish.send_replace(Some(outcome));
    }
}

/// What an attempt to take the store lock came to.
enum LockAttempt {
    Taken(crate::StoreLock),
    Busy,
    /// The store failed: go on without it (rule 11).
    Unavailable,
}

/// The store listener (rule 12): applies invalidations from other processes. Holds the cache
/// weakly; ends when the cache is dropped or the store stops sending.
async fn store_listener<A: Authorizer>(
    cache: Weak<Inner<A>>,
    mut alive: watch::Receiver<()>,
    mut events: tokio::sync::broadcast::Receiver<crate::StoreEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = alive.changed() => return,
        };
        let Some(inner) = cache.upgrade() else { return };
        let cache_now = TokenCache { inner };
        match event {
            Ok(crate::StoreEvent::Invalidated { key, fingerprint }) => {
                cache_now.apply_remote_invalidation(&key, &fingerprint);
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

fn abandoned_fetch() -> Error {
    Error::Transport {
        message: "the token fetch ended without a result (its task panicked or the runtime \
                  shut down)"
            .into(),
        timeout: false,
        source: None,
    }
}

/// Lets the background task be started again if its runtime goes away.
struct BackgroundGuard<A: Authorizer>(Weak<Inner<A>>);

impl<A: Authorizer> Drop for BackgroundGuard<A> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.background_started.store(false, Ordering::Release);
        }
    }
}

/// The background refresh task (rule 8). Holds the cache weakly: it ends when the cache is
/// dropped, whether it is sleeping or waiting on a fetch.
async fn background_refresh<A: Authorizer>(cache: Weak<Inner<A>>, mut alive: watch::Receiver<()>) {
    let _restartable = BackgroundGuard(cache.clone());
    loop {
        let Some(inner) = cache.upgrade() else { return };
        let wake = TokenCache { inner }.next_background_wake();
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = alive.changed() => return,
        }
        let Some(inner) = cache.upgrade() else { return };
        let fetch = TokenCache { inner }.background_fetch();
        match fetch {
            Some(mut outcome) => {
                tokio::select! {
                    _ = outcome.wait_for(Option::is_some) => {}
                    _ = alive.changed() => return,
                }
            }
            // Backing off: the next wake is the failure's retry time. Never spin.
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

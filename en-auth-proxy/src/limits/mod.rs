//! Where the proxy keeps its limits: per-customer quotas, the wrong-secret lock-out, the memory
//! of secrets the upstream accepted, the budget for unauthenticated misses and the upstream's
//! rate-limit budget.
//!
//! One small trait, [`LimitStore`], with two implementations: this process's memory
//! (`LocalLimits`) and Redis for a fleet of instances (`RedisLimits`, wrapped so that a
//! Redis failure falls back to the local memory: nobody is refused because Redis is down).
//! The proxy's rules (what to count, when to refuse) live with the callers; a store only
//! counts, remembers and holds deadlines.
//!
//! Every time is a [`UnixMillis`] passed in by the caller, so that tests run on paused time and
//! every instance of a fleet agrees on window boundaries (windows are aligned to the epoch).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use en_auth_core::Error;

mod fallback;
mod local;
mod redis;

pub use fallback::{DEFAULT_FALLBACK_COOLDOWN, FallbackLimits, FallbackStats, MAX_PENDING};
pub use local::{DEFAULT_MAX_KEYS, LocalLimits};
pub use redis::{DEFAULT_LIMITS_TIMEOUT, KEY_PREFIX, RedisLimits, RedisLimitsBuilder};

/// Milliseconds since the UNIX epoch.
pub type UnixMillis = u64;

/// A keyed hash (HMAC-SHA256 under the proxy's secret key) of something the store must not
/// hold in clear, such as a client secret.
pub type Mac = [u8; 32];

/// What [`LimitStore::recall`] found in a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recall {
    /// The member asked about is in the set.
    pub member: bool,
    /// The set has at least one member.
    pub any: bool,
}

/// The upstream's rate-limit budget as [`LimitStore::take_budget`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// No budget known (never seen, or its window reset): go ahead.
    Unknown,
    /// One request taken; this many remain.
    Taken {
        /// Requests left in the window after this one.
        remaining: u64,
    },
    /// Not taken: only `keep` or fewer remain; wait until `reset`.
    Spent {
        /// When the window resets.
        reset: UnixMillis,
    },
}

/// Counters, sets and deadlines shared by everything that limits who is served.
///
/// Keys are plain strings chosen by the caller (`quota:<client id>`, `tried:<client id>`,
/// …); an implementation may prefix them. An implementation must not block: every method is
/// answered from memory or with one bounded network round trip.
#[async_trait]
pub trait LimitStore: Send + Sync + fmt::Debug + 'static {
    /// Adds `add` to the counter `key` for the fixed window of length `window` (aligned to the
    /// epoch) that contains `now`, and returns the count after adding. `add == 0` reads. A
    /// shared store that finds a stored count that is not a non-negative integer treats it as
    /// corrupt: it deletes it and counts the window afresh.
    async fn add(
        &self,
        key: &str,
        window: Duration,
        now: UnixMillis,
        add: u64,
    ) -> Result<u64, Error>;

    /// Adds `member` to the set `key`, kept for `ttl` after the last addition, and returns
    /// how many members the set has after adding (a member added again counts once). At most
    /// `cap` members are kept; the member added longest ago goes first.
    async fn remember(
        &self,
        key: &str,
        member: Mac,
        cap: usize,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<u64, Error>;

    /// Removes `member` from the set `key`, if it is there.
    async fn forget(&self, key: &str, member: &Mac) -> Result<(), Error>;

    /// Whether `member` is in the set `key`, and whether the set has any member.
    async fn recall(&self, key: &str, member: &Mac, now: UnixMillis) -> Result<Recall, Error>;

    /// Moves the deadline `key` to `until` unless it is later already.
    async fn hold_until(&self, key: &str, until: UnixMillis) -> Result<(), Error>;

    /// The deadline `key` if it is after `now`. Callers cap the deadlines they hold; one more
    /// than `max` after `now` (or, in a shared store, one that is not a time) was set by no
    /// caller: it is corrupt, and the store forgets it (deletes it) and answers `None`. A
    /// shared store allows a few seconds more for clocks that differ between instances.
    async fn held_until(
        &self,
        key: &str,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Option<UnixMillis>, Error>;

    /// Records the upstream's budget: `remaining` requests until `reset`.
    async fn set_budget(&self, key: &str, remaining: u64, reset: UnixMillis) -> Result<(), Error>;

    /// Takes one request from the budget `key` unless only `keep` or fewer remain. A budget
    /// whose reset is more than `max` after `now` (or, in a shared store, one that is not two
    /// non-negative integers) is corrupt: the store forgets it and answers
    /// [`Budget::Unknown`], as [`held_until`](Self::held_until) does with deadlines.
    async fn take_budget(
        &self,
        key: &str,
        keep: u64,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Budget, Error>;
}

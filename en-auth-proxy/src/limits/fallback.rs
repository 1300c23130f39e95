//! [`FallbackLimits`]: a shared store (Redis) with this process's memory behind it, so that
//! nobody is refused or failed because the shared store is down.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use en_auth_core::Error;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::redis::is_key_error;
use super::{Budget, LimitStore, Mac, Recall, UnixMillis};

/// Default time the shared store is left alone after a failure before it is tried again.
pub const DEFAULT_FALLBACK_COOLDOWN: Duration = Duration::from_secs(2);

/// A [`LimitStore`] that uses a shared store and falls back to a local one when it fails.
///
/// - Every write goes to both: the local store mirrors what this instance did, so that when
///   the shared store fails, this instance goes on with its own limits (its own counts, the
///   secrets it saw accepted, the blocks it saw) instead of starting from nothing.
/// - Reads merge both: the larger count and the later deadline, a member known to either.
///   So an outage of the shared store, or its restart with empty memory, never forgets what
///   this instance saw. A budget take is the shared store's answer while it works.
/// - A failed or timed-out call of the shared store is answered from the local store, and a
///   breaker stops using the shared store for a cool-down (default
///   [`DEFAULT_FALLBACK_COOLDOWN`]): a down Redis costs one timeout per cool-down, not one
///   per request. After the cool-down one call probes it; when it answers, the limits are
///   shared again.
/// - An error about what one key holds (a value of another type, or one that does not parse:
///   someone wrote it by hand, or a bug did) is not an outage: that call is answered from the
///   local store, the Redis store deletes the key (so the next call finds it absent), and
///   the breaker stays closed: every other key is still shared. Counted in
///   [`FallbackStats::key_errors`].
/// - What the fleet must not miss is told to it when the shared store is back: the secrets
///   seen accepted and the deadlines (429 blocks) set during an outage are written to it
///   again (at most [`MAX_PENDING`] of them, the oldest dropped first). Counts are not: their
///   windows are short.
/// - One warning per outage (when the shared store first fails), one info line when it is
///   back.
pub struct FallbackLimits {
    shared: Arc<dyn LimitStore>,
    local: Arc<dyn LimitStore>,
    cooldown: Duration,
    breaker: Mutex<Breaker>,
    pending: Mutex<std::collections::VecDeque<Pending>>,
}

/// Most writes kept during an outage to be told to the shared store when it is back.
pub const MAX_PENDING: usize = 1_000;

/// A write the shared store missed.
enum Pending {
    Remember {
        key: String,
        member: Mac,
        cap: usize,
        ttl: Duration,
        now: UnixMillis,
    },
    Hold {
        key: String,
        until: UnixMillis,
    },
}

#[derive(Default)]
struct Breaker {
    /// The shared store is not used before this.
    open_until: Option<Instant>,
    /// An outage is under way (warned about once).
    failing: bool,
    /// A call is probing the shared store after the cool-down.
    probing: bool,
    /// Outages seen so far.
    outages: u64,
    /// Calls answered locally because the shared store failed or was skipped.
    local_answers: u64,
    /// Calls the shared store failed because of what one key held.
    key_errors: u64,
}

impl std::fmt::Debug for FallbackLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let breaker = self.breaker.lock();
        f.debug_struct("FallbackLimits")
            .field("shared", &self.shared)
            .field("local", &self.local)
            .field("failing", &breaker.failing)
            .field("outages", &breaker.outages)
            .finish_non_exhaustive()
    }
}

/// Where one call goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The shared store works (as far as is known).
    Shared,
    /// The cool-down is over: this call tries the shared store again.
    Probe,
    /// The breaker is open: local only.
    Local,
}

/// Ends a probe when the call is done or dropped (a cancelled request must not leave the
/// breaker waiting for a probe that never ends).
struct ProbeGuard<'a>(Option<&'a Mutex<Breaker>>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.lock().probing = false;
        }
    }
}

/// What the fallback did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallbackStats {
    /// Whether the shared store is failing now (the breaker is open or probing).
    pub failing: bool,
    /// How many outages began (each logged once).
    pub outages: u64,
    /// Calls answered from the local store alone (key errors included).
    pub local_answers: u64,
    /// Calls the shared store failed because of what one key held (a value of another type,
    /// or not a number), answered locally without opening the breaker.
    pub key_errors: u64,
}

impl FallbackLimits {
    /// Uses `shared`, and `local` when `shared` fails.
    pub fn new(shared: Arc<dyn LimitStore>, local: Arc<dyn LimitStore>) -> Self {
        Self {
            shared,
            local,
            cooldown: DEFAULT_FALLBACK_COOLDOWN,
            breaker: Mutex::new(Breaker::default()),
            pending: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// How long the shared store is left alone after a failure (default
    /// [`DEFAULT_FALLBACK_COOLDOWN`]).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Outages and local answers so far.
    pub fn stats(&self) -> FallbackStats {
        let breaker = self.breaker.lock();
        FallbackStats {
            failing: breaker.failing,
            outages: breaker.outages,
            local_answers: breaker.local_answers,
            key_errors: breaker.key_errors,
        }
    }

    fn route(&self) -> Route {
        let mut breaker = self.breaker.lock();
        match breaker.open_until {
            None => Route::Shared,
            Some(until) if Instant::now() < until || breaker.probing => {
                breaker.local_answers += 1;
                Route::Local
            }
            Some(_) => {
                breaker.probing = true;
                Route::Probe
            }
        }
    }

    fn succeeded(&self) {
        let mut breaker = self.breaker.lock();
        let recovered = breaker.failing;
        breaker.failing = false;
        breaker.open_until = None;
        drop(breaker);
        if recovered {
            tracing::info!("Redis answers again: the proxy's limits are shared again");
            self.replay();
        }
    }

    /// Keeps a write the shared store missed, for when it is back.
    fn missed(&self, write: Pending) {
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(write);
    }

    /// Tells the shared store what it missed, in a task of its own (no request waits).
    fn replay(&self) {
        let writes: Vec<Pending> = self.pending.lock().drain(..).collect();
        if writes.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            for write in writes {
                let _ = match write {
                    Pending::Remember {
                        key,
                        member,
                        cap,
                        ttl,
                        now,
                    } => shared.remember(&key, member, cap, ttl, now).await.map(drop),
                    Pending::Hold { key, until } => shared.hold_until(&key, until).await,
                };
            }
        });
    }

    fn failed(&self, err: &Error) {
        let mut breaker = self.breaker.lock();
        breaker.open_until = Some(Instant::now() + self.cooldown);
        breaker.local_answers += 1;
        if !breaker.failing {
            breaker.failing = true;
            breaker.outages += 1;
            tracing::warn!(
                error = %err,
                "Redis is unavailable: each instance uses its own quotas, lock-out memory and \
                 upstream budget until it answers (nobody is refused because of it)"
            );
        }
    }

    /// Runs `local`, then `shared` when the breaker lets it, and merges the answers.
    async fn call<T, L, S>(
        &self,
        local: L,
        shared: S,
        merge: impl FnOnce(T, T) -> T,
    ) -> Result<T, Error>
    where
        L: std::future::Future<Output = Result<T, Error>>,
        S: std::future::Future<Output = Result<T, Error>>,
    {
        self.call_shared(local, shared, merge).await.0
    }

    /// [`call`](Self::call), and whether the shared store was reachable (it answered, or
    /// failed because of one key's value only: nothing to tell it again after an outage).
    async fn call_shared<T, L, S>(
        &self,
        local: L,
        shared: S,
        merge: impl FnOnce(T, T) -> T,
    ) -> (Result<T, Error>, bool)
    where
        L: std::future::Future<Output = Result<T, Error>>,
        S: std::future::Future<Output = Result<T, Error>>,
    {
        let local = local.await;
        let route = self.route();
        if route == Route::Local {
            return (local, false);
        }
        let _probe = ProbeGuard((route == Route::Probe).then_some(&self.breaker));
        match shared.await {
            Ok(shared) => {
                self.succeeded();
                let merged = match local {
                    Ok(local) => merge(shared, local),
                    Err(_) => shared,
                };
                (Ok(merged), true)
            }
            Err(err) if is_key_error(&err) => {
                // Redis answered: about this key only. The store repaired it; the breaker
                // stays closed (or closes, if this was the probe).
                self.succeeded();
                let mut breaker = self.breaker.lock();
                breaker.key_errors += 1;
                breaker.local_answers += 1;
                drop(breaker);
                tracing::debug!(error = %err, "limit store: one key's value failed a call");
                (local, true)
            }
            Err(err) => {
                self.failed(&err);
                (local, false)
            }
        }
    }
}

#[async_trait]
impl LimitStore for FallbackLimits {
    async fn add(
        &self,
        key: &str,
        window: Duration,
        now: UnixMillis,
        add: u64,
    ) -> Result<u64, Error> {
        self.call(
            self.local.add(key, window, now, add),
            self.shared.add(key, window, now, add),
            u64::max,
        )
        .await
    }

    async fn remember(
        &self,
        key: &str,
        member: Mac,
        cap: usize,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<u64, Error> {
        // The larger set: the fleet's, or this instance's when the shared store forgot (as
        // for counts); the local one alone when the shared store failed.
        let (result, shared) = self
            .call_shared(
                self.local.remember(key, member, cap, ttl, now),
                self.shared.remember(key, member, cap, ttl, now),
                u64::max,
            )
            .await;
        // Attempts tried (`tried:` sets) are not told later: their window is short, and a
        // burst of guesses must not push the accepted secrets out of the bounded queue.
        if !shared && !key.starts_with("tried:") {
            self.missed(Pending::Remember {
                key: key.to_owned(),
                member,
                cap,
                ttl,
                now,
            });
        }
        result
    }

    async fn forget(&self, key: &str, member: &Mac) -> Result<(), Error> {
        // Not told to the shared store later if it missed it: a forgotten attempt has a short
        // window, and a secret forgotten as accepted (refused by the provider) is forgotten
        // again at its next refusal upstream.
        self.call(
            self.local.forget(key, member),
            self.shared.forget(key, member),
            |(), ()| (),
        )
        .await
    }

    async fn recall(&self, key: &str, member: &Mac, now: UnixMillis) -> Result<Recall, Error> {
        self.call(
            self.local.recall(key, member, now),
            self.shared.recall(key, member, now),
            |a, b| Recall {
                member: a.member || b.member,
                any: a.any || b.any,
            },
        )
        .await
    }

    async fn hold_until(&self, key: &str, until: UnixMillis) -> Result<(), Error> {
        let (result, shared) = self
            .call_shared(
                self.local.hold_until(key, until),
                self.shared.hold_until(key, until),
                |(), ()| (),
            )
            .await;
        if !shared {
            self.missed(Pending::Hold {
                key: key.to_owned(),
                until,
            });
        }
        result
    }

    async fn held_until(
        &self,
        key: &str,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Option<UnixMillis>, Error> {
        self.call(
            self.local.held_until(key, now, max),
            self.shared.held_until(key, now, max),
            Option::max,
        )
        .await
    }

    async fn set_budget(&self, key: &str, remaining: u64, reset: UnixMillis) -> Result<(), Error> {
        self.call(
            self.local.set_budget(key, remaining, reset),
            self.shared.set_budget(key, remaining, reset),
            |(), ()| (),
        )
        .await
    }

    async fn take_budget(
        &self,
        key: &str,
        keep: u64,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Budget, Error> {
        // The local take keeps this instance's mirror counting down; the fleet's answer wins.
        self.call(
            self.local.take_budget(key, keep, now, max),
            self.shared.take_budget(key, keep, now, max),
            |shared, _local| shared,
        )
        .await
    }
}

//! [`TokenStats`]: counters of what the lifecycle did, for logs, tests and dashboards.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the lifecycle did, for logs, tests and dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Calls of [`Authorizer::authorize`](crate::Authorizer::authorize) (each retry counts).
    pub authorizations: u64,
    /// Calls of [`Authorizer::refresh`](crate::Authorizer::refresh) (each retry counts).
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
    /// [`LifecyclePolicy::rejection_interval`](crate::LifecyclePolicy::rejection_interval) ago.
    pub rejections_absorbed: u64,
    /// Requests replayed with a new token after a 401 (counted by the middleware).
    pub replays: u64,
    /// Fetches that found the store lock held by another process and waited for it.
    pub lock_waits: u64,
    /// Waits for another lock holder that ran out (twice [`LifecyclePolicy::store_lock_ttl`](crate::LifecyclePolicy::store_lock_ttl)
    /// plus a second: the holder and one that took over from it) without a token or failure;
    /// the fetch went on without the lock.
    pub lock_timeouts: u64,
    /// Failures published by another process's fetch, answered here without a provider call.
    pub shared_failures: u64,
    /// Store calls that failed (store down or slow); each was worked around.
    pub store_errors: u64,
    /// Tokens dropped because another process reported them rejected.
    pub remote_invalidations: u64,
    /// Refreshes that started from the token in the shared store rather than this cache's
    /// own: another process had rotated the refresh token since, or this cache had none (a
    /// cold start, counted too). Only authorizers whose
    /// [`refresh_spends_token`](crate::Authorizer::refresh_spends_token) is `true` do so.
    pub refreshes_from_store: u64,
}

/// The live counters behind [`TokenStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) authorizations: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) failures_served: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) store_hits: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) rejections_absorbed: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) lock_waits: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) shared_failures: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) remote_invalidations: AtomicU64,
    pub(crate) refreshes_from_store: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A snapshot of every counter.
    pub(crate) fn snapshot(&self) -> TokenStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TokenStats {
            authorizations: load(&self.authorizations),
            refreshes: load(&self.refreshes),
            fetches: load(&self.fetches),
            failures: load(&self.failures),
            failures_served: load(&self.failures_served),
            waits: load(&self.waits),
            store_hits: load(&self.store_hits),
            invalidations: load(&self.invalidations),
            rejections_absorbed: load(&self.rejections_absorbed),
            replays: load(&self.replays),
            lock_waits: load(&self.lock_waits),
            lock_timeouts: load(&self.lock_timeouts),
            shared_failures: load(&self.shared_failures),
            store_errors: load(&self.store_errors),
            remote_invalidations: load(&self.remote_invalidations),
            refreshes_from_store: load(&self.refreshes_from_store),
        }
    }
}

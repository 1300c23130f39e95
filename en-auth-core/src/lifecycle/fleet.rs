//! [`Fleet`]: sharing one token through a [`TokenStore`], as a decorator around the fetch.
//!
//! # The protocol
//!
//! A fetch first reads the store (a token another holder published, or a failure it is
//! still backing off from), then takes the store's lock, reads once more, asks the provider,
//! publishes the token — or the failure with its back-off — and unlocks. A waiter polls for
//! the token, a published failure, and the lock (whose holder may have died). Only a token
//! from the provider is written; a token read from the store never is (it could bring back
//! one another process removed as rejected).
//!
//! # Which token a refresh starts from
//!
//! The one in the store, read under the lock, when it is another token than the cache's own
//! and not older ([`refresh_base`]): with refresh tokens that rotate, another process may have
//! spent the cache's own since, and a provider with reuse detection revokes the whole grant
//! when it comes back. The fetch gets the token to refresh only then, as the argument of its
//! `provider` closure.
//!
//! # Availability
//!
//! Every store call is cut off after [`STORE_CALL_TIMEOUT`]. A failing store never fails a
//! fetch: it goes on without the store. One warning per outage, one line when it is back.
//!
//! The full rules, with a timeline, are in `docs/lifecycle.md`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::cached::Prepared;
use super::state::Freshness;
use super::stats::{Counters, bump};
use crate::{AccessToken, CacheKey, Error, LifecyclePolicy, SharedFailure, TokenStore};

/// Each call to a [`TokenStore`] is given this long; a store that takes longer counts as
/// failing, and the fetch goes on without it.
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A token read or fetched, judged.
pub(crate) type Judged<T> = (Prepared<T>, Freshness);

/// A store bound to one cache key, and its health as this cache sees it.
pub(crate) struct Fleet<T> {
    store: Arc<dyn TokenStore>,
    pub(crate) key: CacheKey,
    pub(crate) encode: fn(&T) -> serde_json::Result<String>,
    decode: fn(&str) -> serde_json::Result<T>,
    /// Whether the last store call failed (one warning per outage).
    failing: AtomicBool,
    /// Whether the listener for other processes' events runs.
    pub(crate) listener_started: AtomicBool,
}

/// What a fetch through the fleet needs from its cache.
pub(crate) struct FetchContext<'a, T> {
    pub policy: &'a LifecyclePolicy,
    pub counters: &'a Counters,
    pub client_id: &'a str,
    /// Prepares and judges a token read from the store.
    pub judge: &'a (dyn Judge<T> + Send + Sync),
}

/// Turns a token that just arrived into a judged one (the cache's rules).
pub(crate) trait Judge<T> {
    fn judge(&self, token: T) -> Result<Judged<T>, Error>;
}

/// What an attempt to take the store lock came to.
enum LockAttempt {
    Taken(crate::StoreLock),
    Busy,
    /// The store failed: go on without it.
    Unavailable,
}

impl<T: AccessToken> Fleet<T> {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        key: CacheKey,
        encode: fn(&T) -> serde_json::Result<String>,
        decode: fn(&str) -> serde_json::Result<T>,
    ) -> Self {
        Self {
            store,
            key,
            encode,
            decode,
            failing: AtomicBool::new(false),
            listener_started: AtomicBool::new(false),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// Gets a token for a cache whose token `previous` is being replaced: from the store if
    /// another holder published one, else from `provider` under the store's lock (see the
    /// [module docs](self)). `provider` is given the token its refresh starts from, chosen
    /// under the lock ([`refresh_base`]); `None` asks for a new authorization.
    pub(crate) async fn fetch<'p, F, Fut>(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&'p T>,
        provider: F,
    ) -> Result<Judged<T>, Error>
    where
        F: FnOnce(Option<Cow<'p, T>>) -> Fut,
        Fut: Future<Output = Result<Judged<T>, Error>>,
    {
        let previous_access = previous.map(AccessToken::access_token);
        if let Some(judged) = self.load(cx, previous_access).await {
            return Ok(judged);
        }
        if let Some(err) = self.load_failure(cx).await {
            return Err(err);
        }
        let lock_ttl = cx.policy.store_lock_ttl();
        let mut lock = match self.try_lock(cx, lock_ttl).await {
            LockAttempt::Taken(lock) => Some(lock),
            LockAttempt::Unavailable => None,
            LockAttempt::Busy => match self.wait_for_holder(cx, previous_access, lock_ttl).await {
                Waited::Settled(outcome) => return outcome,
                Waited::Lock(lock) => lock,
            },
        };
        // Re-check under the lock: the previous holder may have just published its token, or
        // its failure (published before it unlocks). A stored token that is not fresh enough
        // to serve may still be the one to refresh from: its refresh token is the newest.
        let stored = self.read(cx).await;
        let usable = stored
            .clone()
            .and_then(|token| self.usable(cx, token, previous_access));
        let settled = match usable {
            Some(judged) => Some(Ok(judged)),
            None if lock.is_some() => self.load_failure(cx).await.map(Err),
            None => None,
        };
        let result = match settled {
            Some(outcome) => outcome,
            None => {
                let base = refresh_base(previous, stored);
                if matches!(base, Some(Cow::Owned(_))) {
                    bump(&cx.counters.refreshes_from_store);
                    tracing::debug!(
                        client_id = cx.client_id,
                        "refreshing from the token another process stored (its refresh token \
                         is the newest)"
                    );
                }
                let result = provider(base).await;
                match &result {
                    Ok(judged) => self.save(cx, judged).await,
                    Err(err) => self.publish_failure(cx, err).await,
                }
                result
            }
        };
        if let Some(lock) = lock.take() {
            self.call(cx, "unlock", self.store.unlock(&self.key, lock))
                .await;
        }
        result
    }

    /// Another holder has the lock: wait for its token or failure; take the lock over when it
    /// runs out (the holder died); give up waiting after the deadline.
    async fn wait_for_holder(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&str>,
        lock_ttl: Duration,
    ) -> Waited<T> {
        bump(&cx.counters.lock_waits);
        let wait = lock_ttl.saturating_add(Duration::from_secs(1));
        let mut deadline = deadline_after(wait);
        // A lock still held after one TTL belongs to a holder that took over from a dead
        // one: wait for that holder too, once.
        let mut take_overs_left = 1;
        // Poll quickly at first (most fetches take well under a second), then at most twice
        // a second, so a cold start of many processes does not flood the store.
        let mut poll_ms: u64 = 50;
        loop {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(poll_ms / 2..=poll_ms))).await;
            poll_ms = (poll_ms * 3 / 2).min(500);
            if let Some(judged) = self.load(cx, previous).await {
                return Waited::Settled(Ok(judged));
            }
            if let Some(err) = self.load_failure(cx).await {
                return Waited::Settled(Err(err));
            }
            match self.try_lock(cx, lock_ttl).await {
                LockAttempt::Taken(lock) => return Waited::Lock(Some(lock)),
                LockAttempt::Unavailable => return Waited::Lock(None),
                LockAttempt::Busy if Instant::now() < deadline => {}
                LockAttempt::Busy if take_overs_left > 0 => {
                    take_overs_left -= 1;
                    deadline = deadline_after(wait);
                }
                LockAttempt::Busy => {
                    bump(&cx.counters.lock_timeouts);
                    tracing::warn!(
                        client_id = cx.client_id,
                        waited_ms =
                            u64::try_from(wait.saturating_mul(2).as_millis()).unwrap_or(u64::MAX),
                        "another process held the token store lock for too long; fetching \
                         without it"
                    );
                    return Waited::Lock(None);
                }
            }
        }
    }

    async fn try_lock(&self, cx: &FetchContext<'_, T>, ttl: Duration) -> LockAttempt {
        match self
            .call(cx, "lock", self.store.try_lock(&self.key, ttl))
            .await
        {
            Some(Some(lock)) => LockAttempt::Taken(lock),
            Some(None) => LockAttempt::Busy,
            None => LockAttempt::Unavailable,
        }
    }

    /// A fresh token in the store that is not `previous`.
    async fn load(&self, cx: &FetchContext<'_, T>, previous: Option<&str>) -> Option<Judged<T>> {
        let token = self.read(cx).await?;
        self.usable(cx, token, previous)
    }

    /// The token in the store, decoded, whatever its freshness; an unreadable value is none.
    async fn read(&self, cx: &FetchContext<'_, T>) -> Option<T> {
        let encoded = self.call(cx, "read", self.store.load(&self.key)).await??;
        match (self.decode)(encoded.expose_secret()) {
            Ok(token) => Some(token),
            Err(_) => {
                tracing::warn!("token store holds an unreadable value; ignoring it");
                None
            }
        }
    }

    /// `token`, read from the store, judged, if it is fresh and not `previous`.
    fn usable(
        &self,
        cx: &FetchContext<'_, T>,
        token: T,
        previous: Option<&str>,
    ) -> Option<Judged<T>> {
        if previous.is_some_and(|p| p == token.access_token()) {
            return None; // the one being replaced
        }
        // Judging may call the application's `Authorizer::expired`: a panic there must not
        // leave the store's lock to run out, so it counts as an unusable value.
        let judged =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cx.judge.judge(token)))
                .ok()?
                .ok()?;
        if !judged.1.is_fresh(Instant::now()) {
            return None;
        }
        bump(&cx.counters.store_hits);
        Some(judged)
    }

    async fn save(&self, cx: &FetchContext<'_, T>, (prepared, freshness): &Judged<T>) {
        let ttl = freshness
            .expires_at()
            .saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return;
        }
        let Ok(encoded) = (self.encode)(prepared.token()) else {
            return;
        };
        let encoded = SecretString::from(encoded);
        self.call(cx, "write", self.store.save(&self.key, &encoded, ttl))
            .await;
    }

    /// A failure another process published and that is still being waited out; its
    /// `retry_at` is believed at most [`LifecyclePolicy::max_failure_backoff`] ahead.
    async fn load_failure(&self, cx: &FetchContext<'_, T>) -> Option<Error> {
        let mut failure = self
            .call(cx, "read failure", self.store.load_failure(&self.key))
            .await??;
        let now = Utc::now();
        if failure.retry_at <= now {
            return None;
        }
        if let Some(latest) = chrono::Duration::from_std(cx.policy.max_failure_backoff)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
        {
            failure.retry_at = failure.retry_at.min(latest);
        }
        bump(&cx.counters.shared_failures);
        tracing::debug!(
            client_id = cx.client_id,
            kind = %failure.kind,
            "another process's token fetch failed; backing off with it"
        );
        Some(failure.to_error())
    }

    /// Tells the other processes that the fetch failed and how long to back off: the first
    /// step of the failure schedule, or the delay the server named.
    async fn publish_failure(&self, cx: &FetchContext<'_, T>, err: &Error) {
        // This process's own credential source (its assertion file, its workload agent) says
        // nothing about the provider: the other processes read their own.
        if matches!(err, Error::CredentialUnavailable { .. }) {
            return;
        }
        let schedule = cx.policy.failure_schedule(err);
        let delay = err
            .retry_after()
            .unwrap_or(schedule.ceiling(0))
            .min(schedule.max);
        let Some(retry_at) = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
        else {
            return;
        };
        let failure = SharedFailure::from_error(err, retry_at);
        self.call(
            cx,
            "publish failure",
            self.store.publish_failure(&self.key, &failure),
        )
        .await;
    }

    /// Removes `token` from the store if it is still the stored one (an API rejected it).
    pub(crate) async fn remove_rejected(&self, cx: &FetchContext<'_, T>, token: &T) {
        if let Ok(encoded) = (self.encode)(token) {
            let encoded = SecretString::from(encoded);
            self.call(
                cx,
                "remove rejected token",
                self.store.remove_if(&self.key, &encoded),
            )
            .await;
        }
    }

    /// One store call, cut off after [`STORE_CALL_TIMEOUT`]; a failure or timeout is counted
    /// and logged (once per outage) and comes back as `None`.
    async fn call<R>(
        &self,
        cx: &FetchContext<'_, T>,
        what: &str,
        call: impl Future<Output = Result<R, Error>>,
    ) -> Option<R> {
        let err = match tokio::time::timeout(STORE_CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if self.failing.load(Ordering::Relaxed)
                    && self.failing.swap(false, Ordering::AcqRel)
                {
                    tracing::info!(
                        client_id = cx.client_id,
                        "token store reachable again; sharing tokens"
                    );
                }
                return Some(value);
            }
            Ok(Err(err)) => err,
            Err(_) => Error::Store {
                message: format!("no answer within {} ms", STORE_CALL_TIMEOUT.as_millis()),
                source: None,
            },
        };
        bump(&cx.counters.store_errors);
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                client_id = cx.client_id, operation = what, error = %err,
                "token store unavailable; fetching without it (tokens are not shared with \
                 other processes until it is back)"
            );
        } else {
            tracing::debug!(operation = what, error = %err, "token store call failed");
        }
        None
    }
}

/// How waiting for another holder ended.
enum Waited<T> {
    /// Its token or failure.
    Settled(Result<Judged<T>, Error>),
    /// The lock (taken over), or `None` to go on without it.
    Lock(Option<crate::StoreLock>),
}

fn deadline_after(wait: Duration) -> Instant {
    super::state::later(Instant::now(), wait)
}

/// The token a fetch under the store's lock refreshes: the one in the store when it is
/// another token than `previous` and not older than it (another process rotated the refresh
/// token, and only the stored token carries the newest one), else `previous`. A cache
/// without a token of its own (a cold start) refreshes the stored token too, stale or
/// expired, rather than starting a new session. `None`: nothing to refresh, authorize.
pub(crate) fn refresh_base<'p, T: AccessToken>(
    previous: Option<&'p T>,
    stored: Option<T>,
) -> Option<Cow<'p, T>> {
    match (previous, stored) {
        (Some(previous), Some(stored))
            if stored.access_token() != previous.access_token()
                && !issued_before(&stored, previous) =>
        {
            Some(Cow::Owned(stored))
        }
        (Some(previous), _) => Some(Cow::Borrowed(previous)),
        (None, stored) => stored.map(Cow::Owned),
    }
}

/// Whether `a` was obtained before `b`, judged by their issue times, else their expiries;
/// `false` when neither is known for both. A store holds an older token than a cache only
/// when the cache's own write failed (the store was down): its refresh token is spent.
fn issued_before<T: AccessToken>(a: &T, b: &T) -> bool {
    if let (Some(a), Some(b)) = (a.issued_at(), b.issued_at()) {
        return a < b;
    }
    matches!((a.expires_at(), b.expires_at()), (Some(a), Some(b)) if a < b)
}

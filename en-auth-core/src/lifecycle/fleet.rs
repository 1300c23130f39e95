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
//! For an authorizer whose refresh spends a refresh token
//! ([`Authorizer::refresh_spends_token`](crate::Authorizer::refresh_spends_token)), the one in
//! the store, read under the lock, when it is another token than the cache's own and the
//! cache's own was saved (else: not older) ([`Fleet::refresh_base`]): with refresh tokens that
//! rotate, another process may have spent the cache's own since, and a provider with reuse
//! detection revokes the whole grant when it comes back. For any other authorizer, the
//! cache's own token (a cache without one authorizes). The fetch gets the token to refresh
//! only then, as the argument of its `provider` closure.
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

use super::cached::{CachedToken, Prepared};
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
    /// Whether the cache's own token came from the provider and could not be saved to the
    /// store (the store was down): then a different stored token may be the older one.
    own_unsaved: AtomicBool,
}

/// What a fetch through the fleet needs from its cache.
pub(crate) struct FetchContext<'a, T> {
    pub policy: &'a LifecyclePolicy,
    pub counters: &'a Counters,
    pub client_id: &'a str,
    /// Whether a refresh spends the token's refresh token
    /// ([`Authorizer::refresh_spends_token`](crate::Authorizer::refresh_spends_token)).
    pub spends_token: bool,
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
            own_unsaved: AtomicBool::new(false),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// Gets a token for a cache whose token `previous` is being replaced: from the store if
    /// another holder published one, else from `provider` under the store's lock (see the
    /// [module docs](self)). `provider` is given the token its refresh starts from, chosen
    /// under the lock ([`Fleet::refresh_base`]); `None` asks for a new authorization. It is
    /// called a second time only when the refresh of a stored token was refused
    /// (`invalid_grant`): then from `previous`.
    ///
    /// When `previous` was rejected by an API and the authorizer's refresh spends a refresh
    /// token, the fetch removes it from the store under the lock (the cache did not, see
    /// `TokenCache::report_rejection`): removed before, the store would hold nothing while
    /// the one good refresh token is being spent, and another process could refresh its own
    /// older, spent one.
    pub(crate) async fn fetch<'p, F, Fut>(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&'p CachedToken<T>>,
        provider: F,
    ) -> Result<Judged<T>, Error>
    where
        F: Fn(Option<Cow<'p, T>>) -> Fut,
        Fut: Future<Output = Result<Judged<T>, Error>>,
    {
        let previous = previous.map(|cached| Previous {
            token: cached.token(),
            // Refresh tokens: an access token may come back unchanged with a new one.
            encoded: cx
                .spends_token
                .then(|| self.encoded(cached.token()))
                .flatten(),
            cached,
        });
        if let Some(judged) = self.load(cx, previous.as_ref()).await {
            return Ok(judged);
        }
        if let Some(err) = self.load_failure(cx).await {
            return Err(err);
        }
        let lock_ttl = cx.policy.store_lock_ttl();
        let mut waited_out = false;
        let mut lock = match self.try_lock(cx, lock_ttl).await {
            LockAttempt::Taken(lock) => Some(lock),
            LockAttempt::Unavailable => None,
            LockAttempt::Busy => {
                match self.wait_for_holder(cx, previous.as_ref(), lock_ttl).await {
                    Waited::Settled(outcome) => return outcome,
                    Waited::Lock(lock) => {
                        waited_out = lock.is_none();
                        lock
                    }
                }
            }
        };
        // Re-check under the lock: the previous holder may have just published its token, or
        // its failure (published before it unlocks). After a wait that ran out, this is one
        // more look before the provider is called without the lock. A stored token that is
        // not fresh enough to serve may still be the one to refresh from: its refresh token
        // is the newest.
        let mut stored = self.read(cx).await;
        if let Some((token, value)) = &stored
            && cx.spends_token
            && previous
                .as_ref()
                .is_some_and(|p| p.cached.is_rejected() && p.is(self, token))
        {
            self.remove(cx, "remove rejected token", value).await;
            stored = None;
        }
        let usable = stored
            .clone()
            .and_then(|(token, _)| self.usable(cx, token, previous.as_ref()));
        let settled = match usable {
            Some(judged) => {
                self.own_unsaved.store(false, Ordering::Relaxed);
                Some(Ok(judged))
            }
            None if lock.is_some() || waited_out => self.load_failure(cx).await.map(Err),
            None => None,
        };
        let result = match settled {
            Some(outcome) => outcome,
            None => self.refresh(cx, previous.as_ref(), stored, &provider).await,
        };
        if let Some(lock) = lock.take() {
            self.call(cx, "unlock", self.store.unlock(&self.key, lock))
                .await;
        }
        result
    }

    /// Asks `provider` for a token (a refresh from [`Fleet::refresh_base`], or a new
    /// authorization), then saves it or publishes the failure. A refused refresh of the
    /// stored token (`invalid_grant`: revoked, or spent) removes that record and asks once
    /// more, from the cache's own token, before anything is published: otherwise every
    /// process would refresh the same dead token after each back-off until it expires.
    async fn refresh<'p, F, Fut>(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&Previous<'p, T>>,
        stored: Option<(T, SecretString)>,
        provider: &F,
    ) -> Result<Judged<T>, Error>
    where
        F: Fn(Option<Cow<'p, T>>) -> Fut,
        Fut: Future<Output = Result<Judged<T>, Error>>,
    {
        let (base, stored_value) = self.refresh_base(cx, previous, stored);
        let from_store = stored_value.is_some();
        if from_store {
            // A cold start counts too: its refresh starts from the stored token as well.
            bump(&cx.counters.refreshes_from_store);
            tracing::debug!(
                client_id = cx.client_id,
                cold_start = previous.is_none(),
                "refreshing from the token another process stored (its refresh token is the \
                 newest)"
            );
        }
        let mut result = provider(base).await;
        if let (Err(err), Some(value)) = (&result, &stored_value)
            && is_refused_grant(err)
        {
            tracing::warn!(
                client_id = cx.client_id,
                error = %err,
                "the provider refused the stored token's refresh token; removing it from the \
                 store and refreshing this process's own token"
            );
            self.remove(cx, "remove refused token", value).await;
            result = provider(previous.map(|p| Cow::Borrowed(p.token))).await;
        }
        match &result {
            Ok(judged) => {
                let saved = self.save(cx, judged).await;
                self.own_unsaved.store(!saved, Ordering::Relaxed);
            }
            Err(err) => self.publish_failure(cx, err).await,
        }
        result
    }

    /// The token a fetch under the store's lock refreshes, and the stored value when it is
    /// the stored one. When the authorizer's refresh spends a refresh token
    /// ([`FetchContext::spends_token`]): the stored token when it is another token than
    /// `previous` and `previous` was saved to the store (a later write is a newer token,
    /// whatever the clocks of the hosts that wrote them say), or, when `previous` could not be
    /// saved, when the stored one is not older by issue time, else expiry (the store then
    /// still holds the token whose refresh token the cache spent). A cache without a token
    /// of its own (a cold start) refreshes the stored token, stale or expired, rather than
    /// starting a new session. Otherwise, and for any other authorizer: `previous`.
    /// `None`: nothing to refresh, authorize.
    fn refresh_base<'p>(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&Previous<'p, T>>,
        stored: Option<(T, SecretString)>,
    ) -> (Option<Cow<'p, T>>, Option<SecretString>) {
        let own = previous.map(|p| Cow::Borrowed(p.token));
        let Some((stored, value)) = stored.filter(|_| cx.spends_token) else {
            return (own, None);
        };
        let Some(previous) = previous else {
            return (Some(Cow::Owned(stored)), Some(value));
        };
        let own_unsaved = self.own_unsaved.load(Ordering::Relaxed);
        // Comparing may call the application's token methods: a panic keeps the own token.
        let newer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let older = own_unsaved && issued_before(&stored, previous.token);
            !previous.is(self, &stored) && !older
        }))
        .unwrap_or(false);
        if newer {
            (Some(Cow::Owned(stored)), Some(value))
        } else {
            (own, None)
        }
    }

    /// `token` encoded as the store holds it, to tell tokens apart by every field (an access
    /// token may come back unchanged with a new refresh token); `None` if it cannot be.
    fn encoded(&self, token: &T) -> Option<SecretString> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.encode)(token)))
            .ok()?
            .ok()
            .map(SecretString::from)
    }

    /// Another holder has the lock: wait for its token or failure; take the lock over when it
    /// runs out (the holder died); give up waiting after the deadline.
    async fn wait_for_holder(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&Previous<'_, T>>,
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
    async fn load(
        &self,
        cx: &FetchContext<'_, T>,
        previous: Option<&Previous<'_, T>>,
    ) -> Option<Judged<T>> {
        let (token, _) = self.read(cx).await?;
        let judged = self.usable(cx, token, previous)?;
        self.own_unsaved.store(false, Ordering::Relaxed);
        Some(judged)
    }

    /// The token in the store, decoded, whatever its freshness, with the stored value; an
    /// unreadable value is none.
    async fn read(&self, cx: &FetchContext<'_, T>) -> Option<(T, SecretString)> {
        let encoded = self.call(cx, "read", self.store.load(&self.key)).await??;
        match (self.decode)(encoded.expose_secret()) {
            Ok(token) => Some((token, encoded)),
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
        previous: Option<&Previous<'_, T>>,
    ) -> Option<Judged<T>> {
        // Judging may call the application's `Authorizer::expired` (and comparing, its token
        // methods): a panic there must not leave the store's lock to run out, so it counts as
        // an unusable value.
        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if previous.is_some_and(|p| p.is(self, &token)) {
                return None; // the one being replaced
            }
            cx.judge.judge(token).ok()
        }))
        .ok()??;
        if !judged.1.is_fresh(Instant::now()) {
            return None;
        }
        bump(&cx.counters.store_hits);
        Some(judged)
    }

    /// Writes a token from the provider; whether the store now holds it.
    async fn save(&self, cx: &FetchContext<'_, T>, (prepared, freshness): &Judged<T>) -> bool {
        let ttl = freshness
            .expires_at()
            .saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return false;
        }
        let Some(encoded) = self.encoded(prepared.token()) else {
            return false;
        };
        self.call(cx, "write", self.store.save(&self.key, &encoded, ttl))
            .await
            .is_some()
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
        if let Some(encoded) = self.encoded(token) {
            self.remove(cx, "remove rejected token", &encoded).await;
        }
    }

    /// Removes the stored `value` if it is still the stored one.
    async fn remove(&self, cx: &FetchContext<'_, T>, what: &str, value: &SecretString) {
        self.call(cx, what, self.store.remove_if(&self.key, value))
            .await;
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

/// The cache's own token, and its value as the store would hold it.
struct Previous<'p, T> {
    token: &'p T,
    /// Only for authorizers whose refresh spends a refresh token.
    encoded: Option<SecretString>,
    /// The cached token, to ask whether an API rejected it.
    cached: &'p CachedToken<T>,
}

impl<T: AccessToken> Previous<'_, T> {
    /// Whether `other` is this very token: the same access token and, when this one's
    /// encoded value is known (refresh tokens), the same encoded value (every field, the
    /// refresh token included).
    fn is(&self, fleet: &Fleet<T>, other: &T) -> bool {
        if self.token.access_token() != other.access_token() {
            return false;
        }
        match (&self.encoded, fleet.encoded(other)) {
            (Some(own), Some(other)) => own.expose_secret() == other.expose_secret(),
            _ => true,
        }
    }
}

/// Whether the provider refused the grant a refresh spent (`invalid_grant`).
fn is_refused_grant(err: &Error) -> bool {
    matches!(err, Error::Authorization { error, .. } if error == "invalid_grant")
}

/// Whether `a` was obtained before `b`, judged by their issue times, else their expiries;
/// `false` when neither is known for both. Asked only when the cache's own write failed (the
/// store was down): the store may then hold the token whose refresh token the cache spent.
/// The times may come from the clocks of different hosts.
fn issued_before<T: AccessToken>(a: &T, b: &T) -> bool {
    if let (Some(a), Some(b)) = (a.issued_at(), b.issued_at()) {
        return a < b;
    }
    matches!((a.expires_at(), b.expires_at()), (Some(a), Some(b)) if a < b)
}

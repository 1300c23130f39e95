//! [`TokenCache`]: the driver of the lifecycle. It asks [`TokenState`] what to do, runs the
//! one shared fetch it asks for in a task of its own, and hands its outcome to every waiter.
//! Nothing else: every rule is the machine's.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cached::CachedToken;
use super::fleet::Fleet;
use super::flight::abandoned_fetch;
use super::policy::LifecyclePolicy;
use super::state::{Action, FlightId, Need, Rejected, TokenState};
use super::stats::{Counters, TokenStats, bump};
use crate::{AccessToken, Authorizer, Error};

/// What a fetch ends with; shared by everyone waiting on it.
pub(super) type Outcome<T> = Result<Arc<CachedToken<T>>, Arc<Error>>;

/// Where a fetch's outcome appears.
pub(super) type OutcomeReceiver<T> = watch::Receiver<Option<Outcome<T>>>;

/// The machine and the outcome channel of its running fetch, under one lock that is never
/// held across an `.await`.
pub(super) struct Driven<T> {
    pub(super) machine: TokenState<Arc<CachedToken<T>>>,
    pub(super) flight: Option<(FlightId, OutcomeReceiver<T>)>,
}

impl<T> Driven<T> {
    pub(super) fn new(machine: TokenState<Arc<CachedToken<T>>>) -> Self {
        Self {
            machine,
            flight: None,
        }
    }

    /// Drops the outcome channel of fetch `id` if it is the running one.
    pub(super) fn end_flight(&mut self, id: FlightId) {
        if self
            .flight
            .as_ref()
            .is_some_and(|(running, _)| *running == id)
        {
            self.flight = None;
        }
    }
}

pub(super) struct Inner<A: Authorizer> {
    pub(super) authorizer: A,
    pub(super) policy: LifecyclePolicy,
    /// The current token for the per-request read: the machine's, mirrored under `state`.
    pub(super) current: RwLock<Option<Arc<CachedToken<A::Token>>>>,
    /// Only through [`TokenCache::lock_state`], which keeps `quiet_until` in step.
    pub(super) state: Mutex<Driven<A::Token>>,
    /// The machine's [`quiet_until`](TokenState::quiet_until), in nanoseconds after
    /// `clock_base` (0: ask the machine): lets requests for a stale token skip the lock while
    /// its refresh runs or a failure is backed off.
    pub(super) quiet_until: AtomicU64,
    pub(super) clock_base: Instant,
    pub(super) fleet: Option<Fleet<A::Token>>,
    pub(super) counters: Counters,
    pub(super) background_started: AtomicBool,
    /// Dropped with the cache: the background tasks watch it to end.
    pub(super) _alive: watch::Sender<()>,
    pub(super) alive: watch::Receiver<()>,
}

/// Caches one authorizer's token and keeps it fresh, following the rules of
/// `docs/lifecycle.md`. Clones share the cache.
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
    pub(super) inner: Arc<Inner<A>>,
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
            .field("client_id", &self.client_id())
            .field("policy", &self.inner.policy)
            .field("current", &*self.inner.current.read())
            .finish()
    }
}

/// One step of a caller's request, decided under the lock.
enum Step<T> {
    Token(Arc<CachedToken<T>>),
    Wait(OutcomeReceiver<T>),
    Failed(Error),
}

impl<A: Authorizer> TokenCache<A> {
    pub(super) fn from_inner(inner: Arc<Inner<A>>) -> Self {
        Self { inner }
    }

    /// A cache with the default [`LifecyclePolicy`] and no shared store.
    pub fn new(authorizer: A) -> Self {
        Self::builder(authorizer).build()
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
        self.inner.counters.snapshot()
    }

    /// A token that may be sent now: the cached one while it has not expired (a stale one
    /// starts one refresh in the background), otherwise the outcome of the one shared fetch —
    /// or, while a failure is being backed off, that failure at once.
    pub async fn get(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        let now = Instant::now();
        match self.served_as_is(now) {
            Some(token) => Ok(token),
            // The machine is asked once per call: asking again would count a served failure
            // twice and take the lock twice.
            None => {
                self.finish(self.step(now, Need::Usable), Need::Usable)
                    .await
            }
        }
    }

    /// The access token string of [`get`](Self::get) (en_auth's `access_token`).
    pub async fn access_token(&self) -> Result<String, Error> {
        Ok(self.get().await?.token().access_token().to_owned())
    }

    /// A token to pass on to someone else (the token proxy's customers): one with at least
    /// [`LifecyclePolicy::min_pass_on_lifetime`] left. Below that the caller waits for the
    /// refresh; when the refresh fails, the token is still handed out while it has half that
    /// floor left.
    pub async fn get_to_pass_on(&self) -> Result<Arc<CachedToken<A::Token>>, Error> {
        let now = Instant::now();
        match self.passed_on_as_is(now) {
            Some(token) => Ok(token),
            None => {
                self.finish(self.step(now, Need::PassOn), Need::PassOn)
                    .await
            }
        }
    }

    /// The token [`get_to_pass_on`](Self::get_to_pass_on) would hand out without waiting,
    /// if there is one (seeing a stale one starts its refresh).
    pub fn ready_to_pass_on(&self) -> Option<Arc<CachedToken<A::Token>>> {
        let now = Instant::now();
        if let Some(token) = self.passed_on_as_is(now) {
            return Some(token);
        }
        self.peek(now, Need::PassOn)
    }

    /// Whether a token that has not expired is cached. Reads only: starts nothing.
    pub fn has_usable_token(&self) -> bool {
        let now = Instant::now();
        self.inner
            .current
            .read()
            .as_ref()
            .is_some_and(|token| token.freshness().is_alive(now))
    }

    /// Fetches a token now if there is none, and starts the background refresh when it is
    /// enabled. Call it before a readiness probe reports ready.
    pub async fn warm_up(&self) -> Result<(), Error> {
        self.start_tasks();
        self.get().await.map(drop)
    }

    /// Reports that an API rejected `token` (a 401). If it is still the cached token and no
    /// token was rejected in the last [`LifecyclePolicy::rejection_interval`], it is marked
    /// rejected, removed from the shared store, and one refresh starts; until the refresh
    /// succeeds the token is still served to other requests. Returns whether it was marked.
    pub async fn invalidate(&self, token: &Arc<CachedToken<A::Token>>) -> bool {
        matches!(self.report_rejection(token).await, Rejected::Marked(_))
    }

    /// The hot path of every adapter: the cached token if it may be sent now without
    /// waiting (seeing a stale one starts its refresh). [`get`](Self::get) without the wait.
    #[inline]
    pub(crate) fn cached(&self) -> Option<Arc<CachedToken<A::Token>>> {
        let now = Instant::now();
        if let Some(token) = self.served_as_is(now) {
            return Some(token);
        }
        self.cached_slow(now)
    }

    /// The per-request read: the cached token if it is served as is (fresh, not rejected),
    /// without asking the machine.
    #[inline]
    fn served_as_is(&self, now: Instant) -> Option<Arc<CachedToken<A::Token>>> {
        let current = self.inner.current.read();
        current
            .as_ref()
            .filter(|token| token.serves_as_is(now))
            .map(Arc::clone)
    }

    /// The same for passing on: fresh, not rejected, and above the pass-on floor.
    #[inline]
    fn passed_on_as_is(&self, now: Instant) -> Option<Arc<CachedToken<A::Token>>> {
        self.served_as_is(now)
            .filter(|token| token.freshness().is_fresh_to_pass_on(now))
    }

    #[cold]
    fn cached_slow(&self, now: Instant) -> Option<Arc<CachedToken<A::Token>>> {
        self.served_quietly(now)
            .or_else(|| self.peek(now, Need::Usable))
    }

    /// After an API answered 401 to `rejected`: reports it and returns the token to replay
    /// the request with, or `None` when it should not be replayed (the 401 bound held it
    /// back, or no other token came).
    pub(crate) async fn token_after_rejection(
        &self,
        rejected: &Arc<CachedToken<A::Token>>,
    ) -> Option<Arc<CachedToken<A::Token>>> {
        let replacement = match self.report_rejection(rejected).await {
            Rejected::Replaced(current) => Ok(current),
            Rejected::Marked(_) | Rejected::AwaitReplacement => {
                Box::pin(self.obtain(Need::Replacing(rejected.generation))).await
            }
            Rejected::Absorbed => {
                tracing::debug!("401 not replayed: a token was rejected moments ago");
                return None;
            }
        };
        match replacement {
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

    /// For callers that cannot wait (the tonic interceptor): a token that may be sent now, or
    /// else the one shared fetch started (or joined) without waiting (`Ok(None)`), or the
    /// remembered failure while one is backed off.
    pub(crate) fn start_fetch(&self) -> Result<Option<Arc<CachedToken<A::Token>>>, Error> {
        match self.step(Instant::now(), Need::Usable) {
            Step::Token(token) => Ok(Some(token)),
            Step::Wait(_) => Ok(None),
            Step::Failed(err) => Err(err),
        }
    }

    /// Counts a request replayed after a 401 (for adapters).
    pub(crate) fn record_replay(&self) {
        bump(&self.inner.counters.replays);
    }

    /// Whether requests need a proof each ([`Authorizer::uses_request_proofs`], DPoP).
    pub(crate) fn uses_request_proofs(&self) -> bool {
        self.inner.authorizer.uses_request_proofs()
    }

    /// The proof header for one request with `token` ([`Authorizer::request_proof`]).
    pub(crate) async fn request_proof(
        &self,
        token: &CachedToken<A::Token>,
        method: &http::Method,
        url: &str,
    ) -> Result<Option<(http::HeaderName, HeaderValue)>, Error> {
        self.inner
            .authorizer
            .request_proof(token.token(), method, url)
            .await
    }

    /// Lets the authorizer read a response to a proof-carrying request
    /// ([`Authorizer::proof_challenge`]).
    pub(crate) fn proof_challenge(
        &self,
        url: &str,
        status: u16,
        headers: &http::HeaderMap,
    ) -> bool {
        self.inner.authorizer.proof_challenge(url, status, headers)
    }

    pub(super) fn client_id(&self) -> &str {
        self.inner.authorizer.client_info().client_id()
    }

    fn start_tasks(&self) {
        super::background::start(self);
        super::background::start_listener(self);
    }

    /// Tells the machine about a 401 for `token` and carries out its answer.
    async fn report_rejection(
        &self,
        token: &Arc<CachedToken<A::Token>>,
    ) -> Rejected<Arc<CachedToken<A::Token>>> {
        let (rejected, spawn, fetch_removes) = {
            let mut driven = self.lock_state();
            let rejected = driven.machine.on_rejected(token.generation, Instant::now());
            if let Rejected::Marked(_) = rejected {
                // Under the lock: no request is served the token as is once it is marked.
                token.mark_rejected();
            }
            let spawn = match &rejected {
                Rejected::Marked(Some(id)) => self.register(&mut driven, *id).ok(),
                _ => None,
            };
            // With refresh tokens, a fetch that replaces the token removes it from the store
            // under the store's lock (`Fleet::fetch`): removed here, the store would hold
            // nothing while that fetch waits for the lock, and another process could take the
            // lock and spend its own older refresh token (docs/fleet.md).
            let fetch_removes =
                driven.flight.is_some() && self.inner.authorizer.refresh_spends_token();
            (rejected, spawn, fetch_removes)
        };
        match &rejected {
            Rejected::Marked(_) => {
                if let Some(flight) = spawn {
                    flight.spawn();
                }
                bump(&self.inner.counters.invalidations);
                tracing::debug!(
                    client_id = self.client_id(),
                    "token rejected by an API; refreshing"
                );
                if let Some(fleet) = self.inner.fleet.as_ref().filter(|_| !fetch_removes) {
                    fleet
                        .remove_rejected(&self.fetch_context(), token.token())
                        .await;
                }
            }
            Rejected::Absorbed => {
                bump(&self.inner.counters.rejections_absorbed);
                tracing::debug!(
                    client_id = self.client_id(),
                    "token rejected by an API again within the rejection interval; kept"
                );
            }
            _ => {}
        }
        rejected
    }

    /// Asks the machine what `need` gets now; registers (and spawns) any fetch it starts.
    /// The slow path: it also (re)starts the cache's own tasks on this runtime.
    #[cold]
    fn step(&self, now: Instant, need: Need) -> Step<A::Token> {
        self.start_tasks();
        let (step, spawn) = {
            let mut driven = self.lock_state();
            match driven.machine.on_request(now, need) {
                Action::Serve(token) => (Step::Token(token), None),
                Action::ServeAndRefresh(token, id) => {
                    // Without a runtime (a synchronous caller) the token is served and the
                    // refresh waits for the next caller.
                    let flight = self.register(&mut driven, id).ok();
                    (Step::Token(token), flight)
                }
                Action::Join => match &driven.flight {
                    Some((_, outcome)) => (Step::Wait(outcome.clone()), None),
                    // The machine's fetch has no task (never expected): forget it so that
                    // the next caller starts one, rather than wedging the cache.
                    None => {
                        driven.machine.forget_flight();
                        (Step::Failed(abandoned_fetch()), None)
                    }
                },
                Action::Start(id) => match self.register(&mut driven, id) {
                    Ok(flight) => (Step::Wait(flight.outcome()), Some(flight)),
                    Err(err) => (Step::Failed(err), None),
                },
                Action::Fail(err, age) => {
                    bump(&self.inner.counters.failures_served);
                    (Step::Failed(err.shared_copy(age)), None)
                }
            }
        };
        if let Some(flight) = spawn {
            flight.spawn();
        }
        step
    }

    /// The token `need` may have now without waiting (seeing a stale one starts its
    /// refresh); never starts a fetch that a caller would have to wait for.
    fn peek(&self, now: Instant, need: Need) -> Option<Arc<CachedToken<A::Token>>> {
        self.start_tasks();
        let (token, spawn) = {
            let mut driven = self.lock_state();
            let (token, refresh) = driven.machine.on_peek(now, need)?;
            let flight = refresh.and_then(|id| self.register(&mut driven, id).ok());
            (token, flight)
        };
        if let Some(flight) = spawn {
            flight.spawn();
        }
        Some(token)
    }

    /// The slow path: join the running fetch, start one, or answer with the failure.
    async fn obtain(&self, need: Need) -> Result<Arc<CachedToken<A::Token>>, Error> {
        self.finish(self.step(Instant::now(), need), need).await
    }

    /// Carries out a step: the token, the failure, or the wait for the shared fetch (boxed,
    /// so that the future of every caller that did not wait stays small).
    async fn finish(
        &self,
        step: Step<A::Token>,
        need: Need,
    ) -> Result<Arc<CachedToken<A::Token>>, Error> {
        match step {
            Step::Token(token) => Ok(token),
            Step::Failed(err) => Err(err),
            Step::Wait(outcome) => Box::pin(self.wait(outcome, need)).await,
        }
    }

    /// Waits for the outcome of the fetch the machine asked to wait for; when it failed,
    /// the token that may still serve `need`, if any.
    async fn wait(
        &self,
        mut outcome: OutcomeReceiver<A::Token>,
        need: Need,
    ) -> Result<Arc<CachedToken<A::Token>>, Error> {
        bump(&self.inner.counters.waits);
        let mut asked_again = false;
        let err = loop {
            let result = match outcome.wait_for(Option::is_some).await {
                Ok(settled) => settled.clone(),
                Err(_) => None,
            };
            match result {
                Some(Ok(token)) => return Ok(token),
                Some(Err(err)) => break err.shared_copy(Duration::ZERO),
                // The fetch was abandoned (its runtime shut down, this caller's may live on):
                // ask once more, which starts or joins a fetch on a live runtime.
                None if !asked_again => {
                    asked_again = true;
                    match self.step(Instant::now(), need) {
                        Step::Token(token) => return Ok(token),
                        Step::Failed(err) => return Err(err),
                        Step::Wait(next) => outcome = next,
                    }
                }
                None => break abandoned_fetch(),
            }
        };
        let fallback = self.lock_state().machine.fallback(Instant::now(), need);
        fallback.ok_or(err)
    }
}

/// The machine under its lock; when dropped, publishes the machine's quiet time for the
/// per-request read.
pub(super) struct StateGuard<'a, A: Authorizer> {
    inner: &'a Inner<A>,
    driven: MutexGuard<'a, Driven<A::Token>>,
}

impl<A: Authorizer> std::ops::Deref for StateGuard<'_, A> {
    type Target = Driven<A::Token>;

    fn deref(&self) -> &Self::Target {
        &self.driven
    }
}

impl<A: Authorizer> std::ops::DerefMut for StateGuard<'_, A> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.driven
    }
}

impl<A: Authorizer> Drop for StateGuard<'_, A> {
    fn drop(&mut self) {
        let quiet = self
            .driven
            .machine
            .quiet_until()
            .map_or(0, |until| nanos_after(self.inner.clock_base, until));
        self.inner.quiet_until.store(quiet, Ordering::Release);
    }
}

/// Nanoseconds from `base` to `at` (at least 1, so that 0 keeps meaning "ask").
fn nanos_after(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl<A: Authorizer> TokenCache<A> {
    /// The machine, under its lock (never held across an `.await`).
    pub(super) fn lock_state(&self) -> StateGuard<'_, A> {
        StateGuard {
            inner: &self.inner,
            driven: self.inner.state.lock(),
        }
    }

    /// A stale token while the machine is quiet: served without taking its lock.
    fn served_quietly(&self, now: Instant) -> Option<Arc<CachedToken<A::Token>>> {
        let quiet = self.inner.quiet_until.load(Ordering::Acquire);
        if quiet == 0 || nanos_after(self.inner.clock_base, now) >= quiet {
            return None;
        }
        let current = self.inner.current.read();
        current
            .as_ref()
            .filter(|token| !token.is_rejected() && token.freshness().is_alive(now))
            .map(Arc::clone)
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

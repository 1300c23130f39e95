//! [`TokenCache`]: the driver of the lifecycle. It asks [`TokenState`] what to do, runs the
//! one shared fetch it asks for in a task of its own, and hands its outcome to every waiter.
//! Nothing else: every rule is the machine's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cached::{CachedToken, Prepared};
use super::fleet::{FetchContext, Fleet, Judge, Judged};
use super::policy::LifecyclePolicy;
use super::state::{Action, FlightId, Freshness, Need, Rejected, TokenState, Wake};
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
    flight: Option<(FlightId, OutcomeReceiver<T>)>,
}

impl<T> Driven<T> {
    pub(super) fn new(machine: TokenState<Arc<CachedToken<T>>>) -> Self {
        Self {
            machine,
            flight: None,
        }
    }
}

pub(super) struct Inner<A: Authorizer> {
    pub(super) authorizer: A,
    pub(super) policy: LifecyclePolicy,
    /// The current token for the per-request read: the machine's, mirrored under `state`.
    pub(super) current: RwLock<Option<Arc<CachedToken<A::Token>>>>,
    pub(super) state: Mutex<Driven<A::Token>>,
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
        if let Some(token) = self.served_as_is(now) {
            return Ok(token);
        }
        // The machine is asked once per call: asking again would count a served failure
        // twice and take the lock twice.
        match self.slow_step(now, Need::Usable) {
            Step::Token(token) => Ok(token),
            Step::Failed(err) => Err(err),
            // Boxed so that the hot path's future stays small: every adapter's per-request
            // future embeds this one.
            Step::Wait(outcome) => Box::pin(self.wait(outcome, Need::Usable)).await,
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
        if let Some(token) = self.passed_on_as_is(now) {
            return Ok(token);
        }
        match self.slow_step(now, Need::PassOn) {
            Step::Token(token) => Ok(token),
            Step::Failed(err) => Err(err),
            Step::Wait(outcome) => Box::pin(self.wait(outcome, Need::PassOn)).await,
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

    /// The cached token if it may be sent now without waiting (seeing a stale one starts
    /// its refresh). [`get`](Self::get) without the wait; for the crate's tests.
    #[cfg(test)]
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

    #[cfg(test)]
    #[cold]
    fn cached_slow(&self, now: Instant) -> Option<Arc<CachedToken<A::Token>>> {
        self.peek(now, Need::Usable)
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
            Rejected::Marked(_) | Rejected::AlreadyMarked => {
                Box::pin(self.obtain(Need::Replacing(rejected.generation))).await
            }
            Rejected::Absorbed => {
                tracing::debug!("401 not replayed: a token was rejected moments ago");
                return None;
            }
            Rejected::Gone => return None,
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

    /// Starts the one shared fetch if no usable token is cached and none is running, without
    /// waiting (for synchronous callers). Returns the remembered failure while one is backed
    /// off. Used by the crate's tests only, so far.
    #[cfg(test)]
    pub(crate) fn start_fetch(&self) -> Result<(), Error> {
        match self.step(Instant::now(), Need::Usable) {
            Step::Failed(err) => Err(err),
            Step::Token(_) | Step::Wait(_) => Ok(()),
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
    pub(crate) fn request_proof(
        &self,
        token: &CachedToken<A::Token>,
        method: &http::Method,
        url: &str,
    ) -> Result<Option<(http::HeaderName, HeaderValue)>, Error> {
        self.inner
            .authorizer
            .request_proof(token.token(), method, url)
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
        let (rejected, spawn) = {
            let mut driven = self.inner.state.lock();
            let rejected = driven.machine.on_rejected(token.generation, Instant::now());
            let spawn = match &rejected {
                Rejected::Marked(Some(id)) => self.register(&mut driven, *id).ok(),
                _ => None,
            };
            (rejected, spawn)
        };
        match &rejected {
            Rejected::Marked(_) => {
                token.mark_rejected();
                if let Some(flight) = spawn {
                    flight.spawn();
                }
                bump(&self.inner.counters.invalidations);
                tracing::debug!(
                    client_id = self.client_id(),
                    "token rejected by an API; refreshing"
                );
                if let Some(fleet) = &self.inner.fleet {
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
    fn step(&self, now: Instant, need: Need) -> Step<A::Token> {
        self.start_tasks();
        let (step, spawn) = {
            let mut driven = self.inner.state.lock();
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
                    None => (Step::Failed(abandoned_fetch()), None),
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
            let mut driven = self.inner.state.lock();
            match driven.machine.on_peek(now, need)? {
                Action::Serve(token) => (token, None),
                Action::ServeAndRefresh(token, id) => (token, self.register(&mut driven, id).ok()),
                Action::Join | Action::Start(_) | Action::Fail(..) => return None,
            }
        };
        if let Some(flight) = spawn {
            flight.spawn();
        }
        Some(token)
    }

    /// The slow path's decision: one step of the machine (which also starts the cache's
    /// tasks if they are not running).
    #[cold]
    fn slow_step(&self, now: Instant, need: Need) -> Step<A::Token> {
        self.step(now, need)
    }

    /// The slow path: join the running fetch, start one, or answer with the failure.
    async fn obtain(&self, need: Need) -> Result<Arc<CachedToken<A::Token>>, Error> {
        match self.slow_step(Instant::now(), need) {
            Step::Token(token) => Ok(token),
            Step::Failed(err) => Err(err),
            Step::Wait(outcome) => self.wait(outcome, need).await,
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
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(settled) => settled.clone(),
            Err(_) => None,
        };
        let err = match result {
            Some(Ok(token)) => return Ok(token),
            Some(Err(err)) => err.shared_copy(Duration::ZERO),
            None => abandoned_fetch(),
        };
        let fallback = self
            .inner
            .state
            .lock()
            .machine
            .fallback(Instant::now(), need);
        fallback.ok_or(err)
    }

    /// Registers fetch `id` (the machine has just started it): where its outcome will
    /// appear, and the task to spawn once the lock is released. Fails only without a tokio
    /// runtime (then the machine forgets the fetch).
    pub(super) fn register(
        &self,
        driven: &mut Driven<A::Token>,
        id: FlightId,
    ) -> Result<PendingFlight<A>, Error> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            driven.machine.on_abandoned(id);
            return Err(Error::InvalidConfiguration {
                setting: "runtime".into(),
                reason: "fetching a token needs a tokio runtime; call from within one".into(),
            });
        };
        let (publish, outcome) = watch::channel(None);
        driven.flight = Some((id, outcome));
        bump(&self.inner.counters.fetches);
        Ok(PendingFlight {
            runtime,
            guard: FlightGuard {
                cache: self.clone(),
                id,
                publish,
                settled: false,
            },
        })
    }
}

impl<A: Authorizer> Judge<A::Token> for TokenCache<A> {
    /// Prepares and judges a token that just arrived (from the provider or the store).
    fn judge(&self, token: A::Token) -> Result<Judged<A::Token>, Error> {
        let policy = &self.inner.policy;
        // Asked only when the policy leaves staleness to the authorizer.
        let stale = policy.expiration_gap.is_none() && self.inner.authorizer.expired(&token);
        let prepared = Prepared::new(
            token,
            self.inner.authorizer.token_scheme(),
            policy.default_lifetime,
            Instant::now(),
            stale,
        )?;
        let freshness = Freshness::on_arrival(policy, prepared.arrival, fastrand::f64())?;
        Ok((prepared, freshness))
    }
}

impl<A: Authorizer> TokenCache<A> {
    pub(super) fn fetch_context(&self) -> FetchContext<'_, A::Token> {
        FetchContext {
            policy: &self.inner.policy,
            counters: &self.inner.counters,
            client_id: self.client_id(),
            judge: self,
        }
    }

    /// Gets a new token: through the fleet when there is a store, else from the provider
    /// (refresh when there is a previous token, authorize otherwise), with retries.
    async fn fetch(
        &self,
        previous: Option<&CachedToken<A::Token>>,
    ) -> Result<Judged<A::Token>, Error> {
        let provider = async {
            let authorizer = &self.inner.authorizer;
            let counters = &self.inner.counters;
            let started = Instant::now();
            let token = self
                .inner
                .policy
                .retry
                .run(|| async {
                    match previous {
                        Some(previous) => {
                            bump(&counters.refreshes);
                            authorizer.refresh(previous.token()).await
                        }
                        None => {
                            bump(&counters.authorizations);
                            authorizer.authorize().await
                        }
                    }
                })
                .await?;
            let judged = self.judge(token)?;
            tracing::debug!(
                client_id = self.client_id(),
                refreshed = previous.is_some(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "token obtained"
            );
            Ok(judged)
        };
        match &self.inner.fleet {
            None => provider.await,
            Some(fleet) => {
                let previous = previous.map(|p| p.token().access_token());
                fleet.fetch(&self.fetch_context(), previous, provider).await
            }
        }
    }

    /// The longest a fetch may take, store included: past it the fetch fails as timed out.
    fn fetch_deadline(&self) -> Duration {
        let policy = &self.inner.policy;
        let store = if self.inner.fleet.is_some() {
            // Waiting for another holder and one that took over from it, then our own store
            // calls, each cut off after STORE_CALL_TIMEOUT.
            policy
                .store_lock_ttl()
                .saturating_add(Duration::from_secs(1))
                .saturating_mul(2)
                .saturating_add(super::fleet::STORE_CALL_TIMEOUT.saturating_mul(8))
        } else {
            Duration::ZERO
        };
        policy
            .retry
            .max_elapsed
            .saturating_add(store)
            .saturating_add(Duration::from_secs(1))
    }

    /// Records a fetch's result with the machine and in the mirror.
    fn settle(&self, id: FlightId, result: Result<Judged<A::Token>, Error>) -> Outcome<A::Token> {
        let mut driven = self.inner.state.lock();
        if driven
            .flight
            .as_ref()
            .is_some_and(|(running, _)| *running == id)
        {
            driven.flight = None;
        }
        match result {
            Ok((prepared, freshness)) => {
                let generation = driven.machine.next_generation();
                let token = Arc::new(prepared.finish(freshness, generation));
                driven
                    .machine
                    .on_fetched(id, Arc::clone(&token), generation, freshness);
                *self.inner.current.write() = Some(Arc::clone(&token));
                Ok(token)
            }
            Err(err) => {
                bump(&self.inner.counters.failures);
                let err = Arc::new(err);
                let delay = driven
                    .machine
                    .on_failed(id, Arc::clone(&err), Instant::now());
                let next_attempt_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if driven.machine.has_usable(Instant::now()) {
                    tracing::warn!(client_id = self.client_id(), error = %err, next_attempt_in_ms,
                        "token refresh failed; serving the current token until it expires");
                } else {
                    tracing::warn!(client_id = self.client_id(), error = %err, next_attempt_in_ms,
                        "could not obtain a token");
                }
                Err(err)
            }
        }
    }

    /// A fetch ended without an outcome (its runtime shut down).
    fn abandon(&self, id: FlightId) -> Outcome<A::Token> {
        let mut driven = self.inner.state.lock();
        if driven
            .flight
            .as_ref()
            .is_some_and(|(running, _)| *running == id)
        {
            driven.flight = None;
        }
        driven.machine.on_abandoned(id);
        Err(Arc::new(abandoned_fetch()))
    }
}

/// A registered fetch, to be spawned once the state lock is released.
pub(super) struct PendingFlight<A: Authorizer> {
    runtime: tokio::runtime::Handle,
    guard: FlightGuard<A>,
}

impl<A: Authorizer> PendingFlight<A> {
    fn outcome(&self) -> OutcomeReceiver<A::Token> {
        self.guard.publish.subscribe()
    }

    pub(super) fn spawn(self) {
        let PendingFlight { runtime, mut guard } = self;
        runtime.spawn(async move {
            let cache = guard.cache.clone();
            let previous = cache.inner.current.read().clone();
            let deadline = cache.fetch_deadline();
            let fetch = tokio::time::timeout(deadline, cache.fetch(previous.as_deref()));
            let result = match CatchPanic(Box::pin(fetch)).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Transport {
                    message: format!(
                        "the token fetch did not finish within its deadline of {} s (provider \
                         and token store included)",
                        deadline.as_secs()
                    ),
                    timeout: true,
                    source: None,
                }),
                // A panicking authorizer is remembered like any failure, so it is not called
                // again on every request.
                Err(()) => Err(Error::Transport {
                    message: "the token fetch panicked".into(),
                    timeout: false,
                    source: None,
                }),
            };
            let outcome = cache.settle(guard.id, result);
            guard.settled = true;
            guard.publish.send_replace(Some(outcome));
        });
    }
}

/// Owned by a fetch task. If the task ends without settling — its runtime shut down — the
/// drop frees the fetch slot without remembering a failure, and tells any waiter.
struct FlightGuard<A: Authorizer> {
    cache: TokenCache<A>,
    id: FlightId,
    publish: watch::Sender<Option<Outcome<A::Token>>>,
    settled: bool,
}

impl<A: Authorizer> Drop for FlightGuard<A> {
    fn drop(&mut self) {
        if !self.settled {
            let outcome = self.cache.abandon(self.id);
            self.publish.send_replace(Some(outcome));
        }
    }
}

/// Runs a future, turning a panic inside it into `Err(())`.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

pub(super) fn abandoned_fetch() -> Error {
    Error::Transport {
        message: "the token fetch ended without a result (its runtime shut down)".into(),
        timeout: false,
        source: None,
    }
}

/// The background refresh's step: join the running fetch or start one; `None` to sleep.
pub(super) fn background_step<A: Authorizer>(
    cache: &TokenCache<A>,
) -> Option<OutcomeReceiver<A::Token>> {
    let (outcome, flight) = {
        let mut driven = cache.inner.state.lock();
        match driven.machine.on_wake(Instant::now()) {
            Wake::Join => return driven.flight.as_ref().map(|(_, outcome)| outcome.clone()),
            Wake::Sleep => return None,
            Wake::Start(id) => {
                let flight = cache.register(&mut driven, id).ok()?;
                (flight.outcome(), flight)
            }
        }
    };
    flight.spawn();
    Some(outcome)
}

/// When the background refresh should next wake.
pub(super) fn next_wake<A: Authorizer>(cache: &TokenCache<A>) -> Instant {
    cache.inner.state.lock().machine.next_wake(Instant::now())
}

/// Applies another process's report that the token with `fingerprint` was rejected.
pub(super) fn apply_remote_invalidation<A: Authorizer>(
    cache: &TokenCache<A>,
    key: &str,
    fingerprint: &str,
) {
    let Some(fleet) = &cache.inner.fleet else {
        return;
    };
    if fleet.key.as_str() != key {
        return;
    }
    let Some(current) = cache.inner.current.read().clone() else {
        return;
    };
    let Ok(encoded) = (fleet.encode)(current.token()) else {
        return;
    };
    if crate::value_fingerprint(&encoded) != fingerprint {
        return;
    }
    let marked = cache
        .inner
        .state
        .lock()
        .machine
        .on_rejected_elsewhere(current.generation);
    if marked {
        current.mark_rejected();
        bump(&cache.inner.counters.remote_invalidations);
        tracing::debug!(
            client_id = cache.client_id(),
            "token rejected in another process; dropped"
        );
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

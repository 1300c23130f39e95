//! The lifecycle's decisions, as a synchronous machine.
//!
//! [`TokenState`] owns every decision about a token: when it is fresh, stale, passed on,
//! expired, rejected; when a fetch starts; how long a failure is remembered; how often a 401
//! may drop a token; when the background refresh wakes. It does no I/O, spawns nothing and
//! never reads a clock: `now` is an argument of every method, so the rules are tested as
//! plain functions over time (see `state_tests.rs`). The driver
//! ([`TokenCache`](crate::TokenCache)) runs the fetches it asks for and reports their
//! outcome back.
//!
//! # Freshness
//!
//! A token's [`Freshness`] is computed once, when it arrives, from its remaining lifetime and
//! its age. Each later question ("serve it?", "refresh now?", "pass it on?") is a comparison
//! of `now` with one of its instants.
//!
//! # Events
//!
//! - [`on_request`](TokenState::on_request): a caller needs a token → [`Action`].
//! - [`on_fetched`](TokenState::on_fetched) / [`on_failed`](TokenState::on_failed) /
//!   [`on_abandoned`](TokenState::on_abandoned): a fetch ended.
//! - [`on_rejected`](TokenState::on_rejected): an API answered 401 to a token.
//! - [`next_wake`](TokenState::next_wake) / [`on_wake`](TokenState::on_wake): the
//!   background refresh.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::scale;
use super::policy::{LifecyclePolicy, MIN_FAILURE_BACKOFF};
use crate::Error;

/// However stale a token looks on arrival, no refresh for staleness starts sooner than this
/// after it arrived (or half its remaining life, when that is shorter): refreshes never run
/// back to back.
const MIN_REFRESH_SPACING: Duration = Duration::from_secs(1);

/// The background refresh wakes up to a quarter of the refresh window early, but never more
/// than this: a fleet whose tokens arrived together spreads its refreshes out.
const MAX_BACKGROUND_SPREAD: Duration = Duration::from_secs(30);

/// What is known of a token when it arrives, in durations relative to `now`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    pub now: Instant,
    /// Time left until the token's own expiry (zero when already past), or `None` when the
    /// provider did not say.
    pub own_expiry_in: Option<Duration>,
    /// Time since the token was issued (zero when unknown).
    pub age: Duration,
    /// [`Authorizer::expired`](crate::Authorizer::expired) already calls it expired.
    pub stale_on_arrival: bool,
}

/// When a token is fresh, stale, passed on and dead: computed once when it arrives.
///
/// ```text
///  arrived   earliest_refresh   background_at  refresh_at   pass_on_until   expires_at
///     |-------------|------------------|------------|------------|---------------|
///      fresh: served as is ...........  stale: served, one refresh starts ...  | dead
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    arrived_at: Instant,
    earliest_refresh: Instant,
    background_at: Instant,
    refresh_at: Instant,
    pass_on_until: Instant,
    pass_on_last_resort: Instant,
    expires_at: Instant,
}

impl Freshness {
    /// The freshness of a token arriving as `arrival` says, or an error for a token that is
    /// dead on arrival. `jitter` in `[0, 1]` places the background refresh in its spread.
    pub(crate) fn on_arrival(
        policy: &LifecyclePolicy,
        arrival: Arrival,
        jitter: f64,
    ) -> Result<Self, Error> {
        let now = arrival.now;
        let left = match arrival.own_expiry_in {
            Some(left) => left,
            None => policy.default_lifetime.saturating_sub(arrival.age),
        };
        if left.is_zero() {
            return Err(dead_on_arrival());
        }
        let expires_at = later(now, left);
        // The gap and the pass-on floor are clamped to the token's life as far as we know it.
        let life = left.saturating_add(arrival.age);
        let gap = policy
            .expiration_gap
            .unwrap_or(crate::EXPIRATION_GAP)
            .min(life / 2);
        let refresh_at = if arrival.stale_on_arrival {
            now
        } else {
            earlier(expires_at, gap, now)
        };
        let earliest_refresh = later(now, MIN_REFRESH_SPACING.min(left / 2));
        let window = expires_at.saturating_duration_since(refresh_at);
        let spread = scale((window / 4).min(MAX_BACKGROUND_SPREAD), jitter);
        let background_at = earlier(refresh_at, spread, now).max(earliest_refresh);
        let floor = policy.min_pass_on_lifetime.min(life / 4);
        Ok(Self {
            arrived_at: now,
            earliest_refresh,
            background_at,
            refresh_at,
            pass_on_until: earlier(expires_at, floor, now),
            pass_on_last_resort: earlier(expires_at, floor / 2, now),
            expires_at,
        })
    }

    /// Served as is, no refresh needed: before the refresh point. The per-request check.
    #[inline]
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    /// Not yet expired: it may still be sent.
    #[inline]
    pub fn is_alive(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// Fresh, and with enough life left to be passed on to someone else
    /// ([`LifecyclePolicy::min_pass_on_lifetime`]).
    #[inline]
    pub fn is_fresh_to_pass_on(&self, now: Instant) -> bool {
        self.is_fresh(now) && self.now_passable(now)
    }

    /// When it arrived.
    pub fn arrived_at(&self) -> Instant {
        self.arrived_at
    }

    /// When it turns stale: from here on, seeing it starts a refresh.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// When it expires (its own expiry, or the default lifetime).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Until when it may be passed on without waiting for a fresher one.
    pub fn pass_on_until(&self) -> Instant {
        self.pass_on_until
    }

    /// A stale token may start a refresh only from here on.
    fn refresh_allowed(&self, now: Instant) -> bool {
        now >= self.earliest_refresh
    }

    /// May be passed on now without waiting (`pass_on_until` not reached).
    fn now_passable(&self, now: Instant) -> bool {
        now < self.pass_on_until
    }

    fn passable_as_last_resort(&self, now: Instant) -> bool {
        now < self.pass_on_last_resort
    }
}

/// `at + d`, saturating at a far future.
pub(super) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

/// `at - d`, or `floor` when that is earlier or not representable.
fn earlier(at: Instant, d: Duration, floor: Instant) -> Instant {
    at.checked_sub(d).map_or(floor, |t| t.max(floor))
}

fn dead_on_arrival() -> Error {
    Error::InvalidResponse {
        status: None,
        reason: "the identity provider issued a token that has already expired (expires_in of \
                 0 or less, or an expiry in the past: check the provider's token lifetime and \
                 both clocks)"
            .into(),
    }
}

/// One fetch, as the machine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlightId(u64);

/// What a caller needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Any token that may be sent now.
    Usable,
    /// A token to pass on to someone else: with [`LifecyclePolicy::min_pass_on_lifetime`]
    /// left.
    PassOn,
    /// A token other than the one with this generation (which an API rejected).
    Replacing(u64),
}

/// What the driver does for a caller.
#[derive(Debug)]
pub(crate) enum Action<H> {
    /// Hand out this token.
    Serve(H),
    /// Hand out this token, and start this fetch in the background.
    ServeAndRefresh(H, FlightId),
    /// Wait for the running fetch.
    Join,
    /// Start this fetch and wait for it.
    Start(FlightId),
    /// Answer with the remembered failure (and how long ago it happened).
    Fail(Arc<Error>, Duration),
}

/// What a reported 401 came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected<H> {
    /// The token is no longer the current one: this one replaced it (replay with it).
    Replaced(H),
    /// Marked rejected now; the fetch to start for its replacement, if none runs.
    Marked(Option<FlightId>),
    /// Wait for a replacement: the token was already marked (another 401), or the token
    /// that replaced it is itself being replaced, or it expired meanwhile.
    AwaitReplacement,
    /// Kept: another token was dropped less than a rejection interval ago. Do not replay.
    Absorbed,
}

/// What the background refresh does when it wakes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Wait for the running fetch.
    Join,
    /// Start this fetch and wait for it.
    Start(FlightId),
    /// Nothing to do yet: sleep until [`TokenState::next_wake`].
    Sleep,
}

struct Current<H> {
    token: H,
    freshness: Freshness,
    generation: u64,
    rejected: bool,
    /// A fetch to replace this rejected token failed: it is served like a stale token.
    replacement_failed: bool,
}

struct Failure {
    error: Arc<Error>,
    failed_at: Instant,
    retry_at: Instant,
}

/// The lifecycle's state and rules: see the [module docs](self). `H` is the driver's handle
/// of a cached token (cheap to clone).
pub(crate) struct TokenState<H> {
    policy: LifecyclePolicy,
    current: Option<Current<H>>,
    flight: Option<FlightId>,
    next_flight: u64,
    next_generation: u64,
    failure: Option<Failure>,
    consecutive_failures: u32,
    last_rejection: Option<Instant>,
    rng: fastrand::Rng,
}

impl<H: Clone> TokenState<H> {
    /// A machine with no token, following `policy`.
    pub fn new(policy: LifecyclePolicy) -> Self {
        Self::with_rng(policy, fastrand::Rng::new())
    }

    /// The same, with a given random source (tests seed it).
    pub fn with_rng(policy: LifecyclePolicy, rng: fastrand::Rng) -> Self {
        Self {
            policy,
            current: None,
            flight: None,
            next_flight: 0,
            next_generation: 0,
            failure: None,
            consecutive_failures: 0,
            last_rejection: None,
            rng,
        }
    }

    /// A caller needs a token.
    pub fn on_request(&mut self, now: Instant, need: Need) -> Action<H> {
        if let Some(action) = self.serve(now, need) {
            return action;
        }
        if self.flight.is_some() {
            return Action::Join;
        }
        if let Some(failure) = self.failure.as_ref().filter(|f| now < f.retry_at) {
            let failure = (
                Arc::clone(&failure.error),
                now.saturating_duration_since(failure.failed_at),
            );
            if let Some(token) = self.fallback(now, need) {
                return Action::Serve(token);
            }
            return Action::Fail(failure.0, failure.1);
        }
        Action::Start(self.start_flight())
    }

    /// A caller that will not wait: the token it may have now, with the refresh to start
    /// when it is stale, or `None`. Never starts a fetch for a caller that would have to
    /// wait for it.
    pub fn on_peek(&mut self, now: Instant, need: Need) -> Option<(H, Option<FlightId>)> {
        match self.serve(now, need) {
            Some(Action::Serve(token)) => return Some((token, None)),
            Some(Action::ServeAndRefresh(token, id)) => return Some((token, Some(id))),
            _ => {}
        }
        // While a failure is backed off, what a waiter would fall back to is the answer.
        self.backing_off(now)
            .then(|| self.fallback(now, need))
            .flatten()
            .map(|token| (token, None))
    }

    /// Forgets the running fetch without an outcome (the driver lost its task).
    pub fn forget_flight(&mut self) {
        self.flight = None;
    }

    /// The serving part of [`on_request`](Self::on_request): the current token if `need`
    /// may have it without waiting, with the refresh to start when it is stale.
    fn serve(&mut self, now: Instant, need: Need) -> Option<Action<H>> {
        let current = self.acceptable(now, need)?;
        let awaiting_replacement = current.rejected && !current.replacement_failed;
        let servable = match need {
            Need::PassOn => !current.rejected && current.freshness.now_passable(now),
            Need::Usable | Need::Replacing(_) => !awaiting_replacement,
        };
        if !servable {
            return None;
        }
        let token = current.token.clone();
        let stale = current.rejected || !current.freshness.is_fresh(now);
        let refresh_allowed = current.freshness.refresh_allowed(now);
        if stale && refresh_allowed && self.flight.is_none() && !self.backing_off(now) {
            return Some(Action::ServeAndRefresh(token, self.start_flight()));
        }
        Some(Action::Serve(token))
    }

    /// What a waiter gets when the fetch it waited for failed or was abandoned: a token that
    /// may still be sent (served while valid), if any.
    pub fn fallback(&self, now: Instant, need: Need) -> Option<H> {
        let current = self.acceptable(now, need)?;
        let usable = match need {
            Need::PassOn => current.freshness.passable_as_last_resort(now),
            Need::Usable | Need::Replacing(_) => true,
        };
        let waits_for_replacement = current.rejected && !current.replacement_failed;
        (usable && (!waits_for_replacement || self.backing_off(now))).then(|| current.token.clone())
    }

    /// Whether a token that may be sent now is cached (no side effect).
    pub fn has_usable(&self, now: Instant) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.freshness.is_alive(now))
    }

    /// A name for the next token: [`on_fetched`](Self::on_fetched) and
    /// [`on_rejected`](Self::on_rejected) know tokens by it.
    pub fn next_generation(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        generation
    }

    /// A fetch ended with `token` (named `generation`, judged `freshness`): it is current.
    pub fn on_fetched(&mut self, id: FlightId, token: H, generation: u64, freshness: Freshness) {
        self.end_flight(id);
        self.failure = None;
        self.consecutive_failures = 0;
        self.current = Some(Current {
            token,
            freshness,
            generation,
            rejected: false,
            replacement_failed: false,
        });
    }

    /// A fetch failed: remember the failure until the next attempt is due. Returns the delay.
    pub fn on_failed(&mut self, id: FlightId, error: Arc<Error>, now: Instant) -> Duration {
        self.end_flight(id);
        let delay = self
            .policy
            .failure_schedule(&error)
            .honouring_at(
                self.consecutive_failures,
                error.retry_after(),
                self.policy.max_failure_backoff,
                self.rng.f64(),
                self.rng.f64(),
            )
            .max(MIN_FAILURE_BACKOFF);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if let Some(current) = self.current.as_mut().filter(|c| c.rejected) {
            current.replacement_failed = true;
        }
        self.failure = Some(Failure {
            error,
            failed_at: now,
            retry_at: later(now, delay),
        });
        delay
    }

    /// A fetch ended without an outcome (its runtime shut down): not the provider's fault,
    /// so nothing is remembered; the next caller starts a new one.
    pub fn on_abandoned(&mut self, id: FlightId) {
        self.end_flight(id);
    }

    /// An API answered 401 to the token of `generation`.
    pub fn on_rejected(&mut self, generation: u64, now: Instant) -> Rejected<H> {
        let interval = self.policy.rejection_interval;
        let recent = self
            .last_rejection
            .is_some_and(|at| now.saturating_duration_since(at) < interval);
        let Some(current) = self.current.as_mut().filter(|c| c.freshness.is_alive(now)) else {
            // It expired while the request was in flight: the replay waits for a new token
            // like any request.
            return Rejected::AwaitReplacement;
        };
        let awaiting_replacement = current.rejected && !current.replacement_failed;
        if current.generation != generation {
            // A refresh replaced it already; unless its replacement was rejected too and is
            // being replaced in turn, replay with the current one.
            return if awaiting_replacement {
                Rejected::AwaitReplacement
            } else {
                Rejected::Replaced(current.token.clone())
            };
        }
        if current.rejected {
            return Rejected::AwaitReplacement;
        }
        if recent {
            return Rejected::Absorbed;
        }
        current.rejected = true;
        self.last_rejection = Some(now);
        let start = (self.flight.is_none() && !self.backing_off(now)).then(|| self.start_flight());
        Rejected::Marked(start)
    }

    /// Another process reported the token of `generation` rejected: it is replaced like a
    /// rejected one (without counting against the rejection interval). Returns whether it
    /// was marked now.
    pub fn on_rejected_elsewhere(&mut self, generation: u64) -> bool {
        match self.current.as_mut() {
            Some(current) if current.generation == generation && !current.rejected => {
                current.rejected = true;
                true
            }
            _ => false,
        }
    }

    /// Until when every request for the current token is answered [`Action::Serve`] without
    /// starting anything (fresh, a refresh not yet allowed, one running, or a failure being
    /// backed off), so the driver may serve it without asking; `None` when it must ask (no
    /// token, or a rejected one). Never past the token's expiry.
    pub fn quiet_until(&self) -> Option<Instant> {
        let current = self.current.as_ref().filter(|c| !c.rejected)?;
        let f = &current.freshness;
        if self.flight.is_some() {
            return Some(f.expires_at);
        }
        let mut until = f.refresh_at.max(f.earliest_refresh);
        if let Some(failure) = &self.failure {
            until = until.max(failure.retry_at);
        }
        Some(until.min(f.expires_at))
    }

    /// When the background refresh should next wake.
    pub fn next_wake(&self, now: Instant) -> Instant {
        if let Some(failure) = self.failure.as_ref().filter(|f| now < f.retry_at) {
            return failure.retry_at;
        }
        match &self.current {
            Some(current) if !current.rejected => current.freshness.background_at.max(now),
            _ => now,
        }
    }

    /// The background refresh woke up.
    pub fn on_wake(&mut self, now: Instant) -> Wake {
        if self.flight.is_some() {
            return Wake::Join;
        }
        if self.next_wake(now) > now {
            return Wake::Sleep;
        }
        Wake::Start(self.start_flight())
    }

    /// The current token if it may serve `need` at all (alive, not the one being replaced).
    fn acceptable(&self, now: Instant, need: Need) -> Option<&Current<H>> {
        self.current.as_ref().filter(|c| {
            c.freshness.is_alive(now)
                && match need {
                    Need::Replacing(generation) => c.generation != generation,
                    Need::Usable | Need::PassOn => true,
                }
        })
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.failure.as_ref().is_some_and(|f| now < f.retry_at)
    }

    fn start_flight(&mut self) -> FlightId {
        let id = FlightId(self.next_flight);
        self.next_flight = self.next_flight.wrapping_add(1);
        self.flight = Some(id);
        id
    }

    fn end_flight(&mut self, id: FlightId) {
        if self.flight == Some(id) {
            self.flight = None;
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "freshness_tests.rs"]
mod freshness_tests;

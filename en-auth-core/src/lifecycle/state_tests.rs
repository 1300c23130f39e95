//! The lifecycle's rules as plain functions over time: no runtime, no I/O, no sleeps.

use super::*;

pub(super) const S: fn(u64) -> Duration = Duration::from_secs;
pub(super) const MS: fn(u64) -> Duration = Duration::from_millis;

pub(super) fn arrival(now: Instant, expires_in: Option<Duration>, age: Duration) -> Arrival {
    Arrival {
        now,
        own_expiry_in: expires_in,
        age,
        stale_on_arrival: false,
    }
}

pub(super) fn fresh(policy: &LifecyclePolicy, now: Instant, expires_in: u64) -> Freshness {
    Freshness::on_arrival(
        policy,
        arrival(now, Some(S(expires_in)), Duration::ZERO),
        0.0,
    )
    .expect("alive")
}

/// A machine with a seeded random source, and a token named `generation` arriving at `now`.
struct Fixture {
    machine: TokenState<&'static str>,
    policy: LifecyclePolicy,
    t0: Instant,
}

impl Fixture {
    fn new(policy: LifecyclePolicy) -> Self {
        Self {
            machine: TokenState::with_rng(policy.clone(), fastrand::Rng::with_seed(7)),
            policy,
            t0: Instant::now(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// Starts a fetch at `at` (which must be what the machine asks for) and lands `token`
    /// living `lifetime` seconds.
    fn land(&mut self, id: FlightId, token: &'static str, at: f64, lifetime: u64) -> u64 {
        let now = self.at(at);
        let freshness = fresh(&self.policy, now, lifetime);
        let generation = self.machine.next_generation();
        self.machine.on_fetched(id, token, generation, freshness);
        generation
    }

    fn first_token(&mut self, lifetime: u64) -> u64 {
        let Action::Start(id) = self.machine.on_request(self.t0, Need::Usable) else {
            panic!("a cold cache starts a fetch");
        };
        self.land(id, "t1", 0.0, lifetime)
    }
}

fn transient() -> Arc<Error> {
    Arc::new(Error::ServerError {
        status: 503,
        retry_after: None,
    })
}

fn permanent() -> Arc<Error> {
    Arc::new(Error::InvalidClient {
        status: Some(401),
        description: None,
    })
}

#[test]
fn configured_durations_never_overflow() {
    let policy = LifecyclePolicy::default()
        .with_default_lifetime(Duration::MAX)
        .with_expiration_gap(Duration::MAX)
        .with_min_pass_on_lifetime(Duration::MAX);
    let t0 = Instant::now();
    let f = Freshness::on_arrival(&policy, arrival(t0, None, Duration::ZERO), 1.0).expect("alive");
    assert!(f.expires_at() > t0 + S(50 * 365 * 86_400));
    let f =
        Freshness::on_arrival(&policy, arrival(t0, Some(Duration::MAX), S(1)), 1.0).expect("alive");
    assert!(f.is_alive(t0 + S(86_400)));
    let mut m = TokenState::<u8>::new(policy.with_max_failure_backoff(Duration::MAX));
    let Action::Start(id) = m.on_request(t0, Need::Usable) else {
        panic!("fetch");
    };
    let huge = Arc::new(Error::RateLimited {
        retry_after: Some(Duration::MAX),
        reset_at: None,
    });
    let delay = m.on_failed(id, huge, t0);
    assert!(delay >= S(86_400), "{delay:?}");
    assert!(m.next_wake(t0) > t0);
}

#[test]
fn one_fetch_at_a_time_then_served_fresh_then_one_refresh_when_stale() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    let Action::Start(id) = fx.machine.on_request(fx.t0, Need::Usable) else {
        panic!("cold: start");
    };
    assert!(matches!(
        fx.machine.on_request(fx.t0, Need::Usable),
        Action::Join
    ));
    assert!(matches!(
        fx.machine.on_request(fx.t0, Need::PassOn),
        Action::Join
    ));
    fx.land(id, "t1", 0.5, 3600);
    assert!(matches!(
        fx.machine.on_request(fx.at(1.0), Need::Usable),
        Action::Serve("t1")
    ));
    // Stale: the first caller starts one refresh and is served; the others are served.
    let Action::ServeAndRefresh("t1", refresh) = fx.machine.on_request(fx.at(3541.0), Need::Usable)
    else {
        panic!("stale: serve and refresh");
    };
    assert!(matches!(
        fx.machine.on_request(fx.at(3542.0), Need::Usable),
        Action::Serve("t1")
    ));
    fx.land(refresh, "t2", 3543.0, 3600);
    assert!(matches!(
        fx.machine.on_request(fx.at(3544.0), Need::Usable),
        Action::Serve("t2")
    ));
}

#[test]
fn a_failed_refresh_serves_the_token_until_it_expires_then_the_failure() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    fx.first_token(100); // stale from 50 s, dead at 100 s
    let Action::ServeAndRefresh(_, id) = fx.machine.on_request(fx.at(60.0), Need::Usable) else {
        panic!("stale");
    };
    let delay = fx.machine.on_failed(id, transient(), fx.at(60.0));
    assert!(
        delay >= MS(500) && delay <= S(1),
        "first transient backoff: {delay:?}"
    );
    // Backing off: served, no new fetch.
    assert!(matches!(
        fx.machine.on_request(fx.at(60.1), Need::Usable),
        Action::Serve("t1")
    ));
    // Due again: one new refresh.
    assert!(matches!(
        fx.machine.on_request(fx.at(61.5), Need::Usable),
        Action::ServeAndRefresh("t1", _)
    ));
    let id = match fx.machine.on_request(fx.at(61.6), Need::Usable) {
        Action::Serve(_) => {
            // The refresh is running: fail it at 99.5 s.
            FlightId(fx.machine.next_flight - 1)
        }
        other => panic!("{other:?}"),
    };
    fx.machine.on_failed(id, transient(), fx.at(99.5));
    // Dead and backing off: the failure at once, with its age.
    let Action::Fail(err, age) = fx.machine.on_request(fx.at(100.0), Need::Usable) else {
        panic!("dead token, backing off: fail");
    };
    assert!(matches!(*err, Error::ServerError { status: 503, .. }));
    assert_eq!(age, MS(500));
    // Backoff over: a new fetch.
    assert!(matches!(
        fx.machine.on_request(fx.at(110.0), Need::Usable),
        Action::Start(_)
    ));
}

#[test]
fn failures_back_off_doubling_transient_from_the_cooldown_permanent_from_thirty_seconds() {
    let mut m = TokenState::<u8>::with_rng(LifecyclePolicy::default(), fastrand::Rng::with_seed(1));
    let t0 = Instant::now();
    for n in 0..4u32 {
        let Action::Start(id) = m.on_request(t0 + S(1000 * u64::from(n)), Need::Usable) else {
            panic!("due");
        };
        let d = m.on_failed(id, transient(), t0 + S(1000 * u64::from(n)));
        let ceiling = S(1) * 2u32.pow(n);
        assert!(d >= ceiling / 2 && d <= ceiling, "transient #{n}: {d:?}");
    }
    let mut m = TokenState::<u8>::new(LifecyclePolicy::default());
    for n in 0..6u32 {
        let now = t0 + S(10_000 * u64::from(n));
        let Action::Start(id) = m.on_request(now, Need::Usable) else {
            panic!("due");
        };
        let d = m.on_failed(id, permanent(), now);
        let ceiling = (S(30) * 2u32.pow(n)).min(S(300));
        assert!(d >= ceiling / 2 && d <= ceiling, "permanent #{n}: {d:?}");
    }
    // A server-named delay wins, capped at max_failure_backoff.
    let mut m = TokenState::<u8>::new(LifecyclePolicy::default());
    let Action::Start(id) = m.on_request(t0, Need::Usable) else {
        panic!("due");
    };
    let named = Arc::new(Error::RateLimited {
        retry_after: Some(S(20)),
        reset_at: None,
    });
    let d = m.on_failed(id, named, t0);
    assert!(d >= S(20) && d <= S(21), "{d:?}");
    assert_eq!(m.next_wake(t0), t0 + d);
    // A success forgets the count.
    let Action::Start(id) = m.on_request(t0 + S(30), Need::Usable) else {
        panic!("due");
    };
    let f = fresh(&LifecyclePolicy::default(), t0 + S(30), 10);
    m.on_fetched(id, 1, 0, f);
    assert_eq!(m.consecutive_failures, 0);
    assert!(m.failure.is_none());
}

#[test]
fn an_abandoned_fetch_is_not_remembered_as_a_failure() {
    let mut m = TokenState::<u8>::new(LifecyclePolicy::default());
    let t0 = Instant::now();
    let Action::Start(id) = m.on_request(t0, Need::Usable) else {
        panic!("cold");
    };
    m.on_abandoned(id);
    assert!(matches!(m.on_request(t0, Need::Usable), Action::Start(_)));
    assert_eq!(m.consecutive_failures, 0);
}

#[test]
fn a_rejection_drops_the_token_once_per_interval() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    let g1 = fx.first_token(3600);
    let Rejected::Marked(Some(id)) = fx.machine.on_rejected(g1, fx.at(10.0)) else {
        panic!("first 401: marked, one refresh");
    };
    // Another 401 for the same token: wait for the same replacement.
    assert_eq!(
        fx.machine.on_rejected(g1, fx.at(10.1)),
        Rejected::AwaitReplacement
    );
    // Requests wait for the replacement.
    assert!(matches!(
        fx.machine.on_request(fx.at(10.2), Need::Usable),
        Action::Join
    ));
    assert!(matches!(
        fx.machine.on_request(fx.at(10.2), Need::Replacing(g1)),
        Action::Join
    ));
    let g2 = fx.land(id, "t2", 11.0, 3600);
    // A late 401 for the old token: replay with the new one.
    assert_eq!(
        fx.machine.on_rejected(g1, fx.at(12.0)),
        Rejected::Replaced("t2")
    );
    // The new token rejected within the interval: kept (an API that rejects everything).
    assert_eq!(fx.machine.on_rejected(g2, fx.at(15.0)), Rejected::Absorbed);
    assert!(matches!(
        fx.machine.on_request(fx.at(15.0), Need::Usable),
        Action::Serve("t2")
    ));
    // After the interval: marked again.
    assert!(matches!(
        fx.machine.on_rejected(g2, fx.at(21.0)),
        Rejected::Marked(Some(_))
    ));
    // A token that expired while the request was in flight: the replay waits for a new one.
    let mut fx = Fixture::new(LifecyclePolicy::default());
    let g = fx.first_token(10);
    assert_eq!(
        fx.machine.on_rejected(g, fx.at(11.0)),
        Rejected::AwaitReplacement
    );
    assert!(matches!(
        fx.machine.on_request(fx.at(11.0), Need::Replacing(g)),
        Action::Start(_)
    ));
}

#[test]
fn a_rejected_token_serves_other_apis_once_its_replacement_failed() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    let g1 = fx.first_token(3600);
    let Rejected::Marked(Some(id)) = fx.machine.on_rejected(g1, fx.at(10.0)) else {
        panic!("marked");
    };
    fx.machine.on_failed(id, transient(), fx.at(11.0));
    // Backing off: the rejected token is served, no new fetch; the replay gets the failure.
    assert!(matches!(
        fx.machine.on_request(fx.at(11.1), Need::Usable),
        Action::Serve("t1")
    ));
    assert!(matches!(
        fx.machine.on_request(fx.at(11.1), Need::Replacing(g1)),
        Action::Fail(..)
    ));
    assert_eq!(fx.machine.fallback(fx.at(11.1), Need::Replacing(g1)), None);
    // Due again: served as a stale token, one refresh in the background.
    assert!(matches!(
        fx.machine.on_request(fx.at(13.0), Need::Usable),
        Action::ServeAndRefresh("t1", _)
    ));
}

#[test]
fn a_rejection_reported_by_another_process_replaces_the_token_without_the_interval() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    let g1 = fx.first_token(3600);
    assert!(fx.machine.on_rejected_elsewhere(g1));
    assert!(!fx.machine.on_rejected_elsewhere(g1), "once");
    assert!(
        !fx.machine.on_rejected_elsewhere(g1 + 1),
        "only the current token"
    );
    assert!(matches!(
        fx.machine.on_request(fx.at(1.0), Need::Usable),
        Action::Start(_)
    ));
    assert_eq!(fx.machine.last_rejection, None);
}

#[test]
fn passing_on_waits_below_the_floor_and_falls_back_to_half_the_floor() {
    let policy = LifecyclePolicy::default()
        .with_expiration_gap(S(120))
        .with_min_pass_on_lifetime(S(60));
    let mut fx = Fixture::new(policy);
    fx.first_token(3600); // stale at 3480, pass on until 3540, last resort until 3570
    assert!(matches!(
        fx.machine.on_request(fx.at(100.0), Need::PassOn),
        Action::Serve("t1")
    ));
    let Action::ServeAndRefresh(_, id) = fx.machine.on_request(fx.at(3500.0), Need::PassOn) else {
        panic!("stale but passable: serve and refresh");
    };
    // Below the floor: wait for the refresh.
    assert!(matches!(
        fx.machine.on_request(fx.at(3545.0), Need::PassOn),
        Action::Join
    ));
    // Other users still get it.
    assert!(matches!(
        fx.machine.on_request(fx.at(3545.0), Need::Usable),
        Action::Serve("t1")
    ));
    fx.machine.on_failed(id, transient(), fx.at(3545.0));
    assert_eq!(fx.machine.fallback(fx.at(3545.2), Need::PassOn), Some("t1"));
    assert!(matches!(
        fx.machine.on_request(fx.at(3545.2), Need::PassOn),
        Action::Serve("t1")
    ));
    assert_eq!(fx.machine.fallback(fx.at(3571.0), Need::PassOn), None);
}

#[test]
fn the_background_refresh_wakes_at_its_time_and_never_spins() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    assert_eq!(fx.machine.next_wake(fx.t0), fx.t0, "no token: now");
    let Wake::Start(id) = fx.machine.on_wake(fx.t0) else {
        panic!("no token: start");
    };
    assert_eq!(fx.machine.on_wake(fx.t0), Wake::Join);
    fx.land(id, "t1", 0.0, 3600);
    let wake = fx.machine.next_wake(fx.at(1.0));
    assert!(wake >= fx.at(3525.0) && wake <= fx.at(3540.0), "{wake:?}");
    assert_eq!(fx.machine.on_wake(fx.at(1.0)), Wake::Sleep);
    let Wake::Start(id) = fx.machine.on_wake(wake) else {
        panic!("due: start");
    };
    fx.machine.on_failed(id, transient(), wake);
    let retry = fx.machine.next_wake(wake);
    assert!(retry > wake, "backing off: wake at the retry time");
    assert_eq!(fx.machine.on_wake(wake + MS(1)), Wake::Sleep);
    assert!(matches!(fx.machine.on_wake(retry), Wake::Start(_)));
    // Every Sleep comes with a wake in the future.
    for at in [0.0, 10.0, 3000.0, 3530.0, 3600.0] {
        let now = fx.at(at);
        if fx.machine.on_wake(now) == Wake::Sleep {
            assert!(fx.machine.next_wake(now) > now, "spin at {at}");
        }
    }
}

#[test]
fn has_usable_reads_without_starting_anything() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    assert!(!fx.machine.has_usable(fx.t0));
    fx.first_token(100);
    assert!(fx.machine.has_usable(fx.at(99.0)));
    assert!(!fx.machine.has_usable(fx.at(100.0)));
    assert!(fx.machine.flight.is_none());
}

#[test]
fn a_caller_that_will_not_wait_never_starts_a_fetch_it_would_wait_for() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    assert!(fx.machine.on_peek(fx.t0, Need::Usable).is_none());
    assert!(fx.machine.on_peek(fx.t0, Need::PassOn).is_none());
    assert!(fx.machine.flight.is_none(), "nothing started");
    fx.first_token(100);
    assert!(matches!(
        fx.machine.on_peek(fx.at(1.0), Need::Usable),
        Some(("t1", None))
    ));
    // Stale: served, and the refresh starts.
    assert!(matches!(
        fx.machine.on_peek(fx.at(60.0), Need::Usable),
        Some(("t1", Some(_)))
    ));
    // Expired: nothing, and no second fetch.
    let running = fx.machine.flight;
    assert!(fx.machine.on_peek(fx.at(101.0), Need::Usable).is_none());
    assert_eq!(fx.machine.flight, running);
}

#[test]
fn a_caller_that_will_not_wait_gets_the_last_resort_only_while_a_failure_is_backed_off() {
    let policy = LifecyclePolicy::default()
        .with_expiration_gap(S(120))
        .with_min_pass_on_lifetime(S(60));
    let mut fx = Fixture::new(policy);
    fx.first_token(3600); // pass on until 3540, last resort until 3570
    assert!(
        fx.machine.on_peek(fx.at(3545.0), Need::PassOn).is_none(),
        "not while it can be refreshed"
    );
    let Action::Start(id) = fx.machine.on_request(fx.at(3545.0), Need::PassOn) else {
        panic!("below the floor, no fetch running: start one");
    };
    fx.machine.on_failed(id, transient(), fx.at(3545.0));
    assert!(matches!(
        fx.machine.on_peek(fx.at(3545.1), Need::PassOn),
        Some(("t1", None))
    ));
}

#[test]
fn a_late_401_for_a_replaced_token_waits_when_the_replacement_is_rejected_too() {
    let mut fx = Fixture::new(LifecyclePolicy::default().with_rejection_interval(S(1)));
    let g1 = fx.first_token(3600);
    let Rejected::Marked(Some(id)) = fx.machine.on_rejected(g1, fx.at(10.0)) else {
        panic!("marked");
    };
    let g2 = fx.land(id, "t2", 10.5, 3600);
    assert!(matches!(
        fx.machine.on_rejected(g2, fx.at(12.0)),
        Rejected::Marked(Some(_))
    ));
    // A late 401 for t1: t2 is no better, wait for t3.
    assert_eq!(
        fx.machine.on_rejected(g1, fx.at(12.1)),
        Rejected::AwaitReplacement
    );
    assert!(matches!(
        fx.machine.on_request(fx.at(12.1), Need::Replacing(g1)),
        Action::Join
    ));
}

#[test]
fn the_machine_is_quiet_while_a_stale_token_is_served_without_starting_anything() {
    let mut fx = Fixture::new(LifecyclePolicy::default());
    assert_eq!(fx.machine.quiet_until(), None, "no token: ask");
    let g = fx.first_token(100); // stale from 50 s, dead at 100 s
    assert_eq!(
        fx.machine.quiet_until(),
        Some(fx.at(50.0)),
        "fresh until the refresh point"
    );
    let Action::ServeAndRefresh(_, id) = fx.machine.on_request(fx.at(60.0), Need::Usable) else {
        panic!("stale");
    };
    assert_eq!(
        fx.machine.quiet_until(),
        Some(fx.at(100.0)),
        "a refresh runs: until expiry"
    );
    let delay = fx.machine.on_failed(id, transient(), fx.at(61.0));
    assert_eq!(
        fx.machine.quiet_until(),
        Some(fx.at(61.0) + delay),
        "backing off"
    );
    // Every quiet moment is one where the machine would only serve.
    for at in [61.1, 61.4] {
        let now = fx.at(at);
        if fx.machine.quiet_until().is_some_and(|until| now < until) {
            assert!(matches!(
                fx.machine.on_request(now, Need::Usable),
                Action::Serve("t1")
            ));
        }
    }
    assert!(matches!(
        fx.machine.on_rejected(g, fx.at(62.0)),
        Rejected::Marked(_) | Rejected::Absorbed
    ));
    assert_eq!(fx.machine.quiet_until(), None, "rejected: ask");
}

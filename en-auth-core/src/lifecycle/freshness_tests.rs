//! A token's [`Freshness`] as plain functions over time: computed once, on arrival.

use super::tests::{MS, S, arrival, fresh};
use super::*;

#[test]
fn freshness_of_an_hour_token_uses_the_sixty_second_gap() {
    let policy = LifecyclePolicy::default();
    let t0 = Instant::now();
    let f = fresh(&policy, t0, 3600);
    assert_eq!(f.expires_at(), t0 + S(3600));
    assert_eq!(f.refresh_at(), t0 + S(3540));
    for (at, is_fresh, alive) in [
        (0, true, true),
        (3539, true, true),
        (3540, false, true),
        (3599, false, true),
        (3600, false, false),
    ] {
        assert_eq!(f.is_fresh(t0 + S(at)), is_fresh, "fresh at {at}");
        assert_eq!(f.is_alive(t0 + S(at)), alive, "alive at {at}");
    }
}

#[test]
fn the_gap_is_clamped_to_half_the_life_including_the_age() {
    let policy = LifecyclePolicy::default();
    let t0 = Instant::now();
    // A 4 s token: stale after 2 s.
    assert_eq!(fresh(&policy, t0, 4).refresh_at(), t0 + S(2));
    // A token issued 50 s ago with 50 s left: life 100 s, gap 50 s, stale now.
    let f = Freshness::on_arrival(&policy, arrival(t0, Some(S(50)), S(50)), 0.0).expect("alive");
    assert_eq!(f.refresh_at(), t0);
    // A custom gap.
    let custom = LifecyclePolicy::default().with_expiration_gap(S(120));
    assert_eq!(fresh(&custom, t0, 3600).refresh_at(), t0 + S(3480));
}

#[test]
fn a_token_without_expiry_lives_the_default_lifetime_from_its_issue() {
    let policy = LifecyclePolicy::default().with_default_lifetime(S(300));
    let t0 = Instant::now();
    let f = Freshness::on_arrival(&policy, arrival(t0, None, Duration::ZERO), 0.0).expect("alive");
    assert_eq!(f.expires_at(), t0 + S(300));
    assert_eq!(f.refresh_at(), t0 + S(240));
    // Read from a store 100 s after its issue: 200 s left.
    let f = Freshness::on_arrival(&policy, arrival(t0, None, S(100)), 0.0).expect("alive");
    assert_eq!(f.expires_at(), t0 + S(200));
    // Older than the default lifetime: dead.
    let dead = Freshness::on_arrival(&policy, arrival(t0, None, S(301)), 0.0);
    assert!(matches!(dead, Err(Error::InvalidResponse { .. })));
}

#[test]
fn a_token_dead_on_arrival_is_refused() {
    let policy = LifecyclePolicy::default();
    let t0 = Instant::now();
    let dead = Freshness::on_arrival(&policy, arrival(t0, Some(Duration::ZERO), S(10)), 0.0);
    let Err(Error::InvalidResponse { reason, .. }) = dead else {
        panic!("an expired token is an invalid response: {dead:?}");
    };
    assert!(reason.contains("already expired"), "{reason}");
}

#[test]
fn a_token_stale_on_arrival_waits_the_minimum_spacing_before_a_refresh() {
    let policy = LifecyclePolicy::default();
    let t0 = Instant::now();
    let mut a = arrival(t0, Some(S(3600)), Duration::ZERO);
    a.stale_on_arrival = true;
    let f = Freshness::on_arrival(&policy, a, 0.0).expect("alive");
    assert!(!f.is_fresh(t0));
    assert!(!f.refresh_allowed(t0 + MS(999)));
    assert!(f.refresh_allowed(t0 + S(1)));
    // A 1 s token: half its life.
    let f = fresh(&policy, t0, 1);
    assert!(!f.refresh_allowed(t0 + MS(499)));
    assert!(f.refresh_allowed(t0 + MS(500)));
}

#[test]
fn the_background_refresh_is_spread_before_the_refresh_point() {
    let policy = LifecyclePolicy::default();
    let t0 = Instant::now();
    let at = |jitter| {
        Freshness::on_arrival(&policy, arrival(t0, Some(S(3600)), Duration::ZERO), jitter)
            .expect("alive")
            .background_at
    };
    // Window 60 s: spread up to 15 s before the refresh point.
    assert_eq!(at(0.0), t0 + S(3540));
    assert_eq!(at(1.0), t0 + S(3525));
    let long = LifecyclePolicy::default().with_expiration_gap(S(1200));
    let f = Freshness::on_arrival(&long, arrival(t0, Some(S(3600)), Duration::ZERO), 1.0)
        .expect("alive");
    assert_eq!(f.background_at, t0 + S(2400 - 30), "at most 30 s early");
    // Never before the minimum spacing.
    let f = Freshness::on_arrival(&policy, arrival(t0, Some(S(2)), Duration::ZERO), 1.0)
        .expect("alive");
    assert_eq!(f.background_at, t0 + S(1));
}

#[test]
fn the_pass_on_floor_is_clamped_to_a_quarter_of_the_life() {
    let policy = LifecyclePolicy::default()
        .with_expiration_gap(S(120))
        .with_min_pass_on_lifetime(S(60));
    let t0 = Instant::now();
    let f = fresh(&policy, t0, 3600);
    assert_eq!(f.pass_on_until(), t0 + S(3540));
    assert_eq!(f.pass_on_last_resort, t0 + S(3570));
    assert!(f.is_fresh_to_pass_on(t0 + S(3479)));
    assert!(!f.is_fresh_to_pass_on(t0 + S(3480)), "stale: refresh first");
    // A 40 s token: floor 10 s, last resort 5 s.
    let f = fresh(&policy, t0, 40);
    assert_eq!(f.pass_on_until(), t0 + S(30));
    assert_eq!(f.pass_on_last_resort, t0 + S(35));
}

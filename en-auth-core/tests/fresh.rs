//! `TokenCache::get_to_pass_on`: for adapters that hand tokens on (the token proxy), a token
//! with less than `LifecyclePolicy::min_pass_on_lifetime` left is not handed out while a
//! fresher one can be had; when the refresh fails, it still is while it has half that floor
//! left. On paused time, against the in-process provider.

mod support;

use std::time::Duration;

use en_auth_core::{AccessToken, Error, TokenCache};
use support::quick_policy;
use support::sim::{SimAuthorizer, SimFault, SimIdp};

/// A cache of `lifetime` tokens, stale after half their life, passed on only with a quarter
/// of their life left (the floor is clamped to a quarter of the lifetime).
fn cache(lifetime: Duration) -> (SimIdp, TokenCache<SimAuthorizer>) {
    let idp = SimIdp::new(Some(lifetime));
    let policy = quick_policy()
        .with_expiration_gap(Duration::from_secs(3600))
        .with_min_pass_on_lifetime(Duration::from_secs(3600));
    let cache = TokenCache::builder(idp.authorizer()).policy(policy).build();
    (idp, cache)
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_token_below_the_floor_waits_for_the_refresh_instead_of_being_handed_out() {
    // 4 s: stale from 2 s, passed on until 3 s.
    let (idp, cache) = cache(Duration::from_secs(4));
    let first = cache.get_to_pass_on().await.unwrap();
    assert!(cache.ready_to_pass_on().is_some());
    sleep_ms(3100).await;
    assert!(cache.has_usable_token(), "not expired");
    assert!(
        cache.ready_to_pass_on().is_none(),
        "less than a quarter of its life left"
    );
    let second = cache.get_to_pass_on().await.unwrap();
    assert_ne!(second.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2);
    assert!(cache.ready_to_pass_on().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_stale_token_above_the_floor_is_passed_on_while_one_refresh_runs() {
    let (idp, cache) = cache(Duration::from_secs(4));
    let first = cache.get_to_pass_on().await.unwrap();
    sleep_ms(2300).await; // stale, 1.7 s left: above the 1 s floor
    let served = cache.get_to_pass_on().await.unwrap();
    assert!(served.same_token(&first), "handed out without waiting");
    assert_eq!(cache.stats().waits, 1, "only the cold start waited");
    sleep_ms(10).await;
    assert_eq!(idp.token_requests(), 2, "one refresh started");
    let next = cache.get_to_pass_on().await.unwrap();
    assert!(!next.same_token(&first), "the refreshed token");
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn when_the_refresh_fails_the_token_is_served_while_it_has_half_the_floor() {
    // 6 s: passed on until 4.5 s, and as a last resort until 5.25 s.
    let (idp, cache) = cache(Duration::from_secs(6));
    let first = cache.get_to_pass_on().await.unwrap();
    sleep_ms(4600).await;
    idp.push_faults([SimFault::Status(401)]);
    let served = cache.get_to_pass_on().await.unwrap();
    assert_eq!(served.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2, "the refresh was tried once");
    // The failure is remembered: no new attempt, the same token.
    let again = cache.get_to_pass_on().await.unwrap();
    assert_eq!(again.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2);
    // Past half the floor it is not passed on any more: the remembered failure instead,
    // while `get` still serves it until it expires.
    sleep_ms(700).await;
    let err = cache.get_to_pass_on().await.unwrap_err();
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    assert!(cache.get().await.unwrap().same_token(&first));
    assert_eq!(idp.token_requests(), 2);
}

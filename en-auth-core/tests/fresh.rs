//! `TokenCache::get_fresh`: for adapters that hand tokens on (the token proxy), a stale token
//! is not handed out while a fresh one can be had.

mod support;

use std::time::Duration;

use en_auth_core::{AccessToken, ClientInfo, TokenCache};
use en_auth_testkit::{Fault, IdpConfig, LocalIdp};
use support::{TestAuthorizer, quick_policy};

async fn cache(lifetime: Duration) -> (LocalIdp, TokenCache<TestAuthorizer>) {
    let idp = LocalIdp::start(IdpConfig {
        lifetime: Some(lifetime),
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let authorizer = TestAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        idp.token_url(),
    );
    // The gap is clamped to half the lifetime: stale after half of it.
    let policy = quick_policy().with_expiration_gap(Duration::from_secs(3600));
    let cache = TokenCache::builder(authorizer).policy(policy).build();
    (idp, cache)
}

#[tokio::test]
async fn a_stale_token_waits_for_the_refresh_instead_of_being_handed_out() {
    let (idp, cache) = cache(Duration::from_secs(4)).await;
    let first = cache.get_fresh().await.unwrap();
    assert!(cache.cached_fresh().is_some());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(
        cache.cached_fresh().is_none(),
        "stale after half the lifetime"
    );
    let second = cache.get_fresh().await.unwrap();
    assert_ne!(second.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2);
    assert!(cache.cached_fresh().is_some());
}

#[tokio::test]
async fn when_the_refresh_fails_the_stale_token_is_served_while_valid() {
    let (idp, cache) = cache(Duration::from_secs(6)).await;
    let first = cache.get_fresh().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    idp.push_faults([Fault::json(401, r#"{"error":"invalid_client"}"#)]);
    let served = cache.get_fresh().await.unwrap();
    assert_eq!(served.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2, "the refresh was tried once");
    // The failure is remembered: no new attempt, the same token.
    let again = cache.get_fresh().await.unwrap();
    assert_eq!(again.token().access_token(), first.token().access_token());
    assert_eq!(idp.token_requests(), 2);
}

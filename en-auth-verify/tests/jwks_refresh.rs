//! JWKS fetches in their own task, background and periodic refresh, and the layer's header
//! rules. Each test fails on a verifier that fetches in the caller's future.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use en_auth_core::Error;
use en_auth_verify::{Algorithm, RequireAuth, Verifier};
use serde_json::json;
use support::*;
use tokio::time::timeout;

fn verifier(jwks: &JwksServer) -> Verifier {
    Verifier::jwks(jwks.url())
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
}

fn ec_token() -> String {
    sign(Algorithm::ES256, "ec-1", &ec_key(), &claims(json!({})))
}

/// A caller that gives up does not cancel the fetch it started, nor mark it as done: the
/// next caller gets the keys instead of a 503 for the rest of the rate-limit interval.
#[tokio::test]
async fn cancelled_cold_start_callers_leave_the_fetch_running_for_the_next_one() {
    let jwks = JwksServer::start().await;
    jwks.delay(300);
    let v = verifier(&jwks);
    let token = rs256(&claims(json!({})));
    for _ in 0..5 {
        assert!(
            timeout(Duration::from_millis(20), v.verify(&token))
                .await
                .is_err(),
            "the caller gives up while the JWKS endpoint is slow"
        );
    }
    let claims = timeout(Duration::from_secs(5), v.verify(&token))
        .await
        .expect("the next caller is not held up")
        .expect("the next caller gets the keys the cancelled callers' fetch brought");
    assert_eq!(claims.sub.as_deref(), Some("service-a"));
    assert_eq!(jwks.fetches(), 1, "one fetch served every caller");
}

/// An attacker who sends unknown `kid`s and cancels each request cannot use up the refetch
/// budget: the fetch runs to the end and brings the rotated key.
#[tokio::test]
async fn cancelling_unknown_kid_requests_cannot_keep_a_rotated_key_out() {
    let jwks = JwksServer::start().await;
    jwks.publish(jwks_with(&["rsa-1"]));
    let v = verifier(&jwks).with_jwks_refresh_interval(Duration::from_millis(200));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    assert_eq!(jwks.fetches(), 1);

    // The provider rotates to a new key; its JWKS endpoint is slow.
    jwks.publish(jwks_with(&["rsa-1", "ec-1"]));
    jwks.delay(300);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let junk = sign(
        Algorithm::RS256,
        "made-up-kid",
        &rsa_key(),
        &claims(json!({})),
    );
    assert!(
        timeout(Duration::from_millis(20), v.verify(&junk))
            .await
            .is_err(),
        "the attacker cancels its request mid-fetch"
    );
    let verified = timeout(Duration::from_secs(5), v.verify(&ec_token()))
        .await
        .expect("not held up")
        .expect("a token signed with the rotated key verifies right after the attack");
    assert_eq!(verified.sub.as_deref(), Some("service-a"));
    assert_eq!(
        jwks.fetches(),
        2,
        "the attacker's fetch was the one refetch"
    );
}

/// A stale key set is refreshed in the background: tokens whose key is cached are answered
/// at once while the JWKS endpoint hangs, and the refresh still brings the new key.
#[tokio::test]
async fn a_hanging_jwks_endpoint_does_not_hold_up_tokens_whose_key_is_cached() {
    let jwks = JwksServer::start().await;
    jwks.publish(jwks_with(&["rsa-1"]));
    let v = verifier(&jwks)
        .with_jwks_refresh_every(Duration::from_millis(300))
        .without_token_cache();
    v.verify(&rs256(&claims(json!({})))).await.unwrap();

    jwks.publish(jwks_with(&["rsa-1", "ec-1"]));
    jwks.delay(2_000);
    // Until a periodic refresh (every 300 ms) is hanging on the endpoint.
    let started = std::time::Instant::now();
    while jwks.fetches() < 2 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The set is stale and its refresh hangs; a generous bound, far below the hang.
    for n in 0..3 {
        let token = rs256(&claims(json!({ "sub": format!("client-{n}") })));
        timeout(Duration::from_millis(1_000), v.verify(&token))
            .await
            .expect("a token with a cached key is not held up by the hanging refresh")
            .expect("valid");
    }
    let fetches_while_hanging = jwks.fetches();
    assert!(fetches_while_hanging >= 2, "a refresh is under way");

    let verified = timeout(Duration::from_secs(6), v.verify(&ec_token()))
        .await
        .expect("the refresh ends")
        .expect("the background refresh brought the new key");
    assert_eq!(verified.sub.as_deref(), Some("service-a"));
    assert!(
        jwks.fetches() <= fetches_while_hanging + 2,
        "one refresh at a time: {}",
        jwks.fetches()
    );
}

/// Keys published ahead of use are learnt by the periodic refresh, without waiting for a
/// token that needs them (the unknown-kid refetch is ruled out here by a long interval).
#[tokio::test]
async fn the_periodic_refresh_learns_a_key_before_its_first_token() {
    let jwks = JwksServer::start().await;
    jwks.publish(jwks_with(&["rsa-1"]));
    let v = verifier(&jwks)
        .with_jwks_refresh_every(Duration::from_millis(250))
        .with_jwks_refresh_interval(Duration::from_secs(600));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    assert_eq!(jwks.fetches(), 1);

    let before = v.jwks_updates();
    jwks.publish(jwks_with(&["rsa-1", "ec-1"]));
    until_learnt(&v, before).await;
    assert!(
        jwks.fetches() >= 3,
        "the periodic refresh fetched without any request: {}",
        jwks.fetches()
    );
    // No unknown-kid refetch could run (600 s interval): only the periodic refresh can have
    // brought the key.
    v.verify(&ec_token())
        .await
        .expect("the key published ahead is known");
}

/// With no verification, no refresh: building a verifier does no I/O, and the periodic task
/// starts with the first verification.
#[tokio::test]
async fn an_unused_verifier_fetches_nothing() {
    let jwks = JwksServer::start().await;
    let _v = verifier(&jwks).with_jwks_refresh_every(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jwks.fetches(), 0);
}

const SECRET: &str = "shared-secret-of-32-bytes-or-more!!";

/// Two `Authorization` headers: the application behind the layer might read the other one,
/// so the request is refused.
#[tokio::test]
async fn requests_with_two_authorization_headers_are_refused() {
    use tower::{Layer, ServiceExt};

    let verifier = Verifier::hs256(SECRET)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    let service = RequireAuth::new(verifier).layer(tower::service_fn(
        |_request: http::Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        },
    ));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(Algorithm::HS256, "k", &key, &claims(json!({})));
    let request = |values: &[&str]| {
        let mut builder = http::Request::builder().uri("/orders");
        for value in values {
            builder = builder.header("authorization", *value);
        }
        builder.body(String::new()).unwrap()
    };
    let bearer = format!("Bearer {token}");

    let one = service.clone().oneshot(request(&[&bearer])).await.unwrap();
    assert_eq!(one.status(), 200, "the control request passes");
    for pair in [
        [bearer.as_str(), bearer.as_str()],
        [bearer.as_str(), "Basic dXNlcjpwYXNz"],
    ] {
        let response = service.clone().oneshot(request(&pair)).await.unwrap();
        assert_eq!(response.status(), 401, "{pair:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
    }
}

#[tokio::test]
async fn a_failed_cold_fetch_is_shared_with_every_waiter() {
    let jwks = JwksServer::start().await;
    jwks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    jwks.delay(100);
    let v = verifier(&jwks);
    let token = rs256(&claims(json!({})));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (v, token) = (v.clone(), token.clone());
        tasks.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert!(
            err.is_transient() && !matches!(err, Error::InvalidToken { .. }),
            "{err:?}"
        );
    }
    assert_eq!(jwks.fetches(), 1, "one fetch for twenty waiters");
}

/// A verifier may outlive the runtime that started its fetch (a verifier built once and used
/// by several runtimes, as in tests): the fetch that died with its runtime does not stay
/// "under way" for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_died_with_its_runtime_is_started_again() {
    let jwks = JwksServer::start().await;
    jwks.delay(300);
    let v = verifier(&jwks);
    let token = rs256(&claims(json!({})));
    let (v2, token2) = (v.clone(), token.clone());
    tokio::task::spawn_blocking(move || {
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gave_up = other.block_on(timeout(Duration::from_millis(50), v2.verify(&token2)));
        assert!(gave_up.is_err(), "the fetch is still under way");
        // Dropping the runtime drops the fetch task with it.
    })
    .await
    .unwrap();
    jwks.delay(0);
    let verified = timeout(Duration::from_secs(5), v.verify(&token))
        .await
        .expect("not held up")
        .expect("a new fetch brings the keys");
    assert_eq!(verified.sub.as_deref(), Some("service-a"));
}

/// A refetched JWKS with no usable signing key (empty, or only encryption keys) is a failed
/// fetch: the cached keys keep serving instead of every token becoming invalid.
#[tokio::test]
async fn a_refetched_set_without_usable_keys_keeps_the_cached_keys() {
    let jwks = JwksServer::start().await;
    jwks.publish(jwks_with(&["rsa-1"]));
    let v = verifier(&jwks)
        .with_jwks_refresh_every(Duration::from_millis(200))
        .with_jwks_refresh_interval(Duration::from_secs(600));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    jwks.publish(json!({ "keys": [] }).to_string());
    let before = jwks.fetches();
    for _ in 0..100 {
        if jwks.fetches() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(jwks.fetches() > before, "the periodic refresh ran");
    tokio::time::sleep(Duration::from_millis(50)).await;
    v.verify(&rs256(&claims(json!({ "jti": "another-token" }))))
        .await
        .expect("the cached key still verifies");
}

//! The verified-token cache against a warm cache: nothing it answers could be refused by a
//! fresh verification (each expiry, rotation and attack case), and it stays bounded.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use en_auth_core::Error;
use en_auth_verify::{Algorithm, Claims, Verifier};
use jsonwebtoken::EncodingKey;
use serde_json::json;
use support::*;

fn verifier(jwks: &JwksServer) -> Verifier {
    Verifier::jwks(jwks.url())
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
}

fn assert_invalid(result: Result<Claims, Error>, what: &str) {
    match result {
        Err(Error::InvalidToken { reason }) => assert!(!reason.is_empty(), "{what}"),
        other => panic!("{what}: expected InvalidToken, got {other:?}"),
    }
}

#[tokio::test]
async fn a_repeated_token_is_answered_from_the_cache_with_the_same_claims() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks);
    let token = rs256(&claims(json!({"customerId": "c-42"})));
    let first = v.verify(&token).await.unwrap();
    assert_eq!(v.cached_tokens(), 1);
    for _ in 0..10 {
        let again = v.verify(&token).await.unwrap();
        assert_eq!(again.sub, first.sub);
        assert_eq!(again.custom::<String>("customerId").unwrap(), "c-42");
    }
    let shared = v.verify_shared(&token).await.unwrap();
    assert_eq!(shared.scope, first.scope);
    assert_eq!(v.token_cache_hits(), 11, "every repeat came from the cache");
    assert_eq!(v.cached_tokens(), 1, "one entry per token");
    assert_eq!(jwks.fetches(), 1);

    let off = verifier(&jwks).without_token_cache();
    off.verify(&token).await.unwrap();
    assert_eq!(off.cached_tokens(), 0, "the cache can be turned off");
}

#[tokio::test]
async fn an_expired_token_is_refused_from_a_warm_cache() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_leeway(Duration::ZERO);
    // Warm the key set first, so the token's few seconds are not spent on the JWKS fetch.
    v.verify(&rs256(&claims(json!({"sub": "warm-up"}))))
        .await
        .unwrap();
    let token = rs256(&claims(json!({"exp": now() + 3})));
    v.verify(&token)
        .await
        .expect("valid for a few more seconds");
    v.verify(&token).await.expect("still valid, from the cache");
    assert_eq!(v.cached_tokens(), 2);
    assert_eq!(v.token_cache_hits(), 1);
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    match v.verify(&token).await {
        Err(Error::InvalidToken { reason }) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("an expired token from the cache: {other:?}"),
    }
}

#[tokio::test]
async fn the_leeway_is_the_same_for_cached_and_fresh_answers() {
    let jwks = JwksServer::start().await;
    // Expired ten seconds ago: inside a 30 s leeway, outside a zero one.
    let token = rs256(&claims(json!({"exp": now() - 10})));
    let lenient = verifier(&jwks);
    lenient.verify(&token).await.expect("inside the leeway");
    lenient
        .verify(&token)
        .await
        .expect("inside the leeway, cached");
    let strict = lenient.clone().with_leeway(Duration::ZERO);
    assert_invalid(strict.verify(&token).await, "outside the stricter leeway");
}

#[tokio::test]
async fn tampered_tokens_miss_the_cache_and_fail() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks);
    let good = rs256(&claims(json!({})));
    v.verify(&good).await.unwrap();
    v.verify(&good).await.unwrap();

    let mut bad_signature = good.clone();
    let last = bad_signature.pop().unwrap();
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });
    assert_invalid(v.verify(&bad_signature).await, "tampered signature");

    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = B64.encode(claims(json!({"sub": "admin"})).to_string());
    assert_invalid(v.verify(&parts.join(".")).await, "tampered payload");

    let mut header_swap: Vec<String> = good.split('.').map(str::to_owned).collect();
    header_swap[0] = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    assert_invalid(v.verify(&header_swap.join(".")).await, "alg none header");
    // Trailing data after a cached token is another token.
    assert_invalid(v.verify(&format!("{good}.x")).await, "four parts");
    assert_eq!(v.cached_tokens(), 1, "failures are never cached");
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_ends_its_cached_tokens() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_jwks_refresh_every(Duration::from_millis(200));
    let token = rs256(&claims(json!({})));
    v.verify(&token).await.unwrap();
    v.verify(&token).await.unwrap();

    // The provider withdraws the RSA key (say it leaked); the periodic refresh learns it.
    let before = v.jwks_updates();
    jwks.publish(jwks_with(&["ec-1"]));
    until_learnt(&v, before).await;
    assert!(jwks.fetches() >= 2);
    assert_invalid(v.verify(&token).await, "signed with a withdrawn key");
    assert_eq!(v.cached_tokens(), 0, "its entry is gone");
    assert_eq!(
        v.token_cache_hits(),
        1,
        "only the hit before the withdrawal"
    );
}

#[tokio::test]
async fn a_kid_that_now_names_another_key_ends_its_cached_tokens() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_jwks_refresh_every(Duration::from_millis(200));
    let token = rs256(&claims(json!({})));
    v.verify(&token).await.unwrap();
    v.verify(&token).await.unwrap();

    // `rsa-1` now names the EC key: same kid, another key.
    let mut document: serde_json::Value = serde_json::from_str(&jwks_with(&["ec-1"])).unwrap();
    document["keys"][0]["kid"] = json!("rsa-1");
    let before = v.jwks_updates();
    jwks.publish(document.to_string());
    until_learnt(&v, before).await;
    assert_invalid(v.verify(&token).await, "its kid names another key");
}

#[tokio::test]
async fn an_unchanged_key_set_keeps_the_cache_warm() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_jwks_refresh_every(Duration::from_millis(100));
    let token = rs256(&claims(json!({})));
    v.verify(&token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(jwks.fetches() >= 2, "refreshed meanwhile");
    v.verify(&token).await.unwrap();
    assert_eq!(v.cached_tokens(), 1, "the same key keeps its entries");
    assert_eq!(
        v.token_cache_hits(),
        1,
        "answered from the cache after the refreshes"
    );
}

#[tokio::test]
async fn verifiers_with_other_rules_do_not_share_entries() {
    let jwks = JwksServer::start().await;
    let warm = verifier(&jwks);
    let token = rs256(&claims(json!({"scope": "read:data"})));
    warm.verify(&token).await.unwrap();
    warm.verify(&token).await.unwrap();

    assert_invalid(
        warm.clone()
            .with_issuer("https://other-issuer.test/")
            .verify(&token)
            .await,
        "another issuer",
    );
    let other_audience = Verifier::jwks(jwks.url())
        .with_issuer(ISSUER)
        .with_audience("https://other-api.test");
    other_audience
        .verify(&rs256(&claims(json!({"aud": "https://other-api.test"}))))
        .await
        .unwrap();
    assert_invalid(other_audience.verify(&token).await, "another audience");
    assert_invalid(
        warm.clone().require_typ("JWT").verify(&token).await,
        "another typ",
    );
    assert_invalid(
        warm.clone()
            .with_algorithms([Algorithm::ES256])
            .verify(&token)
            .await,
        "RS256 no longer allowed",
    );
    let err = warm
        .clone()
        .require_scopes(["write:data"])
        .verify(&token)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsufficientScope { .. }), "{err:?}");
    warm.verify(&token)
        .await
        .expect("the warm verifier still accepts it");
}

#[tokio::test]
async fn tokens_not_yet_valid_or_issued_in_the_future_are_never_cached() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_leeway(Duration::ZERO);
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    for (what, extra) in [
        ("nbf in the future", json!({"nbf": now() + 60})),
        ("iat in the future", json!({"iat": now() + 60})),
    ] {
        let token = rs256(&claims(extra));
        assert_invalid(v.verify(&token).await, what);
        assert_invalid(v.verify(&token).await, what);
    }
    assert_eq!(v.cached_tokens(), 1, "only the valid token");
}

#[tokio::test]
async fn a_flood_of_distinct_valid_tokens_stays_within_the_capacity() {
    const SECRET: &[u8] = b"shared-secret-of-32-bytes-or-more!!";
    let v = Verifier::hs256(SECRET)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_token_cache(64, Duration::from_secs(60));
    let key = EncodingKey::from_secret(SECRET);
    let in_use = sign(
        Algorithm::HS256,
        "k",
        &key,
        &claims(json!({"sub": "steady"})),
    );
    let mut peak = 0;
    for n in 0..1_000 {
        let token = sign(
            Algorithm::HS256,
            "k",
            &key,
            &claims(json!({ "sub": format!("flood-{n}") })),
        );
        v.verify(&token).await.unwrap();
        v.verify(&in_use).await.unwrap();
        peak = peak.max(v.cached_tokens());
    }
    assert!(peak <= 64, "peak {peak} entries");
    assert!(peak >= 32, "the cache was used: peak {peak}");
    assert!(
        v.token_cache_hits() >= 999,
        "the token in use stayed cached through the flood: {} hits",
        v.token_cache_hits()
    );
}

#[tokio::test]
async fn a_cached_token_is_verified_again_after_the_maximum_age() {
    const SECRET: &[u8] = b"shared-secret-of-32-bytes-or-more!!";
    let key = EncodingKey::from_secret(SECRET);
    let v = Verifier::hs256(SECRET)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_token_cache(16, Duration::from_millis(100));
    let token = sign(Algorithm::HS256, "k", &key, &claims(json!({})));
    v.verify(&token).await.unwrap();
    v.verify(&token).await.unwrap();
    assert_eq!(v.token_cache_hits(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    v.verify(&token).await.unwrap();
    assert_eq!(v.token_cache_hits(), 1, "verified in full again");
    v.verify(&token).await.unwrap();
    assert_eq!(v.token_cache_hits(), 2, "and cached again");
}

/// A token without a `kid` verified with the set's only key is not answered from the cache
/// once the set has several keys: a fresh verification would refuse it (which key?).
#[tokio::test]
async fn a_token_without_kid_is_refused_from_a_warm_cache_once_the_set_has_several_keys() {
    let jwks = JwksServer::start().await;
    jwks.publish(jwks_with(&["rsa-1"]));
    let v = verifier(&jwks).with_jwks_refresh_every(Duration::from_millis(200));
    install_crypto_backend();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    let token = jsonwebtoken::encode(&header, &claims(json!({})), &rsa_key()).unwrap();
    v.verify(&token).await.expect("the only key verifies it");
    v.verify(&token).await.expect("and again, from the cache");
    let before = v.jwks_updates();
    jwks.publish(jwks_with(&["rsa-1", "ec-1"]));
    until_learnt(&v, before).await;
    assert_invalid(v.verify(&token).await, "no kid, several keys");
    assert_invalid(
        verifier(&jwks).verify(&token).await,
        "a fresh verifier agrees",
    );
}

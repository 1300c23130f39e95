//! The verifier against tokens minted with the committed test keys: what must pass, and the
//! attack suite that must not.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use en_auth_core::Error;
use en_auth_verify::{Algorithm, Verifier};
use jsonwebtoken::EncodingKey;
use serde_json::json;
use support::*;

fn verifier(jwks: &JwksServer) -> Verifier {
    Verifier::jwks(jwks.url())
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
}

fn assert_invalid(result: Result<en_auth_verify::Claims, Error>, what: &str) {
    match result {
        Err(Error::InvalidToken { reason }) => assert!(!reason.is_empty(), "{what}"),
        other => panic!("{what}: expected InvalidToken, got {other:?}"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_and_expose_typed_claims() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).require_typ("at+jwt");
    let verified = v
        .verify(&rs256(&claims(json!({"customerId": "c-42", "tier": 3}))))
        .await
        .unwrap();
    assert_eq!(verified.sub.as_deref(), Some("service-a"));
    assert!(verified.has_scope("read:data"));
    assert_eq!(verified.custom::<String>("customerId").unwrap(), "c-42");

    #[derive(serde::Deserialize)]
    struct Custom {
        #[serde(rename = "customerId")]
        customer_id: String,
        tier: u8,
    }
    let custom: Custom = verified.extra_as().unwrap();
    assert_eq!((custom.customer_id.as_str(), custom.tier), ("c-42", 3));
    assert!(
        verified.custom::<u64>("customerId").is_err(),
        "a mistyped claim is an error"
    );

    let es = sign(
        Algorithm::ES256,
        "ec-1",
        &ec_key(),
        &claims(json!({"aud": ["other", AUDIENCE]})),
    );
    let verified = v.verify(&es).await.unwrap();
    assert_eq!(
        verified.aud,
        vec!["other".to_string(), AUDIENCE.to_string()]
    );
    assert_eq!(jwks.fetches(), 1, "the key set is fetched once and shared");
}

#[tokio::test]
async fn the_attack_suite_is_rejected() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).require_scopes(["read:data"]);
    let good = rs256(&claims(json!({})));
    v.verify(&good).await.expect("the control token verifies");

    // alg: none, with and without a signature.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(claims(json!({})).to_string());
    assert_invalid(v.verify(&format!("{header}.{payload}.")).await, "alg none");
    assert_invalid(
        v.verify(&format!("{header}.{payload}")).await,
        "alg none, two parts",
    );

    // HS256 signed with the RSA public key, claiming the RSA key's kid.
    let confused = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(rsa_public_pem().as_bytes()),
        &claims(json!({})),
    );
    assert_invalid(v.verify(&confused).await, "HS256 with the RSA public key");

    // RS256 claiming the EC key.
    let wrong_family = sign(Algorithm::RS256, "ec-1", &rsa_key(), &claims(json!({})));
    assert_invalid(v.verify(&wrong_family).await, "RS256 on an EC key");

    // Time claims.
    assert_invalid(
        v.verify(&rs256(&claims(json!({"exp": now() - 3600}))))
            .await,
        "expired",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"nbf": now() + 3600}))))
            .await,
        "not yet valid",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"iat": now() + 3600}))))
            .await,
        "issued in the future",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"exp": null})))).await,
        "no exp",
    );

    // Issuer and audience.
    assert_invalid(
        v.verify(&rs256(&claims(json!({"iss": "https://evil.test/"}))))
            .await,
        "wrong iss",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"iss": null})))).await,
        "no iss",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"aud": "https://other.test"}))))
            .await,
        "wrong aud",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({"aud": ["a", "b"]})))).await,
        "wrong aud array",
    );

    // Missing scope.
    let err = v
        .verify(&rs256(&claims(json!({"scope": "write:data"}))))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InsufficientScope { ref required } if required == &["read:data"]),
        "{err:?}"
    );

    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = B64.encode(claims(json!({"sub": "admin"})).to_string());
    assert_invalid(v.verify(&parts.join(".")).await, "tampered payload");
    // Tampered signature.
    let mut bad_sig = good.clone();
    bad_sig.pop();
    bad_sig.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_invalid(v.verify(&bad_sig).await, "tampered signature");

    // A kid crafted to forge log lines is rejected, and escaped in the (logged) reason.
    let forged = sign(
        Algorithm::RS256,
        "x\nlevel=ERROR forged",
        &rsa_key(),
        &claims(json!({})),
    );
    match v.verify(&forged).await {
        Err(Error::InvalidToken { reason }) => assert!(!reason.contains('\n'), "{reason}"),
        other => panic!("forged kid: {other:?}"),
    }

    // Oversized.
    let huge = rs256(&claims(json!({"padding": "x".repeat(100_000)})));
    assert_invalid(v.verify(&huge).await, "oversized");

    // Garbage.
    for garbage in [
        "",
        "abc",
        "a.b.c",
        "...",
        "Bearer x",
        "eyJ.eyJ.sig",
        "\u{0}\u{1}",
        &"A".repeat(5000),
    ] {
        assert_invalid(v.verify(garbage).await, &format!("garbage {garbage:?}"));
    }
    assert_eq!(
        jwks.fetches(),
        1,
        "none of these made the verifier refetch keys"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let jwks = JwksServer::start().await;
    // Tokens are minted first so that the flood fits well inside the interval.
    let key = rsa_key();
    let payload = claims(json!({}));
    let mint = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                sign(
                    Algorithm::RS256,
                    &format!("kid-{}", fastrand::u64(..)),
                    &key,
                    &payload,
                )
            })
            .collect()
    };
    let (first, second) = (mint(200), mint(200));

    let v = verifier(&jwks).with_jwks_refresh_interval(Duration::from_secs(1));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    assert_eq!(jwks.fetches(), 1);

    let flood = |tokens: Vec<String>| {
        let v = v.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for token in tokens {
                let v = v.clone();
                tasks.spawn(async move { v.verify(&token).await });
            }
            while let Some(result) = tasks.join_next().await {
                assert!(matches!(result.unwrap(), Err(Error::InvalidToken { .. })));
            }
        }
    };
    flood(first).await;
    assert_eq!(jwks.fetches(), 1, "within the interval: no refetch at all");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flood(second).await;
    assert_eq!(
        jwks.fetches(),
        2,
        "after the interval: exactly one refetch for the whole flood"
    );
}

#[tokio::test]
async fn the_refresh_interval_applies_to_a_verifier_that_was_already_cloned() {
    let jwks = JwksServer::start().await;
    let shared = verifier(&jwks);
    let _clone_elsewhere = shared.clone();
    let v = shared.with_jwks_refresh_interval(Duration::from_millis(1));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let unknown = sign(
        Algorithm::RS256,
        "rotated-kid",
        &rsa_key(),
        &claims(json!({})),
    );
    assert_invalid(v.verify(&unknown).await, "unknown kid");
    assert_eq!(
        jwks.fetches(),
        2,
        "the 1 ms interval is in force: one refetch"
    );
}

#[tokio::test]
async fn cached_keys_are_served_while_the_jwks_endpoint_is_down() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).with_jwks_refresh_interval(Duration::from_millis(1));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    jwks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // An unknown kid tries a refetch, which fails...
    let unknown = sign(Algorithm::RS256, "rotated", &rsa_key(), &claims(json!({})));
    assert_invalid(v.verify(&unknown).await, "unknown kid while down");
    assert_eq!(jwks.fetches(), 2);
    // ...and known keys keep working.
    v.verify(&rs256(&claims(json!({}))))
        .await
        .expect("cached keys still served");
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_transient_error_not_an_invalid_token() {
    let jwks = JwksServer::start().await;
    jwks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = verifier(&jwks)
        .verify(&rs256(&claims(json!({}))))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_plain_http_remote_jwks_is_refused_before_any_io() {
    let v = Verifier::jwks("http://keys.example.com/jwks.json").with_issuer(ISSUER);
    let err = v.verify(&rs256(&claims(json!({})))).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "jwks_url"),
        "{err:?}"
    );
}

#[tokio::test]
async fn auth0_style_tokens_with_permissions_and_org_id() {
    let jwks = JwksServer::start().await;
    let domain = "tenant.eu.auth0.com";
    let v = Verifier::auth0(domain, "https://orders.api")
        .with_jwks_url(jwks.url())
        .require_scopes(["read:orders"])
        .require_org_id("org_123");
    let token = |extra: serde_json::Value| {
        let mut payload = claims(json!({
            "iss": "https://tenant.eu.auth0.com/",
            "aud": ["https://orders.api", "https://tenant.eu.auth0.com/userinfo"],
            "scope": null,
        }));
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        rs256(&payload)
    };
    let ok = token(json!({"permissions": ["read:orders", "write:orders"], "org_id": "org_123"}));
    let verified = v.verify(&ok).await.unwrap();
    assert!(verified.has_permission("write:orders"));
    let err = v
        .verify(&token(
            json!({"permissions": ["write:orders"], "org_id": "org_123"}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsufficientScope { .. }), "{err:?}");
    assert_invalid(
        v.verify(&token(
            json!({"permissions": ["read:orders"], "org_id": "org_999"}),
        ))
        .await,
        "other org",
    );
    assert_invalid(
        v.verify(&token(json!({"permissions": ["read:orders"]})))
            .await,
        "no org",
    );
}

#[tokio::test]
async fn cognito_style_access_tokens() {
    let jwks = JwksServer::start().await;
    let v = Verifier::cognito("eu-west-1", "eu-west-1_AbC123", "app-client-1")
        .with_jwks_url(jwks.url());
    let base = json!({
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123",
        "aud": null, "token_use": "access", "client_id": "app-client-1", "username": "alice",
    });
    let verified = v.verify(&rs256(&claims(base.clone()))).await.unwrap();
    assert_eq!(verified.custom::<String>("username").unwrap(), "alice");

    let mut id_token = base.clone();
    id_token["token_use"] = json!("id");
    assert_invalid(v.verify(&rs256(&claims(id_token))).await, "id token");
    let mut other_client = base.clone();
    other_client["client_id"] = json!("app-client-2");
    assert_invalid(
        v.verify(&rs256(&claims(other_client))).await,
        "other client",
    );
    let mut other_pool = base;
    other_pool["iss"] = json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other");
    assert_invalid(v.verify(&rs256(&claims(other_pool))).await, "other pool");
}

#[tokio::test]
async fn hs256_with_a_shared_secret() {
    let v = Verifier::hs256("shared-secret-of-32-bytes-or-more!!")
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    let key = EncodingKey::from_secret(b"shared-secret-of-32-bytes-or-more!!");
    v.verify(&sign(Algorithm::HS256, "k", &key, &claims(json!({}))))
        .await
        .unwrap();
    let wrong = EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more");
    assert_invalid(
        v.verify(&sign(Algorithm::HS256, "k", &wrong, &claims(json!({}))))
            .await,
        "wrong secret",
    );
    assert_invalid(
        v.verify(&rs256(&claims(json!({})))).await,
        "RS256 to an HS256 verifier",
    );
    assert_invalid(
        v.verify(&sign(Algorithm::HS512, "k", &key, &claims(json!({}))))
            .await,
        "HS512 not allowed",
    );
}

#[tokio::test]
async fn the_typ_requirement_is_enforced() {
    let jwks = JwksServer::start().await;
    let v = verifier(&jwks).require_typ("at+jwt");
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.typ = Some("JWT".into());
    // Each test runs in a process of its own: name the backend for this test's own signing.
    support::install_crypto_backend();
    let id_token_like = jsonwebtoken::encode(&header, &claims(json!({})), &rsa_key()).unwrap();
    assert_invalid(
        v.verify(&id_token_like).await,
        "typ JWT where at+jwt is required",
    );
}

#[tokio::test]
async fn a_fixed_jwks_document_verifies_without_any_fetch() {
    let document = std::fs::read(format!(
        "{}/tests/fixtures/jwks.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let v = Verifier::jwks_document(&document)
        .unwrap()
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_jwks_refresh_interval(Duration::from_millis(1));
    v.verify(&rs256(&claims(json!({})))).await.unwrap();
    v.verify(&sign(
        Algorithm::ES256,
        "ec-1",
        &ec_key(),
        &claims(json!({})),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let unknown = sign(Algorithm::RS256, "other", &rsa_key(), &claims(json!({})));
    assert_invalid(v.verify(&unknown).await, "unknown kid in a fixed set");
    assert_eq!(v.jwks_fetches(), 0, "a fixed set is never fetched");

    for bad in [
        &b"not json"[..],
        br#"{"keys":[]}"#,
        br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    ] {
        let err = Verifier::jwks_document(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidConfiguration { .. }), "{err:?}");
    }
}

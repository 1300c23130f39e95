//! The JWT bearer grant (RFC 7523 §2.1) against panva's `oidc-provider` with a jwt-bearer
//! grant handler (tests/peers/oidc-provider.mjs) that verifies the assertion's signature
//! against the keys of the issuer it names, its `aud`, `exp`, and refuses a replayed `jti`.

#[path = "support/exchange_peer.rs"]
mod exchange_peer;

use std::sync::Arc;

use en_auth_core::{AccessToken, Authorizer, ClientInfo, Error};
use en_auth_oauth2::{JWT_BEARER_GRANT, JwtBearerAssertion, JwtBearerAuthorizer};
use en_auth_testkit::OidcProvider;
use exchange_peer::{JWT_BEARER, P256Signer, claims, keys, recorded, upstream_token};
use serde_json::json;

#[tokio::test]
async fn an_assertion_signed_by_our_key_obtains_a_token_with_well_formed_claims() {
    assert_eq!(JWT_BEARER_GRANT, JWT_BEARER);
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let signer = Arc::new(P256Signer::from_pem(&keys.bearer_pem, "bearer-1"));

    // A confidential client (client_secret_basic), iss and sub the client id by default.
    let authorizer = JwtBearerAuthorizer::new(
        ClientInfo::new("exchange-client", "exchange-secret"),
        provider.token_url(),
        JwtBearerAssertion::signed(signer.clone()),
    )
    .with_resource(OidcProvider::API)
    .with_scopes(["read:data"]);
    let first = authorizer.authorize().await.unwrap();
    let issued = claims(first.access_token());
    assert_eq!(issued["sub"], "exchange-client");
    assert_eq!(issued["aud"], json!([OidcProvider::API]));
    assert_eq!(issued["scope"], "read:data");
    authorizer.authorize().await.unwrap(); // a second assertion: a fresh jti

    // A public client (no client authentication), for a named subject.
    let public = JwtBearerAuthorizer::new(
        ClientInfo::new("exchange-public", ""),
        provider.token_url(),
        JwtBearerAssertion::signed(signer).with_subject("alice@example.com"),
    )
    .without_client_authentication();
    let token = public.authorize().await.unwrap();
    assert_eq!(claims(token.access_token())["sub"], "alice@example.com");
    assert_eq!(claims(token.access_token())["client_id"], "exchange-public");

    let seen = recorded(&provider).await["bearer"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(seen.len(), 3);
    let (first, second) = (&seen[0]["claims"], &seen[1]["claims"]);
    assert_eq!(seen[0]["header"]["alg"], "ES256");
    assert_eq!(seen[0]["header"]["kid"], "bearer-1");
    assert_eq!(first["iss"], "exchange-client");
    assert_eq!(first["sub"], "exchange-client");
    assert_eq!(first["aud"], provider.token_url());
    assert_eq!(
        first["exp"].as_i64().unwrap() - first["iat"].as_i64().unwrap(),
        60
    );
    assert_ne!(first["jti"], second["jti"]);
    assert_eq!(seen[2]["claims"]["iss"], "exchange-public");
    assert_eq!(provider.grants(JWT_BEARER).await, 3);
}

#[tokio::test]
async fn an_assertion_file_is_read_for_every_request_and_a_replayed_one_is_refused() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let dir = std::env::temp_dir().join(format!("en-auth-jwt-bearer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("assertion");
    // Issued by the upstream issuer for this provider (aud: its issuer).
    let mint = |sub: &str| upstream_token(&keys, sub, 300, json!({"aud": provider.issuer()}));

    let authorizer = JwtBearerAuthorizer::new(
        ClientInfo::new("exchange-client", "exchange-secret"),
        provider.token_url(),
        JwtBearerAssertion::file(&path),
    );
    // No file yet: a typed error naming the path, and no request.
    match authorizer.authorize().await {
        Err(Error::CredentialUnavailable { credential, .. }) => {
            assert_eq!(credential, path.display().to_string())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.token_requests().await, 0);

    let first = mint("workload-a");
    std::fs::write(&path, &first).unwrap();
    let token = authorizer.authorize().await.unwrap();
    assert_eq!(claims(token.access_token())["sub"], "workload-a");
    let second = mint("workload-b");
    std::fs::write(&path, &second).unwrap();
    let token = authorizer.authorize().await.unwrap();
    assert_eq!(claims(token.access_token())["sub"], "workload-b");
    // Not rewritten: the same assertion again, which the provider refuses (jti replay).
    let err = authorizer.authorize().await.unwrap_err();
    assert!(
        matches!(&err, Error::Authorization { error, .. } if error == "invalid_grant"),
        "{err}"
    );
    assert_eq!(provider.grants(JWT_BEARER).await, 3);

    let shown = format!("{authorizer:?} {err}");
    let logs = captured.text();
    for secret in [first.as_str(), second.as_str(), token.access_token()] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!logs.contains(secret), "an assertion or token in the logs");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_signed_assertion_never_shows_the_key_or_the_assertion() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    // Signed by a key the provider does not trust for this issuer (the upstream's).
    let signer = Arc::new(P256Signer::from_pem(&keys.upstream_pem, "bearer-1"));
    let authorizer = JwtBearerAuthorizer::new(
        ClientInfo::new("exchange-client", "exchange-secret"),
        provider.token_url(),
        JwtBearerAssertion::signed(signer),
    );
    let err = authorizer.authorize().await.unwrap_err();
    assert!(
        matches!(&err, Error::Authorization { error, .. } if error == "invalid_grant"),
        "{err}"
    );
    let shown = format!("{authorizer:?} {err}");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("exchange-secret"),
        "{shown}"
    );
    assert_eq!(provider.grants(JWT_BEARER).await, 1);
}

//! Token exchange (RFC 8693) against panva's `oidc-provider` with a token-exchange grant
//! handler (tests/peers/oidc-provider.mjs) that verifies the subject and actor tokens against
//! the upstream issuer's key, as a real provider does, and counts the requests it received.

#[path = "support/exchange_peer.rs"]
mod exchange_peer;

use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error};
use en_auth_oauth2::{
    ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, SubjectToken, TOKEN_EXCHANGE_GRANT, TokenExchangeAuthorizer,
};
use en_auth_testkit::OidcProvider;
use exchange_peer::{TOKEN_EXCHANGE, claims, keys, recorded, upstream_token};
use serde_json::json;

const CLIENT: (&str, &str) = ("exchange-client", "exchange-secret");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("en-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces the file at `path` atomically, as the kubelet rotates a projected token.
fn rotate(path: &std::path::Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn a_subject_file_is_exchanged_with_audience_and_scopes_and_reread_for_every_request() {
    assert_eq!(TOKEN_EXCHANGE_GRANT, TOKEN_EXCHANGE);
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let dir = temp_dir("exchange-file");
    let path = dir.join("token");
    rotate(
        &path,
        &upstream_token(&keys, "system:serviceaccount:shop:orders", 600, json!({})),
    );

    let authorizer = TokenExchangeAuthorizer::new(
        ClientInfo::new(CLIENT.0, CLIENT.1),
        provider.token_url(),
        SubjectToken::file(&path, JWT_TOKEN_TYPE),
    )
    .with_audience(OidcProvider::API)
    .with_scopes(["read:data"]);

    let first = authorizer.authorize().await.unwrap();
    let issued = claims(first.access_token());
    assert_eq!(issued["sub"], "system:serviceaccount:shop:orders");
    assert_eq!(issued["aud"], json!([OidcProvider::API]));
    assert_eq!(issued["scope"], "read:data");
    assert_eq!(issued["client_id"], CLIENT.0);
    assert!(first.expires_at().is_some());

    // The kubelet rotates the token: the next request sends the new one.
    rotate(
        &path,
        &upstream_token(
            &keys,
            "system:serviceaccount:shop:orders-v2",
            600,
            json!({}),
        ),
    );
    let second = authorizer.authorize().await.unwrap();
    assert_eq!(
        claims(second.access_token())["sub"],
        "system:serviceaccount:shop:orders-v2"
    );

    let recorded = recorded(&provider).await;
    let exchanges = recorded["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 2);
    for exchange in exchanges {
        assert_eq!(exchange["subject_token_type"], JWT_TOKEN_TYPE);
        assert_eq!(exchange["resource"], json!([OidcProvider::API]));
        assert_eq!(exchange["act"], json!(null));
    }
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_actor_token_is_sent_and_named_in_the_issued_token() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let subject = upstream_token(&keys, "alice", 600, json!({}));
    let actor = upstream_token(&keys, "gateway-service", 600, json!({}));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let authorizer = TokenExchangeAuthorizer::new(
        ClientInfo::new(CLIENT.0, CLIENT.1),
        provider.token_url(),
        SubjectToken::from_fn(
            move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let subject = subject.clone();
                async move { Ok::<_, Error>(subject) }
            },
            ACCESS_TOKEN_TYPE,
        ),
    )
    .with_actor(SubjectToken::value(actor, JWT_TOKEN_TYPE))
    .with_resource(OidcProvider::API)
    .with_requested_token_type(ACCESS_TOKEN_TYPE);

    let auth = AuthMiddleware::new(authorizer);
    let token = auth.access_token().await.unwrap();
    let issued = claims(&token);
    assert_eq!(issued["sub"], "alice");
    assert_eq!(issued["act"], json!({"sub": "gateway-service"}));
    let exchange = &recorded(&provider).await["exchanges"][0];
    assert_eq!(exchange["act"], "gateway-service");
    assert_eq!(exchange["subject_token_type"], ACCESS_TOKEN_TYPE);
    // Cached: one exchange, one read of the subject.
    auth.access_token().await.unwrap();
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn several_audiences_are_each_sent_and_part_of_the_cache_key() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let subject = upstream_token(&keys, "erin", 600, json!({}));
    let exchange = |audiences: &[&str]| {
        audiences.iter().fold(
            TokenExchangeAuthorizer::new(
                ClientInfo::new(CLIENT.0, CLIENT.1),
                provider.token_url(),
                SubjectToken::value(subject.clone(), JWT_TOKEN_TYPE),
            )
            // With a resource, the test provider's front leaves `audience` as it came.
            .with_resource(OidcProvider::API),
            |authorizer, audience| authorizer.with_audience(*audience),
        )
    };
    let both = exchange(&["https://a.example", "https://b.example"]);
    both.authorize().await.unwrap();
    assert_eq!(
        recorded(&provider).await["exchanges"][0]["audience"],
        json!(["https://a.example", "https://b.example"])
    );
    assert_ne!(
        both.cache_key(),
        exchange(&["https://b.example"]).cache_key()
    );
}

#[tokio::test]
async fn a_public_client_exchanges_without_a_secret() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    for explicit in [false, true] {
        let subject = upstream_token(&keys, "bob", 600, json!({}));
        let mut authorizer = TokenExchangeAuthorizer::new(
            ClientInfo::new("exchange-public", ""),
            provider.token_url(),
            SubjectToken::value(subject, JWT_TOKEN_TYPE),
        );
        if explicit {
            authorizer = authorizer.without_client_authentication();
        }
        let token = authorizer.authorize().await.unwrap();
        assert_eq!(claims(token.access_token())["client_id"], "exchange-public");
    }
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
}

#[tokio::test]
async fn a_missing_subject_file_fails_without_a_provider_request() {
    let provider = OidcProvider::start(600).await;
    let path = temp_dir("exchange-missing").join("not-there");
    let authorizer = TokenExchangeAuthorizer::new(
        ClientInfo::new(CLIENT.0, CLIENT.1),
        provider.token_url(),
        SubjectToken::file(&path, JWT_TOKEN_TYPE),
    );
    match authorizer.authorize().await {
        Err(Error::CredentialUnavailable { credential, .. }) => {
            assert_eq!(credential, path.display().to_string())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.token_requests().await, 0);
}

#[tokio::test]
async fn issued_token_types_are_checked_and_n_a_is_refused_as_an_access_token() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let subject = upstream_token(&keys, "carol", 600, json!({}));
    let exchange = |client: &str, requested: &str| {
        TokenExchangeAuthorizer::new(
            ClientInfo::new(client, "exchange-secret"),
            provider.token_url(),
            SubjectToken::value(subject.clone(), JWT_TOKEN_TYPE),
        )
        .with_requested_token_type(requested)
    };
    let refusal = |result: Result<en_auth_core::BearerToken, Error>| match result {
        Err(Error::InvalidResponse { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };

    // A token that is not an access token (token_type N_A) is not a bearer token.
    let reason = refusal(exchange("exchange-na", JWT_TOKEN_TYPE).authorize().await);
    assert!(
        reason.contains("N_A") && reason.contains("not an access token"),
        "{reason}"
    );
    // Another type than requested.
    let reason = refusal(
        exchange("exchange-mismatch", ACCESS_TOKEN_TYPE)
            .authorize()
            .await,
    );
    assert!(
        reason.contains("urn:ietf:params:oauth:token-type:id_token")
            && reason.contains("was requested"),
        "{reason}"
    );
    // No issued_token_type at all.
    let reason = refusal(
        exchange("exchange-untyped", ACCESS_TOKEN_TYPE)
            .authorize()
            .await,
    );
    assert!(reason.contains("no issued_token_type"), "{reason}");
    // The same request to a provider that answers as asked.
    let token = exchange(CLIENT.0, ACCESS_TOKEN_TYPE)
        .authorize()
        .await
        .unwrap();
    assert_eq!(claims(token.access_token())["sub"], "carol");
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 4);

    // A subject token the provider does not accept (signed by another key): its refusal.
    let forged = {
        let mut keys = exchange_peer::keys(&provider).await;
        keys.upstream_pem = keys.bearer_pem.clone();
        upstream_token(&keys, "mallory", 600, json!({}))
    };
    let err = TokenExchangeAuthorizer::new(
        ClientInfo::new(CLIENT.0, CLIENT.1),
        provider.token_url(),
        SubjectToken::value(forged.clone(), JWT_TOKEN_TYPE),
    )
    .authorize()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Authorization { error, .. } if error == "invalid_grant"),
        "{err}"
    );

    // Neither the subject tokens nor the issued token are in errors, Debug or the logs.
    let debug = format!("{:?}", exchange("exchange-na", JWT_TOKEN_TYPE));
    let logs = captured.text();
    for secret in [
        subject.as_str(),
        forged.as_str(),
        token.access_token(),
        "exchange-secret",
    ] {
        assert!(!logs.contains(secret), "a secret in the logs");
        assert!(!debug.contains(secret), "a secret in Debug: {debug}");
        assert!(!err.to_string().contains(secret));
    }
    // The refusals are logged (their reasons carry no token).
    assert!(logs.contains("en_auth.token_request"), "{logs}");
    assert!(
        logs.contains("token request failed") && logs.contains("N_A"),
        "{logs}"
    );
}

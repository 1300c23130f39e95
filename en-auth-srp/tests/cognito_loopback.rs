//! `SrpAuthorizer` against a loopback user pool that verifies every SRP proof.

mod support;

use std::time::Duration;

use en_auth_core::{
    AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, LifecyclePolicy, RetryPolicy,
    UserCredentials,
};
use en_auth_srp::{HeaderToken, SrpAuthorizer};
use support::{CLIENT_ID, POOL_ID, TestCognito};

fn authorizer(pool: &TestCognito, secret: &str, user: &str, password: &str) -> SrpAuthorizer {
    SrpAuthorizer::new(
        ClientInfo::new(CLIENT_ID, secret),
        UserCredentials::new(user, password),
        POOL_ID,
    )
    .unwrap()
    .with_endpoint_url(pool.endpoint())
}

#[tokio::test]
async fn the_right_password_logs_in_across_many_logins() {
    let pool = TestCognito::start(None).await;
    pool.add_user("alice", "alice-internal-id", "correct horse battery staple");
    let srp = authorizer(&pool, "", "alice", "correct horse battery staple");
    // Fresh a, b and salt every time: 24 logins cover the padding cases on both sides.
    for i in 0..24 {
        let tokens = srp
            .authorize()
            .await
            .unwrap_or_else(|e| panic!("login {i}: {e}"));
        assert!(pool.issued(tokens.access_token()));
        assert_eq!(tokens.username(), Some("alice-internal-id"));
        assert!(tokens.refresh_token().is_some() && tokens.id_token().is_some());
        assert!(tokens.expires_at().is_some());
    }
    assert_eq!((pool.logins(), pool.refused()), (24, 0));
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_error() {
    let pool = TestCognito::start(None).await;
    pool.add_user("alice", "alice-internal-id", "correct horse battery staple");
    let wrong = authorizer(&pool, "", "alice", "Tr0ub4dor&3")
        .authorize()
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::InvalidCredentials), "{wrong:?}");
    assert_eq!(pool.refused(), 1, "the proof was checked and refused");
    let unknown = authorizer(&pool, "", "mallory", "whatever")
        .authorize()
        .await
        .unwrap_err();
    assert!(matches!(unknown, Error::InvalidCredentials), "{unknown:?}");
    assert_eq!(
        wrong.to_string(),
        unknown.to_string(),
        "no user enumeration"
    );
    assert_eq!(pool.logins(), 0);
}

#[tokio::test]
async fn a_client_secret_adds_secret_hashes_and_refresh_uses_the_internal_username() {
    let pool = TestCognito::start(Some("client-secret-xyz")).await;
    // Signs in with an e-mail alias; the pool knows the user by an internal id.
    pool.add_user("alice@example.com", "7d2c-internal", "pw-Alice-1");
    let srp = authorizer(
        &pool,
        "client-secret-xyz",
        "alice@example.com",
        "pw-Alice-1",
    );
    let first = srp.authorize().await.unwrap();
    let refreshed = srp.refresh(&first).await.unwrap();
    assert_eq!(
        pool.refreshes(),
        1,
        "REFRESH_TOKEN_AUTH, with SECRET_HASH over the internal name"
    );
    assert_ne!(refreshed.access_token(), first.access_token());
    assert!(
        refreshed.refresh_token().is_some(),
        "the refresh token is kept"
    );
    assert_eq!(pool.logins(), 1, "no second login");

    let wrong_secret = authorizer(&pool, "not-the-secret", "alice@example.com", "pw-Alice-1")
        .authorize()
        .await
        .unwrap_err();
    assert!(
        matches!(wrong_secret, Error::InvalidClient { .. }),
        "{wrong_secret:?}"
    );
}

#[tokio::test]
async fn a_refused_refresh_token_logs_in_again() {
    let pool = TestCognito::start(None).await;
    pool.add_user("bob", "bob-id", "pw-Bob-1");
    let srp = authorizer(&pool, "", "bob", "pw-Bob-1");
    let first = srp.authorize().await.unwrap();
    pool.reject_refresh_tokens();
    let again = srp.refresh(&first).await.unwrap();
    assert!(pool.issued(again.access_token()));
    assert_eq!((pool.logins(), pool.refreshes()), (2, 0));
}

#[tokio::test]
async fn throttling_is_rate_limited_and_retried_by_the_lifecycle() {
    let pool = TestCognito::start(None).await;
    pool.add_user("bob", "bob-id", "pw-Bob-1");
    pool.throttle_next(1);
    let err = authorizer(&pool, "", "bob", "pw-Bob-1")
        .authorize()
        .await
        .unwrap_err();
    assert_eq!(pool.requests(), 1, "the SDK's own retries are off");
    assert!(
        matches!(err, Error::RateLimited { .. }) && err.is_transient(),
        "{err:?}"
    );

    pool.throttle_next(2);
    let policy = LifecyclePolicy::default()
        .with_retry(RetryPolicy::default().with_initial_backoff(Duration::from_millis(20)));
    let auth = AuthMiddleware::with_policy(authorizer(&pool, "", "bob", "pw-Bob-1"), policy);
    auth.access_token()
        .await
        .expect("retried through the throttling");
    assert_eq!(pool.logins(), 1);
    assert_eq!(
        auth.stats().authorizations,
        3,
        "two throttled attempts, then a login"
    );
}

#[tokio::test]
async fn an_unknown_app_client_is_an_invalid_client() {
    let pool = TestCognito::start(None).await;
    pool.add_user("bob", "bob-id", "pw-Bob-1");
    let srp = SrpAuthorizer::new(
        ClientInfo::new("other-client", ""),
        UserCredentials::new("bob", "pw-Bob-1"),
        POOL_ID,
    )
    .unwrap()
    .with_endpoint_url(pool.endpoint());
    assert!(matches!(
        srp.authorize().await.unwrap_err(),
        Error::InvalidClient { .. }
    ));
}

#[tokio::test]
async fn the_id_token_can_go_in_the_header() {
    let pool = TestCognito::start(None).await;
    pool.add_user("bob", "bob-id", "pw-Bob-1");
    let tokens = authorizer(&pool, "", "bob", "pw-Bob-1")
        .with_header_token(HeaderToken::IdToken)
        .authorize()
        .await
        .unwrap();
    assert_eq!(
        tokens.access_token(),
        tokens
            .id_token()
            .map(secrecy::ExposeSecret::expose_secret)
            .unwrap()
    );
}

#[tokio::test]
async fn a_plain_http_remote_endpoint_is_refused_before_any_io() {
    let srp = SrpAuthorizer::new(
        ClientInfo::new("c", ""),
        UserCredentials::new("u", "p"),
        POOL_ID,
    )
    .unwrap()
    .with_endpoint_url("http://cognito.example.com");
    let err = srp.authorize().await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "endpoint_url"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string().matches("invalid configuration").count(),
        1,
        "one clear message: {err}"
    );
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test]
async fn an_unreachable_pool_is_a_transient_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srp = SrpAuthorizer::new(
        ClientInfo::new("c", ""),
        UserCredentials::new("u", "p"),
        POOL_ID,
    )
    .unwrap()
    .with_endpoint_url(format!("http://127.0.0.1:{port}"));
    let err = srp.authorize().await.unwrap_err();
    assert!(
        matches!(err, Error::Transport { .. }) && err.is_transient(),
        "{err:?}"
    );
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_logs_in_once_for_concurrent_first_use() {
    let pool = std::sync::Arc::new(TestCognito::start(None).await);
    pool.add_user("carol", "carol-id", "pw-Carol-1");
    // An API that accepts the pool's tokens.
    let checker = pool.clone();
    let api = en_auth_testkit::LoopbackServer::start(axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap| {
            let checker = checker.clone();
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if token.is_some_and(|t| checker.issued(t)) {
                    200
                } else {
                    401
                }
                .to_string()
            }
        },
    ))
    .await
    .unwrap();
    let auth = AuthMiddleware::with_policy(
        authorizer(&pool, "", "carol", "pw-Carol-1"),
        LifecyclePolicy::default().with_retry(RetryPolicy::none()),
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, url) = (client.clone(), api.url("/profile"));
        tasks.spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    }
    while let Some(body) = tasks.join_next().await {
        assert_eq!(body.unwrap(), "200");
    }
    assert_eq!(
        pool.logins(),
        1,
        "100 concurrent first requests, one SRP login"
    );
    assert_eq!(auth.stats().authorizations, 1);
}

#[tokio::test]
async fn a_refresh_refused_as_invalid_client_falls_back_to_a_login() {
    // The pool's access tokens cannot be read, so the refresh's SECRET_HASH uses the alias
    // instead of the internal name and the pool refuses it ("Unable to verify secret hash").
    let pool = TestCognito::start(Some("client-secret-xyz")).await;
    pool.opaque_access_tokens();
    pool.add_user("carol@example.com", "carol-internal", "pw-Carol-1");
    let srp = authorizer(
        &pool,
        "client-secret-xyz",
        "carol@example.com",
        "pw-Carol-1",
    );
    let first = srp.authorize().await.unwrap();
    assert_eq!(first.username(), None, "nothing to read");
    let again = srp.refresh(&first).await.expect("a full login instead");
    assert!(pool.issued(again.access_token()));
    assert_eq!((pool.logins(), pool.refreshes()), (2, 0));
}

#[tokio::test]
async fn refresh_sends_the_device_key_the_pool_returned() {
    let pool = TestCognito::start(Some("client-secret-xyz")).await;
    pool.track_devices();
    pool.add_user("dave", "dave-internal", "pw-Dave-1");
    let srp = authorizer(&pool, "client-secret-xyz", "dave", "pw-Dave-1");
    let first = srp.authorize().await.unwrap();
    let device = first.device_key().expect("the pool returned a device key");
    let refreshed = srp.refresh(&first).await.unwrap();
    assert_eq!(
        (pool.logins(), pool.refreshes()),
        (1, 1),
        "REFRESH_TOKEN_AUTH accepted: it carried DEVICE_KEY"
    );
    assert_eq!(
        refreshed.device_key(),
        Some(device),
        "kept for the next refresh"
    );
    srp.refresh(&refreshed).await.unwrap();
    assert_eq!((pool.logins(), pool.refreshes()), (1, 2));
}

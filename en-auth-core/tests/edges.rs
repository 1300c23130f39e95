//! The middleware's edges: where credentials may go (redirects, plain http), and what it
//! refuses before sending anything.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use en_auth_core::{AuthMiddleware, ClientInfo, Error, LifecyclePolicy, same_origin_redirects};
use en_auth_testkit::{IdpConfig, LocalIdp, LoopbackServer, ProtectedApi};
use parking_lot::Mutex;
use support::TestAuthorizer;

/// What a server saw of each request: its `X-Api-Key` and `Authorization` headers.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// A server that records the credentials of every request and answers 200.
async fn recording_server() -> (LoopbackServer, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let router = axum::Router::new().fallback(move |headers: HeaderMap| {
        let log = Arc::clone(&log);
        async move {
            let get = |name| {
                headers
                    .get(name)
                    .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            log.lock()
                .push((get("x-api-key"), get(header::AUTHORIZATION.as_str())));
            "elsewhere"
        }
    });
    (LoopbackServer::start(router).await.expect("server"), seen)
}

/// A server that answers every request with a 302 to `location`.
async fn redirecting_server(location: String) -> LoopbackServer {
    let router = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move { (StatusCode::FOUND, [(header::LOCATION, location)]).into_response() }
    });
    LoopbackServer::start(router).await.expect("server")
}

async fn middleware(idp: &LocalIdp) -> AuthMiddleware<TestAuthorizer> {
    let info = ClientInfo::new(idp.client_id(), idp.client_secret()).with_api_key("key-123");
    AuthMiddleware::with_policy(
        TestAuthorizer::new(info, idp.token_url()),
        LifecyclePolicy::default(),
    )
}

#[tokio::test]
async fn a_cross_origin_redirect_never_carries_credentials() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let auth = middleware(&idp).await;
    let (elsewhere, seen) = recording_server().await;
    let port = elsewhere.addr().port();
    let own = reqwest::Client::builder()
        .redirect(same_origin_redirects())
        .build()
        .expect("client");
    let clients = [
        auth.client().expect("client"),
        reqwest_middleware::ClientBuilder::new(own)
            .with(auth.clone())
            .build(),
    ];
    // Another port, and another host name for the same machine.
    for target in [
        format!("http://127.0.0.1:{port}/bucket/object"),
        format!("http://localhost:{port}/bucket/object"),
    ] {
        let api = redirecting_server(target).await;
        for client in &clients {
            let response = client.get(api.url("/report")).send().await.expect("sent");
            assert_eq!(
                response.status(),
                StatusCode::FOUND,
                "the 302 is the caller's"
            );
        }
    }
    assert!(
        seen.lock().is_empty(),
        "the redirect target saw nothing: {:?}",
        seen.lock()
    );
}

#[tokio::test]
async fn a_same_origin_redirect_is_followed_with_credentials() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let api = ProtectedApi::start(&idp).await.expect("api");
    let auth = middleware(&idp).await;
    let response = auth
        .client()
        .expect("client")
        .get(api.url("/moved"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.requests(), 2, "/moved, then /data");
    let seen = api.seen(); // the API records what it authorizes: /data
    assert_eq!(seen[0].path, "/data");
    assert_eq!(seen[0].api_key.as_deref(), Some("key-123"));
}

#[tokio::test]
async fn a_response_fetched_from_another_origin_by_a_permissive_client_is_refused() {
    // reqwest's default policy follows the redirect inside the client, below the middleware,
    // which cannot stop it; it refuses the result so that the misconfiguration is loud.
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let auth = middleware(&idp).await;
    let (elsewhere, _seen) = recording_server().await;
    let api = redirecting_server(elsewhere.url("/bucket/object")).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth)
        .build();
    let err = client
        .get(api.url("/report"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect_err("refused");
    let Some(Error::InvalidConfiguration { setting, reason }) = middleware_error(&err) else {
        panic!("expected InvalidConfiguration, got {err:?}");
    };
    assert!(setting.contains("redirect"), "{setting}");
    assert!(reason.contains("same_origin_redirects"), "{reason}");
}

fn middleware_error(err: &reqwest_middleware::Error) -> Option<&Error> {
    match err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

#[tokio::test]
async fn credentials_are_not_sent_over_plain_http_except_to_loopback() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let api = ProtectedApi::start(&idp).await.expect("api");
    let port = api_addr(&api).port();
    // `api.test` is a non-loopback name that this client resolves to the local API itself,
    // so nothing leaves the machine whatever the middleware does.
    let remote = format!("http://api.test:{port}/data");
    let http = || {
        reqwest::Client::builder()
            .redirect(same_origin_redirects())
            .resolve("api.test", api_addr(&api))
            .build()
            .expect("client")
    };
    let auth = middleware(&idp).await;
    let client = reqwest_middleware::ClientBuilder::new(http())
        .with(auth.clone())
        .build();

    for url in [remote.as_str(), "http://example.invalid/"] {
        let err = client.get(url).send().await.expect_err("refused");
        let Some(Error::InvalidConfiguration { setting, .. }) = middleware_error(&err) else {
            panic!("expected InvalidConfiguration, got {err:?}");
        };
        assert_eq!(setting, "request URL");
    }
    assert_eq!(api.requests(), 0, "nothing was sent");
    assert_eq!(
        idp.token_requests(),
        0,
        "refused before a token was even fetched"
    );

    // Loopback is fine.
    let response = client.get(api.url("/data")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.requests(), 1);

    // The escape hatch for trusted test networks.
    let permissive = reqwest_middleware::ClientBuilder::new(http())
        .with(auth.allow_plain_http(true))
        .build();
    let response = permissive.get(&remote).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.requests(), 2);
}

fn api_addr(api: &ProtectedApi) -> std::net::SocketAddr {
    let url = reqwest::Url::parse(&api.url("/")).expect("url");
    let port = url.port().expect("port");
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn an_api_key_that_cannot_be_sent_is_a_configuration_error_not_dropped() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let api = ProtectedApi::start(&idp).await.expect("api");
    let bad = "key-123\n"; // a trailing newline, as read from a file

    let err = ClientInfo::new(idp.client_id(), idp.client_secret())
        .try_with_api_key(bad)
        .expect_err("refused at construction");
    assert!(matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "api_key"));
    assert!(!err.to_string().contains("key-123"), "{err}");

    let info = ClientInfo::new(idp.client_id(), idp.client_secret()).with_api_key(bad);
    let authorizer = || TestAuthorizer::new(info.clone(), idp.token_url());
    assert!(matches!(
        AuthMiddleware::try_new(authorizer()),
        Err(Error::InvalidConfiguration { .. })
    ));
    for bad in [" key", "key\u{7f}", "a\r\nx-admin: 1"] {
        let info = ClientInfo::new("id", "secret").with_api_key(bad);
        assert!(
            AuthMiddleware::try_new(TestAuthorizer::new(info, idp.token_url())).is_err(),
            "{bad:?}"
        );
    }

    // The infallible constructor keeps the contract and fails every request instead of
    // sending it without the key.
    let client = AuthMiddleware::new(authorizer()).client().expect("client");
    let err = client
        .get(api.url("/data"))
        .send()
        .await
        .expect_err("refused");
    let Some(Error::InvalidConfiguration { setting, reason }) = middleware_error(&err) else {
        panic!("expected InvalidConfiguration, got {err:?}");
    };
    assert_eq!(setting, "api_key");
    assert!(!reason.contains("key-123"), "{reason}");
    assert_eq!(api.requests(), 0, "nothing was sent");
    assert_eq!(idp.token_requests(), 0);
}

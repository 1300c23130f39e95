//! What a real provider won't do on demand, from the local fault-injecting server: rate
//! limits, server errors, HTML pages, malformed JSON, slow answers, redirects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use en_auth_core::{
    AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, LifecyclePolicy, RetryPolicy,
};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{Fault, IdpConfig, LocalIdp};

async fn idp() -> LocalIdp {
    LocalIdp::start(IdpConfig::default()).await.unwrap()
}

fn authorizer(idp: &LocalIdp) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        idp.token_url(),
    )
}

fn quick_retries() -> LifecyclePolicy {
    LifecyclePolicy::default().with_retry(
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(20))
            .with_max_elapsed(Duration::from_secs(5)),
    )
}

fn no_retries() -> LifecyclePolicy {
    LifecyclePolicy::default().with_retry(RetryPolicy::none())
}

/// The error of one token fetch from `idp`, without retries.
async fn first_error(idp: &LocalIdp) -> Error {
    AuthMiddleware::with_policy(authorizer(idp), no_retries())
        .access_token()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out() {
    let idp = idp().await;
    let reset = chrono::Utc::now().timestamp() + 1;
    idp.push_faults([Fault::Respond {
        status: 429,
        headers: vec![
            ("retry-after".into(), "1".into()),
            ("x-ratelimit-limit".into(), "10".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
        ],
        body: r#"{"error":"too_many_requests"}"#.into(),
    }]);
    let started = Instant::now();
    let auth = AuthMiddleware::with_policy(authorizer(&idp), quick_retries());
    auth.access_token().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn exhausted_rate_limit_retries_expose_the_reset_time() {
    let idp = idp().await;
    let reset = chrono::Utc::now().timestamp() + 120;
    idp.push_faults([Fault::Respond {
        status: 429,
        headers: vec![
            ("retry-after".into(), "120".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
        ],
        body: String::new(),
    }]);
    let auth = AuthMiddleware::with_policy(authorizer(&idp), quick_retries());
    match auth.access_token().await.unwrap_err() {
        Error::RateLimited {
            retry_after,
            reset_at,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
            assert_eq!(reset_at.map(|r| r.timestamp()), Some(reset));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        idp.token_requests(),
        1,
        "a wait beyond the retry budget is not attempted"
    );
}

#[tokio::test]
async fn a_503_then_success_is_retried() {
    let idp = idp().await;
    idp.push_faults([Fault::json(503, r#"{"error":"temporarily_unavailable"}"#)]);
    let auth = AuthMiddleware::with_policy(authorizer(&idp), quick_retries());
    auth.access_token().await.unwrap();
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn an_html_502_page_is_a_server_error_with_its_status() {
    let idp = idp().await;
    idp.push_faults([Fault::Respond {
        status: 502,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
    }]);
    let err = first_error(&idp).await;
    assert!(
        matches!(err, Error::ServerError { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_html_page_with_a_4xx_is_an_invalid_response() {
    let idp = idp().await;
    idp.push_faults([Fault::Respond {
        status: 404,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html>not found</html>".into(),
    }]);
    let err = first_error(&idp).await;
    assert!(
        matches!(
            err,
            Error::InvalidResponse {
                status: Some(404),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response() {
    let idp = idp().await;
    idp.push_faults([Fault::json(
        200,
        r#"{"access_token": "abc", "expires_in": "#,
    )]);
    let err = first_error(&idp).await;
    assert!(
        matches!(
            err,
            Error::InvalidResponse {
                status: Some(200),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("abc"),
        "the body is not echoed: {err}"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let idp = idp().await;
    idp.push_faults([Fault::Delay(Duration::from_secs(3))]);
    let authorizer =
        authorizer(&idp).with_timeouts(Duration::from_secs(1), Duration::from_millis(500));
    let started = Instant::now();
    let err = AuthMiddleware::with_policy(authorizer, no_retries())
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let idp = idp().await;
    idp.push_faults([Fault::Respond {
        status: 307,
        headers: vec![("location".into(), idp.token_url())],
        body: String::new(),
    }]);
    let err = first_error(&idp).await;
    assert!(
        matches!(
            err,
            Error::InvalidResponse {
                status: Some(307),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        idp.token_requests(),
        1,
        "the redirect target was never requested"
    );
}

#[tokio::test]
async fn a_missing_expires_in_takes_the_default_lifetime() {
    let idp = LocalIdp::start(IdpConfig {
        lifetime: None,
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let token = authorizer(&idp)
        .with_default_lifetime(Duration::from_secs(120))
        .authorize()
        .await
        .unwrap();
    let lifetime = token.expires_at().unwrap() - token.issued_at().unwrap();
    assert_eq!(lifetime.num_seconds(), 120);

    // Without one configured, the lifecycle's default applies.
    let auth = AuthMiddleware::with_policy(
        authorizer(&idp),
        LifecyclePolicy::default().with_default_lifetime(Duration::from_secs(42)),
    );
    let cached = auth.cache().get().await.unwrap();
    let left = cached.expires_at() - chrono::Utc::now();
    assert!(
        left <= chrono::Duration::seconds(42) && left > chrono::Duration::seconds(40),
        "{left}"
    );
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_before_any_io() {
    // These hosts are never contacted: the URL is refused when the authorizer is built.
    for url in [
        "http://idp.example.com/oauth/token",
        "http://10.1.2.3/token",
        "ftp://127.0.0.1/token",
        "not a url",
    ] {
        let authorizer = ServiceAccountAuthorizer::new(ClientInfo::new("id", "secret"), url);
        let err = authorizer.authorize().await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "token_url"),
            "{url}: {err:?}"
        );
    }
    for url in [
        "http://127.0.0.1:1/token",
        "http://localhost:1/token",
        "http://[::1]:1/token",
        "https://idp.example.com/token",
    ] {
        assert!(
            en_auth_oauth2::secure_url("token_url", url).is_ok(),
            "{url}"
        );
    }
}

#[test]
fn from_env_names_each_missing_variable() {
    let full = HashMap::from([
        ("EN_AUTH_CLIENT_ID", "svc"),
        ("EN_AUTH_CLIENT_SECRET", "s3cret"),
        ("EN_AUTH_TOKEN_URL", "https://idp.example.com/oauth/token"),
    ]);
    assert!(ServiceAccountAuthorizer::from_lookup(|k| full.get(k).map(|v| v.to_string())).is_ok());
    for (missing, expected) in [
        ("EN_AUTH_CLIENT_ID", "EN_AUTH_CLIENT_ID"),
        ("EN_AUTH_CLIENT_SECRET", "EN_AUTH_CLIENT_SECRET"),
        ("EN_AUTH_TOKEN_URL", "EN_AUTH_TOKEN_URL (or EN_AUTH_ISSUER)"),
    ] {
        let vars: HashMap<&str, &str> = full
            .iter()
            .filter(|(k, _)| **k != missing)
            .map(|(k, v)| (*k, *v))
            .collect();
        let err = ServiceAccountAuthorizer::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap_err();
        match &err {
            Error::MissingConfiguration { setting } => assert_eq!(setting, expected),
            other => panic!("{missing}: {other:?}"),
        }
        assert!(err.to_string().contains(expected));
        // Empty counts as missing.
        let mut empty: HashMap<&str, &str> = full.clone();
        empty.insert(missing, "  ");
        let err = ServiceAccountAuthorizer::from_lookup(|k| empty.get(k).map(|v| v.to_string()))
            .unwrap_err();
        assert!(
            matches!(err, Error::MissingConfiguration { .. }),
            "{missing} empty: {err:?}"
        );
    }
    let mut bad = full.clone();
    bad.insert("EN_AUTH_DEFAULT_TOKEN_LIFETIME", "an hour");
    let err =
        ServiceAccountAuthorizer::from_lookup(|k| bad.get(k).map(|v| v.to_string())).unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "EN_AUTH_DEFAULT_TOKEN_LIFETIME")
    );
}

#[tokio::test]
async fn the_api_key_from_env_reaches_the_client_info() {
    let vars = HashMap::from([
        ("EN_AUTH_CLIENT_ID", "svc"),
        ("EN_AUTH_CLIENT_SECRET", "s3cret"),
        ("EN_AUTH_TOKEN_URL", "https://idp.example.com/oauth/token"),
        ("EN_AUTH_API_KEY", "k-1"),
    ]);
    let authorizer =
        ServiceAccountAuthorizer::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
    assert!(authorizer.client_info().api_key().is_some());
    let debug = format!("{authorizer:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("k-1"),
        "{debug}"
    );

    // A key that cannot be a header value is an error naming the variable, not a silent drop.
    let mut bad = vars.clone();
    bad.insert("EN_AUTH_API_KEY", "k-1\r\n");
    let err =
        ServiceAccountAuthorizer::from_lookup(|k| bad.get(k).map(|v| v.to_string())).unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "EN_AUTH_API_KEY"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("k-1"), "{err}");
}

#[test]
fn cache_keys_change_with_every_input() {
    let base = || {
        ServiceAccountAuthorizer::new(
            ClientInfo::new("svc", "s1"),
            "https://idp.example.com/token",
        )
    };
    let keys = [
        base().cache_key(),
        ServiceAccountAuthorizer::new(
            ClientInfo::new("svc", "s2"),
            "https://idp.example.com/token",
        )
        .cache_key(),
        ServiceAccountAuthorizer::new(
            ClientInfo::new("svc", "s1"),
            "https://other.example.com/token",
        )
        .cache_key(),
        base().with_audience("https://api").cache_key(),
        base().with_resource("https://api").cache_key(),
        base().with_scopes(["read"]).cache_key(),
        base().with_param("organization", "org_1").cache_key(),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
        assert!(!a.as_str().contains("s1"));
    }
    assert_eq!(
        base().with_scopes(["a", "b"]).cache_key(),
        base().with_scopes(["b", "a"]).cache_key()
    );
}

#[tokio::test]
async fn hostile_rate_limit_headers_and_lifetimes_are_typed_outcomes_never_panics() {
    // A reset ten years ahead, and no Retry-After: beyond any budget, so rate limited at once.
    let far_reset = (chrono::Utc::now().timestamp() + 10 * 365 * 86_400).to_string();
    for (retry_after, reset) in [
        (Some("18446744073709551615"), None),
        (Some("10000000000000"), None),
        (None, Some(far_reset.as_str())),
    ] {
        let idp = idp().await;
        let mut headers = Vec::new();
        if let Some(retry_after) = retry_after {
            headers.push(("retry-after".to_string(), retry_after.to_string()));
        }
        if let Some(reset) = reset {
            headers.push(("x-ratelimit-reset".into(), reset.into()));
        }
        idp.push_faults([Fault::Respond {
            status: 429,
            headers,
            body: String::new(),
        }]);
        // The default policy: retries within 30 s.
        let auth = AuthMiddleware::new(authorizer(&idp));
        for _ in 0..10 {
            let err = auth.access_token().await.unwrap_err();
            assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
        }
        assert_eq!(
            idp.token_requests(),
            1,
            "{retry_after:?} {reset:?}: remembered, not retried"
        );
    }

    for (expires_in, expected_token) in [("0", false), ("-5", false), ("1e12", true)] {
        let idp = idp().await;
        for _ in 0..2 {
            idp.push_faults([Fault::json(
                200,
                &format!(
                    r#"{{"access_token":"t","token_type":"Bearer","expires_in":{expires_in}}}"#
                ),
            )]);
        }
        let auth = AuthMiddleware::new(authorizer(&idp));
        for _ in 0..10 {
            match auth.access_token().await {
                Ok(token) => assert!(expected_token && token == "t"),
                Err(err) => assert!(
                    !expected_token && matches!(err, Error::InvalidResponse { .. }),
                    "{expires_in}: {err:?}"
                ),
            }
        }
        assert_eq!(
            idp.token_requests(),
            1,
            "expires_in {expires_in}: one request"
        );
    }
}

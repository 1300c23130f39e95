//! Secrets never reach Debug, Display, errors or tracing output.

mod support;

use std::time::Duration;

use en_auth_core::{
    BearerToken, ClientInfo, Error, LifecyclePolicy, MemoryTokenStore, RetryPolicy, TokenStore,
    UserCredentials,
};
use en_auth_testkit::{Fault, IdpConfig};
use support::Rig;

const CLIENT_SECRET: &str = "client-secret-Zq81";
const API_KEY: &str = "api-key-Vx22";
const PASSWORD: &str = "password-Lm47";

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} leaks a secret: {text}"
        );
    }
}

#[tokio::test]
async fn secrets_appear_in_no_debug_display_error_or_trace_output() {
    let (captured, _guard) = en_auth_testkit::capture_traces();

    let config = IdpConfig {
        client_secret: CLIENT_SECRET.into(),
        lifetime: Some(Duration::from_secs(4)),
        ..IdpConfig::default()
    };
    let policy = LifecyclePolicy::default()
        .with_retry(RetryPolicy::none())
        .with_rejection_interval(Duration::ZERO);
    let rig = Rig::start_with(config, |info| info.with_api_key(API_KEY), policy).await;

    // A full flow against the loopback servers (their HTTP is traced too): first token, a
    // 401 replay, a failed refresh (after another 401) with the token served from cache
    // meanwhile, an error.
    assert_eq!(rig.get().await, 200);
    rig.idp.revoke_all();
    assert_eq!(rig.get().await, 200);
    rig.idp.push_faults([Fault::json(503, "{}")]);
    rig.api.reject_next(1);
    assert_eq!(rig.get().await, 401, "no replacement: the 401 is returned");
    assert_eq!(rig.get().await, 200, "the current token is still served");
    assert_eq!(rig.auth.stats().failures, 1);
    let cached = rig.auth.cache().get().await.unwrap();

    let mut secrets: Vec<String> = vec![CLIENT_SECRET.into(), API_KEY.into(), PASSWORD.into()];
    secrets.extend(rig.api.seen().into_iter().filter_map(|s| s.token));
    assert!(secrets.len() >= 5, "tokens were issued and seen");

    // A failing client: the error path.
    let bad = Rig::start_with(
        IdpConfig {
            client_secret: "other".into(),
            ..IdpConfig::default()
        },
        |_| ClientInfo::new("quickstart-client", CLIENT_SECRET),
        LifecyclePolicy::default(),
    )
    .await;
    let middleware_error = bad.client.get(bad.api.url("/x")).send().await.unwrap_err();

    let store = MemoryTokenStore::new();
    store
        .save(
            &en_auth_core::CacheKey::builder("test").build(),
            &en_auth_core::secrecy::SecretString::from(secrets[3].clone()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let token = BearerToken::new(secrets[3].clone(), Some(Duration::from_secs(60)));
    let info = ClientInfo::new("id", CLIENT_SECRET).with_api_key(API_KEY);
    let creds = UserCredentials::new("alice", PASSWORD);
    let errors = [
        Error::InvalidClient {
            status: Some(401),
            description: Some("bad".into()),
        },
        Error::InvalidCredentials,
        Error::Authorization {
            status: Some(400),
            error: "invalid_scope".into(),
            description: None,
            error_uri: None,
        },
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
            reset_at: Some(chrono::Utc::now()),
        },
        Error::ServerError {
            status: 503,
            retry_after: None,
        },
        Error::MissingConfiguration {
            setting: "EN_AUTH_CLIENT_SECRET".into(),
        },
        Error::InvalidConfiguration {
            setting: "EN_AUTH_TOKEN_URL".into(),
            reason: "plain http".into(),
        },
        Error::UnsupportedChallenge {
            challenge: "NEW_PASSWORD_REQUIRED".into(),
        },
        Error::InvalidResponse {
            status: Some(502),
            reason: "html".into(),
        },
    ];
    let mut outputs = vec![
        format!("{info:?}"),
        format!("{creds:?}"),
        format!("{token:?}"),
        format!("{cached:?}"),
        format!("{:?}", rig.auth),
        format!("{:?}", rig.auth.cache()),
        format!("{:?}", rig.auth.stats()),
        format!("{store:?}"),
        format!("{:?}", cached.authorization()),
        format!("{middleware_error} {middleware_error:?}"),
    ];
    outputs.extend(errors.iter().map(|e| format!("{e} {e:?}")));
    for (i, text) in outputs.iter().enumerate() {
        assert_clean(&format!("output {i}"), text, &secrets);
    }

    let trace = captured.text();
    assert!(
        trace.contains("token obtained"),
        "tracing was captured: {trace}"
    );
    assert!(
        trace.contains("token refresh failed"),
        "the failure was traced"
    );
    assert_clean("tracing output", &trace, &secrets);
}

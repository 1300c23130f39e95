//! Provider URLs and provider text at the edges: user info and query strings never reach
//! logs or errors; what a provider writes into its errors is escaped and bounded.

use en_auth_core::{Authorizer, ClientInfo, Error};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{IdpConfig, LocalIdp};

fn info(idp: &LocalIdp) -> ClientInfo {
    ClientInfo::new(idp.client_id(), idp.client_secret())
}

#[tokio::test]
async fn user_info_in_provider_urls_is_refused_before_any_io() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let with_user = idp
        .token_url()
        .replacen("http://", "http://svc:pw-Secret1@", 1);
    let authorizer = ServiceAccountAuthorizer::new(info(&idp), &with_user);
    assert!(
        !format!("{authorizer:?}").contains("pw-Secret1"),
        "{authorizer:?}"
    );
    let err = authorizer.authorize().await.expect_err("refused");
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "token_url"),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("pw-Secret1"), "{err:?}");

    let issuer = with_user.trim_end_matches("/oauth/token").to_owned();
    let err = ServiceAccountAuthorizer::discover(info(&idp), &issuer)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "issuer"),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("pw-Secret1"), "{err:?}");

    // The JWKS URL goes through the same check.
    let err = en_auth_core::secure_url("jwks_url", "https://u:pw-Secret1@idp.example/jwks")
        .expect_err("refused");
    assert!(!format!("{err} {err:?}").contains("pw-Secret1"), "{err:?}");

    assert_eq!(idp.token_requests(), 0, "nothing was sent");
}

#[tokio::test]
async fn provider_url_query_strings_reach_no_log_line_or_error() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let authorizer =
        ServiceAccountAuthorizer::new(info(&idp), format!("{}?tenant=q-Secret2", idp.token_url()));
    authorizer.authorize().await.expect("token");
    assert_eq!(idp.token_requests(), 1);
    assert!(
        !format!("{authorizer:?}").contains("q-Secret2"),
        "{authorizer:?}"
    );

    // A transport error names the endpoint without its query.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let authorizer = ServiceAccountAuthorizer::new(
        info(&idp),
        format!("http://127.0.0.1:{port}/oauth/token?key=q-Secret3#frag"),
    );
    let err = authorizer.authorize().await.expect_err("nothing listens");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains(&format!("127.0.0.1:{port}/oauth/token")),
        "{shown}"
    );
    assert!(!shown.contains("q-Secret3"), "{shown}");

    let logs = captured.text();
    assert!(logs.contains("en_auth.token_request"), "{logs}");
    assert!(
        !logs.contains("q-Secret2") && !logs.contains("q-Secret3"),
        "{logs}"
    );
}

#[tokio::test]
async fn provider_text_in_errors_and_logs_is_escaped_and_bounded() {
    use en_auth_core::{AuthMiddleware, LifecyclePolicy, RetryPolicy};
    use en_auth_testkit::Fault;

    let (captured, _guard) = en_auth_testkit::capture_traces();
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let forged = "\nERROR en_auth: forged log line\u{1b}[2J";
    let huge = "d".repeat(400 * 1024);
    let body = serde_json::json!({
        "error": format!("invalid_scope{forged}"),
        "error_description": format!("{huge}{forged}"),
        "error_uri": format!("https://idp.example/help{forged}"),
    })
    .to_string();
    idp.push_faults([
        Fault::json(400, &body),
        Fault::json(
            401,
            &serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("bad secret{forged}{huge}"),
            })
            .to_string(),
        ),
        Fault::Respond {
            status: 302,
            headers: vec![(
                "location".into(),
                // (control characters cannot be in a header value; length and query can)
                format!(
                    "https://bucket.example/object/{}?X-Amz-Signature=sig-Secret4",
                    "p".repeat(8000)
                ),
            )],
            body: String::new(),
        },
    ]);
    let mut errors = Vec::new();
    for _ in 0..3 {
        // A middleware each: the lifecycle may hold on to a failure for a moment.
        let auth = AuthMiddleware::with_policy(
            ServiceAccountAuthorizer::new(info(&idp), idp.token_url()),
            LifecyclePolicy::default().with_retry(RetryPolicy::none()),
        );
        errors.push(auth.access_token().await.expect_err("fault"));
    }
    assert!(
        matches!(errors[0], Error::Authorization { .. }),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(errors[1], Error::InvalidClient { .. }),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(errors[2], Error::InvalidResponse { .. }),
        "{:?}",
        errors[2]
    );
    for err in &errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(text.len() < 2048, "{} bytes: {}", text.len(), &text[..200]);
            assert!(
                !text.contains('\n') && !text.contains('\u{1b}'),
                "raw control characters: {text}"
            );
            assert!(!text.contains("sig-Secret4"), "{text}");
        }
    }
    assert!(
        errors[0].to_string().contains("more bytes"),
        "{}",
        errors[0]
    );
    assert!(
        errors[2].to_string().contains("bucket.example/object"),
        "{}",
        errors[2]
    );

    let logs = captured.text();
    assert!(logs.contains("could not obtain a token"), "{logs}");
    assert!(
        !logs
            .lines()
            .any(|line| line.starts_with("ERROR en_auth: forged")),
        "a forged log line: {logs}"
    );
    assert!(!logs.contains('\u{1b}') && !logs.contains("sig-Secret4"));
    assert!(logs.len() < 32 * 1024, "{} bytes of logs", logs.len());
}

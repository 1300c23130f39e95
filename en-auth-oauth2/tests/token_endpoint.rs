//! `token_endpoint::request_token`, the low-level token request the proxy uses, against the
//! testkit's `LocalIdp`: every answer comes back with its status and headers, successful ones
//! included, beside the parsed result; only a request that got no answer is `Err`.
//!
//! Real time throughout: the identity provider is a real HTTP server on loopback, and paused
//! time would let the client's timeouts fire while its sockets work.

use std::time::Duration;

use chrono::Utc;
use en_auth_core::{AccessToken, ClientInfo, Error, MAX_DOCUMENT_BYTES, secure_url};
use en_auth_oauth2::token_endpoint::{self, TokenEndpointAnswer};
use en_auth_oauth2::{ClientAuthentication, token_http_client};
use en_auth_testkit::{Fault, IdpConfig, LocalIdp};

const FORM: &[(&str, &str)] = &[
    ("grant_type", "client_credentials"),
    ("audience", "https://api.example.com"),
];

async fn idp() -> LocalIdp {
    LocalIdp::start(IdpConfig::default()).await.unwrap()
}

async fn ask(
    idp: &LocalIdp,
    secret: &str,
    authentication: ClientAuthentication,
) -> TokenEndpointAnswer {
    let url = secure_url("token_url", &idp.token_url()).unwrap();
    let info = ClientInfo::new(idp.client_id(), secret);
    token_endpoint::request_token(&token_http_client(), &url, &info, &authentication, FORM)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn both_client_secret_methods_get_a_token_and_a_wrong_secret_is_invalid_client() {
    let idp = idp().await;
    let secret = idp.client_secret();
    for authentication in [
        ClientAuthentication::ClientSecretPost,
        ClientAuthentication::ClientSecretBasic,
    ] {
        let answer = ask(&idp, &secret, authentication.clone()).await;
        assert_eq!(answer.status, 200, "{authentication:?}");
        let granted = answer.result.expect("a token");
        assert!(idp.accepts(granted.token.access_token()));
        let life = granted.token.expires_at().unwrap() - granted.token.issued_at().unwrap();
        assert_eq!(life.num_seconds(), 3600);
        let answer = ask(&idp, "wrong", authentication.clone()).await;
        assert_eq!(answer.status, 401);
        assert!(
            matches!(
                answer.result,
                Err(Error::InvalidClient {
                    status: Some(401),
                    ..
                })
            ),
            "{authentication:?}: {:?}",
            answer.result
        );
    }
    assert_eq!(idp.token_requests_for("https://api.example.com"), 4);
    assert_eq!(idp.tokens_issued(), 2);
}

#[tokio::test]
async fn rate_limit_headers_come_back_with_successful_answers_and_429s() {
    let idp = idp().await;
    let reset = (Utc::now().timestamp() + 120).to_string();
    idp.push_faults([
        Fault::Respond {
            status: 200,
            headers: vec![
                ("x-ratelimit-limit".into(), "100".into()),
                ("x-ratelimit-remaining".into(), "7".into()),
                ("x-ratelimit-reset".into(), reset.clone()),
            ],
            body: r#"{"access_token":"granted-1","token_type":"Bearer","scope":"read write"}"#
                .into(),
        },
        Fault::Respond {
            status: 429,
            headers: vec![
                ("retry-after".into(), "9".into()),
                ("x-ratelimit-reset".into(), "30".into()),
            ],
            body: r#"{"error":"too_many_requests"}"#.into(),
        },
    ]);
    let answer = ask(
        &idp,
        &idp.client_secret(),
        ClientAuthentication::ClientSecretPost,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-ratelimit-remaining"], "7");
    assert_eq!(
        token_endpoint::rate_limit_reset(&answer.headers).map(|at| at.timestamp().to_string()),
        Some(reset)
    );
    let granted = answer.result.unwrap();
    assert_eq!(granted.token.access_token(), "granted-1");
    assert_eq!(granted.scope.as_deref(), Some("read write"));
    assert_eq!(
        granted.token.expires_at(),
        None,
        "no expires_in, no default"
    );

    let answer = ask(
        &idp,
        &idp.client_secret(),
        ClientAuthentication::ClientSecretPost,
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(
        token_endpoint::retry_after(&answer.headers),
        Some(Duration::from_secs(9))
    );
    match answer.result {
        Err(Error::RateLimited {
            retry_after,
            reset_at: Some(at),
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(9)));
            // A small X-RateLimit-Reset is seconds from now.
            let ahead = (at - Utc::now()).num_seconds();
            assert!((25..=30).contains(&ahead), "{ahead}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn an_oversized_body_is_an_error_in_the_answer_with_its_status_and_headers() {
    let idp = idp().await;
    idp.push_faults([Fault::Respond {
        status: 200,
        headers: vec![("x-ratelimit-remaining".into(), "3".into())],
        body: format!(
            r#"{{"access_token":"{}"}}"#,
            "a".repeat(MAX_DOCUMENT_BYTES + 1)
        ),
    }]);
    let answer = ask(
        &idp,
        &idp.client_secret(),
        ClientAuthentication::ClientSecretPost,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-ratelimit-remaining"], "3");
    assert!(
        matches!(
            answer.result,
            Err(Error::InvalidResponse {
                status: Some(200),
                ..
            })
        ),
        "{:?}",
        answer.result
    );
}

#[tokio::test]
async fn no_answer_is_an_err_and_plain_http_off_loopback_is_never_sent() {
    let info = ClientInfo::new("id", "secret");
    let http = token_http_client();
    let auth = ClientAuthentication::ClientSecretPost;
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}/oauth/token")
        .parse()
        .unwrap();
    let err = token_endpoint::request_token(&http, &closed, &info, &auth, FORM)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let remote = "http://idp.example.com/oauth/token".parse().unwrap();
    let err = token_endpoint::request_token(&http, &remote, &info, &auth, FORM)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn mutual_tls_authentication_is_refused_rather_than_sent_without_the_certificate() {
    let idp = idp().await;
    let pki = en_auth_testkit::TestPki::create();
    let certificate = pki.client("client", "/CN=client");
    let url = secure_url("token_url", &idp.token_url()).unwrap();
    let info = ClientInfo::new(idp.client_id(), "");
    for authentication in [
        ClientAuthentication::tls_client_auth(&certificate.cert_pem, &certificate.key_pem),
        ClientAuthentication::self_signed_tls_client_auth(
            &certificate.cert_pem,
            &certificate.key_pem,
        ),
    ] {
        let authentication = authentication.expect("certificate and key");
        let err =
            token_endpoint::request_token(&token_http_client(), &url, &info, &authentication, FORM)
                .await
                .expect_err("refused");
        assert!(
            matches!(&err, Error::InvalidConfiguration { setting, .. } if setting == "token_endpoint::request_token"),
            "{err:?}"
        );
    }
    assert_eq!(idp.token_requests(), 0);
}

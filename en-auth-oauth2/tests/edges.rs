//! Provider URLs and provider text at the edges: user info and query strings never reach
//! logs or errors; what a provider writes into its errors is escaped and bounded.

use std::io::Write;
use std::sync::Arc;

use en_auth_core::{Authorizer, ClientInfo, Error};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{IdpConfig, LocalIdp};
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

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
    let (captured, _guard) = capture();
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

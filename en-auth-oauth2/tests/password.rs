//! `PasswordAuthorizer` against the testkit's `LocalIdp`, which implements the `password`,
//! Auth0 `password-realm` and `refresh_token` grants (with optional rotation) and counts each.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use en_auth_core::{AccessToken, Authorizer, ClientInfo, Error, TokenCache, UserCredentials};
use en_auth_oauth2::{MFA_REQUIRED, PasswordAuthorizer};
use en_auth_testkit::{IdpConfig, LocalIdp};
use parking_lot::Mutex;
use secrecy::ExposeSecret;

const USER: &str = "alice@example.com";
const PASSWORD: &str = "password-Kq93-do-not-log";

async fn idp() -> LocalIdp {
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    idp.add_user(USER, PASSWORD);
    idp
}

fn authorizer(idp: &LocalIdp, password: &str) -> PasswordAuthorizer {
    PasswordAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        UserCredentials::new(USER, password),
        idp.token_url(),
    )
    .with_scopes(["openid", "offline_access"])
}

#[tokio::test]
async fn a_refresh_uses_the_refresh_token_not_the_password() {
    let idp = idp().await;
    let auth = authorizer(&idp, PASSWORD);
    let first = auth.authorize().await.unwrap();
    assert!(first.has_refresh_token());
    let second = auth.refresh(&first).await.unwrap();
    assert_ne!(first.access_token(), second.access_token());
    assert_eq!(idp.grants("password"), 1);
    assert_eq!(idp.grants("refresh_token"), 1);
    // Without rotation the provider sends no new refresh token: the old one is kept.
    assert_eq!(
        second.refresh_token().unwrap().expose_secret(),
        first.refresh_token().unwrap().expose_secret()
    );
}

#[tokio::test]
async fn the_lifecycle_refreshes_expiring_tokens_with_the_refresh_grant() {
    let idp = LocalIdp::start(IdpConfig {
        lifetime: Some(Duration::from_secs(2)),
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    idp.add_user(USER, PASSWORD);
    let cache = TokenCache::builder(authorizer(&idp, PASSWORD)).build();
    let first = cache.access_token().await.unwrap();
    // A 2-second token counts as expired after half its life.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // get_fresh waits for the refresh instead of serving the stale token meanwhile.
    let second = cache.get_fresh().await.unwrap();
    assert_ne!(first, second.token().access_token());
    assert_eq!(idp.grants("password"), 1, "one login");
    assert_eq!(idp.grants("refresh_token"), 1, "then a refresh");
}

#[tokio::test]
async fn a_rotated_refresh_token_replaces_the_old_one() {
    let idp = idp().await;
    idp.rotate_refresh_tokens(true);
    let auth = authorizer(&idp, PASSWORD);
    let first = auth.authorize().await.unwrap();
    let second = auth.refresh(&first).await.unwrap();
    let (old, new) = (
        first.refresh_token().unwrap().expose_secret().to_owned(),
        second.refresh_token().unwrap().expose_secret().to_owned(),
    );
    assert_ne!(old, new);
    assert_eq!(idp.live_refresh_tokens(), vec![new.clone()]);
    // The rotated token is the one used next, and it works.
    let third = auth.refresh(&second).await.unwrap();
    assert_ne!(third.refresh_token().unwrap().expose_secret(), new);
    assert_eq!(idp.grants("password"), 1);
    assert_eq!(idp.grants("refresh_token"), 2);
}

#[tokio::test]
async fn a_refused_refresh_falls_back_to_exactly_one_login() {
    let idp = idp().await;
    let auth = authorizer(&idp, PASSWORD);
    let first = auth.authorize().await.unwrap();
    idp.revoke_refresh_tokens();
    let second = auth.refresh(&first).await.unwrap();
    assert!(second.has_refresh_token());
    assert_eq!(idp.grants("refresh_token"), 1);
    assert_eq!(
        idp.grants("password"),
        2,
        "the first login and exactly one more"
    );

    // When that login fails too, its error is returned; still one login per refresh.
    let stale = auth.authorize().await.unwrap();
    idp.revoke_refresh_tokens();
    idp.add_user(USER, "changed-password");
    let err = auth.refresh(&stale).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCredentials), "{err:?}");
    assert_eq!(idp.grants("refresh_token"), 2);
    assert_eq!(idp.grants("password"), 4);
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials_and_is_not_retried() {
    let idp = idp().await;
    let cache = TokenCache::builder(authorizer(&idp, "wrong-password")).build();
    let err = cache.access_token().await.unwrap_err();
    assert!(matches!(err, Error::InvalidCredentials), "{err:?}");
    assert_eq!(idp.grants("password"), 1);
    assert_eq!(idp.tokens_issued(), 0);
}

#[tokio::test]
async fn mfa_required_is_an_unsupported_challenge() {
    let idp = idp().await;
    idp.require_mfa(USER);
    let err = authorizer(&idp, PASSWORD).authorize().await.unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedChallenge { ref challenge } if challenge == MFA_REQUIRED),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_realm_uses_auth0s_password_realm_grant() {
    let idp = idp().await;
    let token = authorizer(&idp, PASSWORD)
        .with_realm("Username-Password-Authentication")
        .authorize()
        .await
        .unwrap();
    assert!(!token.access_token().is_empty());
    assert_eq!(
        idp.grants("http://auth0.com/oauth/grant-type/password-realm"),
        1
    );
    assert_eq!(idp.grants("password"), 0);
    assert_eq!(idp.realms(), ["Username-Password-Authentication"]);
}

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

#[tokio::test]
async fn the_password_and_refresh_tokens_appear_in_no_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let idp = idp().await;
    idp.rotate_refresh_tokens(true);
    let auth = authorizer(&idp, PASSWORD);
    let first = auth.authorize().await.unwrap();
    let second = auth.refresh(&first).await.unwrap();
    idp.revoke_refresh_tokens();
    let third = auth.refresh(&second).await.unwrap(); // refused, then a login
    let wrong = authorizer(&idp, "wrong-Zt55-password");
    let err = wrong.authorize().await.unwrap_err();

    let mut secrets = vec![PASSWORD.to_owned(), "wrong-Zt55-password".to_owned()];
    for token in [&first, &second, &third] {
        secrets.push(token.refresh_token().unwrap().expose_secret().to_owned());
        secrets.push(token.access_token().to_owned());
    }
    let trace = String::from_utf8(captured.0.lock().clone()).unwrap();
    assert!(
        trace.contains("en_auth.token_request"),
        "traces were captured"
    );
    let outputs = [
        ("trace", trace),
        ("tokens Debug", format!("{first:?} {second:?} {third:?}")),
        ("authorizer Debug", format!("{auth:?} {wrong:?}")),
        ("error", format!("{err} {err:?}")),
    ];
    for (what, text) in &outputs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} leaks a secret: {text}"
            );
        }
    }
}

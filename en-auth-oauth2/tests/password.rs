//! `PasswordAuthorizer` against panva's `oidc-provider`, configured with a password grant
//! handler (`registerGrantType`, also for Auth0's `password-realm`) that issues refresh tokens,
//! its own `refresh_token` grant (with rotation for one client, and reuse detection), and a
//! count of the requests per grant type on the provider's side. (The password and refresh
//! token in no output: `no_secrets_in_output.rs`.)

use en_auth_core::{AccessToken, Authorizer, ClientInfo, Error, TokenCache, UserCredentials};
use en_auth_oauth2::{ClientAuthentication, MFA_REQUIRED, PasswordAuthorizer};
use en_auth_testkit::OidcProvider;
use secrecy::ExposeSecret;

fn authorizer(
    provider: &OidcProvider,
    client: (&str, &str),
    user: (&str, &str),
) -> PasswordAuthorizer {
    PasswordAuthorizer::new(
        ClientInfo::new(client.0, client.1),
        UserCredentials::new(user.0, user.1),
        provider.token_url(),
    )
    .with_scopes(["openid", "offline_access"])
}

#[tokio::test]
async fn a_login_then_refreshes_with_the_refresh_token_not_the_password() {
    let provider = OidcProvider::start(600).await;
    let auth = authorizer(&provider, OidcProvider::PASSWORD_CLIENT, OidcProvider::USER);
    let first = auth.authorize().await.unwrap();
    assert!(first.has_refresh_token());
    let second = auth.refresh(&first).await.unwrap();
    let third = auth.refresh(&second).await.unwrap();
    assert_ne!(first.access_token(), second.access_token());
    assert_ne!(second.access_token(), third.access_token());
    assert_eq!(provider.grants("password").await, 1, "one login");
    assert_eq!(provider.grants("refresh_token").await, 2, "then refreshes");
    // This client's refresh tokens are not rotated: the one from the login is kept.
    assert_eq!(
        third.refresh_token().unwrap().expose_secret(),
        first.refresh_token().unwrap().expose_secret()
    );

    // Through the lifecycle: a token that must be replaced is refreshed, not re-logged-in.
    let cache = TokenCache::builder(authorizer(
        &provider,
        OidcProvider::PASSWORD_CLIENT,
        OidcProvider::USER,
    ))
    .build();
    let cached = cache.get().await.unwrap();
    assert!(
        cache.invalidate(&cached).await,
        "marked as rejected by an API"
    );
    // Requests wait for the replacement of a rejected token.
    let replaced = cache.get().await.unwrap();
    assert_ne!(
        cached.token().access_token(),
        replaced.token().access_token()
    );
    assert_eq!(provider.grants("password").await, 2);
    assert_eq!(provider.grants("refresh_token").await, 3);
}

#[tokio::test]
async fn a_rotated_refresh_token_replaces_the_old_one_and_a_refused_one_means_one_login() {
    let provider = OidcProvider::start(600).await;
    let auth = authorizer(
        &provider,
        OidcProvider::ROTATING_PASSWORD_CLIENT,
        OidcProvider::USER,
    );
    let first = auth.authorize().await.unwrap();
    let second = auth.refresh(&first).await.unwrap();
    let (old, new) = (
        first.refresh_token().unwrap().expose_secret().to_owned(),
        second.refresh_token().unwrap().expose_secret().to_owned(),
    );
    assert_ne!(old, new, "rotated");
    // The rotated token is the one kept and used next; the provider accepts it.
    let third = auth.refresh(&second).await.unwrap();
    assert_ne!(third.refresh_token().unwrap().expose_secret(), new);
    assert_eq!(provider.grants("password").await, 1);
    assert_eq!(provider.grants("refresh_token").await, 2);

    // Refreshing with a used (rotated) refresh token is refused with invalid_grant — the
    // provider revokes the grant — and leads to exactly one new login.
    let fourth = auth.refresh(&first).await.unwrap();
    assert!(fourth.has_refresh_token());
    assert_eq!(provider.grants("refresh_token").await, 3);
    assert_eq!(
        provider.grants("password").await,
        2,
        "exactly one more login"
    );
    // The revoked grant took `third`'s refresh token with it; the new login's works.
    let fifth = auth.refresh(&fourth).await.unwrap();
    assert!(fifth.has_refresh_token());
    assert_eq!(provider.grants("password").await, 2);
}

#[tokio::test]
async fn a_refused_refresh_whose_login_fails_returns_the_logins_error_once() {
    let provider = OidcProvider::start(600).await;
    let client = OidcProvider::ROTATING_PASSWORD_CLIENT;
    let good = authorizer(&provider, client, OidcProvider::USER);
    let first = good.authorize().await.unwrap();
    good.refresh(&first).await.unwrap(); // rotates: `first`'s refresh token is now used
    // Same client and user, but the password has changed since.
    let changed = authorizer(&provider, client, (OidcProvider::USER.0, "not-any-more"));
    let err = changed.refresh(&first).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCredentials), "{err:?}");
    assert_eq!(provider.grants("refresh_token").await, 2);
    assert_eq!(
        provider.grants("password").await,
        2,
        "one login, not a loop"
    );
}

#[tokio::test]
async fn refusals_are_typed_and_not_retried_and_a_realm_uses_password_realm() {
    let provider = OidcProvider::start(600).await;
    let client = OidcProvider::PASSWORD_CLIENT;

    let wrong = TokenCache::builder(authorizer(
        &provider,
        client,
        (OidcProvider::USER.0, "wrong-password"),
    ))
    .build();
    let err = wrong.access_token().await.unwrap_err();
    assert!(matches!(err, Error::InvalidCredentials), "{err:?}");
    assert_eq!(provider.grants("password").await, 1, "not retried");

    let err = authorizer(&provider, client, OidcProvider::MFA_USER)
        .authorize()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedChallenge { ref challenge } if challenge == MFA_REQUIRED),
        "{err:?}"
    );

    let token = authorizer(&provider, client, OidcProvider::USER)
        .with_realm("Username-Password-Authentication")
        .authorize()
        .await
        .unwrap();
    assert!(token.has_refresh_token());
    assert_eq!(
        provider
            .grants("http://auth0.com/oauth/grant-type/password-realm")
            .await,
        1
    );
    assert_eq!(
        provider.realms().await,
        ["Username-Password-Authentication"]
    );
    assert_eq!(provider.grants("password").await, 2);
}

#[tokio::test]
async fn private_key_jwt_authenticates_the_password_and_refresh_grants() {
    let provider = OidcProvider::start(600).await;
    let (client, kid) = OidcProvider::EC_KEY_CLIENT;
    let key = provider.client_key("ec").await;
    let auth = authorizer(&provider, (client, ""), OidcProvider::USER)
        .with_authentication(ClientAuthentication::private_key_jwt_pem(&key, kid).unwrap());
    let first = auth.authorize().await.unwrap();
    auth.refresh(&first).await.unwrap();
    assert_eq!(provider.grants("password").await, 1);
    assert_eq!(provider.grants("refresh_token").await, 1);
    assert_eq!(provider.client_assertions().await.len(), 2);
}

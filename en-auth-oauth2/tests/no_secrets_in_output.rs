//! No private key, password or refresh token in `Debug`, errors or TRACE output, for
//! `private_key_jwt` and `PasswordAuthorizer` against panva's `oidc-provider`.
//!
//! Both tests capture tracing output with a thread-local subscriber installed before anything
//! else runs; they live in their own test binary so that no test without a subscriber can
//! make tracing cache a callsite as disabled first.

use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, UserCredentials};
use en_auth_oauth2::{
    ClientAuthentication, JWT_BEARER_ASSERTION_TYPE, PasswordAuthorizer, ServiceAccountAuthorizer,
};
use en_auth_testkit::OidcProvider;
use secrecy::ExposeSecret;

fn authorizer(
    provider: &OidcProvider,
    client: (&str, &str),
    authentication: ClientAuthentication,
) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(ClientInfo::new(client.0, ""), provider.token_url())
        .with_authentication(authentication)
        .with_audience(OidcProvider::API)
        .with_scopes(["read:data"])
}

fn password_authorizer(
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
async fn a_wrong_key_is_invalid_client_and_no_key_reaches_debug_errors_or_traces() {
    let (captured, _guard) = en_auth_testkit::capture_traces();

    let provider = OidcProvider::start(600).await;
    let stray = provider.client_key("stray_rsa").await;
    let good = provider.client_key("rsa").await;
    // Signed with a key the provider does not know for this client (same kid).
    let wrong = authorizer(
        &provider,
        OidcProvider::RSA_KEY_CLIENT,
        ClientAuthentication::private_key_jwt_pem(&stray, "rsa-1").unwrap(),
    );
    let err = AuthMiddleware::new(wrong).access_token().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidClient {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(provider.tokens_issued().await, 0);
    assert_eq!(
        provider.token_requests().await,
        1,
        "a permanent error is not retried"
    );

    let right = authorizer(
        &provider,
        OidcProvider::RSA_KEY_CLIENT,
        ClientAuthentication::private_key_jwt_pem(&good, "rsa-1").unwrap(),
    );
    let shown_authorizer = format!("{right:?}");
    let token = AuthMiddleware::new(right).access_token().await.unwrap();
    assert!(!token.is_empty());

    let output = captured.text();
    assert!(
        output.contains("en_auth.token_request"),
        "traces were captured"
    );
    let outputs = [
        ("error Display", err.to_string()),
        ("error Debug", format!("{err:?}")),
        ("authorizer Debug", shown_authorizer),
        ("trace output", output),
    ];
    for pem in [&stray, &good] {
        // Every line of the key's base64 body, and the PEM markers.
        let secrets: Vec<&str> = pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .chain(["PRIVATE KEY"])
            .collect();
        for (what, text) in &outputs {
            for secret in &secrets {
                assert!(
                    !text.contains(secret),
                    "{what} leaks the private key: {text}"
                );
            }
            assert!(!text.contains(JWT_BEARER_ASSERTION_TYPE), "{what}: {text}");
        }
    }
}

#[tokio::test]
async fn the_password_and_refresh_tokens_appear_in_no_output() {
    let (captured, _guard) = en_auth_testkit::capture_traces();

    let provider = OidcProvider::start(600).await;
    let client = OidcProvider::ROTATING_PASSWORD_CLIENT;
    let auth = password_authorizer(&provider, client, OidcProvider::USER);
    let first = auth.authorize().await.unwrap();
    let second = auth.refresh(&first).await.unwrap();
    let third = auth.refresh(&first).await.unwrap(); // refused, then a login
    let wrong = password_authorizer(
        &provider,
        client,
        (OidcProvider::USER.0, "wrong-Zt55-password"),
    );
    let err = wrong.authorize().await.unwrap_err();

    let mut secrets = vec![
        OidcProvider::USER.1.to_owned(),
        "wrong-Zt55-password".to_owned(),
        client.1.to_owned(),
    ];
    for token in [&first, &second, &third] {
        secrets.push(token.refresh_token().unwrap().expose_secret().to_owned());
        secrets.push(token.access_token().to_owned());
    }
    let trace = captured.text();
    assert!(
        trace.contains("en_auth.token_request"),
        "traces were captured"
    );
    assert!(
        trace.contains("invalid_grant"),
        "the refused refresh was traced"
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

//! Mutual TLS client authentication (RFC 8705 §2) for the grants beyond client credentials
//! and password: a token exchange by `mtls-ca-client` through `oidc-provider`'s TLS front
//! (`MtlsFront`) presents the client certificate; without it the provider refuses the
//! client. (Client credentials, password and the API side: en-auth-verify/tests/mtls.rs.)

#[path = "support/exchange_peer.rs"]
mod exchange_peer;

use en_auth_core::{AccessToken, Authorizer, ClientInfo, Error};
use en_auth_oauth2::{ClientAuthentication, JWT_TOKEN_TYPE, SubjectToken, TokenExchangeAuthorizer};
use en_auth_testkit::{MtlsFront, OidcProvider, TestPki};
use exchange_peer::{claims, keys, recorded, upstream_token};
use serde_json::json;

#[tokio::test]
async fn a_token_exchange_presents_the_client_certificate() {
    let pki = TestPki::create();
    let provider = OidcProvider::start(600).await;
    let front = MtlsFront::start(&pki, &provider.issuer()).await;
    let keys = keys(&provider).await;
    let subject = upstream_token(&keys, "system:serviceaccount:shop:orders", 600, json!({}));
    let certificate = pki.client("client", OidcProvider::MTLS_CA_CLIENT.1);
    let ca = || reqwest::Certificate::from_pem(pki.ca_pem()).expect("CA");
    let exchange = |authentication: ClientAuthentication| {
        let subject = subject.clone();
        TokenExchangeAuthorizer::new(
            ClientInfo::new(OidcProvider::MTLS_CA_CLIENT.0, ""),
            format!("{}/token", front.url()),
            SubjectToken::from_fn(
                move || {
                    let subject = subject.clone();
                    async move { Ok::<_, Error>(subject) }
                },
                JWT_TOKEN_TYPE,
            ),
        )
        .with_authentication(authentication)
        .with_root_certificate(ca())
        .with_audience(OidcProvider::API)
    };
    let tls = ClientAuthentication::tls_client_auth(&certificate.cert_pem, &certificate.key_pem)
        .expect("certificate and key");
    let authorizer = exchange(tls);
    assert!(authorizer.tls_client_identity().is_some());
    let token = authorizer.authorize().await.expect("exchanged");
    assert_eq!(
        claims(token.access_token())["client_id"],
        OidcProvider::MTLS_CA_CLIENT.0
    );
    assert_eq!(
        recorded(&provider).await["exchanges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Without the certificate the provider refuses the client before the grant handler runs.
    let err = exchange(ClientAuthentication::ClientSecretPost)
        .authorize()
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    assert_eq!(
        recorded(&provider).await["exchanges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

//! `private_key_jwt` client authentication (RFC 7523) against panva's `oidc-provider`, which
//! verifies each assertion's signature against the registered public key, its `iss`, `aud`,
//! `exp` and refuses a replayed `jti`. (A wrong key, and the key in no output:
//! `no_secrets_in_output.rs`.)

use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo};
use en_auth_oauth2::{
    AssertionAlgorithm, ClientAuthentication, PrivateKeyJwt, ServiceAccountAuthorizer,
};
use en_auth_testkit::OidcProvider;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// Checks the access token's signature with the provider's keys; returns its `client_id`.
async fn token_client_id(provider: &OidcProvider, token: &str) -> String {
    let jwks: JwkSet = reqwest::get(provider.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // This test's own jsonwebtoken calls go through the process default: name it, since the
    // workspace build also enables the rust_crypto backend (tests/backend-clash).
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let kid = decode_header(token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[OidcProvider::API]);
    validation.set_issuer(&[provider.issuer()]);
    let claims = decode::<Value>(token, &key, &validation).unwrap().claims;
    claims["client_id"].as_str().unwrap().to_owned()
}

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

#[tokio::test]
async fn rs256_ps256_and_es256_keys_obtain_tokens_with_well_formed_assertions() {
    let provider = OidcProvider::start(600).await;
    let rsa = provider.client_key("rsa").await;
    let ec = provider.client_key("ec").await;
    let cases = [
        (
            OidcProvider::RSA_KEY_CLIENT,
            ClientAuthentication::private_key_jwt_pem(&rsa, "rsa-1").unwrap(),
            "RS256",
        ),
        (
            OidcProvider::RSA_KEY_CLIENT,
            ClientAuthentication::PrivateKeyJwt(
                PrivateKeyJwt::from_pem(rsa.as_bytes(), "rsa-1")
                    .unwrap()
                    .with_algorithm(AssertionAlgorithm::PS256)
                    .unwrap(),
            ),
            "PS256",
        ),
        (
            OidcProvider::EC_KEY_CLIENT,
            ClientAuthentication::private_key_jwt_pem(&ec, "ec-1").unwrap(),
            "ES256",
        ),
    ];
    for (client, authentication, alg) in cases {
        let auth = AuthMiddleware::new(authorizer(&provider, client, authentication));
        let token = auth
            .access_token()
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(token_client_id(&provider, &token).await, client.0, "{alg}");
    }
    assert_eq!(provider.tokens_issued().await, 3);

    let assertions = provider.client_assertions().await;
    assert_eq!(assertions.len(), 3, "{assertions:?}");
    for (assertion, (client, _, alg)) in assertions.iter().zip([
        (OidcProvider::RSA_KEY_CLIENT, (), "RS256"),
        (OidcProvider::RSA_KEY_CLIENT, (), "PS256"),
        (OidcProvider::EC_KEY_CLIENT, (), "ES256"),
    ]) {
        let (header, claims) = (&assertion["header"], &assertion["claims"]);
        assert_eq!(header["alg"], alg);
        assert_eq!(header["kid"], client.1);
        assert_eq!(claims["iss"], client.0);
        assert_eq!(claims["sub"], client.0);
        assert_eq!(claims["aud"], provider.token_url().as_str());
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime > 0 && lifetime <= 300, "{lifetime}");
        assert!(claims["jti"].as_str().unwrap().len() >= 22);
    }
}

#[tokio::test]
async fn the_issuer_may_be_the_audience_and_each_request_has_a_fresh_jti() {
    let provider = OidcProvider::start(600).await;
    let key = PrivateKeyJwt::from_pem(provider.client_key("ec").await.as_bytes(), "ec-1")
        .unwrap()
        .with_audience(provider.issuer());
    let authorizer = authorizer(
        &provider,
        OidcProvider::EC_KEY_CLIENT,
        ClientAuthentication::PrivateKeyJwt(key),
    );
    // Three token requests from one authorizer: the provider refuses a replayed jti, so all
    // three succeeding already shows fresh ones; the recorded claims show it directly.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(authorizer.authorize().await.unwrap());
    }
    assert_eq!(provider.tokens_issued().await, 3);
    let assertions = provider.client_assertions().await;
    let jtis: std::collections::HashSet<_> = assertions
        .iter()
        .map(|a| a["claims"]["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(assertions.len(), 3);
    assert_eq!(jtis.len(), 3, "{assertions:?}");
    assert!(
        assertions
            .iter()
            .all(|a| a["claims"]["aud"] == provider.issuer().as_str())
    );
    assert!(tokens.iter().all(|t| !t.access_token().is_empty()));
}

#[tokio::test]
async fn keys_given_as_jwks_obtain_tokens() {
    let provider = OidcProvider::start(600).await;
    for (client, name) in [
        (OidcProvider::RSA_KEY_CLIENT, "rsa_jwk"),
        (OidcProvider::EC_KEY_CLIENT, "ec_jwk"),
    ] {
        let jwk = provider.client_key(name).await;
        let authentication = ClientAuthentication::private_key_jwt_jwk(&jwk).unwrap();
        let token = authorizer(&provider, client, authentication.clone())
            .authorize()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            token_client_id(&provider, token.access_token()).await,
            client.0
        );
        // The same key as PEM has the same thumbprint.
        let pem = provider.client_key(&name.replace("_jwk", "")).await;
        let from_pem = PrivateKeyJwt::from_pem(pem.as_bytes(), client.1).unwrap();
        match authentication {
            ClientAuthentication::PrivateKeyJwt(key) => {
                assert_eq!(key.thumbprint(), from_pem.thumbprint(), "{name}");
                assert_eq!(key.kid(), client.1);
            }
            other => panic!("{other:?}"),
        }
    }
    let assertions = provider.client_assertions().await;
    let algs: Vec<_> = assertions
        .iter()
        .map(|a| a["header"]["alg"].clone())
        .collect();
    assert_eq!(algs, ["PS256", "ES256"]);

    let public_only = r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","kid":"k"}"#;
    assert!(matches!(
        ClientAuthentication::private_key_jwt_jwk(public_only),
        Err(en_auth_core::Error::InvalidConfiguration { .. })
    ));
}

#[tokio::test]
async fn the_cache_key_follows_the_public_key_not_the_private_key() {
    let provider = OidcProvider::start(600).await;
    let rsa = provider.client_key("rsa").await;
    let stray = provider.client_key("stray_rsa").await;
    let key = |pem: &str| {
        authorizer(
            &provider,
            OidcProvider::RSA_KEY_CLIENT,
            ClientAuthentication::private_key_jwt_pem(pem, "rsa-1").unwrap(),
        )
        .cache_key()
    };
    assert_eq!(key(&rsa), key(&rsa));
    assert_ne!(key(&rsa), key(&stray));
    let thumbprint = PrivateKeyJwt::from_pem(rsa.as_bytes(), "rsa-1")
        .unwrap()
        .thumbprint()
        .to_owned();
    assert_eq!(thumbprint.len(), 43, "SHA-256, base64url");
    assert!(!key(&rsa).as_str().contains(&thumbprint));
}

/// `private_key_jwt` with DPoP against a provider that demands a DPoP nonce: the retry with
/// the nonce carries a new assertion (a replayed `jti` would be refused).
#[tokio::test]
async fn a_dpop_nonce_retry_sends_a_fresh_assertion() {
    let provider = OidcProvider::start(600).await;
    let key = PrivateKeyJwt::from_pem(provider.client_key("ec").await.as_bytes(), "ec-1").unwrap();
    let authorizer = authorizer(
        &provider,
        OidcProvider::EC_KEY_CLIENT,
        ClientAuthentication::PrivateKeyJwt(key),
    )
    .with_dpop();
    let token = authorizer.authorize().await.expect("a DPoP-bound token");
    assert!(!token.access_token().is_empty());
    assert_eq!(
        provider.token_requests().await,
        2,
        "one nonce challenge, one retry"
    );
    assert_eq!(provider.tokens_issued().await, 1);
    let assertions = provider.client_assertions().await;
    let jtis: std::collections::HashSet<_> = assertions
        .iter()
        .map(|a| a["claims"]["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), assertions.len(), "{assertions:?}");
}

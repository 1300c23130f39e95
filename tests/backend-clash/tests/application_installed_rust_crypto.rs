//! Both backends enabled, and the application chose `rust_crypto` as the process default
//! before en-auth was used: en-auth keeps working and leaves that choice alone.

use en_auth_backend_clash::*;
use en_auth_testkit::LoopbackServer;
use en_auth_verify::{Claims, Verifier};
use jsonwebtoken::crypto::{CryptoProvider, rust_crypto};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

#[tokio::test]
async fn en_auth_verifies_next_to_an_application_that_installed_rust_crypto() {
    CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER)
        .expect("the application installs its backend first");
    let jwks = fixture("jwks.json");
    let server = LoopbackServer::start(axum::Router::new().fallback(move || {
        let jwks = jwks.clone();
        async move { jwks }
    }))
    .await
    .expect("jwks server");

    // The application's own jsonwebtoken calls use its default.
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa.pem").as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&header, &claims(), &rsa).unwrap();

    let verifier = Verifier::jwks(server.url("/jwks.json"))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    let verified = verifier.verify(&token).await.expect("en-auth verifies");
    assert_eq!(verified.sub.as_deref(), Some("service-a"));
    let mut tampered = token.clone();
    tampered.insert(tampered.len() - 2, 'x');
    assert!(verifier.verify(&tampered).await.is_err());

    // ...and en-auth did not replace the application's choice.
    assert!(
        CryptoProvider::install_default(&jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER).is_err(),
        "the process default stays the application's"
    );
    let public = DecodingKey::from_rsa_pem(fixture("rsa-public.pem").as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<Claims>(&token, &public, &validation)
        .expect("the application's own decode still works");
}

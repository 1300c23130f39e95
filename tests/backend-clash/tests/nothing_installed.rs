//! Both backends enabled and no process default installed: jsonwebtoken's own `decode`
//! panics ("Could not automatically determine the process-level CryptoProvider"), and
//! en-auth-verify verifies anyway, before and after that panic.

use en_auth_backend_clash::*;
use en_auth_testkit::LoopbackServer;
use en_auth_verify::{Claims, Verifier};
use jsonwebtoken::crypto::{aws_lc, rust_crypto};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};

async fn jwks_server() -> LoopbackServer {
    let jwks = fixture("jwks.json");
    let router = axum::Router::new().fallback(move || {
        let jwks = jwks.clone();
        async move { jwks }
    });
    LoopbackServer::start(router).await.expect("jwks server")
}

#[tokio::test]
async fn en_auth_verifies_with_both_backends_enabled_and_none_installed() {
    let server = jwks_server().await;
    // Without the verified-token cache, so that every call checks a signature.
    let jwks = Verifier::jwks(server.url("/jwks.json"))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .without_token_cache();
    let hs = Verifier::hs256(SECRET)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .without_token_cache();
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa.pem").as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(fixture("ec.pem").as_bytes()).unwrap();
    let secret = EncodingKey::from_secret(SECRET);

    // Minted with either backend; en-auth verifies with the one it was built with.
    for provider in [&aws_lc::DEFAULT_PROVIDER, &rust_crypto::DEFAULT_PROVIDER] {
        let rs = mint(provider, Algorithm::RS256, Some("rsa-1"), &rsa, &claims());
        let es = mint(provider, Algorithm::ES256, Some("ec-1"), &ec, &claims());
        let hs_token = mint(provider, Algorithm::HS256, None, &secret, &claims());
        for (verifier, token) in [(&jwks, &rs), (&jwks, &es), (&hs, &hs_token)] {
            let verified = verifier.verify(token).await;
            assert_eq!(verified.unwrap().sub.as_deref(), Some("service-a"));
        }
        // Not a rubber stamp: a wrong signature is still refused.
        let forged = mint(
            provider,
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more"),
            &claims(),
        );
        assert!(hs.verify(&forged).await.is_err());
    }

    // The clash is real in this process: jsonwebtoken's own decode cannot choose a backend
    // (and the panicking placeholder is now the process default for good).
    let rs = mint(
        &aws_lc::DEFAULT_PROVIDER,
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa,
        &claims(),
    );
    let public = DecodingKey::from_rsa_pem(fixture("rsa-public.pem").as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    let bare = std::panic::catch_unwind(|| {
        jsonwebtoken::decode::<Claims>(&rs, &public, &validation).map(|_| ())
    });
    assert!(
        bare.is_err(),
        "jsonwebtoken::decode panics with both backends and no default"
    );

    // en-auth is not affected.
    jwks.verify(&rs)
        .await
        .expect("still verifies after the process default broke");
}

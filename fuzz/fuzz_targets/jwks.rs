//! JWKS documents as the JWKS cache reads them, and tokens checked against every key taken:
//! never a panic; no symmetric key taken from a public key set; a token is accepted only by a
//! key of its algorithm's family (and its `alg`, when the key names one), never with `none`
//! or HMAC; every rejection log-safe.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use en_auth_fuzz::{assert_error_safe, now_or_never};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

/// Tokens signed with the test fixtures' keys (RS256 `rsa-1`, ES256 `ec-1`), an HS256 token
/// whose secret is the RSA key's public modulus (the classic key confusion) and an unsigned
/// `alg: none` token.
static TOKENS: LazyLock<Vec<(Algorithm, String)>> = LazyLock::new(|| {
    let claims = serde_json::json!({"sub": "fuzz", "exp": 4_102_444_800i64});
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).expect("fixture keys sign")
    };
    let rsa = include_str!("../../en-auth-verify/tests/fixtures/rsa.pem");
    let ec = include_str!("../../en-auth-verify/tests/fixtures/ec.pem");
    let jwks: serde_json::Value = serde_json::from_str(include_str!(
        "../../en-auth-verify/tests/fixtures/jwks.json"
    ))
    .expect("fixture JWKS");
    let modulus = jwks["keys"][0]["n"].as_str().expect("fixture RSA key");
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    vec![
        (
            Algorithm::RS256,
            sign(
                Algorithm::RS256,
                "rsa-1",
                &EncodingKey::from_rsa_pem(rsa.as_bytes()).expect("rsa.pem"),
            ),
        ),
        (
            Algorithm::ES256,
            sign(
                Algorithm::ES256,
                "ec-1",
                &EncodingKey::from_ec_pem(ec.as_bytes()).expect("ec.pem"),
            ),
        ),
        (
            Algorithm::HS256,
            sign(
                Algorithm::HS256,
                "rsa-1",
                &EncodingKey::from_secret(modulus.as_bytes()),
            ),
        ),
        (
            Algorithm::HS256,
            format!(
                "{}.{payload}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa-1"}"#)
            ),
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let keys = match en_auth_verify::fuzzing::jwks_keys(data) {
        Ok(keys) => keys,
        Err(err) => {
            assert_error_safe("JWKS", &err);
            return;
        }
    };
    assert_eq!(
        keys.key_without_kid,
        keys.keys.iter().any(|k| k.kid.is_none()),
        "the key for tokens without kid"
    );
    for key in &keys.keys {
        assert_ne!(
            key.family,
            AlgorithmFamily::Hmac,
            "a symmetric key from a JWKS"
        );
        for (alg, token) in TOKENS.iter() {
            match now_or_never(key.verifier.verify(token)) {
                Ok(_) => {
                    assert_ne!(*alg, Algorithm::HS256, "accepted an HMAC or unsigned token");
                    assert_eq!(
                        alg.family(),
                        key.family,
                        "{alg:?} accepted by a {:?} key",
                        key.family
                    );
                    if let Some(named) = key.alg {
                        assert_eq!(*alg, named, "accepted by a key for another alg");
                    }
                }
                Err(err) => assert_error_safe("verify with a JWKS key", &err),
            }
        }
    }
});

//! Test-only package: an "application" that enables both of jsonwebtoken's crypto backends,
//! `rust_crypto` itself and `aws_lc_rs` through en-auth-verify. jsonwebtoken then cannot pick a
//! process-wide backend from its features; en-auth-verify must verify tokens anyway. The tests
//! are in `tests/`, one process per scenario (the process default can be set only once).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Issuer of the tokens the scenarios mint.
pub const ISSUER: &str = "https://issuer.test/";
/// Audience of the tokens the scenarios mint.
pub const AUDIENCE: &str = "https://api.test";
/// The HS256 secret of the shared-secret scenarios.
pub const SECRET: &[u8] = b"shared-secret-of-32-bytes-or-more!!";

/// A fixture of en-auth-verify's tests (keys and JWKS).
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../../en-auth-verify/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Claims valid for an hour, for [`ISSUER`] and [`AUDIENCE`].
pub fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "service-a", "iat": now, "exp": now + 3600,
    })
}

/// Signs `claims` with `provider` named explicitly, leaving the process default alone
/// (`jsonwebtoken::encode` would need one).
pub fn mint(
    provider: &CryptoProvider,
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{header}.{payload}");
    let signature = (provider.signer_factory)(&alg, key)
        .and_then(|signer| Ok(signer.try_sign(message.as_bytes())?))
        .unwrap_or_else(|e| panic!("signing failed: {e}"));
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

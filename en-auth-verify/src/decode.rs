//! A JWT's signature and payload, with jsonwebtoken's `aws_lc_rs` backend chosen per call.
//!
//! jsonwebtoken (since 10) picks its crypto backend through a process-wide `CryptoProvider`.
//! When an application also enables its `rust_crypto` feature (directly or through another
//! crate), cargo unifies the features, jsonwebtoken can no longer choose, and every call
//! through the process default panics unless the application installed one. en-auth never
//! goes through the process default: it asks the backend it was built with for a verifier on
//! every call, so it works whatever the application enabled or installed, and it leaves the
//! process-wide choice to the application.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use en_auth_core::Error;
use jsonwebtoken::Algorithm;
use jsonwebtoken::crypto::CryptoProvider;

use crate::Claims;
use crate::jwks::VerificationKey;

/// The backend en-auth-verify is built with.
static BACKEND: &CryptoProvider = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;

/// Checks `token`'s signature with `key` under `alg` (already matched against the key and the
/// allow-list) and returns its claims, not yet validated.
pub(crate) fn signed_claims(
    token: &str,
    alg: Algorithm,
    key: &VerificationKey,
) -> Result<Claims, Error> {
    let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    let (_header, payload) = message.split_once('.').ok_or_else(malformed)?;
    if payload.contains('.') {
        return Err(malformed());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid("malformed token: signature is not base64url"))?;
    let verifier = (BACKEND.verifier_factory)(&alg, &key.key)
        .map_err(|_| invalid("algorithm does not match the key"))?;
    verifier
        .verify(message.as_bytes(), &signature)
        .map_err(|_| invalid("bad signature"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid("malformed token: payload is not base64url"))?;
    serde_json::from_slice(&payload).map_err(|e| {
        invalid(&format!(
            "malformed token: claims are not valid: {}",
            en_auth_core::untrusted_text(&e.to_string())
        ))
    })
}

/// The payload of a compact JWS `token` whose signature verifies with `key` under `alg`
/// (asked of [`BACKEND`]); `None` if it is malformed or does not verify.
pub(crate) fn verified_payload(
    token: &str,
    alg: Algorithm,
    key: &jsonwebtoken::DecodingKey,
) -> Option<Vec<u8>> {
    let (message, signature) = token.rsplit_once('.')?;
    let (_header, payload) = message.split_once('.')?;
    if payload.contains('.') {
        return None;
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let verifier = (BACKEND.verifier_factory)(&alg, key).ok()?;
    verifier.verify(message.as_bytes(), &signature).ok()?;
    URL_SAFE_NO_PAD.decode(payload).ok()
}

fn malformed() -> Error {
    invalid("malformed token: a JWT has three parts")
}

fn invalid(reason: &str) -> Error {
    Error::InvalidToken {
        reason: reason.into(),
    }
}

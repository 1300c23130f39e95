//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`). Not part of the
//! public API: the signatures follow the private parsers they expose and may change.

use std::sync::Arc;

use en_auth_core::Error;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{ASYMMETRIC_ALGORITHMS, Keys, Verifier};
use crate::jwks::{VerificationKey, parse_key_set};

/// One usable key of a JWKS document.
pub struct JwksKey {
    /// The key's `kid`; `None` for the single key of a set that tokens without `kid` use.
    pub kid: Option<String>,
    /// The key's algorithm family (never HMAC).
    pub family: AlgorithmFamily,
    /// The key's own `alg`, when the document names one.
    pub alg: Option<Algorithm>,
    /// A verifier that checks tokens against this key alone, with the default asymmetric
    /// algorithms and no issuer or audience.
    pub verifier: Verifier,
}

/// The usable keys of a JWKS document, as the JWKS cache takes them.
pub struct JwksKeys {
    /// The keys tokens can name, plus the key for tokens without `kid` (if there is one).
    pub keys: Vec<JwksKey>,
    /// Whether tokens without a `kid` have a key (exactly one usable key in the set).
    pub key_without_kid: bool,
}

fn entry(kid: Option<String>, key: &Arc<VerificationKey>) -> JwksKey {
    JwksKey {
        kid,
        family: key.family,
        alg: key.alg,
        verifier: Verifier::with_keys(
            Keys::Shared(Arc::clone(key)),
            ASYMMETRIC_ALGORITHMS.to_vec(),
        ),
    }
}

/// Parses a JWKS document as the JWKS cache does after a fetch.
pub fn jwks_keys(body: &[u8]) -> Result<JwksKeys, Error> {
    let set = parse_key_set(body, None)?;
    let mut keys: Vec<JwksKey> = set
        .by_kid
        .iter()
        .map(|(kid, key)| entry(Some(kid.clone()), key))
        .collect();
    if let Some(only) = &set.only {
        keys.push(entry(None, only));
    }
    Ok(JwksKeys {
        keys,
        key_without_kid: set.only.is_some(),
    })
}

//! [`PrivateKeySigner`]: the built-in [`Signer`], a private key in process memory (PEM or JWK),
//! signing with the aws-lc backend of `jsonwebtoken`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use en_auth_core::Error;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::crypto::CryptoProvider;
use sha2::Digest as _;

use crate::signer::{Signer, SigningAlgorithm};

/// The jsonwebtoken backend en-auth is built with, asked directly: jsonwebtoken's process-wide
/// default cannot choose (and panics) when an application also enables its `rust_crypto`
/// feature, and en-auth leaves that choice to the application.
static BACKEND: &CryptoProvider = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;

/// A private key held in process memory: the [`Signer`] behind
/// [`ClientAuthentication::private_key_jwt_pem`](crate::ClientAuthentication::private_key_jwt_pem)
/// and [`private_key_jwt_jwk`](crate::ClientAuthentication::private_key_jwt_jwk).
///
/// `Debug` shows the algorithm, `kid` and the public key's RFC 7638 thumbprint — never the
/// key, which is zeroized when the last clone is dropped.
///
/// ```
/// use en_auth_oauth2::{PrivateKeySigner, Signer};
/// # fn demo(pem: &[u8]) -> Result<(), en_auth_core::Error> {
/// let signer = PrivateKeySigner::from_pem(pem, Some("key-1".into()))?;
/// println!("{} {:?} {}", signer.algorithm(), signer.key_id(), signer.thumbprint());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PrivateKeySigner {
    key: Arc<EncodingKey>,
    algorithm: SigningAlgorithm,
    kid: Option<String>,
    /// The public key as a JWK, RFC 7638 members only.
    public_jwk: Arc<serde_json::Value>,
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url.
    thumbprint: String,
}

fn invalid(reason: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "private_key".into(),
        reason: reason.into(),
    }
}

impl PrivateKeySigner {
    /// Reads a private key from PEM: PKCS#8 `PRIVATE KEY` (RSA, EC P-256 or P-384) or PKCS#1
    /// `RSA PRIVATE KEY`, announced with key id `kid` (`None`: no `kid` header). The algorithm
    /// follows the key: RS256 for RSA, ES256 for P-256, ES384 for P-384; see
    /// [`with_algorithm`](Self::with_algorithm) for PS256.
    ///
    /// A key that cannot be read is [`Error::InvalidConfiguration`]; the error never contains
    /// the key.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, Error> {
        let text = std::str::from_utf8(pem).map_err(|_| invalid("the key is not PEM text"))?;
        if text.contains("ENCRYPTED PRIVATE KEY") {
            return Err(invalid(
                "the key is encrypted; decrypt it first (openssl pkcs8 -in key.pem -out plain.pem)",
            ));
        }
        if text.contains("BEGIN EC PRIVATE KEY") {
            return Err(invalid(
                "SEC1 `EC PRIVATE KEY` files are not read; convert to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`",
            ));
        }
        let candidates = [
            (EncodingKey::from_rsa_pem(pem), SigningAlgorithm::RS256),
            (EncodingKey::from_ec_pem(pem), SigningAlgorithm::ES256),
            (EncodingKey::from_ec_pem(pem), SigningAlgorithm::ES384),
        ];
        for (key, algorithm) in candidates {
            let Ok(key) = key else { continue };
            // Deriving the public key checks that the private key is usable with `algorithm`
            // (an EC key on another curve, a truncated RSA key) before anything is signed.
            if let Ok(signer) = Self::from_key(key, algorithm, kid.clone()) {
                return Ok(signer);
            }
        }
        Err(invalid(
            "not a PEM private key en-auth can sign with: expected an RSA key (PKCS#1 or \
             PKCS#8) of at least 2048 bits, or a P-256 / P-384 EC key in PKCS#8",
        ))
    }

    /// Reads a private key from a JWK (RFC 7517: `kty` `RSA` with `n`, `e`, `d`, `p`, `q`,
    /// `dp`, `dq`, `qi`, or `EC` on P-256 / P-384 with `x`, `y`, `d`), announced with the
    /// JWK's `kid` if it has one. The JWK's `alg`, if present, picks the algorithm.
    pub fn from_jwk(jwk: &str) -> Result<Self, Error> {
        let read = crate::jwk_key::from_jwk(jwk)?;
        Self::from_key(read.key, read.algorithm, read.kid)
    }

    fn from_key(
        key: EncodingKey,
        algorithm: SigningAlgorithm,
        kid: Option<String>,
    ) -> Result<Self, Error> {
        let public_jwk = public_jwk(&key, algorithm)?;
        let thumbprint = jwk_thumbprint(&public_jwk);
        Ok(Self {
            key: Arc::new(key),
            algorithm,
            kid,
            public_jwk: Arc::new(public_jwk),
            thumbprint,
        })
    }

    /// Signs with `algorithm` instead of the key's default (PS256 for an RSA key). An
    /// algorithm that does not fit the key is [`Error::InvalidConfiguration`].
    pub fn with_algorithm(mut self, algorithm: SigningAlgorithm) -> Result<Self, Error> {
        if algorithm.is_rsa() != self.algorithm.is_rsa()
            || (!algorithm.is_rsa() && algorithm != self.algorithm)
        {
            return Err(Error::InvalidConfiguration {
                setting: "private_key".into(),
                reason: format!(
                    "{algorithm:?} cannot be used with this key (it signs {:?})",
                    self.algorithm
                ),
            });
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// Announces the key with `kid` (or with none).
    pub fn with_key_id(mut self, kid: Option<String>) -> Self {
        self.kid = kid;
        self
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key (base64url).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// Signs synchronously (the key is in memory).
    pub(crate) fn sign_now(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let signer = (BACKEND.signer_factory)(&self.algorithm.jwt(), &self.key)
            .map_err(|e| signing_failed(&e))?;
        signer.try_sign(message).map_err(|e| signing_failed(&e))
    }
}

fn signing_failed(e: &dyn fmt::Display) -> Error {
    Error::InvalidConfiguration {
        setting: "private_key".into(),
        // jsonwebtoken's error kinds name the problem, never the key.
        reason: format!("signing failed: {e}"),
    }
}

#[async_trait]
impl Signer for PrivateKeySigner {
    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    fn key_id(&self) -> Option<String> {
        self.kid.clone()
    }

    fn public_jwk(&self) -> serde_json::Value {
        (*self.public_jwk).clone()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.sign_now(message)
    }
}

impl fmt::Debug for PrivateKeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeySigner")
            .field("key", &"[REDACTED]")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

/// The public half of `key` as a JWK with the RFC 7638 members (derived with [`BACKEND`]).
fn public_jwk(key: &EncodingKey, algorithm: SigningAlgorithm) -> Result<serde_json::Value, Error> {
    let underivable = || invalid("the public key cannot be derived from the private key");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if algorithm.is_rsa() {
        let (n, e) = (BACKEND.key_utils.rsa_pub_components_from_private_key)(key.as_bytes())
            .map_err(|_| underivable())?;
        Ok(serde_json::json!({ "e": b64(&e), "kty": "RSA", "n": b64(&n) }))
    } else {
        let (curve, x, y) =
            (BACKEND.key_utils.ec_pub_components_from_private_key)(key.as_bytes(), algorithm.jwt())
                .map_err(|_| underivable())?;
        let crv = serde_json::to_value(curve).map_err(|_| underivable())?;
        Ok(serde_json::json!({ "crv": crv, "kty": "EC", "x": b64(&x), "y": b64(&y) }))
    }
}

/// The RFC 7638 SHA-256 thumbprint (base64url) of a public JWK: its required members (`e`,
/// `kty`, `n` for RSA; `crv`, `kty`, `x`, `y` for EC; `crv`, `kty`, `x` for OKP), in
/// lexicographic order, without whitespace.
pub(crate) fn jwk_thumbprint(jwk: &serde_json::Value) -> String {
    // serde_json's map keeps keys sorted (no `preserve_order`), and a JSON string of base64url
    // or a curve name needs no escaping: this is RFC 7638's canonical form.
    let bytes = serde_json::to_vec(&thumbprint_members(jwk)).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(bytes))
}

/// The members of `jwk` an RFC 7638 thumbprint covers (`e`, `kty`, `n` for RSA; `crv`,
/// `kty`, `x`, `y` for EC; `crv`, `kty`, `x` for OKP), sorted: the public key and nothing
/// else, whatever else `jwk` carries (a private `d`, `kid`, `use`).
pub(crate) fn thumbprint_members(
    jwk: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let members: &[&str] = match jwk.get("kty").and_then(|k| k.as_str()) {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["kty"],
    };
    members
        .iter()
        .filter_map(|m| jwk.get(*m).map(|v| ((*m).to_owned(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn malformed_keys_are_configuration_errors_without_the_key() {
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        match PrivateKeySigner::from_pem(pem, None) {
            Err(Error::InvalidConfiguration { setting, reason }) => {
                assert_eq!(setting, "private_key");
                assert!(!reason.contains("MII"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

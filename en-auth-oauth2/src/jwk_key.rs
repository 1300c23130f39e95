//! A private key given as a JWK (RFC 7517 / RFC 7518 §6) turned into the DER that
//! `jsonwebtoken` signs with: PKCS#1 for RSA, PKCS#8 for EC keys.
//!
//! Only the encoding is done here (ASN.1 DER with `simple_asn1`); no cryptography. The key's
//! validity is checked afterwards by deriving its public key for the thumbprint.

use base64::Engine;
use en_auth_core::Error;
use jsonwebtoken::EncodingKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use simple_asn1::{ASN1Block, ASN1Class, BigInt, BigUint, oid, to_der};
use zeroize::Zeroizing;

use crate::client_auth::AssertionAlgorithm;

/// The JWK members en-auth reads. Private members stay secret until encoded.
#[derive(Deserialize)]
struct PrivateJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<SecretString>,
    p: Option<SecretString>,
    q: Option<SecretString>,
    dp: Option<SecretString>,
    dq: Option<SecretString>,
    qi: Option<SecretString>,
}

/// A key read from a JWK: the signing key, its algorithm and the JWK's `kid`.
pub(crate) struct JwkKey {
    pub key: EncodingKey,
    pub algorithm: AssertionAlgorithm,
    pub kid: Option<String>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConfiguration {
        setting: "private_key".into(),
        reason: reason.into(),
    }
}

fn member(value: Option<&str>, name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let value = value.ok_or_else(|| invalid(format!("the JWK has no `{name}`")))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map(Zeroizing::new)
        .map_err(|_| invalid(format!("the JWK's `{name}` is not base64url")))
}

fn secret_member(value: &Option<SecretString>, name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    member(value.as_ref().map(|v| v.expose_secret()), name)
}

/// An unsigned big-endian integer as a DER INTEGER.
fn unsigned(bytes: &[u8]) -> ASN1Block {
    ASN1Block::Integer(0, BigInt::from(BigUint::from_bytes_be(bytes)))
}

fn der(block: &ASN1Block) -> Result<Zeroizing<Vec<u8>>, Error> {
    to_der(block)
        .map(Zeroizing::new)
        .map_err(|_| invalid("the JWK cannot be encoded as a key"))
}

/// Reads a private RSA or EC (P-256, P-384) JWK.
pub(crate) fn from_jwk(json: &str) -> Result<JwkKey, Error> {
    let jwk: PrivateJwk = serde_json::from_str(json)
        .map_err(|_| invalid("not a JSON Web Key (a JSON object with `kty`)"))?;
    if jwk.d.is_none() {
        return Err(invalid(
            "the JWK is a public key (no `d`); give the private key",
        ));
    }
    let wanted = match jwk.alg.as_deref() {
        None => None,
        Some("RS256") => Some(AssertionAlgorithm::RS256),
        Some("PS256") => Some(AssertionAlgorithm::PS256),
        Some("ES256") => Some(AssertionAlgorithm::ES256),
        Some("ES384") => Some(AssertionAlgorithm::ES384),
        Some(_) => {
            return Err(invalid(
                "the JWK's `alg` is not one en-auth signs with (RS256, PS256, ES256, ES384)",
            ));
        }
    };
    let (key, algorithm) = match jwk.kty.as_str() {
        "RSA" => {
            let parts = [
                member(jwk.n.as_deref(), "n")?,
                member(jwk.e.as_deref(), "e")?,
                secret_member(&jwk.d, "d")?,
                secret_member(&jwk.p, "p")?,
                secret_member(&jwk.q, "q")?,
                secret_member(&jwk.dp, "dp")?,
                secret_member(&jwk.dq, "dq")?,
                secret_member(&jwk.qi, "qi")?,
            ];
            // RFC 8017 A.1.2 RSAPrivateKey, two-prime form.
            let mut fields = vec![unsigned(&[0])];
            fields.extend(parts.iter().map(|p| unsigned(p)));
            let pkcs1 = der(&ASN1Block::Sequence(0, fields))?;
            (
                EncodingKey::from_rsa_der(&pkcs1),
                wanted.unwrap_or(AssertionAlgorithm::RS256),
            )
        }
        "EC" => {
            let (curve, size, algorithm) = match jwk.crv.as_deref() {
                Some("P-256") => (
                    oid!(1, 2, 840, 10045, 3, 1, 7),
                    32,
                    AssertionAlgorithm::ES256,
                ),
                Some("P-384") => (oid!(1, 3, 132, 0, 34), 48, AssertionAlgorithm::ES384),
                _ => return Err(invalid("the JWK's curve (`crv`) must be P-256 or P-384")),
            };
            let (x, y, d) = (
                member(jwk.x.as_deref(), "x")?,
                member(jwk.y.as_deref(), "y")?,
                secret_member(&jwk.d, "d")?,
            );
            if x.len() != size || y.len() != size || d.len() != size {
                return Err(invalid("the JWK's `x`, `y` or `d` has the wrong length"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // RFC 5915 ECPrivateKey inside RFC 5208 PrivateKeyInfo.
            let ec_private_key = der(&ASN1Block::Sequence(
                0,
                vec![
                    unsigned(&[1]),
                    ASN1Block::OctetString(0, d.to_vec()),
                    ASN1Block::Explicit(
                        ASN1Class::ContextSpecific,
                        0,
                        BigUint::from(1u8),
                        Box::new(ASN1Block::BitString(0, point.len() * 8, point)),
                    ),
                ],
            ))?;
            let pkcs8 = der(&ASN1Block::Sequence(
                0,
                vec![
                    unsigned(&[0]),
                    ASN1Block::Sequence(
                        0,
                        vec![
                            ASN1Block::ObjectIdentifier(0, oid!(1, 2, 840, 10045, 2, 1)),
                            ASN1Block::ObjectIdentifier(0, curve),
                        ],
                    ),
                    ASN1Block::OctetString(0, ec_private_key.to_vec()),
                ],
            ))?;
            if wanted.is_some_and(|w| w != algorithm) {
                return Err(invalid("the JWK's `alg` does not fit its curve"));
            }
            (EncodingKey::from_ec_der(&pkcs8), algorithm)
        }
        _ => return Err(invalid("the JWK's `kty` must be RSA or EC")),
    };
    if matches!(
        (jwk.kty.as_str(), algorithm),
        ("RSA", AssertionAlgorithm::ES256 | AssertionAlgorithm::ES384)
    ) {
        return Err(invalid("the JWK's `alg` does not fit an RSA key"));
    }
    Ok(JwkKey {
        key,
        algorithm,
        kid: jwk.kid,
    })
}

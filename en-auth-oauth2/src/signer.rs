//! [`Signer`]: signing for client assertions, JWT bearer grants and DPoP proofs, wherever
//! the key lives.
//!
//! A key in process memory ([`PrivateKeyJwt`](crate::PrivateKeyJwt)'s PEM or JWK) is one
//! kind of signer; a key in a KMS or an HSM, which never enters the process, is another: it
//! implements this trait and signs through the KMS's API.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use en_auth_core::Error;
use jsonwebtoken::Algorithm;

/// A JWS signature algorithm en-auth signs with (RFC 7518 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA keys; the default for them).
    RS256,
    /// RSASSA-PSS with SHA-256 (RSA keys; required by FAPI profiles).
    PS256,
    /// ECDSA on P-256 with SHA-256 (P-256 keys; DPoP's algorithm).
    ES256,
    /// ECDSA on P-384 with SHA-384 (P-384 keys).
    ES384,
}

impl SigningAlgorithm {
    /// The `alg` header value: `RS256`, `PS256`, `ES256`, `ES384`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Self::RS256 => Algorithm::RS256,
            Self::PS256 => Algorithm::PS256,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, Self::RS256 | Self::PS256)
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Signs JWTs with a private key that may live outside the process (a KMS, an HSM).
///
/// en-auth builds the JWT's header (`alg` from [`algorithm`](Self::algorithm), `kid` from
/// [`key_id`](Self::key_id), and for DPoP the public key from
/// [`public_jwk`](Self::public_jwk)) and claims, and asks [`sign`](Self::sign) for the
/// signature over `base64url(header) "." base64url(claims)`.
///
/// The signature is in JWS form (RFC 7518 §3): for RSA the plain signature bytes; for ECDSA
/// the fixed-size `r || s` concatenation (64 bytes for ES256, 96 for ES384) — **not** the
/// DER `ECDSA-Sig-Value` most KMS APIs return, which the implementation must convert.
///
/// A signer whose key can change under it (a key file that is rotated, a KMS key version)
/// returns the key that signs next from [`current`](Self::current), so that a JWT's header and
/// signature always come from the same key. A DPoP authorizer
/// ([`with_dpop_signer`](crate::ServiceAccountAuthorizer::with_dpop_signer)) asks `current`
/// once, at its first proof, and keeps that key: its tokens are bound to it.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    /// The algorithm [`sign`](Self::sign) signs with.
    fn algorithm(&self) -> SigningAlgorithm;

    /// The key id announced as the JWT's `kid` header (the id the provider knows the key by),
    /// if any.
    fn key_id(&self) -> Option<String>;

    /// The public key as a JWK (RFC 7517) with the members RFC 7638 thumbprints need (`kty`
    /// and `n`, `e` for RSA; `kty`, `crv`, `x`, `y` for EC), never a private member.
    fn public_jwk(&self) -> serde_json::Value;

    /// Signs `message` (the JWS signing input) and returns the JWS signature bytes.
    ///
    /// Errors are token-request failures: return a transient one
    /// ([`Error::CredentialUnavailable`], [`Error::Transport`]) when the KMS is unreachable,
    /// so the lifecycle retries with back-off. They must not contain key material.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error>;

    /// The signer to use for the next JWT when the key may change (a reloaded file); `None`
    /// (the default) means this one. Called before each JWT is built.
    async fn current(&self) -> Result<Option<Arc<dyn Signer>>, Error> {
        Ok(None)
    }
}

/// Builds and signs a compact JWS with `signer` (its [`current`](Signer::current) key):
/// `header` gets `alg` and, when the key has one, `kid` (members already in `header` win);
/// the claims are `claims` serialized. The result is a secret (an assertion or proof).
pub(crate) async fn sign_jwt(
    signer: &dyn Signer,
    mut header: serde_json::Map<String, serde_json::Value>,
    claims: &impl serde::Serialize,
) -> Result<secrecy::SecretString, Error> {
    let current = signer.current().await?;
    let signer: &dyn Signer = current.as_deref().unwrap_or(signer);
    header
        .entry("alg")
        .or_insert_with(|| signer.algorithm().name().into());
    if let Some(kid) = signer.key_id() {
        header.entry("kid").or_insert_with(|| kid.into());
    }
    sign_with(signer, &header, claims).await
}

/// Signs `base64url(header) "." base64url(claims)` with exactly `signer` (not its
/// [`current`](Signer::current) key; the caller asked for that already) and `header` as given.
pub(crate) async fn sign_with(
    signer: &dyn Signer,
    header: &serde_json::Map<String, serde_json::Value>,
    claims: &impl serde::Serialize,
) -> Result<secrecy::SecretString, Error> {
    use base64::Engine as _;
    let mut jwt = format!("{}.{}", b64_json(header)?, b64_json(claims)?);
    let signature = signer.sign(jwt.as_bytes()).await?;
    jwt.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    Ok(secrecy::SecretString::from(jwt))
}

fn b64_json(value: &impl serde::Serialize) -> Result<String, Error> {
    use base64::Engine as _;
    let bytes = serde_json::to_vec(value).map_err(|e| Error::InvalidConfiguration {
        setting: "signed JWT".into(),
        reason: format!("cannot serialize: {e}"),
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// 128 random bits from the operating system, base64url: a `jti` no one can predict. A
/// failure names `setting` (the JWT being built).
pub(crate) fn random_jti(setting: &str) -> Result<String, Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::InvalidConfiguration {
        setting: setting.into(),
        reason: format!("no randomness for the JWT's jti: {e}"),
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

//! What the token exchange, on-behalf-of and JWT bearer tests share: the keys of the test
//! provider's "upstream issuer" (`tests/peers/oidc-provider.mjs`, section "token exchange and
//! JWT bearer"), subject tokens minted with them as that issuer would, what the provider
//! recorded, and a P-256 [`Signer`] of our own.

#![allow(dead_code)] // each test binary uses its part

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use en_auth_core::Error;
use en_auth_oauth2::{Signer, SigningAlgorithm};
use en_auth_testkit::OidcProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};

/// The grant type URNs, as the provider counts them in `/__stats`.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The provider's `/__exchange_keys`.
pub struct ExchangeKeys {
    pub upstream_pem: String,
    pub bearer_pem: String,
    pub upstream_issuer: String,
    pub gateway: String,
}

pub async fn keys(provider: &OidcProvider) -> ExchangeKeys {
    let keys: Value = reqwest::get(format!("{}/__exchange_keys", provider.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = |name: &str| keys[name].as_str().unwrap().to_owned();
    ExchangeKeys {
        upstream_pem: text("upstream"),
        bearer_pem: text("bearer"),
        upstream_issuer: text("upstream_issuer"),
        gateway: text("gateway"),
    }
}

/// What the provider's grant handlers recorded: `{"exchanges": [...], "bearer": [...]}`.
pub async fn recorded(provider: &OidcProvider) -> Value {
    reqwest::get(format!("{}/__exchanges", provider.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn install_crypto() {
    // The workspace build also enables jsonwebtoken's rust_crypto backend: name one.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
}

/// A JWT as the upstream issuer mints it (a Kubernetes service-account token, a user's
/// access token at the gateway): `iss` upstream, `aud` the gateway, `sub`, `exp` in
/// `lifetime_secs`, a `jti`, plus `extra`.
pub fn upstream_token(keys: &ExchangeKeys, sub: &str, lifetime_secs: i64, extra: Value) -> String {
    install_crypto();
    let mut claims = json!({
        "iss": keys.upstream_issuer,
        "aud": keys.gateway,
        "sub": sub,
        "iat": now(),
        "exp": now() + lifetime_secs,
        "jti": format!("{sub}-{}", random_u64()),
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("upstream-1".into());
    let key = EncodingKey::from_ec_pem(keys.upstream_pem.as_bytes()).unwrap();
    encode(&header, &claims, &key).unwrap()
}

/// The claims of a JWT the provider issued (read, not verified: the provider signed it).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// An ES256 [`Signer`] over a P-256 key held in memory: a real signer implementation, as a
/// KMS-backed one would be, only local.
pub struct P256Signer {
    key: p256::ecdsa::SigningKey,
    kid: String,
}

impl P256Signer {
    pub fn from_pem(pem: &str, kid: &str) -> Self {
        Self {
            key: p256::ecdsa::SigningKey::from_pkcs8_pem(pem).unwrap(),
            kid: kid.to_owned(),
        }
    }
}

impl std::fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "P256Signer({})", self.kid)
    }
}

#[async_trait]
impl Signer for P256Signer {
    fn algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::ES256
    }

    fn key_id(&self) -> Option<String> {
        Some(self.kid.clone())
    }

    fn public_jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let signature: p256::ecdsa::Signature = self.key.sign(message);
        Ok(signature.to_bytes().to_vec())
    }
}

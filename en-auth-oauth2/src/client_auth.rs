//! How a client proves who it is at the token endpoint: [`ClientAuthentication`].
//!
//! - Client secrets (RFC 6749 §2.3.1): `client_secret_basic` (the default) and
//!   `client_secret_post`. The secret itself crosses the wire with every token request.
//! - `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): the client signs a short-lived
//!   JWT (the *client assertion*) with its private key; the provider checks it against the
//!   public key registered for the client. No shared secret exists, and a captured assertion
//!   is useless after its `exp` (and, at most providers, after its first use: `jti`).
//!
//! Every grant of this crate asks [`ClientAuthentication::credentials`] for what to add to its
//! token request, so a new method of authentication is written once, here.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use en_auth_core::{CacheKeyBuilder, ClientInfo, Error};
use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::assertion::AssertionSource;
use crate::mtls::TlsClientIdentity;
use crate::private_key_signer::{PrivateKeySigner, jwk_thumbprint};
use crate::signer::{Signer, SigningAlgorithm, sign_jwt};

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid by default. Long enough for clock skew between client
/// and provider and for a slow request; short enough that a captured assertion soon dies.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The longest lifetime a client assertion may be given (5 minutes): providers such as Okta
/// and Entra refuse longer ones, and a long-lived assertion is a bearer secret.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2).
///
/// ```no_run
/// use en_auth_core::ClientInfo;
/// use en_auth_oauth2::{ClientAuthentication, ServiceAccountAuthorizer};
///
/// # fn demo() -> Result<(), en_auth_core::Error> {
/// let pem = std::fs::read("client-key.pem").expect("the key file");
/// let authorizer = ServiceAccountAuthorizer::new(
///     ClientInfo::new("svc-key", ""), // no secret: the key proves who we are
///     "https://idp.example.com/oauth/token",
/// )
/// .with_authentication(ClientAuthentication::private_key_jwt_pem(&pem, "key-1")?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuthentication {
    /// HTTP Basic with id and secret form-encoded first, as RFC 6749 §2.3.1 requires
    /// (`client_secret_basic`). The default.
    #[default]
    ClientSecretBasic,
    /// HTTP Basic with id and secret as they are, for servers that do not decode them.
    ClientSecretBasicUnencoded,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    ClientSecretPost,
    /// A JWT signed with the client's private key (`private_key_jwt`), sent as
    /// `client_assertion` with `client_assertion_type` [`JWT_BEARER_ASSERTION_TYPE`].
    PrivateKeyJwt(PrivateKeyJwt),
    /// A JWT issued by someone else (a Kubernetes projected service-account token, a SPIFFE
    /// JWT-SVID, a CI system's OIDC token), read afresh for every token request and sent as
    /// `client_assertion` with `client_assertion_type` [`JWT_BEARER_ASSERTION_TYPE`]. See
    /// [`assertion_file`](Self::assertion_file) and [`assertion_from_fn`](Self::assertion_from_fn).
    Assertion(AssertionSource),
    /// Mutual TLS with a certificate issued by a CA the provider trusts (RFC 8705 §2.1,
    /// `tls_client_auth`): the token request presents the certificate and carries only
    /// `client_id`. See [`tls_client_auth`](Self::tls_client_auth).
    TlsClientAuth(TlsClientIdentity),
    /// Mutual TLS with a self-signed certificate registered at the provider (RFC 8705 §2.2,
    /// `self_signed_tls_client_auth`). See
    /// [`self_signed_tls_client_auth`](Self::self_signed_tls_client_auth).
    SelfSignedTlsClientAuth(TlsClientIdentity),
}

impl ClientAuthentication {
    /// `private_key_jwt` with the private key in `pem` (PKCS#8 `PRIVATE KEY`, or PKCS#1
    /// `RSA PRIVATE KEY`), announced with key id `kid` (the `kid` the provider knows the
    /// public key by). The algorithm follows the key: RS256 for RSA, ES256 for P-256, ES384
    /// for P-384; see [`PrivateKeyJwt::with_algorithm`] for PS256.
    ///
    /// A key that cannot be read is [`Error::InvalidConfiguration`] now, not at the first
    /// token request. The error never contains the key.
    pub fn private_key_jwt_pem(
        pem: impl AsRef<[u8]>,
        kid: impl Into<String>,
    ) -> Result<Self, Error> {
        PrivateKeyJwt::from_pem(pem.as_ref(), kid).map(Self::PrivateKeyJwt)
    }

    /// `private_key_jwt` with a private key given as a JWK (RFC 7517: `kty` `RSA` with
    /// `n`, `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`, or `EC` on P-256 / P-384 with `x`, `y`,
    /// `d`), announced with the JWK's `kid` (required). The JWK's `alg`, if present, picks
    /// the algorithm (RS256, PS256, ES256, ES384); otherwise it follows the key type.
    ///
    /// A JWK that cannot be used is [`Error::InvalidConfiguration`]; the error never contains
    /// the key.
    pub fn private_key_jwt_jwk(jwk: &str) -> Result<Self, Error> {
        PrivateKeyJwt::from_jwk(jwk).map(Self::PrivateKeyJwt)
    }

    /// `private_key_jwt` with assertions signed by `signer`: a key in a KMS or an HSM that
    /// never enters the process, or a [`PemFileSigner`](crate::PemFileSigner) that follows a
    /// rotated key file. See [`PrivateKeyJwt::from_signer`].
    pub fn private_key_jwt_signer(signer: Arc<dyn Signer>) -> Self {
        Self::PrivateKeyJwt(PrivateKeyJwt::from_signer(signer))
    }

    /// A client assertion read from the file at `path` for every token request (never kept
    /// past one): a Kubernetes projected service-account token
    /// (`/var/run/secrets/tokens/…`), which the kubelet rewrites before it expires. A missing,
    /// unreadable or empty file fails the token request with
    /// [`Error::CredentialUnavailable`] naming the path, before anything is sent.
    ///
    /// ```
    /// use en_auth_core::ClientInfo;
    /// use en_auth_oauth2::{ClientAuthentication, ServiceAccountAuthorizer};
    /// let authorizer = ServiceAccountAuthorizer::new(
    ///     ClientInfo::new("my-workload", ""), // no secret
    ///     "https://idp.example.com/oauth2/token",
    /// )
    /// .with_authentication(ClientAuthentication::assertion_file("/var/run/secrets/tokens/idp"));
    /// ```
    pub fn assertion_file(path: impl Into<std::path::PathBuf>) -> Self {
        Self::Assertion(AssertionSource::file(path))
    }

    /// A client assertion from `fetch`, called for every token request: a SPIFFE workload
    /// API's JWT-SVID, a CI system's OIDC token. Its `Err` fails the token request.
    ///
    /// ```
    /// use en_auth_oauth2::ClientAuthentication;
    /// let auth = ClientAuthentication::assertion_from_fn(|| async {
    ///     Ok::<_, en_auth_core::Error>(String::from("eyJ…")) // ask the workload API here
    /// });
    /// ```
    pub fn assertion_from_fn<F, Fut, S>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S, Error>> + Send + 'static,
        S: Into<String>,
    {
        Self::Assertion(AssertionSource::from_fn(fetch))
    }

    /// Mutual TLS with a CA-issued client certificate (RFC 8705 §2.1, `tls_client_auth`):
    /// `cert_pem` is the certificate chain (leaf first), `key_pem` its private key. Token
    /// requests present the certificate; the provider issues certificate-bound tokens
    /// (`cnf.x5t#S256`) where configured, which must then be sent over a client presenting
    /// the same certificate.
    pub fn tls_client_auth(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, Error> {
        TlsClientIdentity::from_pem(cert_pem, key_pem).map(Self::TlsClientAuth)
    }

    /// Mutual TLS with a self-signed client certificate registered at the provider
    /// (RFC 8705 §2.2, `self_signed_tls_client_auth`); otherwise as
    /// [`tls_client_auth`](Self::tls_client_auth).
    pub fn self_signed_tls_client_auth(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, Error> {
        TlsClientIdentity::from_pem(cert_pem, key_pem).map(Self::SelfSignedTlsClientAuth)
    }

    /// The client certificate this authentication presents, for mTLS.
    pub fn tls_identity(&self) -> Option<&TlsClientIdentity> {
        match self {
            Self::TlsClientAuth(identity) | Self::SelfSignedTlsClientAuth(identity) => {
                Some(identity)
            }
            _ => None,
        }
    }

    /// What a token request must carry to authenticate as `info` at `token_url`: an
    /// `Authorization` header, form parameters, or both. Values are secrets until sent.
    pub(crate) async fn credentials(
        &self,
        info: &ClientInfo,
        token_url: &Url,
    ) -> Result<ClientCredentials, Error> {
        let mut credentials = ClientCredentials::default();
        match self {
            Self::ClientSecretBasic => credentials.authorization = Some(basic_header(info, true)?),
            Self::ClientSecretBasicUnencoded => {
                credentials.authorization = Some(basic_header(info, false)?)
            }
            Self::ClientSecretPost => {
                credentials.param("client_id", info.client_id());
                credentials
                    .params
                    .push(("client_secret", info.client_secret().clone()));
            }
            Self::PrivateKeyJwt(key) => {
                let assertion = key.assertion(info.client_id(), token_url).await?;
                credentials.param("client_id", info.client_id());
                credentials.param("client_assertion_type", JWT_BEARER_ASSERTION_TYPE);
                credentials.params.push(("client_assertion", assertion));
            }
            Self::Assertion(source) => {
                let assertion = source.read().await?;
                credentials.param("client_id", info.client_id());
                credentials.param("client_assertion_type", JWT_BEARER_ASSERTION_TYPE);
                credentials.params.push(("client_assertion", assertion));
            }
            Self::TlsClientAuth(_) | Self::SelfSignedTlsClientAuth(_) => {
                // The certificate, presented by the token client's TLS layer, proves who we
                // are; the body names the client (RFC 8705 §2).
                credentials.param("client_id", info.client_id());
            }
        }
        Ok(credentials)
    }

    /// Adds what distinguishes this authentication to a cache key: for `private_key_jwt` the
    /// public key's RFC 7638 thumbprint and the algorithm (never the private key).
    pub(crate) fn add_to_cache_key(&self, key: CacheKeyBuilder) -> CacheKeyBuilder {
        match self {
            Self::PrivateKeyJwt(jwt) => key
                .part("client_key_thumbprint", &jwt.thumbprint)
                .part("client_key_alg", jwt.algorithm.name()),
            Self::Assertion(source) => key.part("client_assertion_from", &source.origin()),
            Self::TlsClientAuth(identity) | Self::SelfSignedTlsClientAuth(identity) => {
                key.part("client_certificate", identity.certificate_thumbprint())
            }
            _ => key,
        }
    }
}

/// What a token request carries to authenticate the client.
#[derive(Default)]
pub(crate) struct ClientCredentials {
    /// An `Authorization` header (sensitive), for `client_secret_basic`.
    pub authorization: Option<HeaderValue>,
    /// Form parameters, such as `client_assertion`.
    pub params: Vec<(&'static str, SecretString)>,
}

impl ClientCredentials {
    fn param(&mut self, name: &'static str, value: &str) {
        self.params
            .push((name, SecretString::from(value.to_owned())));
    }

    /// The form parameters, exposed for serializing into the request body.
    pub fn form(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (&**k, v.expose_secret()))
    }
}

fn basic_header(info: &ClientInfo, encode: bool) -> Result<HeaderValue, Error> {
    let (id, secret) = info.to_basic_auth();
    let secret = secret.expose_secret();
    let pair = if encode {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!("{}:{}", enc(id), enc(secret))
    } else {
        format!("{id}:{secret}")
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
        Error::InvalidConfiguration {
            setting: "client_id".into(),
            reason: "cannot be sent in an HTTP header".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The signature algorithm of a client assertion (the name it had before [`Signer`](crate::Signer)
/// signed DPoP proofs and JWT bearer assertions too).
pub type AssertionAlgorithm = SigningAlgorithm;

/// A signing key and the rules for the client assertions signed with it (`private_key_jwt`).
///
/// The key is a [`Signer`]: a [`PrivateKeySigner`] in memory ([`from_pem`](Self::from_pem),
/// [`from_jwk`](Self::from_jwk)), a [`PemFileSigner`](crate::PemFileSigner) that follows a
/// rotated key file, or your own signer over a KMS or HSM ([`from_signer`](Self::from_signer)).
///
/// `Debug` shows the algorithm, `kid` and the public key's thumbprint — never the key, which
/// is zeroized when the last clone is dropped.
#[derive(Clone)]
pub struct PrivateKeyJwt {
    signer: Arc<dyn Signer>,
    /// The same key when it is a built-in one (so [`with_algorithm`](Self::with_algorithm)
    /// can pick PS256 for it).
    in_memory: Option<PrivateKeySigner>,
    algorithm: AssertionAlgorithm,
    kid: String,
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url.
    thumbprint: String,
    audience: Option<String>,
    lifetime: Duration,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    exp: u64,
}

impl PrivateKeyJwt {
    /// Reads a private key from PEM (see [`ClientAuthentication::private_key_jwt_pem`]).
    pub fn from_pem(pem: &[u8], kid: impl Into<String>) -> Result<Self, Error> {
        PrivateKeySigner::from_pem(pem, Some(kid.into())).map(Self::from_private_key)
    }

    /// Reads a private key from a JWK (see [`ClientAuthentication::private_key_jwt_jwk`]).
    pub fn from_jwk(jwk: &str) -> Result<Self, Error> {
        let signer = PrivateKeySigner::from_jwk(jwk)?;
        if signer.key_id().is_none() {
            return Err(Error::InvalidConfiguration {
                setting: "private_key".into(),
                reason: "the JWK has no `kid`; add the key id the provider knows the key by".into(),
            });
        }
        Ok(Self::from_private_key(signer))
    }

    fn from_private_key(signer: PrivateKeySigner) -> Self {
        let mut jwt = Self::from_signer(Arc::new(signer.clone()));
        jwt.in_memory = Some(signer);
        jwt
    }

    /// Assertions signed by `signer`: a key in a KMS or an HSM, or a
    /// [`PemFileSigner`](crate::PemFileSigner). The algorithm, `kid` and thumbprint reported
    /// here are the signer's when this is built (a signer that rotates its key announces each
    /// key's own `kid` in the assertions it signs).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use en_auth_oauth2::{ClientAuthentication, PrivateKeyJwt, Signer};
    /// # fn demo(kms_signer: Arc<dyn Signer>) {
    /// let auth = ClientAuthentication::PrivateKeyJwt(PrivateKeyJwt::from_signer(kms_signer));
    /// # }
    /// ```
    pub fn from_signer(signer: Arc<dyn Signer>) -> Self {
        let thumbprint = jwk_thumbprint(&signer.public_jwk());
        Self {
            algorithm: signer.algorithm(),
            kid: signer.key_id().unwrap_or_default(),
            thumbprint,
            signer,
            in_memory: None,
            audience: None,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
        }
    }

    /// Signs with `algorithm` instead of the key's default (PS256 for an RSA key). An
    /// algorithm that does not fit the key is [`Error::InvalidConfiguration`], and so is any
    /// change for a key given with [`from_signer`](Self::from_signer) (its signer decides).
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Result<Self, Error> {
        if algorithm == self.algorithm {
            return Ok(self);
        }
        let Some(key) = self.in_memory.take() else {
            return Err(Error::InvalidConfiguration {
                setting: "private_key".into(),
                reason: format!(
                    "{algorithm:?} cannot be chosen here: the signer signs {:?}",
                    self.algorithm
                ),
            });
        };
        let key = key.with_algorithm(algorithm)?;
        self.signer = Arc::new(key.clone());
        self.in_memory = Some(key);
        self.algorithm = algorithm;
        Ok(self)
    }

    /// The assertion's `aud`. Default: the token endpoint URL (RFC 7523 §3). Some providers
    /// want their issuer identifier instead; give it here.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long each assertion is valid, at most [`MAX_ASSERTION_LIFETIME`] (longer values
    /// are clamped). Default [`DEFAULT_ASSERTION_LIFETIME`].
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.clamp(Duration::from_secs(1), MAX_ASSERTION_LIFETIME);
        self
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key (base64url): what to compare with
    /// the key registered at the provider, and what cache keys contain.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The key id sent as the assertion's `kid` header (empty when the signer has none).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm assertions are signed with.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// The signer of the assertions.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// A fresh assertion for `client_id` at `token_url`: new `jti`, `iat` now, signed by the
    /// signer's current key (its `alg` and `kid` in the header).
    async fn assertion(&self, client_id: &str, token_url: &Url) -> Result<SecretString, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jti = crate::signer::random_jti("private_key")?;
        let aud = self.audience.as_deref().unwrap_or(token_url.as_str());
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud,
            jti: &jti,
            iat: now,
            exp: now + self.lifetime.as_secs(),
        };
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), "JWT".into());
        sign_jwt(&*self.signer, header, &claims).await
    }
}

impl PartialEq for PrivateKeyJwt {
    fn eq(&self, other: &Self) -> bool {
        self.thumbprint == other.thumbprint
            && self.algorithm == other.algorithm
            && self.kid == other.kid
            && self.audience == other.audience
            && self.lifetime == other.lifetime
    }
}

impl Eq for PrivateKeyJwt {}

impl fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("signer", &self.signer)
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_keys_are_configuration_errors_without_the_key() {
        for pem in [
            &b"not a key"[..],
            b"-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
            b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIv0\n-----END EC PRIVATE KEY-----\n",
            b"\xff\xfe",
        ] {
            match ClientAuthentication::private_key_jwt_pem(pem, "k") {
                Err(Error::InvalidConfiguration { setting, reason }) => {
                    assert_eq!(setting, "private_key");
                    assert!(!reason.contains("MII"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

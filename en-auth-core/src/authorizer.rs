//! The [`Authorizer`] trait: how a token is obtained and refreshed.

use std::sync::OnceLock;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::{AccessToken, ClientInfo, EXPIRATION_GAP, Error, expires_within_now};

/// Obtains tokens from one identity provider for one client.
///
/// Implement [`authorize`](Authorizer::authorize); the lifecycle
/// ([`TokenCache`](crate::TokenCache)) decides when to call it, caches the result, and makes
/// sure only one call runs at a time. Override [`refresh`](Authorizer::refresh) when the
/// provider has a cheaper way to renew a token (a refresh token), and
/// [`expired`](Authorizer::expired) when expiry is not just a timestamp.
///
/// ```
/// use std::time::Duration;
/// use en_auth_core::{Authorizer, BearerToken, ClientInfo, Error};
///
/// struct StaticAuthorizer { info: ClientInfo }
///
/// #[async_trait::async_trait]
/// impl Authorizer for StaticAuthorizer {
///     type Token = BearerToken;
///     fn client_info(&self) -> &ClientInfo { &self.info }
///     async fn authorize(&self) -> Result<BearerToken, Error> {
///         // Call your identity provider here.
///         Ok(BearerToken::new("token", Some(Duration::from_secs(3600))))
///     }
/// }
/// ```
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// The token this authorizer obtains.
    type Token: AccessToken;

    /// The client this authorizer acts for; its API key, if any, is sent with every request.
    fn client_info(&self) -> &ClientInfo;

    /// Obtains a new token from the identity provider.
    ///
    /// Return a transient error ([`Error::is_transient`]) for failures worth retrying; the
    /// lifecycle retries them with backoff. Do not retry inside this method.
    async fn authorize(&self) -> Result<Self::Token, Error>;

    /// Whether `token` must be replaced before use. Default: it expires within
    /// [`EXPIRATION_GAP`] (clamped to half its lifetime, see [`expires_within`](crate::expires_within)).
    fn expired(&self, token: &Self::Token) -> bool {
        expires_within_now(token, EXPIRATION_GAP)
    }

    /// Renews `token`. Default: [`authorize`](Authorizer::authorize) again.
    async fn refresh(&self, token: &Self::Token) -> Result<Self::Token, Error> {
        let _ = token;
        self.authorize().await
    }

    /// The key a shared [`TokenStore`](crate::TokenStore) files this authorizer's tokens
    /// under. It must change whenever anything that changes the token changes: override it to
    /// add the token URL, audience and scopes. Default: client id and a hash of the secret.
    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("custom")
            .part("client_id", self.client_info().client_id())
            .secret(
                "client_secret",
                self.client_info().client_secret().expose_secret(),
            )
            .build()
    }

    // --- Proof of possession (DPoP, RFC 9449). Defaults: plain bearer tokens, no proofs. ---

    /// The scheme of the `Authorization` header the token is sent with: `Bearer` (the
    /// default), or `DPoP` for sender-constrained tokens (RFC 9449).
    fn token_scheme(&self) -> &'static str {
        "Bearer"
    }

    /// Whether every request must carry a proof of possession made for that request (DPoP).
    /// When `true`, adapters call [`request_proof`](Authorizer::request_proof) for each
    /// request and [`proof_challenge`](Authorizer::proof_challenge) for each response;
    /// when `false` (the default) neither is ever called and the per-request path is a
    /// read of the cached token.
    fn uses_request_proofs(&self) -> bool {
        false
    }

    /// The proof header for one request: name (`DPoP`) and value, made for `method` and
    /// `url` (the full request URL) and bound to `token`. Default: none.
    fn request_proof(
        &self,
        token: &Self::Token,
        method: &http::Method,
        url: &str,
    ) -> Result<Option<(http::HeaderName, http::HeaderValue)>, Error> {
        let _ = (token, method, url);
        Ok(None)
    }

    /// Reads a response to a request that carried a proof: the server may hand out a nonce
    /// (`DPoP-Nonce`) to put in later proofs. Returns `true` when the server refused the
    /// request only for want of that nonce (`401` with `error="use_dpop_nonce"`): adapters
    /// then send the request once more, with the same token and a fresh proof. Default:
    /// `false`.
    fn proof_challenge(&self, url: &str, status: u16, headers: &http::HeaderMap) -> bool {
        let _ = (url, status, headers);
        false
    }
}

/// The environment variable [`fleet key`](set_fleet_key) is read from when none was set in
/// code: at least 32 characters of random text, the same for every process of a fleet.
pub const FLEET_KEY_ENV: &str = "EN_AUTH_FLEET_KEY";

/// The key secrets are hashed with (HMAC-SHA256) before they enter a [`CacheKey`]: set once
/// per process, before the first key is built.
static FLEET_KEY: OnceLock<FleetKey> = OnceLock::new();

struct FleetKey {
    bytes: Vec<u8>,
    /// `false` for the random per-process salt used when no key was configured.
    shared: bool,
}

/// Sets the fleet key: the HMAC key with which secrets (client secrets) are hashed into
/// [`CacheKey`]s. Processes share tokens through a store only when their keys are equal, so
/// give every process of a fleet the same key (at least 32 bytes of randomness, kept as
/// secret as the client secret), for example from a secret manager. Without one, each process
/// hashes with a random salt of its own and **does not share** tokens with other processes
/// (in-process sharing still works). The key can also come from the [`FLEET_KEY_ENV`]
/// environment variable.
///
/// Call it before building any authorizer's cache; it fails with
/// [`Error::InvalidConfiguration`] when a different key is already in use.
///
/// ```
/// en_auth_core::set_fleet_key(b"0123456789abcdef0123456789abcdef-example").unwrap();
/// assert!(en_auth_core::fleet_key_is_shared());
/// ```
pub fn set_fleet_key(key: &[u8]) -> Result<(), Error> {
    if key.len() < 32 {
        return Err(Error::InvalidConfiguration {
            setting: "fleet key".into(),
            reason: "the fleet key must be at least 32 bytes of random data".into(),
        });
    }
    let mut fresh = Some(FleetKey {
        bytes: key.to_vec(),
        shared: true,
    });
    let current = FLEET_KEY.get_or_init(|| fresh.take().unwrap_or_else(random_fleet_key));
    if fresh.is_none() || (current.shared && current.bytes == key) {
        return Ok(());
    }
    Err(Error::InvalidConfiguration {
        setting: "fleet key".into(),
        reason: "another fleet key (or the random per-process salt) is already in use: set \
                 the fleet key once, before building any token cache"
            .into(),
    })
}

/// Whether secrets in cache keys are hashed with a configured fleet key (so several processes
/// file the same credentials under the same key) rather than a random per-process salt.
pub fn fleet_key_is_shared() -> bool {
    fleet_key().shared
}

fn fleet_key() -> &'static FleetKey {
    FLEET_KEY.get_or_init(|| match std::env::var(FLEET_KEY_ENV) {
        Ok(value) if value.len() >= 32 => FleetKey {
            bytes: value.into_bytes(),
            shared: true,
        },
        Ok(_) => {
            tracing::warn!(
                "{FLEET_KEY_ENV} is shorter than 32 characters and is ignored; tokens are \
                 not shared between processes"
            );
            random_fleet_key()
        }
        Err(_) => random_fleet_key(),
    })
}

fn random_fleet_key() -> FleetKey {
    let mut bytes = [0u8; 32];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness: mix what there is; still unknown outside this process.
        let mut hasher = Sha256::new();
        hasher.update(fastrand::u64(..).to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        hasher.update(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_le_bytes(),
        );
        bytes.copy_from_slice(&hasher.finalize());
    }
    FleetKey {
        bytes: bytes.to_vec(),
        shared: false,
    }
}

/// The key under which a token is stored: readable prefix plus a SHA-256 over every input that
/// changes the token. Secrets enter only through a keyed hash (HMAC-SHA256 with the
/// [fleet key](set_fleet_key)), so key names seen in a store, a log or a trace cannot be used
/// to guess a secret offline.
///
/// ```
/// use en_auth_core::CacheKey;
/// let a = CacheKey::builder("oauth2").part("client_id", "svc").secret("secret", "s1").build();
/// let b = CacheKey::builder("oauth2").part("client_id", "svc").secret("secret", "s2").build();
/// assert_ne!(a, b);
/// assert!(a.as_str().starts_with("en-auth:oauth2:"));
/// assert!(!a.as_str().contains("s1"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Starts a key for the given kind of authorizer (`"oauth2"`, `"srp"`, …).
    pub fn builder(kind: &str) -> CacheKeyBuilder {
        CacheKeyBuilder {
            kind: kind.to_owned(),
            hasher: Sha256::new(),
        }
    }

    /// The key as a string, e.g. `en-auth:oauth2:3f7a…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds a [`CacheKey`]; each part is length-prefixed so that no two inputs collide.
pub struct CacheKeyBuilder {
    kind: String,
    hasher: Sha256,
}

impl CacheKeyBuilder {
    /// Adds a named input that changes the token (token URL, audience, scopes, …).
    pub fn part(mut self, name: &str, value: &str) -> Self {
        for field in [name, value] {
            self.hasher.update((field.len() as u64).to_be_bytes());
            self.hasher.update(field.as_bytes());
        }
        self
    }

    /// Adds a secret input; it only enters the key through HMAC-SHA256 keyed with the
    /// [fleet key](set_fleet_key) (or the random per-process salt when none is set).
    pub fn secret(self, name: &str, value: &str) -> Self {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&fleet_key().bytes) else {
            // HMAC takes keys of any length; this branch is unreachable in practice.
            return self.part(name, "");
        };
        mac.update(&(value.len() as u64).to_be_bytes());
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.part(name, &hex)
    }

    /// The finished key.
    pub fn build(self) -> CacheKey {
        let digest = self.hasher.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        CacheKey(format!("en-auth:{}:{hex}", self.kind))
    }
}

//! The [`Authorizer`] trait: how a token is obtained and refreshed.

use async_trait::async_trait;
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
    /// [`EXPIRATION_GAP`] (clamped to half its lifetime, see [`expires_within`]).
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
}

/// The key under which a token is stored: readable prefix plus a SHA-256 over every input that
/// changes the token. Secrets enter only through the hash.
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

    /// Adds a secret input; it only ever enters the hash.
    pub fn secret(self, name: &str, value: &str) -> Self {
        let digest = Sha256::digest(value.as_bytes());
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

//! The [`Authorizer`] trait: how a token is obtained and refreshed.

use async_trait::async_trait;
use secrecy::ExposeSecret;

use crate::{AccessToken, CacheKey, ClientInfo, EXPIRATION_GAP, Error, expires_within_now};

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

    /// Whether `token` must be replaced at once. Default: it expires within
    /// [`EXPIRATION_GAP`] (clamped to half its lifetime, see [`expires_within`](crate::expires_within)).
    ///
    /// The lifecycle asks it once, when a token arrives, and only when its policy sets no
    /// [`expiration_gap`](crate::LifecyclePolicy::expiration_gap): a token it calls expired
    /// on arrival is refreshed as early as the lifecycle allows (a second after it arrived).
    /// After that the token's `Freshness` decides; to refresh further ahead of expiry, set
    /// [`LifecyclePolicy::expiration_gap`](crate::LifecyclePolicy::expiration_gap).
    fn expired(&self, token: &Self::Token) -> bool {
        expires_within_now(token, EXPIRATION_GAP)
    }

    /// Renews `token`. Default: [`authorize`](Authorizer::authorize) again.
    async fn refresh(&self, token: &Self::Token) -> Result<Self::Token, Error> {
        let _ = token;
        self.authorize().await
    }

    /// Which token this authorizer obtains: the key a [`TokenStore`](crate::TokenStore) files
    /// its tokens under (a shared store names it with its [`FleetKey`](crate::FleetKey)). It
    /// must change whenever anything that changes the token changes: override it to add the
    /// token URL, audience and scopes. Default: client id and the secret (hashed).
    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("custom")
            .part("client_id", self.client_info().client_id())
            .secret(
                "client_secret",
                self.client_info().client_secret().expose_secret(),
            )
            .build()
    }

    // --- Refresh tokens shared by a fleet. Default: refresh does not spend the token. ---

    /// Whether [`refresh`](Authorizer::refresh) spends something the token carries — a
    /// refresh token — so that the token to refresh matters. Default: `false`.
    ///
    /// Only a cache with a shared [`TokenStore`](crate::TokenStore) asks it. When `true`,
    /// the fleet starts a refresh under the store's lock from the newest token in the store
    /// rather than the cache's own (another process may have rotated the refresh token
    /// since), and a cache with no token of its own refreshes the stored token instead of
    /// calling [`authorize`](Authorizer::authorize) (`docs/fleet.md`, "Refresh tokens across
    /// a fleet"). When `false`, a refresh always starts from the cache's own token and a cold
    /// cache authorizes: right for an authorizer whose `refresh` re-authorizes (client
    /// credentials), or treats its argument as something other than a grant to spend.
    ///
    /// Return `true` only if `refresh` uses the token's refresh token and falls back to a
    /// login when the provider refuses it (as `PasswordAuthorizer` and the SRP authorizer
    /// do): a cold process then hands it a token read from the store, stale or expired.
    fn refresh_spends_token(&self) -> bool {
        false
    }

    // --- Mutual TLS (RFC 8705). Default: no client certificate. ---

    /// The client certificate API requests must present, for certificate-bound tokens
    /// (`cnf.x5t#S256`, RFC 8705 §3): a resource server refuses such a token from a caller
    /// that did not present the certificate it is bound to. [`AuthMiddleware::client`]
    /// builds its HTTP client with it. Default: none.
    ///
    /// [`AuthMiddleware::client`]: crate::AuthMiddleware::client
    fn tls_client_identity(&self) -> Option<reqwest::Identity> {
        None
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
    ///
    /// Async, so the key that signs the proof may live outside the process (a KMS, an HSM).
    /// Called only when [`uses_request_proofs`](Authorizer::uses_request_proofs) is `true`:
    /// bearer requests never await it.
    async fn request_proof(
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

//! Core of en-auth: the [`Authorizer`] trait, tokens, the token lifecycle ([`TokenCache`]),
//! shared token stores, the `reqwest-middleware` adapter ([`AuthMiddleware`]) and the
//! transport-neutral [`AdapterCore`] every adapter is built on.
//!
//! Most users depend on the `en-auth` facade instead, which re-exports everything here and
//! adds ready-made authorizers behind features.
//!
//! ```no_run
//! use std::time::Duration;
//! use en_auth_core::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error};
//!
//! struct MyIdp { info: ClientInfo }
//!
//! #[async_trait::async_trait]
//! impl Authorizer for MyIdp {
//!     type Token = BearerToken;
//!     fn client_info(&self) -> &ClientInfo { &self.info }
//!     async fn authorize(&self) -> Result<BearerToken, Error> {
//!         Ok(BearerToken::new("from-my-idp", Some(Duration::from_secs(3600))))
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = AuthMiddleware::new(MyIdp { info: ClientInfo::new("id", "secret") });
//! let client = auth.client()?; // credentials never follow a redirect to another origin
//! client.get("https://api.example.com/").send().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
mod audience;
mod authorizer;
mod cache_key;
mod credentials;
mod endpoint;
mod error;
mod lifecycle;
mod middleware;
mod retry;
mod store;
mod text;
mod token;

pub use adapter::{AdapterCore, AfterResponse, Credentials, ResponseHead};
pub use audience::{Audience, AudienceMiddleware, AudienceRouter, DefaultAudience};
pub use authorizer::Authorizer;
pub use cache_key::{CacheKey, CacheKeyBuilder, FLEET_KEY_ENV, FleetKey, MIN_FLEET_KEY_BYTES};
#[allow(deprecated)]
pub use cache_key::{fleet_key_is_shared, set_fleet_key};
pub use credentials::{API_KEY_HEADER, AUTHORIZATION_HEADER, ClientInfo, UserCredentials};
pub use endpoint::{
    CONNECT_TIMEOUT, MAX_DOCUMENT_BYTES, OpenIdConfiguration, REQUEST_TIMEOUT, discover,
    get_document, is_loopback_host, provider_http_client, read_body_limited, secure_url,
    str_for_logs, url_for_logs,
};
pub use endpoint::{MtlsEndpointAliases, provider_http_client_with_identity};
pub use error::{Error, Result};
pub use lifecycle::{
    Backoff, CachedToken, DEFAULT_PROOF_TIMEOUT, Freshness, LifecyclePolicy, MIN_DEFAULT_LIFETIME,
    MIN_FAILURE_BACKOFF, STORE_CALL_TIMEOUT, TokenCache, TokenCacheBuilder, TokenStats,
};
pub use middleware::{AuthMiddleware, same_origin_redirects};
pub use retry::RetryPolicy;
pub use store::{
    MemoryTokenStore, SharedFailure, StoreEvent, StoreLock, TokenStore, value_fingerprint,
};
pub use text::{MAX_UNTRUSTED_TEXT, untrusted_text};
pub use token::{
    AccessToken, BearerToken, EXPIRATION_GAP, deserialize_optional_secret, expires_within,
    expires_within_now, serialize_optional_secret, serialize_secret,
};

/// Re-exported so that implementors of [`Authorizer`] need not add the dependency themselves.
pub use async_trait::async_trait;
pub use secrecy;

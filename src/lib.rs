//! # en-auth
//!
//! Authorize outgoing HTTP requests for services and machines. Build an authorizer once,
//! attach it to a [`reqwest_middleware`](https://docs.rs/reqwest-middleware) client, and every request carries a valid token:
//! fetched on first use, cached, refreshed before expiry, shared across tasks and threads
//! (and, with a shared [`TokenStore`], across processes), replayed once on a 401.
//!
//! ```no_run
//! use std::time::Duration;
//! use en_auth::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error};
//!
//! struct MyIdp { info: ClientInfo }
//!
//! #[en_auth::async_trait]
//! impl Authorizer for MyIdp {
//!     type Token = BearerToken;
//!     fn client_info(&self) -> &ClientInfo { &self.info }
//!     async fn authorize(&self) -> Result<BearerToken, Error> {
//!         // Ask your identity provider for a token here.
//!         Ok(BearerToken::new("token", Some(Duration::from_secs(3600))))
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = AuthMiddleware::new(MyIdp { info: ClientInfo::new("id", "secret") });
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.clone())
//!     .build();
//! client.get("https://api.example.com/orders").send().await?;
//! # Ok(()) }
//! ```
//!
//! With mutual TLS authentication (`tls_client_auth`) the provider may bind tokens to the
//! client certificate (RFC 8705): build the API client with `auth.client()` /
//! `auth.client_with(..)`, which present it, or give your own builder
//! `.identity(..)` with `Authorizer::tls_client_identity()`; without it the API refuses the
//! token.
//!
//! ## Features
//! - `oauth2` (default): [`oauth2::ServiceAccountAuthorizer`], OAuth2 client credentials.
//! - `srp`: AWS Cognito SRP login.
//! - `verify`: verification of incoming tokens, with a tower/axum layer.
//! - `redis`: [`redis::RedisTokenStore`], one token per lifetime for a whole fleet of
//!   processes (see `docs/fleet.md`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use en_auth_core::*;

/// OAuth2 client credentials (feature `oauth2`, on by default).
#[cfg(feature = "oauth2")]
pub mod oauth2 {
    pub use en_auth_oauth2::*;
}

/// Verification of incoming tokens, with a tower/axum layer (feature `verify`).
#[cfg(feature = "verify")]
pub mod verify {
    pub use en_auth_verify::*;
}

/// AWS Cognito SRP login (feature `srp`; compiles the AWS SDK).
#[cfg(feature = "srp")]
pub mod srp {
    pub use en_auth_srp::*;
}

/// The same lifecycle for hyper, tonic and any tower client (`AuthLayer`).
#[cfg(feature = "tower")]
pub mod tower {
    pub use en_auth_tower::*;
}

/// Redis token store: one token per lifetime for a whole fleet (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use en_auth_redis::*;
}

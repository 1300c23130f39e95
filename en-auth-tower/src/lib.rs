//! en-auth for tower clients: [`AuthLayer`] authorizes every request of a hyper client, a
//! tonic `Channel` or any `tower::Service<http::Request<B>>`, over the same token lifecycle
//! ([`TokenCache`](en_auth_core::TokenCache)) as the reqwest middleware.
//!
//! ```no_run
//! # use en_auth_core::Authorizer;
//! # fn demo<A: Authorizer, S: Clone>(authorizer: A, hyper_or_tonic_service: S) {
//! use en_auth_tower::AuthLayer;
//! let service = tower_layer::Layer::layer(&AuthLayer::new(authorizer), hyper_or_tonic_service);
//! # let _ = service; }
//! ```
//!
//! The layer holds no token logic: its rules (which headers, which requests are refused,
//! what follows a 401 or gRPC `UNAUTHENTICATED`) are en-auth-core's
//! [`AdapterCore`](en_auth_core::AdapterCore), shared with the reqwest middleware; this crate
//! only sends, saves and rebuilds tower requests. Share one cache between an
//! [`AuthMiddleware`](en_auth_core::AuthMiddleware) and an [`AuthLayer`] with
//! [`AuthLayer::from_cache`] for one token for both.
//!
//! With mutual TLS authentication (`tls_client_auth`) a provider may bind the tokens to the
//! client certificate (`cnf.x5t#S256`, RFC 8705): the API then accepts them only from a
//! connection that presents that certificate. The layer cannot add it to your client's TLS
//! configuration: give the connector the certificate and key given to `tls_client_auth`
//! (with tonic, `ClientTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem))`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audience;
mod body;
#[cfg(feature = "tonic")]
mod interceptor;
mod layer;

pub use audience::{AudienceLayer, AudienceService};
pub use body::ReplayBody;
#[cfg(feature = "tonic")]
pub use interceptor::AuthInterceptor;
pub use layer::{AuthLayer, AuthService, BoxError, ResponseFuture};

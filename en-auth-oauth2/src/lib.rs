//! OAuth2 client credentials for en-auth: [`ServiceAccountAuthorizer`].
//!
//! The client-credentials grant (RFC 6749 §4.4) is how a service gets a token for itself:
//! it POSTs its client id and secret to the identity provider's token endpoint and receives
//! an access token, usually a JWT valid for minutes to hours. en-auth sends the request, reads
//! the answer into a token or a typed [`Error`](en_auth_core::Error), and the core lifecycle
//! caches and refreshes it.
//!
//! - Auth0: `with_audience("https://api.example.com")`.
//! - RFC 8707 resource indicators: `with_resource(...)`.
//! - Endpoint by OIDC discovery: [`ServiceAccountAuthorizer::discover`].
//! - From `EN_AUTH_*` variables: [`ServiceAccountAuthorizer::from_env`].
//!
//! The token client follows no redirects, has connect and total timeouts
//! ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]) and refuses plain `http://` endpoints except on
//! loopback. 429 and 5xx answers are transient errors the lifecycle retries, honouring
//! `Retry-After` and Auth0's `X-RateLimit-Reset`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod authorizer;
mod endpoint;
pub mod env;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod response;

pub use authorizer::{ClientAuthentication, ServiceAccountAuthorizer};
pub use en_auth_core::{Audience, CONNECT_TIMEOUT, REQUEST_TIMEOUT, secure_url};
pub use endpoint::token_http_client;

//! OAuth2 for en-auth: client credentials ([`ServiceAccountAuthorizer`]) and the password
//! grant ([`PasswordAuthorizer`]).
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
//! - Key-based client authentication (`private_key_jwt`, RFC 7523):
//!   [`ClientAuthentication::private_key_jwt_pem`].
//! - A user's login by password, kept alive with refresh tokens: [`PasswordAuthorizer`].
//! - Sender-constrained tokens (DPoP, RFC 9449): [`ServiceAccountAuthorizer::with_dpop`].
//! - Mutual TLS (RFC 8705): [`ClientAuthentication::tls_client_auth`] and
//!   [`ClientAuthentication::self_signed_tls_client_auth`]; token requests present the
//!   certificate, and `AuthMiddleware::client()` presents it to APIs for certificate-bound
//!   tokens.
//! - Token exchange (RFC 8693) of a token someone else issued: [`TokenExchangeAuthorizer`]
//!   with a [`SubjectToken`] (a file, a callback); on behalf of an API's callers, one
//!   lifecycle per caller's token: [`OnBehalfOf`].
//! - The JWT bearer grant (RFC 7523 §2.1), the JWT signed by a [`Signer`] or read from a
//!   source: [`JwtBearerAuthorizer`].
//! - Keys that never enter the process (a KMS, an HSM) and key files rotated under a running
//!   service: [`Signer`], [`PemFileSigner`], [`ClientAuthentication::private_key_jwt_signer`],
//!   [`ServiceAccountAuthorizer::with_dpop_signer`].
//! - Assertions issued by someone else (Kubernetes, SPIFFE, CI OIDC tokens):
//!   [`ClientAuthentication::assertion_file`], [`ClientAuthentication::assertion_from_fn`].
//! - One token request with its status and headers, for your own lifecycle (the token
//!   proxy's): [`token_endpoint::request_token`].
//!
//! The token client follows no redirects, has connect and total timeouts
//! ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]) and refuses plain `http://` endpoints except on
//! loopback. 429 and 5xx answers are transient errors the lifecycle retries, honouring
//! `Retry-After` and Auth0's `X-RateLimit-Reset`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod assertion;
mod authorizer;
mod client_auth;
pub mod dpop;
mod endpoint;
pub mod env;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grant;
mod jwk_key;
mod jwt_bearer;
mod mtls;
mod on_behalf_of;
mod password;
mod pem_file_signer;
mod private_key_signer;
mod response;
mod secret_file;
mod signer;
mod token_client;
pub mod token_endpoint;
mod token_exchange;

pub use assertion::{AssertionSource, MAX_ASSERTION_BYTES};
pub use authorizer::ServiceAccountAuthorizer;
pub use client_auth::{
    AssertionAlgorithm, ClientAuthentication, DEFAULT_ASSERTION_LIFETIME,
    JWT_BEARER_ASSERTION_TYPE, MAX_ASSERTION_LIFETIME, PrivateKeyJwt,
};
pub use dpop::DpopKey;
pub use en_auth_core::{Audience, CONNECT_TIMEOUT, REQUEST_TIMEOUT, secure_url};
pub use endpoint::{discover_token_endpoint, token_http_client};
pub use jwt_bearer::{
    JWT_BEARER_GRANT, JwtBearerAssertion, JwtBearerAuthorizer, SignedJwtBearerAssertion,
};
pub use mtls::TlsClientIdentity;
pub use on_behalf_of::{CallerToken, DEFAULT_MAX_CALLERS, MAX_CALLER_TOKEN_BYTES, OnBehalfOf};
pub use password::{MFA_REQUIRED, PASSWORD_REALM_GRANT, PasswordAuthorizer, PasswordToken};
pub use pem_file_signer::PemFileSigner;
pub use private_key_signer::PrivateKeySigner;
pub use signer::{Signer, SigningAlgorithm};
pub use token_exchange::{
    ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE, REFRESH_TOKEN_TYPE, SAML1_TOKEN_TYPE,
    SAML2_TOKEN_TYPE, SubjectToken, TOKEN_EXCHANGE_GRANT, TokenExchangeAuthorizer,
};

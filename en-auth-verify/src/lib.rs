//! Verification of incoming access tokens for the services that receive en-auth's requests.
//!
//! A [`Verifier`] checks a JWT: its signature, with keys from the issuer's JWKS (fetched in
//! the background, refreshed periodically and on key rotation, rate-limited against junk
//! `kid`s) or a shared HS256 secret; an
//! explicit algorithm allow-list (never `none`, no RSA/HMAC confusion); `iss`, `aud`, `exp`,
//! `nbf`, `iat` with a small leeway; and optionally `typ`, scopes/permissions and `org_id`.
//! Presets: [`Verifier::auth0`], [`Verifier::cognito`], [`Verifier::oidc`]. A token seen
//! before is answered from a bounded cache of verified tokens, with every check whose answer
//! can change (expiry, key still published, scopes) run again.
//!
//! Sender-constrained tokens (DPoP, RFC 9449): [`RequireAuth::dpop`] requires them on a route,
//! with each request's proof checked by a [`DpopVerifier`]. Certificate-bound tokens (mutual
//! TLS, RFC 8705): [`RequireAuth::certificate_bound`] checks them against the caller's
//! [`PeerCertificate`] (or [`RequireAuth::certificate_from_header`], behind a TLS-terminating
//! proxy); routes without either refuse them (unless
//! [`RequireAuth::accept_certificate_bound_as_bearer`]), as every route refuses a DPoP-bound
//! token presented as `Bearer`.
//!
//! [`RequireAuth`] puts a verifier in front of any tower service (axum routes included);
//! handlers read the claims with the [`Authenticated`] extractor.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use en_auth_verify::{Authenticated, RequireAuth, Verifier};
//!
//! async fn orders(claims: Authenticated) -> String {
//!     let customer: String = claims.custom("customerId").unwrap_or_default();
//!     format!("orders of {customer}")
//! }
//!
//! let verifier = Verifier::auth0("tenant.us.auth0.com", "https://api.example.com");
//! let app: Router = Router::new()
//!     .route("/orders", get(orders))
//!     .layer(RequireAuth::new(verifier).scopes(["read:orders"]));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod claims;
mod decode;
mod dpop;
mod jwks;
mod layer;
mod mtls;
mod token_cache;
mod verifier;

pub use claims::Claims;
pub use dpop::{
    DEFAULT_MAX_REMEMBERED, DEFAULT_PROOF_WINDOW, DpopError, DpopRequest, DpopVerifier,
};
pub use jsonwebtoken::Algorithm;
pub use jwks::{DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_EVERY};
pub use layer::{Authenticated, RequireAuth, RequireAuthService};
pub use mtls::PeerCertificate;
pub use token_cache::{DEFAULT_TOKEN_CACHE_CAPACITY, DEFAULT_TOKEN_CACHE_MAX_AGE};
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use verifier::fuzzing;
pub use verifier::{ASYMMETRIC_ALGORITHMS, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, Verifier};

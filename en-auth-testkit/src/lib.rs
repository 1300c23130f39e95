//! Test support for en-auth: small servers on loopback that count what they receive.
//!
//! - [`LocalIdp`]: an OAuth2 client-credentials token endpoint issuing opaque tokens with a
//!   chosen lifetime, with scripted faults ([`Fault`]) for what real providers won't do on
//!   demand (429 with headers, 5xx, HTML pages, malformed JSON, slow answers, redirects),
//!   and a token exchange (RFC 8693) of the users' tokens it signs
//!   ([`LocalIdp::user_token`]), for on-behalf-of examples.
//! - [`ProtectedApi`]: an API that accepts only live tokens of a [`LocalIdp`] and records
//!   every request it saw.
//!
//! - [`OidcProvider`]: panva's `oidc-provider`, a certified OpenID provider, run with Node.
//! - [`RedisServer`]: Debian's `redis-server` on a free loopback port.
//! - Mutual TLS: [`TestPki`] (a throw-away CA), [`MtlsFront`] (a TLS-terminating front for
//!   `oidc-provider`), [`TlsServer`] (an axum router over TLS that sees client certificates).
//! - [`capture_traces`]: what the code under test logs, to check that no secret is in it.
//!
//! Every server binds `127.0.0.1:0` (a free port) and stops when dropped.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod idp;
mod idp_exchange;
mod mtls;
mod peers;
mod redis;
mod server;
mod traces;

pub use api::{ProtectedApi, SeenRequest};
pub use idp::{Fault, IdpConfig, LocalIdp};
pub use mtls::{
    CLIENT_CERT_HEADER, CLIENT_VERIFY_HEADER, CertifiedKey, MtlsFront, TestPki, TlsServer,
};
pub use peers::{MotoServer, OidcProvider, peers_dir};
pub use redis::RedisServer;
pub use server::LoopbackServer;
pub use traces::{TraceCapture, capture_traces};

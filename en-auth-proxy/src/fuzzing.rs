//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`). Not part of the
//! public API: the signatures follow the private parsers they expose and may change.

use std::time::Duration;

use en_auth_core::Error;
use http::HeaderMap;
use secrecy::ExposeSecret;

use crate::answer::OAuthError;
use crate::budget::{Purpose, RateLimits};
use crate::request::{self as server, Credentials};
use crate::upstream::{TokenRequest, UpstreamToken};

/// What the proxy makes of a customer's token request before any cache or upstream work.
#[derive(Debug)]
pub enum Request {
    /// Accepted: the request would be looked up in the cache.
    Accepted {
        /// The client id, checked.
        client_id: String,
        /// The secret's length (the secret itself stays inside).
        secret_len: usize,
        /// The normalized request.
        request: TokenRequest,
    },
    /// Refused with this status and JSON body.
    Refused {
        /// HTTP status.
        status: u16,
        /// The RFC 6749 §5.2 JSON body.
        body: Vec<u8>,
    },
}

fn answer(parsed: Result<(Credentials, TokenRequest), OAuthError>) -> Request {
    let checked = parsed.and_then(|(credentials, request)| {
        // The first checks of the issuing step, before quotas and the cache.
        server::check_client_id(&credentials.client_id)?;
        server::check_secret(credentials.secret.expose_secret())?;
        Ok((credentials, request))
    });
    match checked {
        Ok((credentials, request)) => Request::Accepted {
            secret_len: credentials.secret.expose_secret().len(),
            client_id: credentials.client_id,
            request,
        },
        Err(err) => Request::Refused {
            status: err.status().as_u16(),
            body: err.body(),
        },
    }
}

/// `POST /oauth/token` with these headers (`Authorization: Basic`, `Content-Type`) and body:
/// a form or JSON, chosen by `Content-Type` as the server does.
pub fn token_form(headers: &HeaderMap, body: &[u8]) -> Request {
    answer(
        server::basic_credentials(headers)
            .and_then(|basic| server::token_body(headers, basic, body)),
    )
}

/// `POST /m2mauth` with this JSON body.
pub fn m2m_body(body: &[u8]) -> Request {
    answer(server::m2m_request(body))
}

/// The upstream answer parser (en-auth-oauth2's, as the proxy calls it: no default lifetime):
/// the token, or the error and the answer the proxy would relay to the customer (status and
/// JSON body).
pub fn parse_answer(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<UpstreamToken, (Error, u16, Vec<u8>)> {
    let parsed = en_auth_oauth2::token_endpoint::parse_answer(status, headers, body, None);
    parsed.map(UpstreamToken::from).map_err(|err| {
        let relayed = OAuthError::from_error(&err);
        let (status, body) = (relayed.status().as_u16(), relayed.body());
        (err, status, body)
    })
}

/// How long the proxy holds every request back after an upstream answer with `status` and
/// `headers` (rate-limit headers, `Retry-After`, Auth0 client quotas), if at all.
pub fn rate_limit_wait(status: u16, headers: &HeaderMap) -> Option<Duration> {
    let limits = RateLimits::new(0);
    let now = tokio::time::Instant::now();
    limits.observe_locally("client", status, headers, now);
    match limits.admit_locally("client", Purpose::Miss, now, true) {
        Ok(()) => None,
        Err(err) => err.retry_after(),
    }
}

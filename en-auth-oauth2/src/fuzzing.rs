//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`). Not part of the
//! public API: the signatures follow the parsers they expose and may change. The parsers
//! themselves are public in [`token_endpoint`](crate::token_endpoint).

use std::time::Duration;

use chrono::{DateTime, Utc};
use en_auth_core::{BearerToken, Error};
use reqwest::header::HeaderMap;

use crate::token_endpoint;

/// The longest delay a `Retry-After` header is taken at its word for.
pub const MAX_RETRY_AFTER: Duration = token_endpoint::MAX_RETRY_AFTER;

/// The token endpoint answer parser: the token and granted scope, or the typed error.
pub fn parse_token_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    default_lifetime: Option<Duration>,
) -> Result<(BearerToken, Option<String>), Error> {
    token_endpoint::parse_answer(status, headers, body, default_lifetime)
        .map(|granted| (granted.token, granted.scope))
}

/// `Retry-After` as the token client reads it (seconds or an HTTP date, clamped).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    token_endpoint::retry_after(headers)
}

/// `X-RateLimit-Reset` as the token client and the proxy read it (clamped to a day ahead).
pub fn rate_limit_reset(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    token_endpoint::rate_limit_reset(headers)
}

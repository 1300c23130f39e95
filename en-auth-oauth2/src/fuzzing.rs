//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`). Not part of the
//! public API: the signatures follow the private parsers they expose and may change.

use std::time::Duration;

use en_auth_core::{BearerToken, Error};
use reqwest::header::HeaderMap;

/// The longest delay a `Retry-After` header is taken at its word for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(crate::response::MAX_RETRY_AFTER_SECS);

/// The token endpoint answer parser: the token and granted scope, or the typed error.
pub fn parse_token_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    default_lifetime: Option<Duration>,
) -> Result<(BearerToken, Option<String>), Error> {
    crate::response::parse_token_response(status, headers, body, default_lifetime)
        .map(|granted| (granted.token, granted.scope))
}

/// `Retry-After` as the token client reads it (seconds or an HTTP date, clamped).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    crate::response::retry_after(headers)
}

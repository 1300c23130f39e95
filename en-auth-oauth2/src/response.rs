//! Reading a token endpoint's answer (RFC 6749 §5.1 / §5.2) into a token or a typed error,
//! and the rate-limit headers of any answer. Public through [`crate::token_endpoint`], whose
//! documentation has the table of answers and results.

use std::time::Duration;

use chrono::{DateTime, Utc};
use en_auth_core::{BearerToken, Error, untrusted_text};
use reqwest::header::HeaderMap;
use serde::Deserialize;

/// A successful token response, with the fields en-auth uses.
#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<ExpiresIn>,
    scope: Option<String>,
}

/// `expires_in` as some providers send it: a number or a numeric string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(f64),
    Text(String),
}

impl ExpiresIn {
    fn seconds(&self) -> Option<Duration> {
        let value = match self {
            ExpiresIn::Number(n) => *n,
            ExpiresIn::Text(t) => t.trim().parse().ok()?,
        };
        (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value.min(1e9)))
    }

    /// A number below zero: not a lifetime, and not something to guess around.
    fn is_negative(&self) -> bool {
        match self {
            ExpiresIn::Number(n) => *n < 0.0,
            ExpiresIn::Text(t) => t.trim().parse::<f64>().is_ok_and(|n| n < 0.0),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
    error_uri: Option<String>,
}

/// What a successful token response granted: the token and the scope.
#[derive(Clone, Debug)]
pub struct GrantedToken {
    /// The access token, its issue time (now) and its expiry (`expires_in`, a number or a
    /// numeric string, at most 10⁹ seconds; without one, the default lifetime given to the
    /// parser, else none).
    pub token: BearerToken,
    /// The `scope` the provider granted, as it wrote it; `None` when it said nothing (or an
    /// empty string). Untrusted text: escape it before logging.
    pub scope: Option<String>,
}

/// Turns a token endpoint's status, headers and body into the granted token or the typed
/// error, as the table of the [module](crate::token_endpoint) says. Tokens without
/// `expires_in` get `default_lifetime` (`None`: no expiry, left to the lifecycle's default).
/// Only `token_type` `Bearer` (any case, or none) is accepted. Never panics, whatever the
/// input.
pub fn parse_answer(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    default_lifetime: Option<Duration>,
) -> Result<GrantedToken, Error> {
    parse_token_response_for(status, headers, body, default_lifetime, false)
}

/// [`parse_answer`] under the name the grants of this crate use.
pub(crate) fn parse_token_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    default_lifetime: Option<Duration>,
) -> Result<GrantedToken, Error> {
    parse_answer(status, headers, body, default_lifetime)
}

/// [`parse_token_response`] for a request that carried a DPoP proof (`dpop`): then only a
/// `token_type` of `DPoP` is accepted — a `Bearer` answer means the provider ignored the proof
/// and the token is not bound to the key. Without DPoP only `Bearer` is accepted.
pub(crate) fn parse_token_response_for(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    default_lifetime: Option<Duration>,
    dpop: bool,
) -> Result<GrantedToken, Error> {
    match status {
        200..=299 => parse_success(status, body, default_lifetime, dpop),
        300..=399 => Err(Error::InvalidResponse {
            status: Some(status),
            reason: format!(
                "the token endpoint redirected{}; redirects are not followed",
                header_str(headers, "location")
                    .map(|l| format!(" to {}", location_for_logs(l)))
                    .unwrap_or_default()
            ),
        }),
        429 => Err(rate_limited(headers)),
        500..=599 => Err(Error::ServerError {
            status,
            retry_after: retry_after(headers),
        }),
        _ => Err(parse_error(status, headers, body)),
    }
}

fn parse_success(
    status: u16,
    body: &[u8],
    default_lifetime: Option<Duration>,
    dpop: bool,
) -> Result<GrantedToken, Error> {
    let parsed: TokenBody = serde_json::from_slice(body).map_err(|e| Error::InvalidResponse {
        status: Some(status),
        // serde_json's message names the position and the problem, not the content.
        reason: format!(
            "token response is not the expected JSON ({})",
            json_problem(&e)
        ),
    })?;
    if dpop {
        check_dpop_token_type(status, parsed.token_type.as_deref())?;
    } else if let Some(kind) = parsed.token_type.as_deref() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(Error::InvalidResponse {
                status: Some(status),
                reason: format!(
                    "unsupported token_type `{}` (only Bearer is supported)",
                    untrusted_text(kind)
                ),
            });
        }
    }
    if parsed.access_token.is_empty() {
        return Err(Error::InvalidResponse {
            status: Some(status),
            reason: "token response has an empty access_token".into(),
        });
    }
    if parsed
        .expires_in
        .as_ref()
        .is_some_and(ExpiresIn::is_negative)
    {
        return Err(Error::InvalidResponse {
            status: Some(status),
            reason: "token response has a negative expires_in".into(),
        });
    }
    let lifetime = parsed
        .expires_in
        .as_ref()
        .and_then(ExpiresIn::seconds)
        .or(default_lifetime);
    Ok(GrantedToken {
        token: BearerToken::new(parsed.access_token, lifetime),
        scope: parsed.scope.filter(|s| !s.is_empty()),
    })
}

/// A DPoP token request must be answered with a DPoP-bound token (RFC 9449 §5).
fn check_dpop_token_type(status: u16, kind: Option<&str>) -> Result<(), Error> {
    match kind {
        Some(kind) if kind.eq_ignore_ascii_case("dpop") => Ok(()),
        other => Err(Error::InvalidResponse {
            status: Some(status),
            reason: format!(
                "the token request carried a DPoP proof but the answer's token_type is `{}`: \
                 the provider did not bind the token to the key; enable DPoP for this client \
                 at the provider, or drop with_dpop() to use bearer tokens",
                untrusted_text(other.unwrap_or("(none)"))
            ),
        }),
    }
}

fn parse_error(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        let kind = header_str(headers, "content-type").unwrap_or("no content type");
        return Error::InvalidResponse {
            status: Some(status),
            reason: if body.is_empty() {
                "error answer with an empty body".into()
            } else {
                format!(
                    "error answer that is not an OAuth2 error ({})",
                    untrusted_text(kind)
                )
            },
        };
    };
    // Everything the provider wrote goes into Display and logs: escaped and bounded.
    let description = parsed.error_description.as_deref().map(untrusted_text);
    match parsed.error.as_str() {
        "invalid_client" => Error::InvalidClient {
            status: Some(status),
            description,
        },
        _ => Error::Authorization {
            status: Some(status),
            error: untrusted_text(&parsed.error),
            description,
            error_uri: parsed.error_uri.as_deref().map(untrusted_text),
        },
    }
}

/// What kind of problem serde_json found, without quoting the content.
fn json_problem(err: &serde_json::Error) -> &'static str {
    match err.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "missing or mistyped fields",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// A redirect's `Location` for an error message: without its query string or fragment (a
/// pre-signed URL carries its signature there), escaped and bounded.
fn location_for_logs(location: &str) -> String {
    let end = location.find(['?', '#']).unwrap_or(location.len());
    untrusted_text(&location[..end])
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The longest `Retry-After` taken at its word, in seconds: a day.
pub(crate) const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// The longest delay a server-named time is taken at its word for (`Retry-After`,
/// `X-RateLimit-Reset`): a day. Larger values (a gateway's garbage, or `u64::MAX`) are
/// clamped to it, so that no later time arithmetic can overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(MAX_RETRY_AFTER_SECS);

/// An `X-RateLimit-Reset` above this is a time (unix seconds, as Auth0 sends); at or below
/// it, a number of seconds from now (as some gateways send). 10⁹ s is 2001-09-09: no reset
/// is that far in the past, and no window is 31 years long.
const EPOCH_THRESHOLD: i64 = 1_000_000_000;

/// The `Retry-After` header: seconds, or an HTTP date (a date in the past is no wait), at most
/// [`MAX_RETRY_AFTER`]. `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = header_str(headers, "retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER_SECS)));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    Some(wait.min(MAX_RETRY_AFTER))
}

/// When the rate-limit window resets, from `X-RateLimit-Reset`: a whole number above 10⁹ is
/// unix seconds (Auth0), a smaller one seconds from now (a negative one: now). Either way at
/// most [`MAX_RETRY_AFTER`] ahead. `None` when absent or not a whole number.
pub fn rate_limit_reset(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let value = header_str(headers, "x-ratelimit-reset")?
        .parse::<i64>()
        .ok()?;
    let now = Utc::now();
    let latest = now + chrono::Duration::seconds(MAX_RETRY_AFTER_SECS as i64);
    let at = if value > EPOCH_THRESHOLD {
        // Past chrono's range is past `latest` too.
        DateTime::from_timestamp(value, 0).unwrap_or(latest)
    } else {
        // At most 10⁹ seconds: always within chrono's range.
        now + chrono::Duration::seconds(value.max(0))
    };
    Some(at.min(latest))
}

/// A 429's retry-after and reset time ([`rate_limit_reset`]; without one, the time
/// `Retry-After` names).
fn rate_limited(headers: &HeaderMap) -> Error {
    let retry_after = retry_after(headers);
    let reset_at = rate_limit_reset(headers).or_else(|| {
        retry_after
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| Utc::now().checked_add_signed(d))
    });
    Error::RateLimited {
        retry_after,
        reset_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use en_auth_core::AccessToken;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn parse(status: u16, body: &str) -> Result<GrantedToken, Error> {
        parse_token_response(status, &HeaderMap::new(), body.as_bytes(), None)
    }

    #[test]
    fn expires_in_may_be_a_number_or_a_numeric_string() {
        for body in [
            r#"{"access_token":"t","token_type":"Bearer","expires_in":120}"#,
            r#"{"access_token":"t","token_type":"bearer","expires_in":"120"}"#,
        ] {
            let granted = parse(200, body).unwrap();
            let lifetime = granted.token.expires_at().unwrap() - granted.token.issued_at().unwrap();
            assert_eq!(lifetime.num_seconds(), 120, "{body}");
        }
    }

    #[test]
    fn missing_expires_in_takes_the_default_lifetime_or_none() {
        let body = br#"{"access_token":"t","token_type":"Bearer","scope":"a b"}"#;
        let granted =
            parse_token_response(200, &HeaderMap::new(), body, Some(Duration::from_secs(90)))
                .unwrap();
        let lifetime = granted.token.expires_at().unwrap() - granted.token.issued_at().unwrap();
        assert_eq!(lifetime.num_seconds(), 90);
        assert_eq!(granted.scope.as_deref(), Some("a b"));
        let granted = parse_token_response(200, &HeaderMap::new(), body, None).unwrap();
        assert_eq!(
            granted.token.expires_at(),
            None,
            "left to the lifecycle's default"
        );
    }

    #[test]
    fn oauth2_errors_are_typed() {
        let err = parse(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, Error::InvalidClient { status: Some(401), description: Some(ref d) } if d == "bad secret")
        );
        let err = parse(
            400,
            r#"{"error":"invalid_scope","error_description":"no","error_uri":"https://e/x"}"#,
        )
        .err()
        .unwrap();
        match err {
            Error::Authorization {
                status,
                error,
                description,
                error_uri,
            } => {
                assert_eq!((status, error.as_str()), (Some(400), "invalid_scope"));
                assert_eq!(description.as_deref(), Some("no"));
                assert_eq!(error_uri.as_deref(), Some("https://e/x"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_invalid_response_never_a_panic() {
        for (status, body) in [
            (200, "<html>oops</html>"),
            (200, ""),
            (200, r#"{"access_token": 5}"#),
            (200, r#"{"access_token":"t","token_type":"DPoP"}"#),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":"t","expires_in":"soon"}"#),
            (400, "<html>bad</html>"),
            (403, ""),
            (302, ""),
        ] {
            match parse(status, body) {
                Err(Error::InvalidResponse {
                    status: Some(s), ..
                }) => assert_eq!(s, status, "{body}"),
                Ok(g) if body.contains("soon") => assert_eq!(g.token.expires_at(), None),
                other => panic!("{status} {body}: {other:?}"),
            }
        }
    }

    #[test]
    fn dpop_answers_are_accepted_only_for_dpop_requests_and_bearer_refused_for_them() {
        let dpop = br#"{"access_token":"t","token_type":"DPoP","expires_in":60}"#;
        let bearer = br#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#;
        let h = HeaderMap::new();
        assert!(parse_token_response_for(200, &h, dpop, None, true).is_ok());
        assert!(matches!(
            parse_token_response_for(200, &h, dpop, None, false),
            Err(Error::InvalidResponse { .. })
        ));
        match parse_token_response_for(200, &h, bearer, None, true) {
            Err(Error::InvalidResponse { reason, .. }) => {
                assert!(reason.contains("did not bind"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let untyped = br#"{"access_token":"t"}"#;
        assert!(parse_token_response_for(200, &h, untyped, None, true).is_err());
    }

    #[test]
    fn rate_limits_carry_retry_after_and_reset() {
        let reset = Utc::now().timestamp() + 30;
        let h = headers(&[
            ("retry-after", "7"),
            ("x-ratelimit-reset", &reset.to_string()),
        ]);
        match parse_token_response(429, &h, b"{}", None).err().unwrap() {
            Error::RateLimited {
                retry_after,
                reset_at,
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(reset_at.unwrap().timestamp(), reset);
            }
            other => panic!("{other:?}"),
        }
        let date = (Utc::now() + chrono::Duration::seconds(20))
            .to_rfc2822()
            .replace("+0000", "GMT");
        let d = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(
            d > Duration::from_secs(17) && d <= Duration::from_secs(20),
            "{d:?}"
        );
    }

    #[test]
    fn hostile_numbers_are_clamped_or_refused_never_a_panic() {
        for value in ["18446744073709551615", "10000000000000"] {
            let err = parse_token_response(429, &headers(&[("retry-after", value)]), b"{}", None)
                .err()
                .unwrap();
            assert_eq!(
                err.retry_after(),
                Some(Duration::from_secs(MAX_RETRY_AFTER_SECS)),
                "{value}"
            );
        }
        let far_reset = headers(&[("x-ratelimit-reset", "99999999999999999")]);
        assert!(matches!(
            parse_token_response(429, &far_reset, b"{}", None),
            Err(Error::RateLimited { .. })
        ));
        assert!(matches!(
            parse(200, r#"{"access_token":"t","expires_in":-5}"#),
            Err(Error::InvalidResponse { .. })
        ));
        let huge = parse(200, r#"{"access_token":"t","expires_in":1e12}"#).unwrap();
        assert!(huge.token.expires_at().unwrap() > Utc::now() + chrono::Duration::days(365));
        let zero = parse(200, r#"{"access_token":"t","expires_in":0}"#).unwrap();
        assert!(zero.token.expires_at().unwrap() <= Utc::now());
    }

    #[test]
    fn server_errors_are_transient() {
        let err = parse_token_response(503, &headers(&[("retry-after", "2")]), b"<html>", None)
            .err()
            .unwrap();
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    }

    /// Found by the `retry_after` fuzz target: an `X-RateLimit-Reset` decades ahead made
    /// `Error::retry_after()` name a wait of decades, past the one-day clamp of `Retry-After`.
    #[test]
    fn a_far_rate_limit_reset_is_clamped_to_a_day() {
        let decades = (Utc::now() + chrono::Duration::days(20_000)).timestamp();
        let h = headers(&[("x-ratelimit-reset", &decades.to_string())]);
        let err = parse_token_response(429, &h, b"{}", None).err().unwrap();
        let day = Duration::from_secs(MAX_RETRY_AFTER_SECS);
        let wait = err.retry_after().unwrap();
        assert!(
            wait <= day && wait > day - Duration::from_secs(5),
            "{wait:?}"
        );
        match err {
            Error::RateLimited {
                reset_at: Some(at), ..
            } => assert!(at <= Utc::now() + chrono::Duration::days(1)),
            other => panic!("{other:?}"),
        }
    }

    /// `X-RateLimit-Reset` above 10⁹ is a time (Auth0 sends unix seconds): taken as it is.
    #[test]
    fn a_rate_limit_reset_above_a_billion_is_unix_seconds() {
        let at = Utc::now().timestamp() + 90;
        let reset = rate_limit_reset(&headers(&[("x-ratelimit-reset", &at.to_string())]));
        assert_eq!(reset.map(|r| r.timestamp()), Some(at));
        // In the past: that time, not a wait.
        let past = Utc::now().timestamp() - 600;
        let reset = rate_limit_reset(&headers(&[("x-ratelimit-reset", &past.to_string())]));
        assert_eq!(reset.map(|r| r.timestamp()), Some(past));
        // Decades ahead, or past chrono's range: a day ahead.
        for far in ["4000000000", "99999999999999999", "9223372036854775807"] {
            let reset = rate_limit_reset(&headers(&[("x-ratelimit-reset", far)])).unwrap();
            let ahead = (reset - Utc::now()).num_seconds();
            assert!((86_390..=86_400).contains(&ahead), "{far}: {ahead}");
        }
    }

    /// At or below 10⁹ it is seconds from now (as some gateways send), never before now.
    #[test]
    fn a_small_rate_limit_reset_is_seconds_from_now() {
        for (value, expected) in [
            ("30", 30),
            (" 5 ", 5),
            ("0", 0),
            ("-20", 0),
            ("-9223372036854775808", 0),
            ("1000000000", 86_400),
        ] {
            let before = Utc::now();
            let reset = rate_limit_reset(&headers(&[("x-ratelimit-reset", value)])).unwrap();
            let ahead = (reset - before).num_seconds();
            assert!(
                (expected..=expected + 1).contains(&ahead),
                "{value}: {ahead} s ahead, expected {expected}"
            );
        }
        for garbage in ["soon", "1.5", "", "99999999999999999999"] {
            assert_eq!(
                rate_limit_reset(&headers(&[("x-ratelimit-reset", garbage)])),
                None,
                "{garbage:?}"
            );
        }
        assert_eq!(rate_limit_reset(&HeaderMap::new()), None);
        // A 429 reads it the same way.
        let err = parse_token_response(429, &headers(&[("x-ratelimit-reset", "40")]), b"", None)
            .err()
            .unwrap();
        let wait = err.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(38) && wait <= Duration::from_secs(40),
            "{wait:?}"
        );
    }

    /// From the proxy's former parser: hostile answers are errors, never panics, and an
    /// absurd `expires_in` is bounded.
    #[test]
    fn hostile_answers_are_errors_and_absurd_lifetimes_are_bounded() {
        for (status, body) in [
            (200, "<html>"),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":"t","expires_in":-1}"#),
            (200, r#"{"access_token":"t","expires_in":"-1"}"#),
            (200, r#"{"access_token":"t","token_type":"DPoP"}"#),
            (200, r#"{"access_token":"t","expires_in":[1]}"#),
            (200, "[]"),
            (200, "null"),
            (400, "nope"),
            (401, r#"{"error":5}"#),
            (301, "moved"),
            (101, ""),
        ] {
            assert!(parse(status, body).is_err(), "{status} {body}");
        }
        for lifetime in ["1e300", "\"1e300\"", "1.7976931348623157e308"] {
            let body = format!(r#"{{"access_token":"t","expires_in":{lifetime},"scope":"a"}}"#);
            let granted = parse(200, &body).unwrap();
            assert_eq!(granted.scope.as_deref(), Some("a"));
            let life = granted.token.expires_at().unwrap() - granted.token.issued_at().unwrap();
            assert_eq!(life.num_seconds(), 1_000_000_000, "{lifetime}");
            assert!(format!("{granted:?}").contains("REDACTED"), "{granted:?}");
            assert!(!format!("{granted:?}").contains("\"t\""), "{granted:?}");
        }
        let granted = parse(200, r#"{"access_token":"t","scope":""}"#).unwrap();
        assert_eq!(granted.scope, None, "an empty scope is no scope");
    }

    /// Found by the `token_response` fuzz target (in the proxy's former parser): the
    /// provider's `error` and `error_description` must not go verbatim into the error's
    /// `Display` (logged for every failed request), newlines and terminal escapes included,
    /// at any length.
    #[test]
    fn provider_text_in_errors_is_escaped_and_capped() {
        let long = "x".repeat(100_000);
        let body = serde_json::json!({
            "error": "access_denied\nINFO forged",
            "error_description": format!("\u{1b}[31mred\u{202e}gnp.exe{long}"),
            "error_uri": "https://e/\r\n",
        });
        let err = parse(400, &body.to_string()).err().unwrap();
        let shown = err.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(shown.contains("access_denied\\nINFO forged"), "{shown:?}");
        assert!(shown.len() < 1_000, "{} bytes", shown.len());
        match err {
            Error::Authorization { error_uri, .. } => {
                assert_eq!(error_uri.as_deref(), Some("https://e/\\r\\n"));
            }
            other => panic!("{other:?}"),
        }
        let invalid_client = serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("bad\r\nsecret{long}"),
        });
        let shown = parse(401, &invalid_client.to_string())
            .err()
            .unwrap()
            .to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.len() < 1_000, "{} bytes", shown.len());
        let odd_type = r#"{"access_token":"t","token_type":"DPoP\n forged"}"#;
        let shown = parse(200, odd_type).err().unwrap().to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        let redirect = headers(&[("location", "https://evil/x?sig=secret")]);
        let shown = parse_token_response(302, &redirect, b"", None)
            .err()
            .unwrap()
            .to_string();
        assert!(!shown.contains("secret"), "{shown:?}");
    }
}

//! `Retry-After`, `X-RateLimit-*` and `Auth0-Client-Quota-Limit` headers as the OAuth2 client
//! and the proxy read them: never a panic, and never a wait longer than a day, whatever the
//! header says (numbers past `u64::MAX`, dates in year 9999 or before 1970, garbage).
#![no_main]

use std::time::Duration;

use chrono::Utc;
use en_auth_core::Error;
use en_auth_fuzz::{Message, assert_error_safe};
use libfuzzer_sys::fuzz_target;

const DAY: Duration = Duration::from_secs(86_400);
/// Slack for the clock moving between parsing and checking.
const MAX_DELAY: Duration = Duration::from_secs(86_400 + 5);

fn check(what: &str, err: &Error) {
    assert_error_safe(what, err);
    if let Some(delay) = err.retry_after() {
        assert!(delay <= MAX_DELAY, "{what}: retry after {delay:?}: {err:?}");
    }
    if let Error::RateLimited {
        reset_at: Some(at), ..
    } = err
    {
        let ahead = (*at - Utc::now()).to_std().unwrap_or_default();
        assert!(ahead <= MAX_DELAY, "{what}: reset {ahead:?} ahead: {err:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Headers only: the start line is ignored, the body is ignored.
    let message = Message::parse(data);
    let headers = &message.headers;
    if let Some(delay) = en_auth_oauth2::fuzzing::retry_after(headers) {
        assert!(
            delay <= en_auth_oauth2::fuzzing::MAX_RETRY_AFTER,
            "{delay:?}"
        );
        assert_eq!(en_auth_oauth2::fuzzing::MAX_RETRY_AFTER, DAY);
    }
    if let Some(at) = en_auth_oauth2::fuzzing::rate_limit_reset(headers) {
        let ahead = (at - Utc::now()).to_std().unwrap_or_default();
        assert!(ahead <= MAX_DELAY, "X-RateLimit-Reset {ahead:?} ahead");
    }
    for status in [429, 503] {
        let err = en_auth_oauth2::fuzzing::parse_token_response(status, headers, b"", None)
            .err()
            .expect("429 and 5xx are errors");
        assert!(err.is_transient(), "{err:?}");
        check("oauth2", &err);
        match en_auth_proxy::fuzzing::parse_answer(status, headers, b"") {
            Ok(_) => panic!("proxy: a token from HTTP {status}"),
            Err((err, _, _)) => check("proxy", &err),
        }
    }
    for status in [200, 400, 429, 503] {
        if let Some(wait) = en_auth_proxy::fuzzing::rate_limit_wait(status, headers) {
            assert!(
                wait <= MAX_DELAY,
                "proxy holds back for {wait:?} after {status}"
            );
        }
    }
});

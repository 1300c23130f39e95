//! The token endpoint's answer (status, headers, body) as the OAuth2 client and the proxy
//! read it (one parser, en-auth-oauth2's `token_endpoint`; the proxy without a default
//! lifetime): never a panic; a token's lifetime is bounded; every error is log-safe, keeps
//! the status, names a bounded delay; the proxy relays only RFC 6749 text.
#![no_main]

use std::time::Duration;

use chrono::Utc;
use en_auth_core::{AccessToken, Error};
use en_auth_fuzz::{Message, assert_error_safe, assert_oauth_error_body};
use libfuzzer_sys::fuzz_target;

/// `expires_in` is clamped to 1e9 s.
const MAX_LIFETIME: Duration = Duration::from_secs(1_000_000_000);
/// A server-named delay is taken at its word up to a day (plus slack for the clock).
const MAX_DELAY: Duration = Duration::from_secs(86_400 + 5);

fuzz_target!(|data: &[u8]| {
    let message = Message::parse(data);
    let status = message.status(200);
    let default = Some(Duration::from_secs(300));
    match en_auth_oauth2::fuzzing::parse_token_response(
        status,
        &message.headers,
        message.body,
        default,
    ) {
        Ok((token, _scope)) => {
            assert!((200..300).contains(&status), "a token from HTTP {status}");
            assert!(!token.access_token().is_empty());
            let issued = token.issued_at().expect("issue time");
            let expires = token.expires_at().expect("the default lifetime applies");
            let lifetime = (expires - issued).to_std().expect("expiry before issue");
            assert!(lifetime <= MAX_LIFETIME, "lifetime {lifetime:?}");
        }
        Err(err) => {
            assert_error_safe("oauth2 token response", &err);
            if let Some(s) = err.status() {
                assert_eq!(s, status, "{err:?}");
            }
            if let Some(delay) = err.retry_after() {
                assert!(delay <= MAX_DELAY, "retry after {delay:?}: {err:?}");
            }
            if let Error::RateLimited {
                reset_at: Some(at), ..
            } = &err
            {
                let ahead = (*at - Utc::now()).to_std().unwrap_or_default();
                assert!(ahead <= MAX_DELAY, "reset {ahead:?} ahead: {err:?}");
            }
        }
    }
    match en_auth_proxy::fuzzing::parse_answer(status, &message.headers, message.body) {
        Ok(token) => {
            assert!((200..300).contains(&status), "a token from HTTP {status}");
            assert!(!token.access_token().is_empty());
            if let (Some(issued), Some(expires)) = (token.issued_at(), token.expires_at()) {
                let lifetime = (expires - issued).to_std().expect("expiry before issue");
                assert!(lifetime <= MAX_LIFETIME, "lifetime {lifetime:?}");
            }
        }
        Err((err, relayed_status, body)) => {
            assert_error_safe("proxy upstream answer", &err);
            if let Some(delay) = err.retry_after() {
                assert!(delay <= MAX_DELAY, "retry after {delay:?}: {err:?}");
            }
            assert!(
                (400..600).contains(&relayed_status),
                "relayed HTTP {relayed_status}"
            );
            assert_oauth_error_body("proxy relayed error", &body);
        }
    }
});

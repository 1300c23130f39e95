//! The proxy's token requests before any cache or upstream work: `POST /oauth/token` (form or
//! JSON body as `Content-Type` says, `Authorization: Basic`) or, with the start line
//! `POST /m2mauth`, seed 001's JSON body. Never a panic; an accepted request is within the limits and
//! normalized; a refusal is a 4xx with an RFC 6749 §5.2 JSON body.
#![no_main]

use en_auth_fuzz::{Message, assert_oauth_error_body};
use en_auth_proxy::fuzzing::{Request, m2m_body, token_form};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = Message::parse(data);
    let m2m = message.start.windows(8).any(|w| w == b"/m2mauth");
    let answer = if m2m {
        m2m_body(message.body)
    } else {
        token_form(&message.headers, message.body)
    };
    match answer {
        Request::Accepted {
            client_id,
            secret_len,
            request,
        } => {
            assert!(
                !client_id.is_empty() && client_id.len() <= 256,
                "client_id {client_id:?}"
            );
            assert!(
                !client_id.chars().any(char::is_control),
                "client_id {client_id:?}"
            );
            assert!(
                (1..=1024).contains(&secret_len),
                "secret of {secret_len} bytes"
            );
            if let Some(audience) = &request.audience {
                assert!(!audience.is_empty() && audience.len() <= 2048);
                assert!(
                    !audience.chars().any(char::is_control),
                    "audience {audience:?}"
                );
            }
            assert!(
                request.resources.len() <= 10,
                "{} resources",
                request.resources.len()
            );
            assert!(
                request.resources.windows(2).all(|w| w[0] < w[1]),
                "resources not sorted/unique"
            );
            let scopes: Vec<&str> = request.scope.split(' ').filter(|s| !s.is_empty()).collect();
            assert_eq!(scopes.join(" "), request.scope, "scope not normalized");
            assert!(
                scopes.windows(2).all(|w| w[0] < w[1]),
                "scopes not sorted/unique"
            );
            for scope in scopes {
                assert!(
                    scope
                        .chars()
                        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'),
                    "scope token {scope:?}"
                );
            }
        }
        Request::Refused { status, body } => {
            assert!((400..500).contains(&status), "refused with HTTP {status}");
            assert_oauth_error_body("proxy refusal", &body);
        }
    }
});

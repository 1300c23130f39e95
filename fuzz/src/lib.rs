//! Shared pieces of the fuzz targets: input formats, a one-poll executor and the invariants
//! every error must keep.
#![forbid(unsafe_code)]

pub mod jwt;
pub mod srp;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest `Display` of an error built from untrusted input: a few escaped and capped pieces
/// of outside text ([`en_auth_core::MAX_UNTRUSTED_TEXT`] bytes each before escaping) plus
/// en-auth's own words. Anything longer means outside text went in unbounded.
pub const MAX_ERROR_TEXT: usize = 4096;

/// Asserts that `text` (an error's `Display`, a log field) cannot forge log lines or
/// terminal output and is bounded: no control characters, no bidirectional overrides.
pub fn assert_log_safe(what: &str, text: &str) {
    assert!(
        text.len() <= MAX_ERROR_TEXT,
        "{what}: {} bytes of text, more than {MAX_ERROR_TEXT}: {:?}…",
        text.len(),
        &text[..text.floor_char_boundary(200)]
    );
    if let Some(c) = text.chars().find(|c| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        panic!("{what}: unescaped {c:?} in {text:?}");
    }
}

/// Asserts the log-safety of an error's `Display` and its `Debug`.
pub fn assert_error_safe(what: &str, err: &en_auth_core::Error) {
    assert_log_safe(what, &err.to_string());
}

/// Runs a future that must finish without waiting on I/O or timers (verification with a
/// shared or given key), polling it once.
pub fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future waited, but nothing here does I/O"),
    }
}

/// An HTTP answer or request as fuzz input, in a raw-HTTP-like text form:
///
/// ```text
/// 429                          <- first line: status (or any start line)
/// retry-after: 7               <- header lines, `name: value`
///                              <- blank line
/// {"error":"slow_down"}        <- body, bytes to the end
/// ```
pub struct Message<'a> {
    /// The first line.
    pub start: &'a [u8],
    /// The headers that `http` accepts (others are dropped, as no client would send them).
    pub headers: HeaderMap,
    /// Everything after the blank line.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// Splits `data` into start line, headers and body.
    pub fn parse(data: &'a [u8]) -> Self {
        let (head, body) = match find(data, b"\n\n") {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &data[data.len()..]),
        };
        let mut lines = head.split(|b| *b == b'\n');
        let start = lines.next().unwrap_or_default();
        let mut headers = HeaderMap::new();
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        Self {
            start,
            headers,
            body,
        }
    }

    /// The start line read as a status code (the first three digits), or `default`.
    pub fn status(&self, default: u16) -> u16 {
        std::str::from_utf8(self.start)
            .ok()
            .and_then(|s| s.trim().get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..1000).contains(s))
            .unwrap_or(default)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = bytes.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

/// Splits `data` at its first newline: (first line, the rest).
pub fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// Whether every character of `text` is allowed in an OAuth2 `error` / `error_description`
/// (RFC 6749 §5.2: `%x20-21 / %x23-5B / %x5D-7E`).
pub fn rfc6749_text(text: &str) -> bool {
    text.chars()
        .all(|c| matches!(c, ' '..='~') && c != '"' && c != '\\')
}

/// Asserts that `body` is an RFC 6749 §5.2 error answer: a JSON object with a string `error`
/// and optional string `error_description` / `error_uri`, all in the allowed character set.
pub fn assert_oauth_error_body(what: &str, body: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body:?}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is not an object: {value}"));
    let error = object
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_else(|| panic!("{what}: no string `error` in {value}"));
    assert!(!error.is_empty(), "{what}: empty `error` in {value}");
    for field in ["error", "error_description", "error_uri"] {
        if let Some(text) = object.get(field) {
            let text = text
                .as_str()
                .unwrap_or_else(|| panic!("{what}: `{field}` is not a string in {value}"));
            assert!(
                rfc6749_text(text),
                "{what}: `{field}` has characters RFC 6749 §5.2 forbids: {text:?}"
            );
        }
    }
}

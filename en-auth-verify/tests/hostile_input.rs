//! Regression tests for what the fuzz targets in `fuzz/` found in the verifier.

use en_auth_core::Error;
use en_auth_verify::Verifier;

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn rejection(token: &str) -> String {
    let verifier = Verifier::hs256("a-shared-secret-for-the-tests-00");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match runtime.block_on(verifier.verify(token)) {
        Err(err @ Error::InvalidToken { .. }) => err.to_string(),
        other => panic!("{other:?}"),
    }
}

/// Found by the `jwt_verify` and `jwt_claims` fuzz targets: an unknown `alg` was quoted
/// verbatim by the header parser's message, so a token could put terminal escapes and
/// newlines (forged log lines), and up to 16 KiB of text, into the logged rejection.
#[test]
fn an_unknown_alg_is_escaped_and_capped_in_the_rejection() {
    let escape = format!("{}.e30.", b64(r#"{"alg":"\u001b[31mXX\nINFO forged"}"#));
    let shown = rejection(&escape);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.contains("\\u{1b}[31mXX\\nINFO forged"), "{shown:?}");

    let long = format!(
        "{}.e30.",
        b64(&format!(r#"{{"alg":"{}"}}"#, "A".repeat(12_000)))
    );
    let shown = rejection(&long);
    assert!(shown.len() < 1_000, "{} bytes", shown.len());
    assert!(shown.contains("more bytes)"), "{shown}");
}

/// The twin of a finding of the `oidc_discovery` fuzz target: serde's message quoted a JWKS
/// sent as one JSON string whole in the error (and so in the warn log of every failed fetch).
#[cfg(feature = "fuzzing")]
#[test]
fn an_invalid_jwks_is_quoted_capped() {
    let as_string = serde_json::to_vec(&"x\n".repeat(50_000)).unwrap();
    let shown = match en_auth_verify::fuzzing::jwks_keys(&as_string) {
        Err(err) => err.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(shown.len() < 600, "{} bytes", shown.len());
    assert!(shown.contains("more bytes)"), "{shown}");
}

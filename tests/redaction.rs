//! Secrets stay out of the Debug output of every provider type (the core types are covered by
//! en-auth-core's own redaction test, which also captures tracing output).
#![cfg(all(feature = "oauth2", feature = "srp", feature = "verify"))]

use en_auth::oauth2::ServiceAccountAuthorizer;
use en_auth::srp::SrpAuthorizer;
use en_auth::verify::Verifier;
use en_auth::{ClientInfo, UserCredentials};

const SECRET: &str = "client-secret-Qw91";
const PASSWORD: &str = "password-Er55";
const API_KEY: &str = "api-key-Ty72";
const HMAC_KEY: &str = "hmac-key-Ui63-of-enough-length!!";

#[test]
fn provider_types_redact_their_secrets() {
    let info = || ClientInfo::new("client-1", SECRET).with_api_key(API_KEY);
    let oauth2 = ServiceAccountAuthorizer::new(info(), "https://idp.example.com/oauth/token")
        .with_audience("https://api.example.com")
        .with_param("client_assertion_type", "x");
    let srp = SrpAuthorizer::new(
        info(),
        UserCredentials::new("alice", PASSWORD),
        "us-east-1_Pool1",
    )
    .unwrap()
    .with_endpoint_url("http://127.0.0.1:1");
    let verifier = Verifier::hs256(HMAC_KEY).with_audience("a");
    let outputs = [
        format!("{oauth2:?}"),
        format!("{srp:?}"),
        format!("{verifier:?}"),
    ];
    for output in &outputs {
        for secret in [SECRET, PASSWORD, API_KEY, HMAC_KEY] {
            assert!(!output.contains(secret), "leak of {secret} in {output}");
        }
    }
    assert!(
        outputs[0].contains("client-1") && outputs[1].contains("alice"),
        "ids stay visible: {outputs:?}"
    );
}

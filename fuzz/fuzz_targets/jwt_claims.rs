//! Arbitrary JOSE header and claims, correctly signed with the verifier's HS256 key, so that
//! the claim checks after the signature are reached: `exp`/`nbf`/`iat`, issuer, audience,
//! `typ`, scopes, organization. Input: the header JSON on the first line, the claims after it.
#![no_main]

use en_auth_fuzz::jwt::{assert_accepted_token_is_sound, sign, verifiers};
use en_auth_fuzz::{assert_error_safe, first_line, now_or_never};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, claims) = first_line(data);
    let token = sign(header, claims);
    for (strict, verifier) in verifiers() {
        match now_or_never(verifier.verify(&token)) {
            Ok(parsed) => {
                assert_accepted_token_is_sound(&token, &parsed, strict);
                // The claims en-auth read are the claims that were signed.
                let signed: serde_json::Value =
                    serde_json::from_slice(claims).expect("accepted claims are JSON");
                assert_eq!(signed.get("exp").and_then(|v| v.as_i64()), parsed.exp);
                assert_eq!(
                    signed.get("iss").and_then(|v| v.as_str()),
                    parsed.iss.as_deref()
                );
                if strict {
                    let typ: serde_json::Value =
                        serde_json::from_slice(header).expect("accepted header is JSON");
                    let typ = typ["typ"].as_str().expect("strict verifier requires typ");
                    let typ = typ.strip_prefix("application/").unwrap_or(typ);
                    assert!(typ.eq_ignore_ascii_case("at+jwt"), "typ {typ:?}");
                }
            }
            Err(err) => assert_error_safe("verify", &err),
        }
    }
});

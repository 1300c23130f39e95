//! Arbitrary token strings through the verifier (HS256 with a shared key): header parsing,
//! algorithm choice and signature check before any claim is read. Never a panic, never an
//! acceptance the key did not sign, every rejection log-safe.
#![no_main]

use en_auth_fuzz::jwt::{assert_accepted_token_is_sound, verifiers};
use en_auth_fuzz::{assert_error_safe, now_or_never};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    for (strict, verifier) in verifiers() {
        match now_or_never(verifier.verify(&token)) {
            Ok(claims) => assert_accepted_token_is_sound(&token, &claims, strict),
            Err(err) => assert_error_safe("verify", &err),
        }
    }
});

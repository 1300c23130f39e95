//! Cognito's `PASSWORD_VERIFIER` challenge parameters as the SRP client reads them: `SRP_B`,
//! `SALT` (hex), `SECRET_BLOCK` (base64), then pool name, user id and password, one per
//! line. Never a panic; `B` is refused exactly when it is degenerate (longer than `N`, or
//! `B mod N = 0`); otherwise a 16-byte key, `S < N`, and a 32-byte signature.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use chrono::{TimeZone, Utc};
use en_auth_fuzz::assert_error_safe;
use en_auth_fuzz::srp::maths;
use libfuzzer_sys::fuzz_target;

/// The client's ephemeral: fixed (the first known-answer vector's `a`), since computing
/// `A = g^a` per input would only slow the target down.
static EPHEMERAL: LazyLock<maths::Ephemeral> = LazyLock::new(|| {
    let a = maths::parse_hex(
        "a",
        "ccb2b416525a56c9a30f4300bbeeb6361d33bc6d96f0da847a2a3b87b9c8b9ffe46ed627d419c7723226db943c3ae353fb14628e90b401a6c1cc0affdd2ee150d2840277789c1af40ce8fcc945ac16b9c20dbc210f8a7abff2e91ac70b80a25553a12945a93258ef7777682c5796a670482c590e0d9782bfcdc83011ac8efe12",
    )
    .expect("hex");
    maths::Ephemeral::from_secret(&a).expect("a valid ephemeral")
});
static N: LazyLock<Vec<u8>> = LazyLock::new(maths::modulus);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (b_hex, salt_hex, block, pool, user, password) =
        (next(), next(), next(), next(), next(), next());

    let block = match maths::decode_secret_block(block) {
        Ok(bytes) => bytes,
        Err(err) => {
            assert_error_safe("SECRET_BLOCK", &err);
            Vec::new()
        }
    };
    let b = match maths::parse_hex("SRP_B", b_hex) {
        Ok(b) => b,
        Err(err) => return assert_error_safe("SRP_B", &err),
    };
    assert!(b.first() != Some(&0), "parse_hex keeps a leading zero");
    let salt = match maths::parse_hex("SALT", salt_hex) {
        Ok(salt) => salt,
        Err(err) => return assert_error_safe("SALT", &err),
    };
    let degenerate = b.len() > N.len() || b.is_empty() || b == *N;
    match maths::session(&EPHEMERAL, pool, user, password, &b, &salt) {
        Ok(session) => {
            assert!(!degenerate, "accepted a degenerate B");
            assert!(session.s.len() <= N.len(), "S longer than N");
            assert!(
                session.s.len() < N.len() || session.s.as_slice() < N.as_slice(),
                "S not reduced mod N"
            );
            assert!(session.u.len() <= 32 && session.x.len() <= 32);
            let at = Utc
                .with_ymd_and_hms(2025, 2, 3, 7, 5, 9)
                .single()
                .expect("a date");
            let timestamp = maths::timestamp(at);
            let signature = maths::claim_signature(&session.key, pool, user, &block, &timestamp);
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&signature)
                .expect("the signature is base64");
            assert_eq!(decoded.len(), 32);
        }
        Err(err) => {
            assert_error_safe("session", &err);
            assert!(degenerate, "refused a usable B: {err}");
        }
    }
});

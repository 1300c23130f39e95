//! HS256 tokens for the verifier targets: the shared key, the verifiers, signing of raw
//! header and claims bytes, and the checks every accepted token must pass.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use en_auth_verify::{Claims, Verifier};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The shared HS256 secret of the targets.
pub const KEY: &[u8] = b"fuzzing-shared-secret-0123456789";
/// The issuer the strict verifier requires.
pub const ISSUER: &str = "https://issuer.test/";
/// The audience the strict verifier requires.
pub const AUDIENCE: &str = "https://api.test";
/// The scope the strict verifier requires.
pub const SCOPE: &str = "read:data";
/// The organization the strict verifier requires.
pub const ORG: &str = "org-1";
/// The verifiers' leeway, in seconds (the default).
pub const LEEWAY: i64 = 30;

/// A verifier with the key alone, and one that also requires issuer, audience, `typ`, a scope
/// and an organization.
pub fn verifiers() -> [(bool, Verifier); 2] {
    [
        (false, Verifier::hs256(KEY)),
        (
            true,
            Verifier::hs256(KEY)
                .with_issuer(ISSUER)
                .with_audience(AUDIENCE)
                .require_typ("at+jwt")
                .require_scopes([SCOPE])
                .require_org_id(ORG),
        ),
    ]
}

fn mac(input: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).expect("any key length");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// `header.claims.signature` with raw header and claims bytes, signed with [`KEY`].
pub fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = URL_SAFE_NO_PAD.encode(mac(input.as_bytes()));
    format!("{input}.{signature}")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Checks what acceptance of `token` by a verifier promises: a signature made with [`KEY`]
/// over exactly the token's first two parts, a live `exp`, no future `nbf`/`iat`, and for the
/// strict verifier its issuer, audience, scope and organization.
pub fn assert_accepted_token_is_sound(token: &str, claims: &Claims, strict: bool) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let signature = lenient
        .decode(parts[2])
        .expect("accepted signature is base64url");
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    assert_eq!(
        signature,
        mac(signing_input.as_bytes()),
        "accepted a token whose signature is not the key's"
    );
    let now = now();
    let exp = claims.exp.expect("accepted a token without exp");
    assert!(
        exp + LEEWAY >= now,
        "accepted an expired token (exp {exp}, now {now})"
    );
    if let Some(nbf) = claims.nbf {
        assert!(
            nbf <= now + LEEWAY,
            "accepted a token not valid before {nbf}"
        );
    }
    if let Some(iat) = claims.iat {
        assert!(
            iat <= now + LEEWAY,
            "accepted a token issued at {iat}, in the future"
        );
    }
    if strict {
        assert_eq!(claims.iss.as_deref(), Some(ISSUER), "issuer");
        assert!(
            claims.aud.iter().any(|a| a == AUDIENCE),
            "audience {:?}",
            claims.aud
        );
        assert!(
            claims.has_scope(SCOPE) || claims.has_permission(SCOPE),
            "scope {:?} / permissions {:?}",
            claims.scope,
            claims.permissions
        );
        assert_eq!(claims.org_id.as_deref(), Some(ORG), "organization");
    }
}

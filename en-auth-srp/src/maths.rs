//! The client side of Cognito's SRP-6a variant, as AWS's own client libraries compute it.
//!
//! - Group: the RFC 3526 3072-bit prime `N`, generator `g = 2` (RFC 5054's group of that size
//!   has `g = 5`, so en-auth defines [`CognitoGroup`] for the `srp` crate).
//! - `pad(x)`: the shortest big-endian bytes of `x`, with `00` prepended when the top bit is
//!   set (so the bytes read as a positive number); `H` is SHA-256 over those bytes.
//! - `k = H(pad(N) ‖ pad(g))`, `A = g^a`, `u = H(pad(A) ‖ pad(B))`,
//!   `x = H(pad(salt) ‖ SHA-256(poolName ‖ userId ‖ ":" ‖ password))`,
//!   `S = (B − k·g^x)^(a + u·x) mod N`,
//!   `key = HKDF-SHA256(salt = pad(u), ikm = pad(S), info = "Caldera Derived Key")[..16]`.
//! - The proof: `base64(HMAC-SHA256(key, poolName ‖ userId ‖ secretBlock ‖ timestamp))`.
//!
//! The group maths is RustCrypto's `srp` crate (on `crypto-bigint`, constant time):
//! `compute_public_ephemeral` (A), `compute_identity_hash` and `compute_x` (x), and
//! `compute_premaster_secret` (S, with `a + u·x` computed in constant time). Cognito's own
//! parts stay here: `k` and `u` use Cognito's `pad` (not RFC 5054's padding to the length of
//! `N`, which `srp::utils::compute_k`/`compute_u_padded` implement), and the HKDF key and the
//! signature are Cognito's. Exponent lengths are fixed by the protocol (1024 bits for `a`,
//! 256 for `x`), so timing reveals nothing about them.
//!
//! Secrets — `a`, `x`, `S`, the identity hash and the HKDF key — are zeroized when dropped or
//! used; the password is only ever borrowed, never copied into a string.
//!
//! Everything random or time-dependent (`a`, the timestamp) is an input here, so known-answer
//! tests can fix them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use crypto_bigint::modular::{ConstMontyForm, ConstMontyParams, FixedMontyParams};
use crypto_bigint::{BoxedUint, NonZero, Odd, U3072};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use srp::Group;
use std::sync::LazyLock;
use zeroize::{Zeroize, Zeroizing};

use en_auth_core::Error;

const N_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C",
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
);

/// Cognito's SRP group: the RFC 3526 3072-bit prime with generator 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CognitoGroup;

impl ConstMontyParams<{ U3072::LIMBS }> for CognitoGroup {
    const LIMBS: usize = U3072::LIMBS;
    const PARAMS: FixedMontyParams<{ U3072::LIMBS }> =
        FixedMontyParams::new_vartime(Odd::<U3072>::from_be_hex(N_HEX));
}

impl Group for CognitoGroup {
    type Element = ConstMontyForm<Self, { U3072::LIMBS }>;
    const G: Self::Element = ConstMontyForm::new(&U3072::from_u128(2));
}

type Client = srp::Client<CognitoGroup, Sha256>;

/// Bytes of `N` (and the most a server value may have).
const N_BYTES: usize = 384;
/// Bytes of `a`: 1024 bits.
const A_BYTES: usize = 128;

static CLIENT: LazyLock<Client> = LazyLock::new(Client::new);
static N: LazyLock<NonZero<BoxedUint>> = LazyLock::new(|| {
    NonZero::new(BoxedUint::from_be_slice_vartime(&modulus())).expect("N is not zero")
});
static K: LazyLock<BoxedUint> = LazyLock::new(|| BoxedUint::from_be_slice_vartime(&multiplier()));

const DERIVED_KEY_INFO: &[u8] = b"Caldera Derived Key";

/// `N`, big-endian.
pub fn modulus() -> Vec<u8> {
    decode_hex(N_HEX).expect("N is valid hex")
}

/// `k = H(pad(N) ‖ pad(g))`, big-endian.
pub fn multiplier() -> Vec<u8> {
    sha256(&[&pad(&modulus()), &pad(&[2])]).to_vec()
}

fn exponent_error(what: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "srp".into(),
        reason: format!("{what} is out of range"),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// `pad(x)` for big-endian `x`: without leading zeros, with one zero byte in front when the
/// top bit is set; zero is `[0]`.
pub fn pad(x: &[u8]) -> Vec<u8> {
    let x = trim(x);
    let mut out = Vec::with_capacity(x.len() + 1);
    if x.first().is_none_or(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(x);
    out
}

/// `pad(x)` as lower-case hex, the form the reference libraries print.
pub fn pad_hex(x: &[u8]) -> String {
    hex(&pad(x))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex of the number `bytes` without leading zeros (`0` for zero), as Cognito's
/// clients print `SRP_A`.
pub fn number_hex(bytes: &[u8]) -> String {
    let text = hex(trim(bytes));
    match text.strip_prefix('0') {
        Some(rest) => rest.to_owned(),
        None if text.is_empty() => "0".to_owned(),
        None => text,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let (first, rest) = if bytes.len() % 2 == 1 {
        (Some(digit(bytes[0])?), &bytes[1..])
    } else {
        (None, bytes)
    };
    let mut out = Vec::with_capacity(bytes.len() / 2 + 1);
    out.extend(first);
    for pair in rest.chunks_exact(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(out)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Parses a hex string from the server (`SRP_B`, `SALT`) as a non-negative integer,
/// big-endian without leading zeros.
pub fn parse_hex(name: &str, value: &str) -> Result<Vec<u8>, Error> {
    let value = value.trim();
    decode_hex(value)
        .filter(|_| !value.is_empty())
        .map(|bytes| trim(&bytes).to_vec())
        .ok_or_else(|| Error::InvalidResponse {
            status: None,
            reason: format!("{name} is not hexadecimal"),
        })
}

/// The client's ephemeral secret `a` (zeroized when dropped) and public value `A = g^a mod N`.
pub struct Ephemeral {
    /// `a`, left-padded to 1024 bits so that every exponentiation takes the same time.
    a: Zeroizing<[u8; A_BYTES]>,
    /// `A`, big-endian, sent as `SRP_A`.
    pub public: Vec<u8>,
}

impl Ephemeral {
    /// From a fixed big-endian secret of at most 1024 bits (tests), or `Err` when
    /// `A mod N = 0`.
    pub fn from_secret(a: &[u8]) -> Result<Self, Error> {
        let a = trim(a);
        if a.len() > A_BYTES {
            return Err(exponent_error("a"));
        }
        let mut fixed = Zeroizing::new([0u8; A_BYTES]);
        fixed[A_BYTES - a.len()..].copy_from_slice(a);
        let public = CLIENT.compute_public_ephemeral(&fixed[..]);
        if trim(&public).is_empty() {
            return Err(Error::InvalidResponse {
                status: None,
                reason: "degenerate SRP value A".into(),
            });
        }
        Ok(Self { a: fixed, public })
    }

    /// A fresh secret of 128 random bytes from the operating system's CSPRNG.
    pub fn random() -> Result<Self, Error> {
        loop {
            let mut bytes = Zeroizing::new([0u8; A_BYTES]);
            getrandom::fill(&mut bytes[..]).map_err(|e| Error::InvalidConfiguration {
                setting: "random source".into(),
                reason: e.to_string(),
            })?;
            if let Ok(ephemeral) = Self::from_secret(&bytes[..]) {
                return Ok(ephemeral);
            }
        }
    }

    /// `A` as hex, for `SRP_A`.
    pub fn public_hex(&self) -> String {
        number_hex(&self.public)
    }
}

/// The intermediate values of one login, exposed for known-answer tests; the secret ones are
/// zeroized when dropped. Numbers are big-endian without leading zeros.
pub struct Session {
    /// `u = H(pad(A) ‖ pad(B))`.
    pub u: Vec<u8>,
    /// `x = H(pad(salt) ‖ H(poolName ‖ userId ‖ ":" ‖ password))`.
    pub x: Zeroizing<Vec<u8>>,
    /// The premaster secret `S`.
    pub s: Zeroizing<Vec<u8>>,
    /// The 16-byte derived key.
    pub key: Zeroizing<[u8; 16]>,
}

/// Computes `u`, `x`, `S` and the derived key for the server's `B` and `salt` (big-endian).
pub fn session(
    ephemeral: &Ephemeral,
    pool_name: &str,
    user_id: &str,
    password: &str,
    b: &[u8],
    salt: &[u8],
) -> Result<Session, Error> {
    let degenerate = |what: &str| Error::InvalidResponse {
        status: None,
        reason: format!("the server sent a degenerate SRP value ({what})"),
    };
    let b = trim(b);
    if b.len() > N_BYTES {
        return Err(degenerate("B is longer than N"));
    }
    // B is public: reducing it in variable time reveals nothing.
    let b_reduced = BoxedUint::from_be_slice_vartime(b).rem_vartime(&N);
    if bool::from(b_reduced.is_zero()) {
        return Err(degenerate("B mod N = 0"));
    }
    let u = sha256(&[&pad(&ephemeral.public), &pad(b)]);
    if trim(&u).is_empty() {
        return Err(degenerate("u = 0"));
    }

    let identity_name = [pool_name.as_bytes(), user_id.as_bytes()].concat();
    let mut identity = Client::compute_identity_hash(&identity_name, password.as_bytes());
    let mut x = Client::compute_x(&identity, &pad(salt));
    identity.as_mut_slice().zeroize();

    let mut a = BoxedUint::from_be_slice_vartime(&ephemeral.a[..]);
    let u_int = BoxedUint::from_be_slice_vartime(&u);
    let mut s = CLIENT.compute_premaster_secret(&b_reduced, &K, &x, &a, &u_int);
    a.zeroize();

    let s_bytes = Zeroizing::new(s.to_be_bytes());
    s.zeroize();
    let x_bytes = Zeroizing::new(x.to_be_bytes());
    x.zeroize();
    let s_padded = Zeroizing::new(pad(&s_bytes));
    let mut key = Zeroizing::new([0u8; 16]);
    Hkdf::<Sha256>::new(Some(&pad(&u)), &s_padded)
        .expand(DERIVED_KEY_INFO, &mut key[..])
        .map_err(|_| degenerate("key derivation"))?;
    Ok(Session {
        u: trim(&u).to_vec(),
        x: Zeroizing::new(trim(&x_bytes).to_vec()),
        s: Zeroizing::new(trim(&s_bytes).to_vec()),
        key,
    })
}

/// `PASSWORD_CLAIM_SIGNATURE`: the proof that the client knows `key`.
pub fn claim_signature(
    key: &[u8; 16],
    pool_name: &str,
    user_id: &str,
    secret_block: &[u8],
    timestamp: &str,
) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(pool_name.as_bytes());
    mac.update(user_id.as_bytes());
    mac.update(secret_block);
    mac.update(timestamp.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// `SECRET_HASH = base64(HMAC-SHA256(client_secret, username ‖ client_id))`.
pub fn secret_hash(client_secret: &str, username: &str, client_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(client_secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    mac.update(client_id.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Cognito's `TIMESTAMP`: `Mon Feb 3 07:05:09 UTC 2025` (English names, day not padded).
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%a %b %-d %H:%M:%S UTC %Y").to_string()
}

/// Decodes `SECRET_BLOCK` leniently: standard or URL-safe alphabet, padded or not, with
/// stray whitespace (moto's is not strict base64).
pub fn decode_secret_block(block: &str) -> Result<Vec<u8>, Error> {
    let cleaned: String = block
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned.as_bytes())
        .map_err(|_| Error::InvalidResponse {
            status: None,
            reason: "SECRET_BLOCK is not base64".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_follows_the_reference_rules() {
        assert_eq!(pad_hex(&[0x7f]), "7f");
        assert_eq!(pad_hex(&[0x80]), "0080");
        assert_eq!(pad_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(pad_hex(&[0, 0, 0x08, 0xbc]), "08bc");
        assert_eq!(pad_hex(&[]), "00");
        assert_eq!(
            pad_hex(&modulus()).len(),
            3072 / 4 + 2,
            "N has its top bit set"
        );
        assert_eq!(number_hex(&[0, 0x0a, 0xbc]), "abc");
        assert_eq!(number_hex(&[0]), "0");
        assert_eq!(parse_hex("B", " 0abc ").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_hex("B", "abc").unwrap(), vec![0x0a, 0xbc]);
        assert!(parse_hex("B", "").is_err() && parse_hex("B", "xyz").is_err());
    }

    #[test]
    fn k_matches_the_published_value() {
        // k for the 3072-bit group with g = 2, as printed by AWS's JavaScript library.
        assert_eq!(
            hex(&multiplier()),
            "538282c4354742d7cbbde2359fcf67f9f5b3a6b08791e5011b43b8a5b66d9ee6"
        );
    }

    #[test]
    fn timestamps_do_not_pad_the_day() {
        let at = DateTime::parse_from_rfc3339("2025-02-03T07:05:09Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "Mon Feb 3 07:05:09 UTC 2025");
        let at = DateTime::parse_from_rfc3339("2025-11-23T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "Sun Nov 23 17:00:00 UTC 2025");
    }

    #[test]
    fn secret_blocks_decode_leniently() {
        let expected = b"secret block bytes!".to_vec();
        for form in [
            "c2VjcmV0IGJsb2NrIGJ5dGVzIQ==",
            "c2VjcmV0IGJsb2NrIGJ5dGVzIQ",
            " c2VjcmV0IGJs\nb2NrIGJ5dGVzIQ== ",
        ] {
            assert_eq!(decode_secret_block(form).unwrap(), expected, "{form:?}");
        }
        assert!(decode_secret_block("not base64 !!").is_err());
    }

    #[test]
    fn degenerate_server_values_are_refused() {
        let e = Ephemeral::from_secret(&12345u32.to_be_bytes()).unwrap();
        let salt = [1u8];
        assert!(
            session(&e, "pool", "user", "pw", &modulus(), &salt).is_err(),
            "B = N"
        );
        assert!(
            session(&e, "pool", "user", "pw", &[0], &salt).is_err(),
            "B = 0"
        );
        assert!(
            session(&e, "pool", "user", "pw", &[1u8; N_BYTES + 1], &salt).is_err(),
            "B longer than N"
        );
        assert!(
            Ephemeral::from_secret(&[0]).is_ok(),
            "A = 1 is allowed, A = 0 is not possible for g^a"
        );
        assert!(
            Ephemeral::from_secret(&[1u8; A_BYTES + 1]).is_err(),
            "a too long"
        );
    }
}

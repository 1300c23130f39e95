//! The client side of Cognito's SRP-6a variant, as AWS's own client libraries compute it.
//!
//! - Group: the RFC 3526 3072-bit prime `N`, generator `g = 2`.
//! - `pad(x)`: the shortest even-length big-endian hex of `x`, with `00` prepended when the top
//!   bit is set (so the bytes read as a positive number); `H` is SHA-256 over those bytes.
//! - `k = H(pad(N) ‖ pad(g))`, `A = g^a`, `u = H(pad(A) ‖ pad(B))`,
//!   `x = H(pad(salt) ‖ SHA-256(poolName ‖ userId ‖ ":" ‖ password))`,
//!   `S = (B − k·g^x)^(a + u·x) mod N`,
//!   `key = HKDF-SHA256(salt = pad(u), ikm = pad(S), info = "Caldera Derived Key")[..16]`.
//! - The proof: `base64(HMAC-SHA256(key, poolName ‖ userId ‖ secretBlock ‖ timestamp))`.
//!
//! Everything random or time-dependent (`a`, the timestamp) is an input here, so known-answer
//! tests can fix them. Arithmetic modulo `N` — every step that involves `a` or the
//! password-derived `x` — runs in constant time in Montgomery form (`crypto-bigint`), with
//! exponent lengths fixed by the protocol (1024 bits for `a`, 256 for `x`, 1025 for `a + u·x`),
//! so timing reveals nothing about them. `num-bigint` only parses, pads and multiplies public or
//! already-hashed values. Hashing, HMAC and HKDF are RustCrypto.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Encoding, Odd, U256, U1024, U1536, U3072};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

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

/// The group prime `N` (RFC 3526, 3072 bits).
pub static N: LazyLock<BigUint> =
    LazyLock::new(|| BigUint::parse_bytes(N_HEX.as_bytes(), 16).expect("N is valid hex"));
/// The generator `g = 2`.
pub static G: LazyLock<BigUint> = LazyLock::new(|| BigUint::from(2u32));
/// The multiplier `k = H(pad(N) ‖ pad(g))`.
pub static K: LazyLock<BigUint> = LazyLock::new(|| hash_to_int(&[&pad(&N), &pad(&G)]));

const DERIVED_KEY_INFO: &[u8] = b"Caldera Derived Key";

/// Bits of `a`: 128 random bytes.
const A_BITS: u32 = 1024;
/// Bound on `a + u·x`: `a < 2^1024`, `u, x < 2^256`, so the sum is below `2^1025`.
const EXPONENT_BITS: u32 = 1025;

type Modular = FixedMontyForm<{ U3072::LIMBS }>;

static PARAMS: LazyLock<FixedMontyParams<{ U3072::LIMBS }>> = LazyLock::new(|| {
    FixedMontyParams::new(
        Odd::new(to_uint::<{ U3072::LIMBS }>(&N).expect("N fits")).expect("N is odd"),
    )
});
static G_MONTY: LazyLock<Modular> = LazyLock::new(|| Modular::new(&U3072::from_u8(2), &PARAMS));
static K_MONTY: LazyLock<Modular> =
    LazyLock::new(|| Modular::new(&to_uint::<{ U3072::LIMBS }>(&K).expect("k fits"), &PARAMS));

/// `x` as a fixed-size integer, or `None` when it does not fit.
fn to_uint<const LIMBS: usize>(x: &BigUint) -> Option<crypto_bigint::Uint<LIMBS>>
where
    crypto_bigint::Uint<LIMBS>: Encoding,
{
    let bytes = x.to_bytes_be();
    let width = LIMBS * 8;
    if bytes.len() > width {
        return None;
    }
    let mut padded = vec![0u8; width];
    padded[width - bytes.len()..].copy_from_slice(&bytes);
    Some(crypto_bigint::Uint::<LIMBS>::from_be_slice(&padded))
}

fn to_biguint(x: &U3072) -> BigUint {
    BigUint::from_bytes_be(&x.to_be_bytes())
}

fn exponent_error(what: &str) -> Error {
    Error::InvalidConfiguration {
        setting: "srp".into(),
        reason: format!("{what} is out of range"),
    }
}

/// `pad(x)` as bytes: big-endian, with a leading zero byte when the top bit is set.
pub fn pad(x: &BigUint) -> Vec<u8> {
    let mut bytes = x.to_bytes_be();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    bytes
}

/// `pad(x)` as lower-case hex, the form the reference libraries print.
pub fn pad_hex(x: &BigUint) -> String {
    hex(&pad(x))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_to_int(parts: &[&[u8]]) -> BigUint {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    BigUint::from_bytes_be(&hasher.finalize())
}

/// Parses a hex string from the server (`SRP_B`, `SALT`) as a non-negative integer.
pub fn parse_hex(name: &str, value: &str) -> Result<BigUint, Error> {
    BigUint::parse_bytes(value.trim().as_bytes(), 16).ok_or_else(|| Error::InvalidResponse {
        status: None,
        reason: format!("{name} is not hexadecimal"),
    })
}

/// The client's ephemeral secret `a` and public value `A = g^a mod N`.
pub struct Ephemeral {
    a: BigUint,
    /// `A`, sent as `SRP_A`.
    pub public: BigUint,
}

impl Ephemeral {
    /// From a fixed secret of at most 1024 bits (tests), or `Err` when `A mod N = 0`.
    pub fn from_secret(a: BigUint) -> Result<Self, Error> {
        let exponent = to_uint::<{ U1024::LIMBS }>(&a).ok_or_else(|| exponent_error("a"))?;
        let public = to_biguint(&G_MONTY.pow_bounded_exp(&exponent, A_BITS).retrieve());
        if public == BigUint::ZERO {
            return Err(Error::InvalidResponse {
                status: None,
                reason: "degenerate SRP value A".into(),
            });
        }
        Ok(Self { a, public })
    }

    /// A fresh secret of 128 random bytes from the operating system's CSPRNG.
    pub fn random() -> Result<Self, Error> {
        loop {
            let mut bytes = [0u8; 128];
            getrandom::fill(&mut bytes).map_err(|e| Error::InvalidConfiguration {
                setting: "random source".into(),
                reason: e.to_string(),
            })?;
            if let Ok(ephemeral) = Self::from_secret(BigUint::from_bytes_be(&bytes)) {
                return Ok(ephemeral);
            }
        }
    }

    /// `A` as hex, for `SRP_A`.
    pub fn public_hex(&self) -> String {
        self.public.to_str_radix(16)
    }
}

/// The intermediate values of one login, exposed for known-answer tests.
pub struct Session {
    /// `u = H(pad(A) ‖ pad(B))`.
    pub u: BigUint,
    /// `x = H(pad(salt) ‖ H(poolName ‖ userId ‖ ":" ‖ password))`.
    pub x: BigUint,
    /// The premaster secret `S`.
    pub s: BigUint,
    /// The 16-byte derived key.
    pub key: [u8; 16],
}

/// Computes `u`, `x`, `S` and the derived key for the server's `B` and `salt`.
pub fn session(
    ephemeral: &Ephemeral,
    pool_name: &str,
    user_id: &str,
    password: &str,
    b: &BigUint,
    salt: &BigUint,
) -> Result<Session, Error> {
    let degenerate = |what: &str| Error::InvalidResponse {
        status: None,
        reason: format!("the server sent a degenerate SRP value ({what})"),
    };
    if (b % &*N) == BigUint::ZERO {
        return Err(degenerate("B mod N = 0"));
    }
    let u = hash_to_int(&[&pad(&ephemeral.public), &pad(b)]);
    if u == BigUint::ZERO {
        return Err(degenerate("u = 0"));
    }
    let identity = Sha256::digest(format!("{pool_name}{user_id}:{password}").as_bytes());
    let x = hash_to_int(&[&pad(salt), &identity]);
    // S = (B − k·g^x)^(a + u·x), all in Montgomery form.
    let x_fixed = to_uint::<{ U256::LIMBS }>(&x).ok_or_else(|| exponent_error("x"))?;
    let b_fixed = to_uint::<{ U3072::LIMBS }>(&(b % &*N)).ok_or_else(|| exponent_error("B"))?;
    let kgx = *K_MONTY * G_MONTY.pow_bounded_exp(&x_fixed, 256);
    let base = Modular::new(&b_fixed, &PARAMS) - kgx;
    let exponent = to_uint::<{ U1536::LIMBS }>(&(&ephemeral.a + &u * &x))
        .ok_or_else(|| exponent_error("a + u·x"))?;
    let s = to_biguint(&base.pow_bounded_exp(&exponent, EXPONENT_BITS).retrieve());
    let mut key = [0u8; 16];
    Hkdf::<Sha256>::new(Some(&pad(&u)), &pad(&s))
        .expand(DERIVED_KEY_INFO, &mut key)
        .map_err(|_| degenerate("key derivation"))?;
    Ok(Session { u, x, s, key })
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
        assert_eq!(pad_hex(&BigUint::from(0x7fu32)), "7f");
        assert_eq!(pad_hex(&BigUint::from(0x80u32)), "0080");
        assert_eq!(pad_hex(&BigUint::from(0xabcu32)), "0abc");
        assert_eq!(pad_hex(&BigUint::from(0x8bcu32)), "08bc");
        assert_eq!(pad_hex(&N).len(), 3072 / 4 + 2, "N has its top bit set");
    }

    #[test]
    fn k_matches_the_published_value() {
        // k for the 3072-bit group with g = 2, as printed by AWS's JavaScript library.
        assert_eq!(
            K.to_str_radix(16),
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
        let e = Ephemeral::from_secret(BigUint::from(12345u32)).unwrap();
        let salt = BigUint::from(1u32);
        assert!(
            session(&e, "pool", "user", "pw", &N, &salt).is_err(),
            "B = N"
        );
        assert!(
            session(&e, "pool", "user", "pw", &BigUint::ZERO, &salt).is_err(),
            "B = 0"
        );
        assert!(
            Ephemeral::from_secret(BigUint::ZERO).is_ok(),
            "A = 1 is allowed, A = 0 is not possible for g^a"
        );
    }
}

//! Known-answer tests: the SRP maths against vectors computed by AWS's official client
//! libraries (pycognito and amazon-cognito-identity-js; see tests/peers/srp_vectors.*).

use en_auth_srp::maths::{self, Ephemeral};
use serde::Deserialize;

#[derive(Deserialize)]
struct VectorFile {
    generator: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    pool_id: String,
    user_id: String,
    password: String,
    client_id: String,
    client_secret: String,
    a: String,
    #[serde(rename = "A")]
    big_a: String,
    #[serde(rename = "B")]
    big_b: String,
    salt: String,
    secret_block: String,
    timestamp: String,
    u: String,
    x: String,
    #[serde(rename = "S")]
    s: String,
    key: String,
    signature: String,
    secret_hash: String,
}

/// A hex number from the vectors as big-endian bytes without leading zeros.
fn hex(value: &str) -> Vec<u8> {
    maths::parse_hex("vector", value).expect("hex")
}

fn check(file: &str) -> usize {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let set: VectorFile = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut covered = std::collections::BTreeSet::new();
    for (i, v) in set.vectors.iter().enumerate() {
        let what = format!("{} vector {i}", set.generator);
        let pool_name = v.pool_id.split_once('_').unwrap().1;
        let ephemeral = Ephemeral::from_secret(&hex(&v.a)).unwrap();
        assert_eq!(ephemeral.public, hex(&v.big_a), "{what}: A");
        let session = maths::session(
            &ephemeral,
            pool_name,
            &v.user_id,
            &v.password,
            &hex(&v.big_b),
            &hex(&v.salt),
        )
        .unwrap();
        assert_eq!(session.u, hex(&v.u), "{what}: u");
        assert_eq!(*session.x, hex(&v.x), "{what}: x");
        assert_eq!(*session.s, hex(&v.s), "{what}: S");
        assert_eq!(maths::hex(&session.key[..]), v.key, "{what}: HKDF key");
        let block = maths::decode_secret_block(&v.secret_block).unwrap();
        let signature =
            maths::claim_signature(&session.key, pool_name, &v.user_id, &block, &v.timestamp);
        assert_eq!(signature, v.signature, "{what}: signature");
        assert_eq!(
            maths::secret_hash(&v.client_secret, &v.user_id, &v.client_id),
            v.secret_hash,
            "{what}: SECRET_HASH"
        );

        let salt = hex(&v.salt);
        for (name, value) in [
            ("A", ephemeral.public.as_slice()),
            ("u", session.u.as_slice()),
            ("S", session.s.as_slice()),
            ("salt", salt.as_slice()),
        ] {
            covered.insert(format!("{name} top bit {}", maths::pad(value)[0] == 0));
        }
        if v.salt.len() % 2 == 1 {
            covered.insert("odd-length salt".to_string());
        }
    }
    // The vectors exercise every padding case, with and without the extra zero byte.
    for name in ["A", "u", "S", "salt"] {
        for flag in [true, false] {
            assert!(
                covered.contains(&format!("{name} top bit {flag}")),
                "{file} lacks {name} top bit {flag}"
            );
        }
    }
    assert!(
        covered.contains("odd-length salt"),
        "{file} lacks an odd-length salt"
    );
    set.vectors.len()
}

#[test]
fn pycognito_vectors_match() {
    assert!(check("pycognito.json") >= 24);
}

#[test]
fn amazon_cognito_identity_js_vectors_match() {
    assert!(check("amazon-cognito-identity-js.json") >= 24);
}

/// Why en-auth computes `k` and `u` itself: `srp::utils` pads to the length of `N` (RFC 5054),
/// Cognito pads to the shortest positive form, so the values differ.
#[test]
fn rfc5054_padding_is_not_cognitos() {
    use srp::Group;
    use srp::bigint::BoxedUint;
    let g = maths::CognitoGroup::generator();
    let rfc_k = srp::utils::compute_k::<sha2::Sha256>(&g);
    assert_ne!(
        rfc_k,
        BoxedUint::from_be_slice_vartime(&maths::multiplier()),
        "k"
    );

    let path = format!(
        "{}/tests/vectors/pycognito.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let set: VectorFile = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let differing = set
        .vectors
        .iter()
        .filter(|v| {
            let rfc_u =
                srp::utils::compute_u_padded::<sha2::Sha256>(&g, &hex(&v.big_a), &hex(&v.big_b));
            rfc_u != BoxedUint::from_be_slice_vartime(&hex(&v.u))
        })
        .count();
    // They agree only when A and B both fill 384 bytes with the top bit clear.
    assert!(
        differing * 2 > set.vectors.len(),
        "u differs for {differing} vectors"
    );
}

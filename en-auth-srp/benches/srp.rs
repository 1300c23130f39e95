//! One SRP login's client-side maths (A, u, x, S, HKDF key, signature; constant-time, on the
//! `srp` crate) against the same three modular exponentiations done with variable-time
//! `num-bigint`, in one process: the ratio is the price of constant time plus what en-auth
//! adds around the big-number work. Reports; asserts nothing.
//!
//! ```text
//! cargo bench -p en-auth-srp --bench srp
//! ```

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth_srp::maths::{self, Ephemeral};
use num_bigint::BigUint;

struct Input {
    a: Vec<u8>,
    b: Vec<u8>,
    salt: Vec<u8>,
    block: Vec<u8>,
}

fn input() -> Input {
    let path = format!(
        "{}/tests/vectors/pycognito.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    let v = &file["vectors"][0];
    let hex = |k: &str| maths::parse_hex(k, v[k].as_str().expect("field")).expect("hex");
    Input {
        a: hex("a"),
        b: hex("B"),
        salt: hex("salt"),
        block: maths::decode_secret_block(v["secret_block"].as_str().expect("block")).expect("b64"),
    }
}

fn login(input: &Input) -> String {
    let ephemeral = Ephemeral::from_secret(&input.a).expect("A");
    let session = maths::session(
        &ephemeral,
        "PoolName1",
        "user-1",
        "Correct-Horse-9",
        &input.b,
        &input.salt,
    )
    .expect("session");
    maths::claim_signature(
        &session.key,
        "PoolName1",
        "user-1",
        &input.block,
        "Mon Feb 3 07:05:09 UTC 2025",
    )
}

struct Group {
    n: BigUint,
    g: BigUint,
    k: BigUint,
}

/// The same three exponentiations, nothing else: g^a, g^x and (B − k·g^x)^(a+u·x).
fn bare(group: &Group, input: &Input, x: &BigUint, u: &BigUint) -> BigUint {
    let Group { n, g, k } = group;
    let a = BigUint::from_bytes_be(&input.a);
    let b = BigUint::from_bytes_be(&input.b);
    let big_a = g.modpow(&a, n);
    let gx = g.modpow(x, n);
    let base = (&b + n - (k * gx) % n) % n;
    base.modpow(&(&a + u * x), n) + big_a
}

fn main() {
    let input = input();
    let ephemeral = Ephemeral::from_secret(&input.a).expect("A");
    let session = maths::session(
        &ephemeral,
        "PoolName1",
        "user-1",
        "Correct-Horse-9",
        &input.b,
        &input.salt,
    )
    .expect("s");
    let (x, u) = (
        BigUint::from_bytes_be(&session.x),
        BigUint::from_bytes_be(&session.u),
    );
    let group = Group {
        n: BigUint::from_bytes_be(&maths::modulus()),
        g: BigUint::from(2u32),
        k: BigUint::from_bytes_be(&maths::multiplier()),
    };

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(6))
        .sample_size(30);
    criterion.bench_function("srp/login_maths", |b| b.iter(|| login(&input)));
    criterion.bench_function("srp/bare_modpows", |b| {
        b.iter(|| bare(&group, &input, &x, &u))
    });

    let rounds = 20;
    let (mut ours, mut baseline) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(login(&input));
        ours += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(bare(&group, &input, &x, &u));
        baseline += t.elapsed();
    }
    println!("\ninterleaved: {rounds} rounds");
    println!(
        "  one login's client maths: {:.2} ms",
        ours.as_secs_f64() * 1e3 / f64::from(rounds)
    );
    println!(
        "  bare num-bigint modpows:  {:.2} ms",
        baseline.as_secs_f64() * 1e3 / f64::from(rounds)
    );
    println!(
        "  ratio login/bare: {:.3}",
        ours.as_secs_f64() / baseline.as_secs_f64()
    );
    criterion.final_summary();
}

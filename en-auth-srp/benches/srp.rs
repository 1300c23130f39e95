//! One SRP login's client-side maths (A, u, x, S, HKDF key, signature) against the bare
//! `num-bigint` modular exponentiations it is made of, in one process. The difference is what
//! en-auth adds around the big-number work. Reports; asserts nothing.
//!
//! ```text
//! cargo bench -p en-auth-srp --bench srp
//! ```

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth_srp::maths::{self, Ephemeral, G, K, N};
use num_bigint::BigUint;

struct Input {
    a: BigUint,
    b: BigUint,
    salt: BigUint,
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
    let hex =
        |k: &str| BigUint::parse_bytes(v[k].as_str().expect("field").as_bytes(), 16).expect("hex");
    Input {
        a: hex("a"),
        b: hex("B"),
        salt: hex("salt"),
        block: maths::decode_secret_block(v["secret_block"].as_str().expect("block")).expect("b64"),
    }
}

fn login(input: &Input) -> String {
    let ephemeral = Ephemeral::from_secret(input.a.clone()).expect("A");
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

/// The same three exponentiations, nothing else: g^a, g^x and (B − k·g^x)^(a+u·x).
fn bare(input: &Input, x: &BigUint, u: &BigUint) -> BigUint {
    let big_a = G.modpow(&input.a, &N);
    let gx = G.modpow(x, &N);
    let base = (&input.b + &*N - (&*K * gx) % &*N) % &*N;
    base.modpow(&(&input.a + u * x), &N) + big_a
}

fn main() {
    let input = input();
    let ephemeral = Ephemeral::from_secret(input.a.clone()).expect("A");
    let session = maths::session(
        &ephemeral,
        "PoolName1",
        "user-1",
        "Correct-Horse-9",
        &input.b,
        &input.salt,
    )
    .expect("s");
    let (x, u) = (session.x.clone(), session.u.clone());

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(6))
        .sample_size(30);
    criterion.bench_function("srp/login_maths", |b| b.iter(|| login(&input)));
    criterion.bench_function("srp/bare_modpows", |b| b.iter(|| bare(&input, &x, &u)));

    let rounds = 20;
    let (mut ours, mut baseline) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(login(&input));
        ours += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(bare(&input, &x, &u));
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

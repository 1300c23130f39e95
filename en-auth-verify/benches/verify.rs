//! Incoming verification: `Verifier::verify` (keys cached from a loopback JWKS) against a bare
//! `jsonwebtoken::decode` with the same RS256 key and the same claims type, in one process.
//! Interleaved rounds give the ratio; the benchmark reports, it asserts nothing.
//!
//! ```text
//! cargo bench -p en-auth-verify --bench verify
//! ```

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth_verify::{Claims, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};

const ISSUER: &str = "https://issuer.bench/";
const AUDIENCE: &str = "https://api.bench";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let jwks = fixture("jwks.json");
    let server = runtime.block_on(en_auth_testkit::LoopbackServer::start(
        axum::Router::new().fallback(move || {
            let jwks = jwks.clone();
            async move { jwks }
        }),
    ));
    let server = server.expect("jwks server");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "iat": now, "exp": now + 3600, "scope": "read write",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key = EncodingKey::from_rsa_pem(fixture("rsa.pem").as_bytes()).expect("key");
    let token = encode(&header, &claims, &key).expect("token");

    let verifier = Verifier::jwks(server.url("/jwks.json"))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    runtime
        .block_on(verifier.verify(&token))
        .expect("token verifies");

    let decoding =
        DecodingKey::from_rsa_pem(fixture("rsa-public.pem").as_bytes()).expect("public key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    decode::<Claims>(&token, &decoding, &validation).expect("bare decode");

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    criterion.bench_function("verify/bare_jsonwebtoken_decode", |b| {
        b.iter(|| decode::<Claims>(&token, &decoding, &validation).expect("valid"))
    });
    criterion.bench_function("verify/en_auth_verifier", |b| {
        b.to_async(&runtime)
            .iter(|| async { verifier.verify(&token).await.expect("valid") })
    });

    let (rounds, per_round) = (10, 2_000);
    let (mut bare, mut ours) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..per_round {
            decode::<Claims>(&token, &decoding, &validation).expect("valid");
        }
        bare += started.elapsed();
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..per_round {
                verifier.verify(&token).await.expect("valid");
            }
        });
        ours += started.elapsed();
    }
    let total = f64::from(rounds * per_round);
    println!("\ninterleaved: {rounds} rounds x {per_round} RS256 verifications");
    println!(
        "  bare jsonwebtoken::decode: {:.2} µs each, {:.0}/s",
        bare.as_secs_f64() * 1e6 / total,
        total / bare.as_secs_f64()
    );
    println!(
        "  en-auth Verifier::verify:  {:.2} µs each, {:.0}/s",
        ours.as_secs_f64() * 1e6 / total,
        total / ours.as_secs_f64()
    );
    println!(
        "  throughput ratio verifier/bare: {:.4}",
        bare.as_secs_f64() / ours.as_secs_f64()
    );
    criterion.final_summary();
}

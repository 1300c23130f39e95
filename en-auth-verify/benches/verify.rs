//! Incoming verification against a bare `jsonwebtoken::decode` with the same RS256 key and the
//! same claims type, in one process (keys cached from a loopback JWKS):
//!
//! - **first sight**: tokens the verifier has not seen (a pool larger than the verified-token
//!   cache, cycled, so every verification misses it and pays for the miss); target ≥ 0.9×
//!   the bare decode's throughput;
//! - **repeat**: the same token again and again, as a machine client sends it for its whole
//!   lifetime, answered from the verified-token cache; target ≥ 20×.
//!
//! Interleaved rounds give the ratios, so machine noise hits both sides alike. The benchmark
//! reports; it asserts nothing.
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
/// Distinct tokens for the first-sight rounds; the cache holds a quarter of them.
const POOL: usize = 256;
const CACHE_CAPACITY: usize = POOL / 4;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn main() {
    // The bare side goes through jsonwebtoken's process default; name it in case a workspace
    // build unified both backends.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
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
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key = EncodingKey::from_rsa_pem(fixture("rsa.pem").as_bytes()).expect("key");
    let tokens: Vec<String> = (0..POOL)
        .map(|n| {
            let claims = serde_json::json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": format!("svc-{n}"), "iat": now,
                "exp": now + 3600, "scope": "read write",
            });
            encode(&header, &claims, &key).expect("token")
        })
        .collect();
    let token = &tokens[0];

    let verifier = Verifier::jwks(server.url("/jwks.json"))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_token_cache(CACHE_CAPACITY, Duration::from_secs(600));
    // Its own cache (clones would share one), with the default settings.
    let repeat = Verifier::jwks(server.url("/jwks.json"))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    runtime
        .block_on(verifier.verify(token))
        .expect("token verifies");
    runtime
        .block_on(repeat.verify(token))
        .expect("token verifies");

    let decoding =
        DecodingKey::from_rsa_pem(fixture("rsa-public.pem").as_bytes()).expect("public key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    decode::<Claims>(token, &decoding, &validation).expect("bare decode");

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    criterion.bench_function("verify/bare_jsonwebtoken_decode", |b| {
        b.iter(|| decode::<Claims>(token, &decoding, &validation).expect("valid"))
    });
    let mut next = 0;
    criterion.bench_function("verify/en_auth_first_sight", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 1) % POOL;
            let token = &tokens[next];
            let verifier = &verifier;
            async move { verifier.verify(token).await.expect("valid") }
        })
    });
    criterion.bench_function("verify/en_auth_repeat", |b| {
        b.to_async(&runtime)
            .iter(|| async { repeat.verify(token).await.expect("valid") })
    });
    criterion.bench_function("verify/en_auth_repeat_shared", |b| {
        b.to_async(&runtime)
            .iter(|| async { repeat.verify_shared(token).await.expect("valid") })
    });

    // Interleaved rounds: bare decode over the pool, first sight over the pool, repeats of one
    // token (by value and shared).
    let (rounds, per_round) = (10u32, 1_024usize);
    let (mut bare, mut first, mut again, mut again_shared) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    // An empty cache (the criterion run above left some of the pool in it); same keys.
    let verifier = verifier.with_token_cache(CACHE_CAPACITY, Duration::from_secs(600));
    for _ in 0..rounds {
        let started = Instant::now();
        for n in 0..per_round {
            decode::<Claims>(&tokens[n % POOL], &decoding, &validation).expect("valid");
        }
        bare += started.elapsed();
        let started = Instant::now();
        runtime.block_on(async {
            for n in 0..per_round {
                verifier.verify(&tokens[n % POOL]).await.expect("valid");
            }
        });
        first += started.elapsed();
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..per_round {
                repeat.verify(token).await.expect("valid");
            }
        });
        again += started.elapsed();
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..per_round {
                repeat.verify_shared(token).await.expect("valid");
            }
        });
        again_shared += started.elapsed();
    }
    let total = f64::from(rounds) * per_round as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total;
    let hits = verifier.token_cache_hits();
    println!("\ninterleaved: {rounds} rounds x {per_round} RS256 tokens each way");
    println!(
        "  bare jsonwebtoken::decode:        {:.3} µs each",
        per(bare)
    );
    println!(
        "  first sight (cache miss):         {:.3} µs each ({hits} of {total} answered from the cache)",
        per(first),
    );
    println!(
        "  repeat, Verifier::verify:         {:.3} µs each",
        per(again)
    );
    println!(
        "  repeat, Verifier::verify_shared:  {:.3} µs each",
        per(again_shared)
    );
    println!(
        "  throughput ratio first sight / bare:   {:.3} (target >= 0.9)",
        bare.as_secs_f64() / first.as_secs_f64()
    );
    println!(
        "  throughput ratio repeat / bare:        {:.1} (target >= 20)",
        bare.as_secs_f64() / again.as_secs_f64()
    );
    println!(
        "  throughput ratio repeat shared / bare: {:.1}",
        bare.as_secs_f64() / again_shared.as_secs_f64()
    );
    criterion.final_summary();
}

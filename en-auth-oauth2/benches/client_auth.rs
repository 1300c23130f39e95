//! What key-based client authentication costs per token request: `authorize()` against a
//! loopback token endpoint with `client_secret_basic` (the baseline) and with
//! `private_key_jwt` signed RS256 (RSA 2048) and ES256 (P-256), and with an assertion issued
//! by someone else read from a file (`assertion_file`, a Kubernetes projected token's size:
//! the file is read for every request), in one process. Token requests
//! happen once per token lifetime, not per API request; this says how much a refresh costs
//! the client. Interleaved rounds give the ratios; the benchmark reports, it asserts nothing.
//!
//! ```text
//! cargo bench -p en-auth-oauth2 --bench client_auth
//! ```

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth_core::{Authorizer, ClientInfo};
use en_auth_oauth2::{ClientAuthentication, ServiceAccountAuthorizer};

fn fixture(name: &str) -> Vec<u8> {
    // The verify crate's test keys: RSA 2048 and P-256, PKCS#8.
    std::fs::read(format!(
        "{}/../en-auth-verify/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(en_auth_testkit::LoopbackServer::start(
            axum::Router::new().fallback(|| async {
                (
                    [("content-type", "application/json")],
                    r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#,
                )
            }),
        ))
        .expect("token endpoint");
    let url = server.url("/token");
    // A projected service-account token's size (~1 KB); the endpoint here does not verify it.
    let assertion = std::env::temp_dir().join(format!("en-auth-bench-{}.jwt", std::process::id()));
    let body = "eyJ".to_owned() + &"x".repeat(1000);
    std::fs::write(&assertion, format!("{body}.{}.sig\n", "y".repeat(40))).expect("assertion file");
    let make = |authentication: ClientAuthentication| {
        ServiceAccountAuthorizer::new(ClientInfo::new("svc", "secret"), &url)
            .with_authentication(authentication)
    };
    let cases = [
        (
            "client_secret_basic",
            make(ClientAuthentication::ClientSecretBasic),
        ),
        (
            "private_key_jwt_rs256",
            make(
                ClientAuthentication::private_key_jwt_pem(fixture("rsa.pem"), "rsa-1")
                    .expect("rsa"),
            ),
        ),
        (
            "private_key_jwt_es256",
            make(ClientAuthentication::private_key_jwt_pem(fixture("ec.pem"), "ec-1").expect("ec")),
        ),
        (
            "client_assertion_file",
            make(ClientAuthentication::assertion_file(&assertion)),
        ),
    ];
    for (name, authorizer) in &cases {
        runtime
            .block_on(authorizer.authorize())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    for (name, authorizer) in &cases {
        criterion.bench_function(&format!("token_request/{name}"), |b| {
            b.to_async(&runtime)
                .iter(|| async { authorizer.authorize().await.expect("token") })
        });
    }

    let (rounds, per_round) = (10, 100);
    let mut totals = vec![Duration::ZERO; cases.len()];
    for _ in 0..rounds {
        for ((_, authorizer), total) in cases.iter().zip(totals.iter_mut()) {
            let started = Instant::now();
            runtime.block_on(async {
                for _ in 0..per_round {
                    authorizer.authorize().await.expect("token");
                }
            });
            *total += started.elapsed();
        }
    }
    let count = f64::from(rounds * per_round);
    println!("\ninterleaved: {rounds} rounds x {per_round} token requests each (loopback)");
    for ((name, _), total) in cases.iter().zip(&totals) {
        println!(
            "  {name:<22} {:>8.1} µs per token request, {:.3}x the client_secret_basic time",
            total.as_secs_f64() * 1e6 / count,
            total.as_secs_f64() / totals[0].as_secs_f64()
        );
    }
    criterion.final_summary();
    let _ = std::fs::remove_file(&assertion);
}

//! DPoP per-request cost: a request through `AuthMiddleware` with a DPoP-bound token (a fresh
//! ES256 proof signed for every request) against the same request with a cached bearer token,
//! in the same process, against the same in-process loopback server. The token endpoint is a
//! tiny in-process one, so no request waits on a token after the first.
//!
//! Reported: criterion timings of one proof's signing and of one request on each path, then
//! interleaved rounds of both clients (machine noise hits both alike) giving wall time and
//! process CPU per request and the ratios DPoP ÷ bearer. It asserts nothing.
//!
//! ```text
//! cargo bench --bench dpop
//! ```

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth::oauth2::{DpopKey, ServiceAccountAuthorizer};
use en_auth::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

const TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU";

struct StaticAuthorizer {
    info: ClientInfo,
}

#[en_auth::async_trait]
impl Authorizer for StaticAuthorizer {
    type Token = BearerToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<BearerToken, Error> {
        Ok(BearerToken::new(TOKEN, Some(Duration::from_secs(3600))))
    }
}

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn round(client: &ClientWithMiddleware, url: &str, n: u32) -> (Duration, Duration) {
    let (cpu, wall) = (process_cpu(), Instant::now());
    for _ in 0..n {
        let response = client.get(url).send().await.expect("request");
        assert!(response.status().is_success());
    }
    (wall.elapsed(), process_cpu().saturating_sub(cpu))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (server, url, token_url) = runtime.block_on(async {
        let router = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(|| async {
                    axum::Json(serde_json::json!({
                        "access_token": TOKEN, "token_type": "DPoP", "expires_in": 3600
                    }))
                }),
            )
            .fallback(|| async { "ok" });
        let server = en_auth_testkit::LoopbackServer::start(router)
            .await
            .expect("server");
        let (url, token_url) = (server.url("/data?page=1"), server.url("/token"));
        (server, url, token_url)
    });
    let bearer_auth = AuthMiddleware::new(StaticAuthorizer {
        info: ClientInfo::new("bench", "secret"),
    });
    let bearer = ClientBuilder::new(reqwest::Client::new())
        .with(bearer_auth.clone())
        .build();
    let dpop_auth = AuthMiddleware::new(
        ServiceAccountAuthorizer::new(ClientInfo::new("bench", "secret"), &token_url).with_dpop(),
    );
    let dpop = ClientBuilder::new(reqwest::Client::new())
        .with(dpop_auth.clone())
        .build();
    runtime.block_on(async {
        bearer_auth.access_token().await.expect("bearer token");
        dpop_auth.access_token().await.expect("dpop token");
    });

    let key = DpopKey::generate().expect("key");
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    criterion.bench_function("dpop_proof_sign", |b| {
        b.iter(|| key.proof("GET", &url, Some(TOKEN), None).expect("proof"))
    });
    let mut group = criterion.benchmark_group("request");
    group.bench_function("bearer_cached", |b| {
        b.to_async(&runtime)
            .iter(|| async { bearer.get(&url).send().await.unwrap() })
    });
    group.bench_function("dpop", |b| {
        b.to_async(&runtime)
            .iter(|| async { dpop.get(&url).send().await.unwrap() })
    });
    group.finish();

    let (rounds, per_round) = (10, 1_000);
    let (mut bearer_wall, mut bearer_cpu, mut dpop_wall, mut dpop_cpu): (
        Duration,
        Duration,
        Duration,
        Duration,
    ) = Default::default();
    runtime.block_on(async {
        for _ in 0..rounds {
            let (w, c) = round(&bearer, &url, per_round).await;
            bearer_wall += w;
            bearer_cpu += c;
            let (w, c) = round(&dpop, &url, per_round).await;
            dpop_wall += w;
            dpop_cpu += c;
        }
    });
    let total = f64::from(rounds * per_round);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total;
    println!("\ninterleaved: {rounds} rounds x {per_round} requests per client");
    println!(
        "  bearer (cached): {:.2} µs/request wall, {:.2} µs/request CPU",
        per(bearer_wall),
        per(bearer_cpu)
    );
    println!(
        "  dpop:            {:.2} µs/request wall, {:.2} µs/request CPU",
        per(dpop_wall),
        per(dpop_cpu)
    );
    println!(
        "  DPoP extra per request: {:.2} µs wall, {:.2} µs CPU",
        per(dpop_wall.saturating_sub(bearer_wall)),
        per(dpop_cpu.saturating_sub(bearer_cpu))
    );
    println!(
        "  wall ratio dpop/bearer: {:.3}   CPU ratio dpop/bearer: {:.3}",
        dpop_wall.as_secs_f64() / bearer_wall.as_secs_f64().max(1e-9),
        dpop_cpu.as_secs_f64() / bearer_cpu.as_secs_f64().max(1e-9)
    );
    criterion.final_summary();
    drop(server);
}

//! The proxy's cached path: `POST /oauth/token` answered from a cached token, with a form body
//! and with a JSON body (what auth0-python sends), against an axum hello-world served by the
//! same process in the same run (target: ≥ 0.8 × its throughput for both).
//!
//! 1. Criterion: one request at a time through reqwest, proxy (form, JSON) vs hello-world.
//! 2. A load generator: `EN_AUTH_PROXY_BENCH_CONCURRENCY` (default 32) connections' worth of
//!    concurrent requests for interleaved rounds of the three; prints requests per second,
//!    p50/p99 latency, the ratios, and the upstream token requests made during the run (1:
//!    both bodies name the same key).
//!
//! ```text
//! cargo bench -p en-auth-proxy --bench proxy
//! ```
//! The benchmark reports; it asserts only that the answers are right.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth_proxy::{Proxy, ProxyConfig};
use en_auth_testkit::{IdpConfig, LocalIdp, LoopbackServer};

const FORM: &str = "grant_type=client_credentials&client_id=bench-client&client_secret=bench-secret-0123456789&audience=https%3A%2F%2Fapi.example.com&scope=read%3Adata";

const JSON: &str = r#"{"client_id":"bench-client","client_secret":"bench-secret-0123456789","audience":"https://api.example.com","grant_type":"client_credentials","organization":null,"scope":"read:data"}"#;

/// What is asked of whom.
#[derive(Clone, Copy)]
enum Target {
    Hello,
    ProxyForm,
    ProxyJson,
}

async fn proxy_once(http: &reqwest::Client, url: &str, json: bool) {
    let (content_type, body) = if json {
        ("application/json", JSON)
    } else {
        ("application/x-www-form-urlencoded", FORM)
    };
    let response = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("proxy answers");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
}

async fn hello_once(http: &reqwest::Client, url: &str) {
    let response = http.get(url).send().await.expect("hello answers");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
}

/// `concurrency` workers sending requests for `duration`; every latency, and the wall time.
async fn load(
    target: Target,
    http: &reqwest::Client,
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let http = http.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < duration {
                    let t = Instant::now();
                    match target {
                        Target::Hello => hello_once(&http, &url).await,
                        Target::ProxyForm => proxy_once(&http, &url, false).await,
                        Target::ProxyJson => proxy_once(&http, &url, true).await,
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    (all, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (idp, proxy_server, hello_server) = runtime.block_on(async {
        let idp = LocalIdp::start(IdpConfig {
            client_id: "bench-client".into(),
            client_secret: "bench-secret-0123456789".into(),
            lifetime: Some(Duration::from_secs(3600)),
        })
        .await
        .expect("idp");
        let proxy = Proxy::new(ProxyConfig::new(idp.token_url())).expect("proxy");
        let proxy_server = LoopbackServer::start(proxy.router())
            .await
            .expect("proxy server");
        let hello =
            axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
        let hello_server = LoopbackServer::start(hello).await.expect("hello server");
        (idp, proxy_server, hello_server)
    });
    let proxy_url = proxy_server.url("/oauth/token");
    let hello_url = hello_server.url("/");
    let http = reqwest::Client::new();
    runtime.block_on(proxy_once(&http, &proxy_url, false)); // warm: the token is cached from here on

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    let mut group = criterion.benchmark_group("sequential");
    group.bench_function("axum_hello_world", |b| {
        b.to_async(&runtime).iter(|| hello_once(&http, &hello_url))
    });
    group.bench_function("proxy_cached_token", |b| {
        b.to_async(&runtime)
            .iter(|| proxy_once(&http, &proxy_url, false))
    });
    group.bench_function("proxy_cached_token_json", |b| {
        b.to_async(&runtime)
            .iter(|| proxy_once(&http, &proxy_url, true))
    });
    group.finish();

    let concurrency: usize = std::env::var("EN_AUTH_PROXY_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let (rounds, per_round) = (3, Duration::from_secs(2));
    let http = Arc::new(reqwest::Client::new());
    let mut hello = (Vec::new(), Duration::ZERO);
    let mut proxy = (Vec::new(), Duration::ZERO);
    let mut proxy_json = (Vec::new(), Duration::ZERO);
    runtime.block_on(async {
        for _ in 0..rounds {
            for (target, url, into) in [
                (Target::Hello, &hello_url, &mut hello),
                (Target::ProxyForm, &proxy_url, &mut proxy),
                (Target::ProxyJson, &proxy_url, &mut proxy_json),
            ] {
                let (l, w) = load(target, &http, url, concurrency, per_round).await;
                into.0.extend(l);
                into.1 += w;
            }
        }
    });
    let report = |name: &str, (latencies, wall): &mut (Vec<Duration>, Duration)| {
        latencies.sort_unstable();
        let rps = latencies.len() as f64 / wall.as_secs_f64();
        println!(
            "  {name:<22} {rps:>9.0} requests/s  p50 {:>7.1} µs  p99 {:>7.1} µs  ({} requests)",
            percentile(latencies, 0.50).as_secs_f64() * 1e6,
            percentile(latencies, 0.99).as_secs_f64() * 1e6,
            latencies.len()
        );
        rps
    };
    println!(
        "\nload: {concurrency} concurrent requests, {rounds} interleaved rounds of {} s each",
        per_round.as_secs()
    );
    let hello_rps = report("axum hello-world", &mut hello);
    let proxy_rps = report("proxy, form, cached", &mut proxy);
    let json_rps = report("proxy, JSON, cached", &mut proxy_json);
    println!(
        "  throughput ratio proxy/hello-world: form {:.3}, JSON {:.3} (target >= 0.8)",
        proxy_rps / hello_rps,
        json_rps / hello_rps
    );
    println!(
        "  upstream token requests during the whole run: {}",
        idp.token_requests()
    );
    criterion.final_summary();
    drop((proxy_server, hello_server, idp));
}

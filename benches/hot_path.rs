//! Hot path: what `AuthMiddleware` costs per request with a cached token.
//!
//! Criterion measures three things: a request through a bare `reqwest-middleware` client, the
//! same request through a client with `AuthMiddleware`, and a cached token read on its own.
//! Then interleaved rounds of both clients give the ratio that matters, measured in the same
//! process so machine noise hits both alike: throughput and process CPU per request,
//! authorized ÷ bare. The benchmark reports; it asserts nothing.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```
//!
//! Wall-clock ratios on a small shared machine move by several percent from run to run. For a
//! deterministic figure, `scripts/bench-instructions` runs this binary under callgrind with
//! `EN_AUTH_HOT_PATH=<client>:<requests>` (one client, no criterion) and compares instructions
//! per request.

use std::time::{Duration, Instant};

use criterion::Criterion;
use en_auth::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

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
        Ok(BearerToken::new(
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU",
            Some(Duration::from_secs(3600)),
        ))
    }
}

/// A middleware that only passes the request on: what any middleware costs.
struct PassThrough;

#[en_auth::async_trait]
impl reqwest_middleware::Middleware for PassThrough {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        next.run(req, extensions).await
    }
}

/// A middleware that only inserts a prebuilt `Authorization` header: the floor for any
/// authorizer on reqwest-middleware (the issue's target: `AuthMiddleware` ≥ 0.99 × this).
struct StaticHeader(http::HeaderValue);

#[en_auth::async_trait]
impl reqwest_middleware::Middleware for StaticHeader {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, self.0.clone());
        next.run(req, extensions).await
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
    // After the command name: state is field 0, utime field 11, stime field 12.
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
    let (idp_guard, url) = runtime.block_on(async {
        let router = axum::Router::new().fallback(|| async { "ok" });
        let server = en_auth_testkit::LoopbackServer::start(router)
            .await
            .expect("server");
        let url = server.url("/data");
        (server, url)
    });
    let bare = ClientBuilder::new(reqwest::Client::new()).build();
    let auth = AuthMiddleware::new(StaticAuthorizer {
        info: ClientInfo::new("bench", "secret"),
    });
    let authorized = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    runtime.block_on(auth.access_token()).expect("token cached");
    let passthrough = ClientBuilder::new(reqwest::Client::new())
        .with(PassThrough)
        .build();
    let no_replay = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone().replay_on_unauthorized(false))
        .build();
    // The same header set once as a default header: what sending a token costs by itself.
    let core = en_auth::AdapterCore::new(auth.cache().clone(), "bench");
    let token = core.cached_token().expect("cached token");
    let static_header = ClientBuilder::new(
        reqwest::Client::builder()
            .default_headers(
                [(http::header::AUTHORIZATION, token.authorization().clone())]
                    .into_iter()
                    .collect(),
            )
            .build()
            .expect("client"),
    )
    .build();
    let static_header_middleware = ClientBuilder::new(reqwest::Client::new())
        .with(StaticHeader(token.authorization().clone()))
        .build();

    if let Ok(spec) = std::env::var("EN_AUTH_HOT_PATH") {
        // Instruction-count mode: one warm-up request, then N requests through one client.
        let (mode, n) = spec
            .split_once(':')
            .expect("EN_AUTH_HOT_PATH=<client>:<requests>");
        let client = match mode {
            "bare" => &bare,
            "passthrough" => &passthrough,
            "authorized" => &authorized,
            "authorized-no-replay" => &no_replay,
            "static-header" => &static_header,
            "static-header-middleware" => &static_header_middleware,
            other => panic!("unknown client {other}"),
        };
        let n: u32 = n.parse().expect("request count");
        runtime.block_on(async {
            round(client, &url, 1).await;
            round(client, &url, n).await;
        });
        return;
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4));
    let mut group = criterion.benchmark_group("request");
    group.bench_function("bare", |b| {
        b.to_async(&runtime)
            .iter(|| async { bare.get(&url).send().await.unwrap() })
    });
    group.bench_function("authorized", |b| {
        b.to_async(&runtime)
            .iter(|| async { authorized.get(&url).send().await.unwrap() })
    });
    group.finish();
    criterion.bench_function("cached_token_read", |b| {
        b.iter(|| core.cached_token().unwrap())
    });
    // Interleaved rounds: the ratio, with noise shared by both sides.
    let (rounds, per_round) = (10, 2_000);
    let (mut bare_wall, mut bare_cpu, mut auth_wall, mut auth_cpu) = Default::default();
    let (mut plain_wall, mut plain_cpu): (Duration, Duration) = Default::default();
    let (mut pass_wall, mut pass_cpu): (Duration, Duration) = Default::default();
    runtime.block_on(async {
        for _ in 0..rounds {
            let (w, c) = round(&bare, &url, per_round).await;
            bare_wall += w;
            bare_cpu += c;
            let (w, c) = round(&authorized, &url, per_round).await;
            auth_wall += w;
            auth_cpu += c;
            let (w, c) = round(&passthrough, &url, per_round).await;
            pass_wall += w;
            pass_cpu += c;
            let (w, c) = round(&no_replay, &url, per_round).await;
            plain_wall += w;
            plain_cpu += c;
        }
    });
    let total = f64::from(rounds * per_round);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total;
    let (bw, aw, bc, ac): (Duration, Duration, Duration, Duration) =
        (bare_wall, auth_wall, bare_cpu, auth_cpu);
    println!("\ninterleaved: {rounds} rounds x {per_round} requests per client");
    println!(
        "  bare:       {:.2} µs/request wall, {:.2} µs/request CPU",
        per(bw),
        per(bc)
    );
    println!(
        "  authorized: {:.2} µs/request wall, {:.2} µs/request CPU",
        per(aw),
        per(ac)
    );
    println!(
        "  authorized, replay off: {:.2} µs/request wall, {:.2} µs/request CPU",
        per(plain_wall),
        per(plain_cpu)
    );
    println!(
        "  throughput ratio authorized/bare: {:.4}",
        bw.as_secs_f64() / aw.as_secs_f64()
    );
    println!(
        "  CPU-efficiency ratio authorized/bare: {:.4}",
        bc.as_secs_f64() / ac.as_secs_f64().max(1e-9)
    );
    println!(
        "  throughput ratio (replay off)/bare: {:.4}",
        bw.as_secs_f64() / plain_wall.as_secs_f64()
    );
    println!(
        "  CPU-efficiency ratio (replay off)/bare: {:.4}",
        bc.as_secs_f64() / plain_cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "  pass-through middleware: {:.2} µs/request wall, {:.2} µs/request CPU",
        per(pass_wall),
        per(pass_cpu)
    );
    println!(
        "  throughput ratio pass-through/bare: {:.4}",
        bw.as_secs_f64() / pass_wall.as_secs_f64()
    );
    println!(
        "  throughput ratio authorized/pass-through: {:.4}",
        pass_wall.as_secs_f64() / aw.as_secs_f64()
    );
    criterion.final_summary();
    drop(idp_guard);
}

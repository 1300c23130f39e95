//! What `AuthLayer` costs per request on a hyper client with a cached token, against the
//! floor for any tower authorizer: a layer that only inserts a fixed, prebuilt
//! `Authorization` header. Also a bare client. Interleaved rounds in one process give the
//! ratios (noise hits every client alike); the benchmark reports, it asserts nothing.
//!
//! ```text
//! cargo bench -p en-auth-tower --bench layer
//! ```
//!
//! For a deterministic figure, `scripts/bench-instructions` runs this binary under callgrind
//! with `EN_AUTH_LAYER=<client>:<requests>` and compares instructions per request.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use en_auth_core::{Authorizer, BearerToken, ClientInfo, Error, TokenCache};
use en_auth_tower::{AuthLayer, BoxError};
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

struct StaticAuthorizer {
    info: ClientInfo,
}

#[en_auth_core::async_trait]
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

/// The floor: a layer that inserts one prebuilt header and nothing else.
#[derive(Clone)]
struct StaticHeader<S> {
    inner: S,
    value: HeaderValue,
}

impl<S, B> Service<Request<B>> for StaticHeader<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, self.value.clone());
        self.inner.call(request)
    }
}

type Body = Empty<Bytes>;
type HyperClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

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

async fn round<S>(service: &S, url: &str, n: u32) -> Duration
where
    S: Service<Request<Body>, Response = Response<hyper::body::Incoming>> + Clone,
    S::Error: Into<BoxError> + std::fmt::Debug,
{
    let cpu = process_cpu();
    for _ in 0..n {
        let request = Request::get(url).body(Empty::new()).expect("request");
        let response = service.clone().oneshot(request).await.expect("response");
        assert!(response.status().is_success());
    }
    process_cpu().saturating_sub(cpu)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (server, url) = runtime.block_on(async {
        let router = axum::Router::new().fallback(|| async { "ok" });
        let server = en_auth_testkit::LoopbackServer::start(router)
            .await
            .expect("server");
        let url = server.url("/data");
        (server, url)
    });
    let client = || -> HyperClient { Client::builder(TokioExecutor::new()).build_http() };
    let cache = TokenCache::new(StaticAuthorizer {
        info: ClientInfo::new("bench", "secret"),
    });
    let token = runtime.block_on(cache.get()).expect("token cached");
    let bare = client();
    let static_header = StaticHeader {
        inner: client(),
        value: token.authorization().clone(),
    };
    let authorized = AuthLayer::from_cache(cache.clone()).layer(client());
    let no_replay = AuthLayer::from_cache(cache)
        .replay_on_unauthorized(false)
        .layer(client());

    if let Ok(spec) = std::env::var("EN_AUTH_LAYER") {
        let (mode, n) = spec
            .split_once(':')
            .expect("EN_AUTH_LAYER=<client>:<requests>");
        let n: u32 = n.parse().expect("request count");
        runtime.block_on(async {
            match mode {
                "bare" => {
                    round(&bare, &url, 1).await;
                    round(&bare, &url, n).await
                }
                "static-header" => {
                    round(&static_header, &url, 1).await;
                    round(&static_header, &url, n).await
                }
                "authorized" => {
                    round(&authorized, &url, 1).await;
                    round(&authorized, &url, n).await
                }
                "authorized-no-replay" => {
                    round(&no_replay, &url, 1).await;
                    round(&no_replay, &url, n).await
                }
                other => panic!("unknown client {other}"),
            }
        });
        return;
    }

    let (rounds, per_round) = (10, 2_000);
    let mut cpu = [Duration::ZERO; 4];
    let started = Instant::now();
    runtime.block_on(async {
        for _ in 0..rounds {
            cpu[0] += round(&bare, &url, per_round).await;
            cpu[1] += round(&static_header, &url, per_round).await;
            cpu[2] += round(&authorized, &url, per_round).await;
            cpu[3] += round(&no_replay, &url, per_round).await;
        }
    });
    let total = f64::from(rounds * per_round);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total;
    println!(
        "interleaved: {rounds} rounds x {per_round} requests per client in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (name, c) in [
        ("bare hyper client", cpu[0]),
        ("static-header layer", cpu[1]),
        ("AuthLayer", cpu[2]),
        ("AuthLayer, replay off", cpu[3]),
    ] {
        println!("  {name:<24} {:.2} µs CPU/request", per(c));
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  CPU-efficiency AuthLayer / static-header layer: {:.4}",
        ratio(cpu[1], cpu[2])
    );
    println!(
        "  CPU-efficiency AuthLayer (replay off) / static-header layer: {:.4}",
        ratio(cpu[1], cpu[3])
    );
    println!(
        "  CPU-efficiency AuthLayer / bare: {:.4}",
        ratio(cpu[0], cpu[2])
    );
    drop(server);
}

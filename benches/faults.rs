//! The lifecycle under fire, measured: for each fault scenario, how many calls the provider
//! received and how long callers waited (p50 / max). A report, not a test: it asserts
//! nothing. Uses only the long-standing public API (`TokenCache::builder`, `policy`, `get`),
//! so the same file runs against older versions for a before/after table.
//!
//! ```text
//! cargo bench --bench faults
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use en_auth::{
    Authorizer, BearerToken, ClientInfo, Error, LifecyclePolicy, RetryPolicy, TokenCache,
};

#[derive(Clone, Copy)]
enum Answer {
    Token(Duration),
    ServerError,
    InvalidClient,
    RateLimited3s,
    HugeRetryAfter,
    ZeroLifetime,
}

struct Script {
    latency: Duration,
    answer: Answer,
}

struct Provider {
    info: ClientInfo,
    script: std::sync::Mutex<Script>,
    calls: AtomicU64,
}

#[derive(Clone)]
struct Handle(Arc<Provider>);

#[en_auth::async_trait]
impl Authorizer for Handle {
    type Token = BearerToken;
    fn client_info(&self) -> &ClientInfo {
        &self.0.info
    }
    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let (latency, answer) = {
            let s = self.0.script.lock().unwrap_or_else(|e| e.into_inner());
            (s.latency, s.answer)
        };
        tokio::time::sleep(latency).await;
        match answer {
            Answer::Token(lifetime) => Ok(BearerToken::new(format!("t{n}"), Some(lifetime))),
            Answer::ServerError => Err(Error::ServerError {
                status: 503,
                retry_after: None,
            }),
            Answer::InvalidClient => Err(Error::InvalidClient {
                status: Some(401),
                description: None,
            }),
            Answer::RateLimited3s => Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
                reset_at: None,
            }),
            Answer::HugeRetryAfter => Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(10_000_000_000_000)),
                reset_at: None,
            }),
            Answer::ZeroLifetime => Ok(BearerToken::new(format!("t{n}"), Some(Duration::ZERO))),
        }
    }
}

fn provider(latency: Duration, answer: Answer) -> Arc<Provider> {
    Arc::new(Provider {
        info: ClientInfo::new("bench", "secret"),
        script: std::sync::Mutex::new(Script { latency, answer }),
        calls: AtomicU64::new(0),
    })
}

fn set(p: &Provider, latency: Duration, answer: Answer) {
    *p.script.lock().unwrap_or_else(|e| e.into_inner()) = Script { latency, answer };
}

fn cache(p: &Arc<Provider>, policy: LifecyclePolicy) -> TokenCache<Handle> {
    TokenCache::builder(Handle(Arc::clone(p)))
        .policy(policy)
        .build()
}

struct Row {
    scenario: &'static str,
    calls: u64,
    ok: usize,
    latencies: Vec<Duration>,
}

impl Row {
    fn print(mut self) {
        self.latencies.sort();
        let p50 = self
            .latencies
            .get(self.latencies.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = self.latencies.last().copied().unwrap_or_default();
        println!(
            "| {:<58} | {:>5} | {:>5}/{:<5} | {:>8.1} | {:>8.1} |",
            self.scenario,
            self.calls,
            self.ok,
            self.latencies.len(),
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
}

async fn timed(c: &TokenCache<Handle>) -> (bool, Duration) {
    let started = Instant::now();
    let ok = c.get().await.is_ok();
    (ok, started.elapsed())
}

async fn concurrent(c: &TokenCache<Handle>, n: usize) -> Vec<(bool, Duration)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = c.clone();
        set.spawn(async move { timed(&c).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or((false, Duration::ZERO)));
    }
    out
}

fn row(scenario: &'static str, p: &Provider, results: Vec<(bool, Duration)>) -> Row {
    Row {
        scenario,
        calls: p.calls.load(Ordering::SeqCst),
        ok: results.iter().filter(|(ok, _)| *ok).count(),
        latencies: results.into_iter().map(|(_, d)| d).collect(),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

async fn deadlines() -> Row {
    let p = provider(Duration::from_secs(1), Answer::Token(HOUR));
    let c = cache(&p, LifecyclePolicy::default());
    let started = Instant::now();
    let mut results = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let ok = matches!(
            tokio::time::timeout(Duration::from_millis(300), c.get()).await,
            Ok(Ok(_))
        );
        results.push((ok, t.elapsed()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    row(
        "caller deadline 300 ms, provider 1 s, 5 s loop",
        &p,
        results,
    )
}

async fn hanging_then_failing() -> Row {
    let p = provider(Duration::from_millis(1500), Answer::ServerError);
    let c = cache(
        &p,
        LifecyclePolicy::default().with_retry(RetryPolicy::none()),
    );
    let results = concurrent(&c, 50).await;
    row(
        "50 callers, provider hangs 1.5 s then 503 (no retries)",
        &p,
        results,
    )
}

async fn permanent() -> Row {
    let p = provider(Duration::from_millis(20), Answer::InvalidClient);
    let c = cache(&p, LifecyclePolicy::default());
    let mut results = Vec::new();
    for _ in 0..100 {
        results.push(timed(&c).await);
    }
    row(
        "permanent error (invalid_client), 100 sequential",
        &p,
        results,
    )
}

async fn rate_limited() -> Row {
    let p = provider(Duration::ZERO, Answer::RateLimited3s);
    let c = cache(
        &p,
        LifecyclePolicy::default().with_retry(RetryPolicy::none()),
    );
    let started = Instant::now();
    let mut results = Vec::new();
    while started.elapsed() < Duration::from_millis(2800) {
        results.extend(concurrent(&c, 20).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    row(
        "429 Retry-After: 3, 20 callers every 100 ms for 2.8 s",
        &p,
        results,
    )
}

async fn refresh_ahead() -> Row {
    let p = provider(Duration::ZERO, Answer::Token(Duration::from_secs(4)));
    let c = cache(&p, LifecyclePolicy::default());
    let _ = c.get().await;
    set(
        &p,
        Duration::from_secs(2),
        Answer::Token(Duration::from_secs(4)),
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let results = concurrent(&c, 50).await;
    row(
        "50 requests in the refresh gap, provider takes 2 s",
        &p,
        results,
    )
}

async fn failing_refresh() -> Row {
    let p = provider(Duration::ZERO, Answer::Token(Duration::from_secs(4)));
    let c = cache(
        &p,
        LifecyclePolicy::default().with_retry(RetryPolicy::none()),
    );
    let _ = c.get().await;
    set(&p, Duration::ZERO, Answer::ServerError);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let started = Instant::now();
    let mut results = Vec::new();
    while started.elapsed() < Duration::from_millis(1800) {
        results.push(timed(&c).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    row(
        "refresh failing (503) while the token is valid, 1.8 s",
        &p,
        results,
    )
}

async fn huge_retry_after() -> Row {
    let p = provider(Duration::ZERO, Answer::HugeRetryAfter);
    let c = cache(&p, LifecyclePolicy::default());
    let mut results = Vec::new();
    for _ in 0..20 {
        let handle = tokio::spawn({
            let c = c.clone();
            async move { timed(&c).await }
        });
        // A panic inside the lifecycle shows up as a failed task.
        results.push(handle.await.unwrap_or((false, Duration::ZERO)));
    }
    row("Retry-After: 10000000000000, 20 sequential", &p, results)
}

async fn zero_lifetime() -> Row {
    let p = provider(Duration::ZERO, Answer::ZeroLifetime);
    let c = cache(&p, LifecyclePolicy::default());
    let mut results = Vec::new();
    for _ in 0..100 {
        results.push(timed(&c).await);
    }
    row("expires_in: 0, 100 sequential", &p, results)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| {:<58} | {:>5} | {:>11} | {:>8} | {:>8} |",
        "scenario", "calls", "ok/callers", "p50 ms", "max ms"
    );
    println!(
        "|{:-<60}|{:-<7}|{:-<13}|{:-<10}|{:-<10}|",
        "", "", "", "", ""
    );
    runtime.block_on(async {
        let scenarios: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Row>>>> = vec![
            Box::pin(deadlines()),
            Box::pin(hanging_then_failing()),
            Box::pin(permanent()),
            Box::pin(rate_limited()),
            Box::pin(refresh_ahead()),
            Box::pin(failing_refresh()),
            Box::pin(huge_retry_after()),
            Box::pin(zero_lifetime()),
        ];
        for scenario in scenarios {
            scenario.await.print();
        }
    });
}

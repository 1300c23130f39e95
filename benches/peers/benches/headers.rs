//! One request's authorization headers from a warm token: en-auth next to huskarl.
//!
//! Both libraries get an OAuth2 client-credentials token from the same token endpoint, a tiny
//! axum server on 127.0.0.1 in this process, once, before anything is timed. Then each call
//! builds the headers one outgoing request needs, from the warm cache:
//!
//! - en-auth: what its adapters (`AuthMiddleware`, `AuthLayer`) do per request —
//!   `TokenCache::get()`, then the cached token's prebuilt `Authorization` value cloned into a
//!   `HeaderMap` (plus the client's `X-Api-Key`, prebuilt once, in the `en-auth+api-key` case).
//! - huskarl: `HttpAuthorizer::get_headers(&Method::GET, &uri)` over an `InMemoryTokenCache` of a
//!   `GrantTokenSource` of a `ClientCredentialsGrant`: its documented request loop's first step.
//! - baseline: a prebuilt `Authorization` `HeaderValue` cloned into a new `HeaderMap`, the floor
//!   for producing that header map at all.
//!
//! Without an API key both sides produce the same map: one `authorization: Bearer <token>`
//! header, marked sensitive (checked before timing).
//!
//! Criterion measures each; then interleaved rounds of all of them (order rotated every round,
//! so drift on a noisy machine hits them alike) give the medians and ratios the script prints,
//! on lines starting with `peers:`. The benchmark reports; it asserts nothing about timings.
//!
//! ```text
//! cargo bench --manifest-path benches/peers/Cargo.toml      # or ./scripts/bench-peers
//! ```
//!
//! `EN_AUTH_PEERS_ROUNDS=<rounds>:<calls>` sets the interleaved rounds (default 41:50000);
//! `EN_AUTH_PEERS_CRITERION=0` skips criterion and runs only the rounds.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::Criterion;
use en_auth::oauth2::ServiceAccountAuthorizer;
use en_auth::{API_KEY_HEADER, ClientInfo, TokenCache};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use huskarl::authorizer::HttpAuthorizer;
use huskarl::cache::{GrantTokenSource, InMemoryRefreshTokenStore, InMemoryTokenCache};
use huskarl::core::client_auth::ClientSecret;
use huskarl::core::secrets::{ProvidedSecret, SecretString};
use huskarl::grant::client_credentials::{
    ClientCredentialsGrant, ClientCredentialsGrantParameters,
};

/// A JWT-shaped access token of a realistic length.
const ACCESS_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoLWtleS0xIn0.\
eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xL3Rva2VuIiwic3ViIjoiYmVuY2gtY2xpZW50QGNsaWVudHMiLCJhdWQiOiJo\
dHRwczovL2FwaS5leGFtcGxlLmNvbSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwfQ.\
c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU";

/// The token endpoint: every POST gets the same bearer token, valid for an hour.
async fn token_server(issued: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let issued = Arc::clone(&issued);
            async move {
                issued.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({
                    "access_token": ACCESS_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": 3600,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{address}/token")
}

/// en-auth's per-request work in its adapters, into a fresh map as huskarl returns one.
struct EnAuth {
    cache: TokenCache<ServiceAccountAuthorizer>,
    api_key: Option<HeaderValue>,
}

impl EnAuth {
    async fn new(token_url: &str, api_key: Option<&str>) -> Self {
        let mut info = ClientInfo::new("bench-client", "bench-secret");
        if let Some(key) = api_key {
            info = info.with_api_key(key);
        }
        // Prebuilt once, as the adapters do when they are built.
        let api_key = info.api_key_header().expect("API key header");
        let cache = TokenCache::new(ServiceAccountAuthorizer::new(info, token_url));
        cache.get().await.expect("en-auth: first token");
        Self { cache, api_key }
    }

    async fn headers(&self) -> HeaderMap {
        let token = self.cache.get().await.expect("en-auth: cached token");
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, token.authorization().clone());
        if let Some(key) = &self.api_key {
            headers.insert(HeaderName::from_static("x-api-key"), key.clone());
        }
        headers
    }
}

async fn huskarl_authorizer(token_url: &str, uri: &Uri) -> HttpAuthorizer {
    let grant = ClientCredentialsGrant::builder()
        .token_endpoint(token_url.parse().expect("token endpoint"))
        .client_id("bench-client")
        .client_auth(ClientSecret::new(ProvidedSecret::new(SecretString::new(
            "bench-secret",
        ))))
        .http_client(huskarl_reqwest::ReqwestClient::from(reqwest::Client::new()))
        .build();
    let source = GrantTokenSource::builder()
        .grant(grant)
        .grant_parameters(ClientCredentialsGrantParameters::builder().build())
        .refresh_store(InMemoryRefreshTokenStore::default())
        .build();
    let cache = InMemoryTokenCache::builder().source(source).build();
    let authorizer = HttpAuthorizer::builder().cache(cache).build();
    authorizer
        .get_headers(&Method::GET, uri)
        .await
        .expect("huskarl: first token");
    authorizer
}

fn baseline(prebuilt: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, prebuilt.clone());
    headers
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Baseline,
    EnAuth,
    EnAuthApiKey,
    Huskarl,
}

const SIDES: [(Side, &str); 4] = [
    (Side::Baseline, "baseline"),
    (Side::EnAuth, "en-auth"),
    (Side::EnAuthApiKey, "en-auth+api-key"),
    (Side::Huskarl, "huskarl"),
];

struct Contenders {
    prebuilt: HeaderValue,
    en_auth: EnAuth,
    en_auth_key: EnAuth,
    huskarl: HttpAuthorizer,
    uri: Uri,
}

impl Contenders {
    /// Nanoseconds per call over `calls` calls of one side.
    async fn round(&self, side: Side, calls: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..calls {
            match side {
                Side::Baseline => drop(black_box(baseline(black_box(&self.prebuilt)))),
                Side::EnAuth => drop(black_box(self.en_auth.headers().await)),
                Side::EnAuthApiKey => drop(black_box(self.en_auth_key.headers().await)),
                Side::Huskarl => drop(black_box(
                    self.huskarl
                        .get_headers(&Method::GET, black_box(&self.uri))
                        .await
                        .expect("huskarl: cached token"),
                )),
            }
        }
        start.elapsed().as_nanos() as f64 / f64::from(calls)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let issued = Arc::new(AtomicUsize::new(0));
    let uri: Uri = "https://api.example.com/v1/orders".parse().expect("uri");
    let contenders = runtime.block_on(async {
        let token_url = token_server(Arc::clone(&issued)).await;
        Contenders {
            prebuilt: {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {ACCESS_TOKEN}")).expect("value");
                value.set_sensitive(true);
                value
            },
            en_auth: EnAuth::new(&token_url, None).await,
            en_auth_key: EnAuth::new(&token_url, Some("bench-api-key")).await,
            huskarl: huskarl_authorizer(&token_url, &uri).await,
            uri,
        }
    });

    // Same headers on both sides (without an API key), and both from the warm cache.
    let (ours, theirs) = runtime.block_on(async {
        (
            contenders.en_auth.headers().await,
            contenders
                .huskarl
                .get_headers(&Method::GET, &contenders.uri)
                .await
                .expect("huskarl headers"),
        )
    });
    assert_eq!(ours, theirs, "both sides must produce the same headers");
    assert_eq!(ours, baseline(&contenders.prebuilt));
    assert!(ours[AUTHORIZATION].is_sensitive() && theirs[AUTHORIZATION].is_sensitive());
    assert_eq!(
        runtime.block_on(contenders.en_auth_key.headers())[API_KEY_HEADER],
        "bench-api-key"
    );
    assert_eq!(
        issued.load(Ordering::SeqCst),
        3,
        "one token request per cache"
    );

    if std::env::var("EN_AUTH_PEERS_CRITERION").as_deref() != Ok("0") {
        let mut criterion = Criterion::default().configure_from_args();
        let mut group = criterion.benchmark_group("headers");
        for (side, name) in SIDES {
            let contenders = &contenders;
            group.bench_function(name, |b| {
                b.to_async(&runtime).iter(|| async move {
                    match side {
                        Side::Baseline => black_box(baseline(black_box(&contenders.prebuilt))),
                        Side::EnAuth => contenders.en_auth.headers().await,
                        Side::EnAuthApiKey => contenders.en_auth_key.headers().await,
                        Side::Huskarl => contenders
                            .huskarl
                            .get_headers(&Method::GET, black_box(&contenders.uri))
                            .await
                            .expect("huskarl: cached token"),
                    }
                })
            });
        }
        group.finish();
        criterion.final_summary();
    }

    // Interleaved rounds: per round, ns/call of every side, in a rotated order.
    let (rounds, calls) = std::env::var("EN_AUTH_PEERS_ROUNDS")
        .ok()
        .and_then(|v| {
            let (r, c) = v.split_once(':')?;
            Some((r.parse::<usize>().ok()?, c.parse::<u32>().ok()?))
        })
        .unwrap_or((41, 50_000));
    let mut per_side: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); SIDES.len()];
    runtime.block_on(async {
        for (side, _) in SIDES {
            contenders.round(side, calls / 10 + 1).await; // warm caches and branch predictors
        }
        for round in 0..rounds {
            for k in 0..SIDES.len() {
                let i = (round + k) % SIDES.len();
                per_side[i].push(contenders.round(SIDES[i].0, calls).await);
            }
        }
    });
    assert_eq!(
        issued.load(Ordering::SeqCst),
        3,
        "no token request while timing"
    );

    let index = |side: Side| SIDES.iter().position(|(s, _)| *s == side).expect("side");
    let paired = |a: Side, b: Side| {
        let mut ratios: Vec<f64> = per_side[index(a)]
            .iter()
            .zip(&per_side[index(b)])
            .map(|(x, y)| x / y)
            .collect();
        median(&mut ratios)
    };
    println!("peers: {rounds} interleaved rounds of {calls} calls each; medians of ns/call:");
    for (i, (_, name)) in SIDES.iter().enumerate() {
        let mut values = per_side[i].clone();
        let (lo, hi) = (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "peers:   {name:<16} {:8.1} ns/call (min {lo:.1}, max {hi:.1})",
            median(&mut values)
        );
    }
    println!("peers: ratios (median of the per-round ratios; lower is faster for the first):");
    for (a, b, label) in [
        (Side::EnAuth, Side::Huskarl, "en-auth / huskarl"),
        (Side::EnAuth, Side::Baseline, "en-auth / baseline"),
        (Side::Huskarl, Side::Baseline, "huskarl / baseline"),
        (
            Side::EnAuthApiKey,
            Side::Huskarl,
            "en-auth+api-key / huskarl (one header more)",
        ),
        (
            Side::EnAuthApiKey,
            Side::Baseline,
            "en-auth+api-key / baseline",
        ),
    ] {
        println!("peers:   {label:<44} {:.3}", paired(a, b));
    }
}

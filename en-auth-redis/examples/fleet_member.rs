//! One process of a fleet, for the multi-process tests in `tests/fleet.rs` (and a small
//! demonstration of wiring a Redis store into the middleware).
//!
//! Configured through the environment:
//! `FLEET_TOKEN_URL`, `FLEET_CLIENT_ID`, `FLEET_CLIENT_SECRET`, `FLEET_API_URL` (required),
//! `FLEET_AUDIENCE`, `FLEET_SCOPES` (space-separated), `FLEET_REDIS_URL` (no store without it),
//! `FLEET_ENCRYPTION_KEY` (64 hex digits), `FLEET_EXPIRATION_GAP_MS`, `FLEET_LOCK_WAIT_MS`, `FLEET_MAX_ELAPSED_MS`,
//! `FLEET_BREAKER_COOLDOWN_MS`, `FLEET_COMMAND_TIMEOUT_MS`, `FLEET_CONNECT_TIMEOUT_MS`, and `EN_AUTH_FLEET_KEY` (the fleet key,
//! required with `FLEET_REDIS_URL`: `RedisTokenStore::builder(url).connect()` reads it and
//! fails without it).
//!
//! `FLEET_GRANT=password` logs a user in with `PasswordAuthorizer` (`FLEET_USERNAME`,
//! `FLEET_PASSWORD`) and renews with refresh tokens, for the refresh-rotation test in
//! `tests/fleet_refresh.rs`; the default is the client-credentials `ServiceAccountAuthorizer`.
//!
//! Prints `READY <build id>` once started (the id tells its source apart from another
//! checkout's build sharing the target directory: the tests compare it with their own).
//! Reads commands from stdin, one per line, and answers each with one JSON line:
//! `round N` (N concurrent API requests), `token` (one token), `stats`, `fleet-fetches`
//! (the fleet-wide fetch counter in Redis), `wait-redis`, `quit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use en_auth_core::{
    AuthMiddleware, Authorizer, ClientInfo, LifecyclePolicy, RetryPolicy, TokenCache,
    UserCredentials,
};
use en_auth_oauth2::{PasswordAuthorizer, ServiceAccountAuthorizer};
use en_auth_redis::{EncryptionKeys, RedisTokenStore};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// FNV-1a over `bytes`, continuing from `hash` (a compile-time build id).
const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// This build: its package version and this very file, hashed.
const BUILD_ID: u64 = fnv1a(
    fnv1a(0xcbf2_9ce4_8422_2325, env!("CARGO_PKG_VERSION").as_bytes()),
    include_str!("fleet_member.rs").as_bytes(),
);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn millis_env(name: &str) -> Option<Duration> {
    env(name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn hex_key(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn required(name: &str) -> Result<String, String> {
    env(name).ok_or_else(|| format!("{name} is not set"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = ClientInfo::new(
        required("FLEET_CLIENT_ID")?,
        required("FLEET_CLIENT_SECRET")?,
    );
    let token_url = required("FLEET_TOKEN_URL")?;
    let scopes = env("FLEET_SCOPES").map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>());
    if env("FLEET_GRANT").as_deref() == Some("password") {
        let credentials =
            UserCredentials::new(required("FLEET_USERNAME")?, required("FLEET_PASSWORD")?);
        let mut authorizer = PasswordAuthorizer::new(info, credentials, token_url);
        if let Some(scopes) = scopes {
            authorizer = authorizer.with_scopes(scopes);
        }
        return serve(authorizer).await;
    }
    let mut authorizer = ServiceAccountAuthorizer::new(info, token_url);
    if let Some(audience) = env("FLEET_AUDIENCE") {
        authorizer = authorizer.with_audience(audience);
    }
    if let Some(scopes) = scopes {
        authorizer = authorizer.with_scopes(scopes);
    }
    serve(authorizer).await
}

/// Runs the member with `authorizer` until `quit` or the end of stdin.
async fn serve<A>(authorizer: A) -> Result<(), Box<dyn std::error::Error>>
where
    A: Authorizer,
    A::Token: Serialize + DeserializeOwned,
{
    let api_url = required("FLEET_API_URL")?;

    let mut policy = LifecyclePolicy::default();
    if let Some(gap) = millis_env("FLEET_EXPIRATION_GAP_MS") {
        policy = policy.with_expiration_gap(gap);
    }
    if let Some(wait) = millis_env("FLEET_LOCK_WAIT_MS") {
        policy = policy.with_store_lock_wait(wait);
    }
    if let Some(elapsed) = millis_env("FLEET_MAX_ELAPSED_MS") {
        policy = policy.with_retry(RetryPolicy {
            max_elapsed: elapsed,
            ..RetryPolicy::default()
        });
    }
    let mut builder = TokenCache::builder(authorizer).policy(policy);
    let mut store = None;
    if let Some(url) = env("FLEET_REDIS_URL") {
        let mut config = RedisTokenStore::builder(url);
        if let Some(timeout) = millis_env("FLEET_COMMAND_TIMEOUT_MS") {
            config = config.command_timeout(timeout);
        }
        if let Some(timeout) = millis_env("FLEET_CONNECT_TIMEOUT_MS") {
            config = config.connect_timeout(timeout);
        }
        if let Some(cooldown) = millis_env("FLEET_BREAKER_COOLDOWN_MS") {
            config = config.breaker_cooldown(cooldown);
        }
        if let Some(key) = env("FLEET_ENCRYPTION_KEY") {
            config = config.encryption(EncryptionKeys::new("test-key", &hex_key(&key))?);
        }
        let connected = Arc::new(config.connect().await?);
        builder = builder.store(connected.clone());
        store = Some(connected);
    }
    let auth = AuthMiddleware::from_cache(builder.build());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();

    println!("READY {BUILD_ID:016x}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let answer = match words.next() {
            Some("round") => {
                let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
                let commands_before = store.as_ref().map_or(0, |s| s.stats().commands);
                let started = Instant::now();
                let requests = (0..n).map(|_| {
                    let client = client.clone();
                    let url = api_url.clone();
                    tokio::spawn(async move {
                        match client.get(url).send().await {
                            Ok(response) if response.status().is_success() => Ok(()),
                            Ok(response) => Err(format!("HTTP {}", response.status())),
                            Err(err) => Err(err.to_string()),
                        }
                    })
                });
                let results = futures_util::future::join_all(requests).await;
                let mut failed = 0;
                let mut first_error = None;
                for result in results {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            failed += 1;
                            first_error.get_or_insert(err);
                        }
                        Err(err) => {
                            failed += 1;
                            first_error.get_or_insert(err.to_string());
                        }
                    }
                }
                json!({
                    "ok": n - failed, "failed": failed, "first_error": first_error,
                    "ms": started.elapsed().as_millis() as u64,
                    "redis_commands": store.as_ref().map_or(0, |s| s.stats().commands) - commands_before,
                })
            }
            Some("token") => {
                let started = Instant::now();
                let result = auth.cache().get().await;
                json!({
                    "ok": result.is_ok(),
                    "error": result.err().map(|e| e.to_string()),
                    "ms": started.elapsed().as_millis() as u64,
                })
            }
            Some("stats") => {
                let s = auth.stats();
                let r = store.as_ref().map(|s| s.stats()).unwrap_or_default();
                json!({
                    "authorizations": s.authorizations, "refreshes": s.refreshes,
                    "fetches": s.fetches, "store_hits": s.store_hits, "waits": s.waits,
                    "lock_waits": s.lock_waits, "lock_timeouts": s.lock_timeouts,
                    "shared_failures": s.shared_failures, "store_errors": s.store_errors,
                    "invalidations": s.invalidations,
                    "remote_invalidations": s.remote_invalidations, "replays": s.replays,
                    "refreshes_from_store": s.refreshes_from_store,
                    "redis_commands": r.commands, "breaker_trips": r.breaker_trips,
                    "events_received": r.events_received,
                })
            }
            Some("fleet-fetches") => {
                let key = auth.cache().authorizer().cache_key();
                match &store {
                    Some(store) => match store.fleet_fetches(&key).await {
                        Ok(n) => json!({ "n": n }),
                        Err(err) => json!({ "error": err.to_string() }),
                    },
                    None => json!({ "n": 0 }),
                }
            }
            Some("wait-redis") => {
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut ok = false;
                while let Some(store) = &store {
                    if store.ping().await.is_ok() {
                        ok = true;
                        break;
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                json!({ "ok": ok })
            }
            Some("quit") | None => break,
            Some(other) => json!({ "error": format!("unknown command {other}") }),
        };
        println!("{answer}");
    }
    Ok(())
}

//! Refresh tokens across a fleet (docs/fleet.md, "Refresh tokens across a fleet"): three
//! OS processes (the `fleet_member` example with `PasswordAuthorizer`) share one
//! `redis-server` and one user session at oidc-provider's `rotating-password-client`, whose
//! every refresh rotates the refresh token and which revokes the whole grant when a rotated
//! refresh token comes back. The members take turns, so the one asking has not seen the
//! last rotation: it must refresh from the token in Redis, not from its own.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use common::{Member, ask_all, sum};
use en_auth_testkit::{LoopbackServer, OidcProvider, RedisServer};
use futures_util::future::join_all;

/// Access tokens live 16 s and are stale after 8 s (half their life).
const TTL_SECS: u64 = 16;
/// A member asks this long after the previous one finished: the stored token is stale by
/// then (8 s) and still alive (16 s), so it is in Redis but not served as is. A turn may
/// take up to `TTL_SECS - TURN` (7 s) before the token the next one needs has expired.
const TURN: Duration = Duration::from_secs(9);
const ROUND: &str = "round 20";

/// An API that asks the provider about every bearer token (introspection, RFC 7662): 200
/// for an active token, 401 for one the provider revoked or let expire.
struct IntrospectingApi {
    server: LoopbackServer,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    active: AtomicU64,
    inactive: AtomicU64,
}

struct ApiState {
    counts: Arc<Counts>,
    introspection_url: String,
    http: reqwest::Client,
}

impl IntrospectingApi {
    async fn start(provider: &OidcProvider) -> Self {
        let counts = Arc::new(Counts::default());
        let state = Arc::new(ApiState {
            counts: Arc::clone(&counts),
            introspection_url: format!("{}/token/introspection", provider.issuer()),
            http: reqwest::Client::new(),
        });
        let router = Router::new().fallback(introspect).with_state(state);
        Self {
            server: LoopbackServer::start(router).await.expect("api starts"),
            counts,
        }
    }

    fn url(&self) -> String {
        self.server.url("/data")
    }

    fn active(&self) -> u64 {
        self.counts.active.load(Ordering::SeqCst)
    }

    fn inactive(&self) -> u64 {
        self.counts.inactive.load(Ordering::SeqCst)
    }
}

async fn introspect(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let active = match token {
        Some(token) => {
            let (id, secret) = OidcProvider::ROTATING_PASSWORD_CLIENT;
            let answer: serde_json::Value = state
                .http
                .post(&state.introspection_url)
                .basic_auth(id, Some(secret))
                .form(&[("token", token)])
                .send()
                .await
                .expect("introspection")
                .json()
                .await
                .expect("introspection answer");
            answer["active"] == true
        }
        None => false,
    };
    if active {
        state.counts.active.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    } else {
        state.counts.inactive.fetch_add(1, Ordering::SeqCst);
        StatusCode::UNAUTHORIZED
    }
}

fn member_env(
    provider: &OidcProvider,
    api: &IntrospectingApi,
    redis: &RedisServer,
) -> Vec<(&'static str, String)> {
    let (id, secret) = OidcProvider::ROTATING_PASSWORD_CLIENT;
    let (user, password) = OidcProvider::USER;
    vec![
        ("FLEET_GRANT", "password".to_owned()),
        ("FLEET_TOKEN_URL", provider.token_url()),
        ("FLEET_CLIENT_ID", id.to_owned()),
        ("FLEET_CLIENT_SECRET", secret.to_owned()),
        ("FLEET_USERNAME", user.to_owned()),
        ("FLEET_PASSWORD", password.to_owned()),
        ("FLEET_SCOPES", "openid offline_access".to_owned()),
        ("FLEET_API_URL", api.url()),
        ("FLEET_REDIS_URL", redis.url()),
        // The serialized token holds the refresh token: encrypted at rest.
        ("FLEET_ENCRYPTION_KEY", "17".repeat(32)),
        // Stale after half the token's life (the gap is clamped to it).
        ("FLEET_EXPIRATION_GAP_MS", (TTL_SECS * 1000).to_string()),
        // As in tests/fleet.rs: a slow command on a loaded machine must not make a member
        // fetch on its own.
        ("FLEET_COMMAND_TIMEOUT_MS", "2000".to_owned()),
        ("FLEET_CONNECT_TIMEOUT_MS", "3000".to_owned()),
    ]
}

fn assert_round_ok(answers: &[serde_json::Value], what: &str) {
    assert_eq!(sum(answers, "failed"), 0, "{what}: {answers:?}");
    assert_eq!(sum(answers, "ok"), 20 * answers.len() as u64, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_rotating_refresh_token_without_spending_it_twice() {
    let redis = RedisServer::start();
    let provider = OidcProvider::start(TTL_SECS).await;
    let api = IntrospectingApi::start(&provider).await;
    let env = member_env(&provider, &api, &redis);
    // `Member::start` checks that the `fleet_member` example is this checkout's build.
    let mut members = join_all((0..3).map(|_| Member::start(&env))).await;

    // One login for the fleet: every member holds its token.
    assert_round_ok(&ask_all(&mut members, ROUND).await, "login");
    assert_eq!(provider.grants("password").await, 1);

    // The members take turns, one per token lifetime. From the second turn on, the member
    // asking holds a token from two or three rotations ago (expired), whose refresh token
    // the others spent since; the newest one is in the token in Redis, stale by then.
    const TURNS: usize = 6;
    let mut turn_ms = Vec::new();
    for turn in 0..TURNS {
        // Real time: the tokens' lifetimes run at oidc-provider.
        tokio::time::sleep(TURN).await;
        let started = std::time::Instant::now();
        let answer = members[turn % 3].ask(ROUND).await;
        let elapsed = started.elapsed();
        turn_ms.push(elapsed.as_millis());
        assert_round_ok(std::slice::from_ref(&answer), &format!("turn {turn}"));
        // The next member needs the token this turn stored to be alive when it asks.
        let margin = Duration::from_secs(TTL_SECS).saturating_sub(TURN);
        assert!(
            elapsed < margin,
            "turn {turn} took {elapsed:?}, more than the {margin:?} this test leaves: the \
             machine is too slow for its timing (a slow turn, not a regression); turns so far \
             (ms): {turn_ms:?}"
        );
    }
    // Then all three at once: one refresh, the others take its token.
    tokio::time::sleep(TURN).await;
    assert_round_ok(&ask_all(&mut members, ROUND).await, "together");

    let stats = ask_all(&mut members, "stats").await;
    let (logins, refreshes) = (
        provider.grants("password").await,
        provider.grants("refresh_token").await,
    );
    let refused = provider.grant_errors("invalid_grant").await;
    eprintln!(
        "FLEET REFRESH 3 processes, {} lifetimes of {TTL_SECS} s: provider password grants \
         {logins}, refresh_token grants {refreshes}, invalid_grant {refused}; API requests \
         accepted {} / refused {}; refreshes from the stored token {}; turn ms {turn_ms:?}",
        TURNS + 2,
        api.active(),
        api.inactive(),
        sum(&stats, "refreshes_from_store"),
    );
    assert_eq!(
        refused, 0,
        "no refresh token was refused (none spent twice)"
    );
    assert_eq!(logins, 1, "one login for the fleet: the session lived on");
    assert_eq!(
        refreshes,
        TURNS as u64 + 1,
        "one refresh per lifetime for the whole fleet"
    );
    assert_eq!(
        api.inactive(),
        0,
        "every token sent was active at the provider"
    );
    assert_eq!(api.active(), 20 * (3 + TURNS as u64 + 3));
    assert_eq!(sum(&stats, "authorizations"), 1, "{stats:?}");
    assert_eq!(sum(&stats, "refreshes"), TURNS as u64 + 1, "{stats:?}");
    assert!(
        sum(&stats, "refreshes_from_store") >= TURNS as u64 - 1,
        "the members behind refreshed from the stored token: {stats:?}"
    );
    assert_eq!(sum(&stats, "lock_timeouts"), 0);
}

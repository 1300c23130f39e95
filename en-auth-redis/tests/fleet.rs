//! The fleet, as separate OS processes (the `fleet_member` example), sharing one
//! `redis-server`: one token request per token lifetime for the whole fleet, surviving a
//! Redis outage, a killed lock holder, a failing holder, and a 401 seen by one process.

mod common;

use std::time::Duration;

use common::{Member, TestApi, ask_all, dump, sum};
use en_auth_testkit::{Fault, IdpConfig, LocalIdp, OidcProvider, RedisServer};
use futures_util::future::join_all;

const ROUND: &str = "round 200";

fn oidc_env(
    provider: &OidcProvider,
    api: &TestApi,
    redis: Option<&RedisServer>,
) -> Vec<(&'static str, String)> {
    let (id, secret) = OidcProvider::BASIC_CLIENT;
    let mut env = vec![
        ("FLEET_TOKEN_URL", provider.token_url()),
        ("FLEET_CLIENT_ID", id.to_owned()),
        ("FLEET_CLIENT_SECRET", secret.to_owned()),
        ("FLEET_AUDIENCE", OidcProvider::API.to_owned()),
        ("FLEET_SCOPES", "read:data".to_owned()),
        ("FLEET_API_URL", api.url()),
        ("FLEET_BREAKER_COOLDOWN_MS", "500".to_owned()),
        // Stale 1 s before expiry: a slow round on a loaded machine must not trigger a
        // refresh ahead of time (each round starts after the previous token expired).
        ("FLEET_EXPIRATION_GAP_MS", "1000".to_owned()),
    ];
    if let Some(redis) = redis {
        env.push(("FLEET_REDIS_URL", redis.url()));
        env.push(("FLEET_ENCRYPTION_KEY", "42".repeat(32)));
        env.extend(generous_redis_timeouts());
    }
    env
}

fn idp_env(
    idp: &LocalIdp,
    api: &TestApi,
    redis: &RedisServer,
    secret: &str,
    max_elapsed_ms: u64,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("FLEET_TOKEN_URL", idp.token_url()),
        ("FLEET_CLIENT_ID", idp.client_id()),
        ("FLEET_CLIENT_SECRET", secret.to_owned()),
        ("FLEET_API_URL", api.url()),
        ("FLEET_REDIS_URL", redis.url()),
        // Lock TTL = max(1 s, retries' deadline + 5 s).
        ("FLEET_LOCK_WAIT_MS", "1000".to_owned()),
        ("FLEET_MAX_ELAPSED_MS", max_elapsed_ms.to_string()),
    ];
    env.extend(generous_redis_timeouts());
    env
}

/// Redis timeouts for members on a loaded 2-core machine (16 processes at once): one command
/// slower than the 200 ms default would trip a member's circuit breaker and make it fetch on
/// its own, which these tests count as a sharing failure. A stopped Redis refuses connections
/// at once, so the outage tests do not wait on these.
fn generous_redis_timeouts() -> [(&'static str, String); 2] {
    [
        ("FLEET_COMMAND_TIMEOUT_MS", "2000".to_owned()),
        ("FLEET_CONNECT_TIMEOUT_MS", "3000".to_owned()),
    ]
}

async fn start_members(n: usize, env: &[(&'static str, String)]) -> Vec<Member> {
    join_all((0..n).map(|_| Member::start(env))).await
}

/// Waits past one 6 s token lifetime.
async fn let_tokens_expire() {
    tokio::time::sleep(Duration::from_millis(6_500)).await;
}

fn assert_no_failures(answers: &[serde_json::Value], what: &str) {
    assert_eq!(
        sum(answers, "failed"),
        0,
        "{what}: failed API requests: {answers:?}"
    );
    assert_eq!(sum(answers, "ok"), 200 * answers.len() as u64, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_fetch_once_per_token_lifetime_and_survive_a_redis_outage() {
    let mut redis = RedisServer::start();
    let (shared_provider, solo_provider) =
        tokio::join!(OidcProvider::start(6), OidcProvider::start(6));
    let api = TestApi::start().await;
    let mut fleet = start_members(8, &oidc_env(&shared_provider, &api, Some(&redis))).await;
    // The same fleet without Redis, against a provider of its own, for comparison.
    let mut solo = start_members(8, &oidc_env(&solo_provider, &api, None)).await;

    let mut waited_ms = Vec::new();
    for lifetime in 0..3 {
        if lifetime > 0 {
            let_tokens_expire().await;
        }
        let (shared, alone) = tokio::join!(ask_all(&mut fleet, ROUND), ask_all(&mut solo, ROUND));
        assert_no_failures(&shared, "with Redis");
        assert_no_failures(&alone, "without Redis");
        waited_ms.extend(shared.iter().map(|a| a["ms"].as_u64().unwrap_or(0)));
    }
    let with_redis = shared_provider.token_requests().await;
    let without_redis = solo_provider.token_requests().await;
    let stats = ask_all(&mut fleet, "stats").await;
    eprintln!(
        "FLEET 8 processes x 200 requests x 3 lifetimes: provider token requests with Redis \
         {with_redis}, without {without_redis}; store hits {}, lock waits {}; round wall ms \
         (incl. waiting on another process's fetch) {waited_ms:?}",
        sum(&stats, "store_hits"),
        sum(&stats, "lock_waits"),
    );
    assert_eq!(
        with_redis, 3,
        "one token request per lifetime for the whole fleet"
    );
    assert_eq!(
        without_redis, 24,
        "one per process per lifetime without sharing"
    );
    assert_eq!(
        sum(&stats, "authorizations") + sum(&stats, "refreshes"),
        3,
        "provider calls counted by the fleet"
    );
    assert_eq!(sum(&stats, "lock_timeouts"), 0);
    assert_eq!(
        fleet[0].ask("fleet-fetches").await["n"],
        3,
        "the fleet-wide counter in Redis agrees"
    );
    // Encrypted at rest: neither the client secret nor any token the API saw is in Redis.
    let stored = dump(&redis);
    assert!(stored.contains(":v1:tok:oauth2:"), "{stored}");
    assert!(!stored.contains(OidcProvider::BASIC_CLIENT.1));
    for token in api.tokens() {
        assert!(!stored.contains(&token), "plaintext token in Redis");
    }

    // Redis goes away: every process fetches for itself; no request fails.
    redis.stop();
    let_tokens_expire().await;
    let outage = ask_all(&mut fleet, ROUND).await;
    assert_no_failures(&outage, "Redis down");
    let during_outage = shared_provider.token_requests().await - with_redis;
    assert!(
        (1..=8).contains(&during_outage),
        "at most one token request per process per lifetime while Redis is down, got {during_outage}"
    );
    let stats = ask_all(&mut fleet, "stats").await;
    assert!(sum(&stats, "store_errors") >= 8, "{stats:?}");

    // Redis is back: sharing resumes.
    redis.restart();
    for answer in ask_all(&mut fleet, "wait-redis").await {
        assert_eq!(answer["ok"], true, "member did not reconnect to Redis");
    }
    let_tokens_expire().await;
    let back = ask_all(&mut fleet, ROUND).await;
    assert_no_failures(&back, "Redis back");
    let after = shared_provider.token_requests().await - with_redis - during_outage;
    eprintln!(
        "FLEET outage: {during_outage} token requests while Redis was down (8 processes), \
         {after} after it came back"
    );
    assert_eq!(after, 1, "sharing resumed after Redis came back");
    // Redis lost its data when it stopped; the counter restarted with it.
    assert_eq!(fleet[3].ask("fleet-fetches").await["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_is_replaced_within_the_lock_ttl() {
    let redis = RedisServer::start();
    let idp = LocalIdp::start(IdpConfig {
        lifetime: Some(Duration::from_secs(120)),
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let api = TestApi::start().await;
    // The holder's token request hangs, and the holder dies while holding the lock.
    idp.push_faults([Fault::Delay(Duration::from_secs(60))]);
    // The holder's fetch deadline (5 s) leaves ample time to kill it while it holds the lock
    // (a holder that gave up first would publish its failure instead). Lock TTL 10 s.
    let env = idp_env(&idp, &api, &redis, &idp.client_secret(), 5000);
    let mut members = start_members(3, &env).await;
    members[0].send("token").await;
    for _ in 0..200 {
        if idp.token_requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(idp.token_requests(), 1, "the holder asked the provider");
    members[1].send("token").await;
    members[2].send("token").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    members[0].kill().await;
    let b = members[1].answer().await;
    let c = members[2].answer().await;
    assert_eq!(b["ok"], true, "{b:?}");
    assert_eq!(c["ok"], true, "{c:?}");
    eprintln!(
        "KILLED HOLDER: waiters got a token after {} ms and {} ms (lock TTL 10 s + one fetch)",
        b["ms"], c["ms"]
    );
    for waiter in [&b, &c] {
        let waited = waiter["ms"].as_u64().expect("ms");
        assert!(
            waited <= 10_000 + 5_000,
            "a waiter got its token within the lock TTL + one fetch: {waited} ms"
        );
    }
    let stats = vec![members[1].ask("stats").await, members[2].ask("stats").await];
    assert_eq!(
        idp.token_requests(),
        2,
        "one take-over fetch, not one per waiter"
    );
    assert_eq!(sum(&stats, "authorizations"), 1);
    assert_eq!(sum(&stats, "store_hits"), 1);
    assert_eq!(sum(&stats, "lock_waits"), 2);
    assert_eq!(
        sum(&stats, "lock_timeouts"),
        0,
        "the lock was taken over, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_permanent_failure_reaches_waiters_in_other_processes() {
    let redis = RedisServer::start();
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    let api = TestApi::start().await;
    // A wrong secret, answered slowly, so that the others are waiting when it fails.
    idp.push_faults([Fault::Delay(Duration::from_millis(1500))]);
    // Lock TTL 8 s; the holder's answer comes well within its fetch deadline.
    let env = idp_env(&idp, &api, &redis, "not-the-secret", 3000);
    let mut members = start_members(4, &env).await;
    members[0].send("token").await;
    for _ in 0..200 {
        if idp.token_requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    members[1].send("token").await;
    members[2].send("token").await;
    let holder = members[0].answer().await;
    let waiters = vec![members[1].answer().await, members[2].answer().await];
    assert_eq!(holder["ok"], false);
    for waiter in &waiters {
        assert_eq!(waiter["ok"], false, "{waiter:?}");
        assert!(
            waiter["error"]
                .as_str()
                .unwrap_or("")
                .contains("invalid client"),
            "the waiter sees the holder's error: {waiter:?}"
        );
    }
    for waiter in &waiters {
        let waited = waiter["ms"].as_u64().expect("ms");
        assert!(
            waited < 6_000,
            "waiters learn the failure when it happens, not after the 8 s lock: {waited} ms"
        );
    }
    // A process arriving later backs off with the fleet instead of asking again.
    let late = members[3].ask("token").await;
    assert_eq!(late["ok"], false);
    eprintln!(
        "FAILED HOLDER: holder failed after {} ms; waiters learned it after {} ms and {} ms \
         (lock TTL 8 s); a late process after {} ms",
        holder["ms"], waiters[0]["ms"], waiters[1]["ms"], late["ms"]
    );
    let mut stats = Vec::new();
    for member in &mut members[1..] {
        stats.push(member.ask("stats").await);
    }
    assert_eq!(
        idp.token_requests(),
        1,
        "only the holder asked the provider"
    );
    assert_eq!(sum(&stats, "authorizations"), 0);
    assert_eq!(sum(&stats, "shared_failures"), 3);
    assert_eq!(sum(&stats, "lock_timeouts"), 0, "nobody sat out the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rejected_in_one_process_is_dropped_by_the_others() {
    let redis = RedisServer::start();
    let idp = LocalIdp::start(IdpConfig {
        lifetime: Some(Duration::from_secs(120)),
        ..IdpConfig::default()
    })
    .await
    .unwrap();
    let api = TestApi::start().await;
    let env = idp_env(&idp, &api, &redis, &idp.client_secret(), 1000);
    let mut members = start_members(2, &env).await;
    assert_eq!(members[0].ask("round 1").await["failed"], 0);
    assert_eq!(members[1].ask("round 1").await["failed"], 0);
    assert_eq!(idp.token_requests(), 1);
    let first = api.tokens();
    assert_eq!(first.len(), 1);
    api.reject(&first[0]);
    // Process 0 gets the 401, drops the token, fetches a new one and replays.
    assert_eq!(members[0].ask("round 1").await["failed"], 0);
    assert_eq!(idp.token_requests(), 2);
    // Process 1 hears of it and drops its copy without ever sending it again.
    let mut heard = false;
    for _ in 0..100 {
        if members[1].ask("stats").await["remote_invalidations"] == 1 {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard, "the other process dropped the rejected token");
    assert_eq!(members[1].ask("round 5").await["failed"], 0);
    assert_eq!(api.count(401), 1, "only the first process ever met the 401");
    assert_eq!(idp.token_requests(), 2, "the new token was shared");
    let stats = members[1].ask("stats").await;
    assert_eq!(stats["authorizations"], 0);
    assert_eq!(stats["store_hits"], 2);
}

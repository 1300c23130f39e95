//! Guessers against customers (issue 17, items 2, 3 and 6), against the testkit's `LocalIdp`:
//! a customer's real secret is never locked out by others' guesses, made-up client ids have
//! a bounded budget of upstream requests, and the cache stays within its bound in bytes
//! without renewing anything to rank entries. Upstream requests are counted at the IdP.
//!
//! On paused time: windows and token lifetimes follow tokio's clock.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use en_auth_core::MemoryTokenStore;
use en_auth_proxy::{LimitStore, LocalLimits, Proxy, ProxyConfig};
use en_auth_testkit::{IdpConfig, LocalIdp};
use secrecy::SecretSlice;
use support::{Answer, Running};

const CUSTOMER: &str = "cust-0";
const SECRET: &str = "cust-0-real-secret-9d1e";

async fn idp(secret: &str) -> LocalIdp {
    LocalIdp::start(IdpConfig {
        client_id: CUSTOMER.into(),
        client_secret: secret.into(),
        lifetime: Some(Duration::from_secs(3600)),
    })
    .await
    .unwrap()
}

fn fleet_key() -> SecretSlice<u8> {
    SecretSlice::from(b"a-fleet-wide-proxy-secret-key-0123456789".to_vec())
}

/// A proxy on `token_url` sharing `limits` (and the fleet's secret key).
async fn instance(token_url: String, limits: &Arc<LocalLimits>) -> Running {
    let proxy = Proxy::builder(ProxyConfig::new(token_url))
        .limits(Arc::clone(limits) as Arc<dyn LimitStore>)
        .secret_key(fleet_key())
        .build()
        .unwrap();
    Running::start_proxy(proxy).await
}

async fn guesses(proxy: &Running, n: usize) {
    for i in 0..n {
        let answer = proxy.post_token(CUSTOMER, &format!("guess-{i}"), &[]).await;
        assert_eq!(answer.error(), "invalid_client", "guess {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_instance_sharing_the_limits_never_locks_the_customer_out() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    // An earlier instance (or this one before a restart) saw the customer's secret accepted.
    let earlier = instance(idp.token_url(), &limits).await;
    earlier.post_token(CUSTOMER, SECRET, &[]).await.token();
    drop(earlier);
    assert_eq!(idp.token_requests(), 1);

    let fresh = instance(idp.token_url(), &limits).await;
    guesses(&fresh, 5).await;
    assert_eq!(idp.token_requests(), 6);
    // The customer's real secret: served (the upstream asked once, it is known good).
    assert_eq!(fresh.post_token(CUSTOMER, SECRET, &[]).await.status, 200);
    assert_eq!(idp.token_requests(), 7);
    // Guessers stay locked out, at no upstream cost.
    let locked = fresh.post_token(CUSTOMER, "guess-6", &[]).await;
    assert_eq!((locked.status, locked.error()), (429, "too_many_requests"));
    assert!(locked.retry_after().is_some_and(|s| (1..=30).contains(&s)));
    let locked = fresh
        .post_token(CUSTOMER, "guess-7", &[("audience", "other")])
        .await;
    assert_eq!(locked.status, 429);
    assert_eq!(
        idp.token_requests(),
        7,
        "no upstream request for a locked-out guess"
    );
    // The customer, for another audience too.
    assert_eq!(
        fresh
            .post_token(CUSTOMER, SECRET, &[("audience", "other")])
            .await
            .status,
        200
    );
    assert_eq!(idp.token_requests(), 8);
}

#[tokio::test(start_paused = true)]
async fn without_shared_limits_a_token_in_the_shared_store_proves_the_secret() {
    let idp = idp(SECRET).await;
    let store = Arc::new(MemoryTokenStore::new());
    let start = || {
        Proxy::builder(ProxyConfig::new(idp.token_url()))
            .store(Arc::clone(&store) as Arc<dyn en_auth_core::TokenStore>)
            .build()
            .unwrap()
    };
    let earlier = Running::start_proxy(start()).await;
    earlier.post_token(CUSTOMER, SECRET, &[]).await.token();
    drop(earlier);
    // A restarted instance: its limits (in memory) are new, the token store is shared.
    let fresh = Running::start_proxy(start()).await;
    guesses(&fresh, 5).await;
    assert_eq!(fresh.post_token(CUSTOMER, "guess-6", &[]).await.status, 429);
    assert_eq!(idp.token_requests(), 6);
    assert_eq!(fresh.post_token(CUSTOMER, SECRET, &[]).await.status, 200);
    assert_eq!(idp.token_requests(), 6, "served from the shared store");
    // Remembered as accepted: a new key for the customer goes upstream despite the lock-out.
    assert_eq!(
        fresh
            .post_token(CUSTOMER, SECRET, &[("audience", "b")])
            .await
            .status,
        200
    );
    assert_eq!(idp.token_requests(), 7);
    assert_eq!(fresh.post_token(CUSTOMER, "guess-7", &[]).await.status, 429);
    assert_eq!(idp.token_requests(), 7);
}

#[tokio::test(start_paused = true)]
async fn two_accepted_secrets_of_one_client_both_stay_exempt() {
    // A rotation: the old secret was accepted by one upstream, the new one by another
    // (LocalIdp knows one secret; two of them stand for before and after the rotation).
    const NEW: &str = "cust-0-rotated-secret-44aa";
    let old_idp = idp(SECRET).await;
    let new_idp = idp(NEW).await;
    let limits = Arc::new(LocalLimits::default());
    let a = instance(old_idp.token_url(), &limits).await;
    a.post_token(CUSTOMER, SECRET, &[]).await.token();
    let b = instance(new_idp.token_url(), &limits).await;
    b.post_token(CUSTOMER, NEW, &[]).await.token();

    let c = instance(new_idp.token_url(), &limits).await;
    guesses(&c, 5).await;
    assert_eq!(new_idp.token_requests(), 6);
    assert_eq!(c.post_token(CUSTOMER, "guess-6", &[]).await.status, 429);
    // Both secrets still reach the upstream: the new one is served, the old one gets the
    // upstream's own answer (this upstream no longer accepts it), not the lock-out.
    assert_eq!(c.post_token(CUSTOMER, NEW, &[]).await.status, 200);
    let old = c.post_token(CUSTOMER, SECRET, &[]).await;
    assert_eq!(old.error(), "invalid_client");
    assert_eq!(new_idp.token_requests(), 8);
    assert_eq!(c.post_token(CUSTOMER, "guess-7", &[]).await.status, 429);
    assert_eq!(new_idp.token_requests(), 8);
}

/// A proxy served with its peers' addresses (as `Proxy::serve` does); its base URL.
async fn serve_with_sources(proxy: Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(proxy.serve(listener, std::future::pending()));
    base
}

/// A client whose requests come from `127.0.0.<n>`.
fn client_from(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, n]))
        .build()
        .unwrap()
}

async fn ask(http: &reqwest::Client, base: &str, id: &str, secret: &str, aud: &str) -> Answer {
    Answer::read(
        http.post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("audience", aud),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Sleeps to one second into a fresh minute of the proxy's clock (the wall clock at its
/// start, advanced by tokio's paused clock), so that a test does not straddle two windows.
async fn fresh_minute() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    tokio::time::sleep(Duration::from_millis(61_000 - into)).await;
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_made_up_client_ids_costs_a_bounded_number_of_upstream_requests() {
    let idp = idp(SECRET).await;
    let config = ProxyConfig::new(idp.token_url());
    let (global, per_source) = (
        config.unknown_client_per_minute,
        config.unknown_client_per_source_per_minute,
    );
    assert_eq!((global, per_source), (60, 10), "the documented defaults");
    let proxy = Proxy::new(config).unwrap();
    let base = serve_with_sources(proxy.clone()).await;
    fresh_minute().await;
    let customer = client_from(1);
    ask(&customer, &base, CUSTOMER, SECRET, "a").await.token();
    assert_eq!(idp.token_requests(), 1);

    // 1,000 requests with made-up ids from one address: 10 reach the upstream.
    let attacker = client_from(2);
    let mut refused = 0;
    for n in 0..1000 {
        let answer = ask(&attacker, &base, &format!("made-up-{n}"), "x", "a").await;
        if answer.status == 429 {
            assert_eq!(answer.error(), "too_many_requests");
            assert!(answer.retry_after().is_some_and(|s| (1..=60).contains(&s)));
            refused += 1;
        }
        if n == 500 {
            // The customer is not starved: a new key is fetched during the flood.
            assert_eq!(
                ask(&customer, &base, CUSTOMER, SECRET, "b").await.status,
                200
            );
        }
    }
    assert_eq!(refused, 1000 - per_source);
    assert_eq!(idp.token_requests(), 2 + per_source);

    // 1,000 more spread over 10 addresses: the global budget (60 a minute, 10 of it spent)
    // caps them all.
    let sources: Vec<_> = (10..20).map(client_from).collect();
    for n in 0..1000 {
        let http = &sources[n % sources.len()];
        ask(http, &base, &format!("spread-{n}"), "x", "a").await;
    }
    // (The customer's own first request, before it was known, was charged too.)
    assert_eq!(idp.token_requests(), 1 + global);
    assert_eq!(
        ask(&customer, &base, CUSTOMER, SECRET, "c").await.status,
        200
    );
    assert_eq!(idp.token_requests(), 2 + global);
    // The next minute brings a new budget.
    tokio::time::sleep(Duration::from_secs(60)).await;
    ask(&attacker, &base, "made-up-next", "x", "a").await;
    assert_eq!(idp.token_requests(), 3 + global);
    // Made-up ids got no metric label of their own.
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("made-up") && !text.contains("spread-"));
}

#[tokio::test(start_paused = true)]
async fn the_cache_stays_within_its_bytes_and_eviction_renews_nothing() {
    let idp = idp(SECRET).await;
    idp.set_lifetime(Some(Duration::from_secs(40)));
    let mut config = ProxyConfig::new(idp.token_url());
    config.max_cache_bytes = 64 * 1024;
    config.min_remaining_secs = 5; // renewal from 10 s before expiry
    let max = config.max_cache_bytes;
    let proxy = Running::start(config).await;
    let audience = |n: usize| format!("{n:04}-{}", "a".repeat(1990));
    for n in 0..20 {
        proxy
            .post_token(CUSTOMER, SECRET, &[("audience", &audience(n))])
            .await
            .token();
        let bytes = proxy.proxy.cached_bytes();
        assert!(bytes <= max, "{bytes} bytes cached after {n}");
    }
    assert_eq!(idp.token_requests(), 20);
    let kept = (0..20)
        .filter(|n| idp.token_requests_for(&audience(*n)) == 1)
        .count();
    assert_eq!(kept, 20);
    // Every cached token is now due for renewal; new keys evict them. Ranking must not start
    // a renewal: the upstream sees the new keys' requests only.
    tokio::time::sleep(Duration::from_secs(32)).await;
    for n in 20..40 {
        proxy
            .post_token(CUSTOMER, SECRET, &[("audience", &audience(n))])
            .await
            .token();
        assert!(proxy.proxy.cached_bytes() <= max);
    }
    tokio::task::yield_now().await;
    assert_eq!(idp.token_requests(), 40, "eviction renewed nothing");
    let text = proxy.metrics_text().await;
    let evictions = support::sample(&text, "en_auth_proxy_evictions_total").unwrap();
    assert!(evictions >= 20.0, "{evictions} evictions");
    assert!(proxy.proxy.cached_bytes() > max / 2);
}

/// Auth0 answers a wrong client secret with 401 `access_denied` rather than `invalid_client`:
/// those refusals count towards the lock-out as well, so guessers against an Auth0 tenant are
/// locked out after 5 and cost no further upstream request.
#[tokio::test(start_paused = true)]
async fn auth0_style_401_access_denied_counts_towards_the_lock_out() {
    let idp = idp(SECRET).await;
    let denied = r#"{"error":"access_denied","error_description":"Unauthorized"}"#;
    idp.push_faults((0..5).map(|_| en_auth_testkit::Fault::json(401, denied)));
    let limits = Arc::new(LocalLimits::default());
    let proxy = instance(idp.token_url(), &limits).await;
    for i in 0..5 {
        let answer = proxy.post_token(CUSTOMER, &format!("guess-{i}"), &[]).await;
        assert_eq!(
            (answer.status, answer.error()),
            (401, "access_denied"),
            "guess {i}"
        );
    }
    assert_eq!(idp.token_requests(), 5);
    let locked = proxy.post_token(CUSTOMER, "guess-5", &[]).await;
    assert_eq!((locked.status, locked.error()), (429, "too_many_requests"));
    assert_eq!(
        idp.token_requests(),
        5,
        "a locked-out guess costs no upstream request"
    );
}

/// A cold burst: 40 concurrent first requests of one customer with a quota of 30 join one
/// upstream fetch, and are charged one by one once it succeeds: exactly 30 tokens, 10 × 429.
#[tokio::test(start_paused = true)]
async fn a_cold_burst_is_held_to_the_quota() {
    let idp = idp(SECRET).await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.quota_per_minute = 30;
    let proxy = Running::start(config).await;
    // One second into a fresh minute of the proxy's clock (see `fresh_minute` in local_idp.rs).
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    tokio::time::sleep(Duration::from_millis(61_000 - into)).await;
    let answers =
        futures_util::future::join_all((0..40).map(|_| proxy.post_token(CUSTOMER, SECRET, &[])))
            .await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 429 && a.error() == "too_many_requests")
        .count();
    assert_eq!((served, refused), (30, 10));
    assert_eq!(idp.token_requests(), 1);
}

/// Concurrent wrong secrets for a customer on record, against a slow provider: they are
/// counted before they go upstream, so at most 5 reach it, not one per guess.
#[tokio::test(start_paused = true)]
async fn concurrent_guesses_are_counted_before_they_go_upstream() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = instance(idp.token_url(), &limits).await;
    proxy.post_token(CUSTOMER, SECRET, &[]).await.token();
    idp.push_faults((0..40).map(|_| en_auth_testkit::Fault::Delay(Duration::from_secs(2))));
    let secrets: Vec<String> = (0..40).map(|i| format!("guess-{i}")).collect();
    let answers = futures_util::future::join_all(
        secrets
            .iter()
            .map(|secret| proxy.post_token(CUSTOMER, secret, &[])),
    )
    .await;
    let locally = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(idp.token_requests() - 1, 5, "guesses that went upstream");
    assert_eq!(locally, 35, "refused locally");
}

/// A proxy whose requests end after 1 s while the provider takes 5 s to answer.
async fn impatient(idp: &LocalIdp, limits: &Arc<LocalLimits>) -> Running {
    let mut config = ProxyConfig::new(idp.token_url());
    config.request_timeout_secs = 1;
    let proxy = Proxy::builder(config)
        .limits(Arc::clone(limits) as Arc<dyn LimitStore>)
        .secret_key(fleet_key())
        .build()
        .unwrap();
    Running::start_proxy(proxy).await
}

/// The provider answers after the customer's request ended: the fetch still remembers the
/// secret as accepted, so guessers locking the client out do not lock the customer out.
#[tokio::test(start_paused = true)]
async fn a_secret_accepted_after_its_caller_left_is_remembered() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = impatient(&idp, &limits).await;
    idp.push_faults([en_auth_testkit::Fault::Delay(Duration::from_secs(5))]);
    let gone = proxy.post_token(CUSTOMER, SECRET, &[]).await;
    assert_eq!(gone.status, 503, "the request timed out");
    // The fetch goes on without anyone waiting for it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(idp.token_requests(), 1);
    for i in 0..6 {
        proxy.post_token(CUSTOMER, &format!("guess-{i}"), &[]).await;
    }
    let locked = proxy.post_token(CUSTOMER, "guess-6", &[]).await;
    assert_eq!(locked.status, 429);
    // A new key for the customer: known good, served despite the lock-out.
    let served = proxy
        .post_token(CUSTOMER, SECRET, &[("audience", "other")])
        .await;
    assert_eq!(served.status, 200, "{:?}", served.error());
}

/// Guessers who hang up before the provider answers are counted all the same.
#[tokio::test(start_paused = true)]
async fn guessers_who_hang_up_are_counted() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = impatient(&idp, &limits).await;
    idp.push_faults((0..20).map(|_| en_auth_testkit::Fault::Delay(Duration::from_secs(5))));
    let mut locally = 0;
    for i in 0..20 {
        let answer = proxy.post_token(CUSTOMER, &format!("guess-{i}"), &[]).await;
        match answer.status {
            503 => {}
            429 => locally += 1,
            other => panic!("guess {i}: {other}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(idp.token_requests(), 5, "guesses that went upstream");
    assert_eq!(locally, 15);
}

/// A limit store whose every call takes a moment (as Redis does): requests wait on it.
#[derive(Debug, Default)]
struct Slow(LocalLimits);

#[async_trait::async_trait]
impl LimitStore for Slow {
    async fn add(
        &self,
        key: &str,
        window: Duration,
        now: u64,
        add: u64,
    ) -> Result<u64, en_auth_core::Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.add(key, window, now, add).await
    }
    async fn remember(
        &self,
        key: &str,
        member: [u8; 32],
        cap: usize,
        ttl: Duration,
        now: u64,
    ) -> Result<u64, en_auth_core::Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.remember(key, member, cap, ttl, now).await
    }
    async fn forget(&self, key: &str, member: &[u8; 32]) -> Result<(), en_auth_core::Error> {
        self.0.forget(key, member).await
    }
    async fn recall(
        &self,
        key: &str,
        member: &[u8; 32],
        now: u64,
    ) -> Result<en_auth_proxy::limits::Recall, en_auth_core::Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.recall(key, member, now).await
    }
    async fn hold_until(&self, key: &str, until: u64) -> Result<(), en_auth_core::Error> {
        self.0.hold_until(key, until).await
    }
    async fn held_until(
        &self,
        key: &str,
        now: u64,
        max: Duration,
    ) -> Result<Option<u64>, en_auth_core::Error> {
        self.0.held_until(key, now, max).await
    }
    async fn set_budget(
        &self,
        key: &str,
        remaining: u64,
        reset: u64,
    ) -> Result<(), en_auth_core::Error> {
        self.0.set_budget(key, remaining, reset).await
    }
    async fn take_budget(
        &self,
        key: &str,
        keep: u64,
        now: u64,
        max: Duration,
    ) -> Result<en_auth_proxy::limits::Budget, en_auth_core::Error> {
        self.0.take_budget(key, keep, now, max).await
    }
}

/// A customer's concurrent first requests (not yet on record), with a store that takes its
/// time: charged once to the unknown clients' budget, not once each.
#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_are_charged_once_to_the_unknown_budget() {
    let idp = idp(SECRET).await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.unknown_client_per_minute = 2;
    let proxy = Proxy::builder(config)
        .limits(Arc::new(Slow::default()) as Arc<dyn LimitStore>)
        .build()
        .unwrap();
    let proxy = Running::start_proxy(proxy).await;
    fresh_minute().await;
    let answers =
        futures_util::future::join_all((0..20).map(|_| proxy.post_token(CUSTOMER, SECRET, &[])))
            .await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(served, 20);
    assert_eq!(idp.token_requests(), 1);
    // One charged: the budget has one left for a made-up id, then none.
    assert_eq!(
        proxy.post_token("made-up", "x", &[]).await.error(),
        "invalid_client"
    );
    assert_eq!(proxy.post_token("made-up-2", "x", &[]).await.status, 429);
}

/// One wrong secret asking for ever new scopes is a new upstream request each time: each
/// counts as an attempt, so a guesser who knows a customer's client id (on record: its real
/// secret was accepted) gets at most 5 upstream requests per window, whatever it varies.
#[tokio::test(start_paused = true)]
async fn one_wrong_secret_with_many_scopes_reaches_upstream_five_times_at_most() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = instance(idp.token_url(), &limits).await;
    assert_eq!(proxy.post_token(CUSTOMER, SECRET, &[]).await.status, 200);
    let mut refused_locally = 0;
    for i in 0..20 {
        let scope = format!("scope-{i}");
        let answer = proxy
            .post_token(CUSTOMER, "one-wrong-secret", &[("scope", &scope)])
            .await;
        if answer.status == 429 {
            refused_locally += 1;
        } else {
            assert_eq!(answer.error(), "invalid_client", "attempt {i}");
        }
    }
    assert_eq!(refused_locally, 15);
    assert_eq!(idp.token_requests(), 1 + 5);
    // The customer's own secret is untouched.
    let other = proxy.post_token(CUSTOMER, SECRET, &[("scope", "x")]).await;
    assert_eq!(other.status, 200);
}

/// A secret the provider refuses after accepting it (revoked, e.g. after a leak) is no longer
/// known to be good: from then on it counts as tried like any other, so whoever holds it
/// cannot bypass the lock-out by varying what it asks for.
#[tokio::test(start_paused = true)]
async fn a_secret_the_provider_refuses_later_is_no_longer_known_good() {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = instance(idp.token_url(), &limits).await;
    assert_eq!(proxy.post_token(CUSTOMER, SECRET, &[]).await.status, 200);
    // The provider revokes the secret: it refuses every further request with it.
    let refused = r#"{"error":"invalid_client","error_description":"revoked"}"#;
    idp.push_faults((0..20).map(|_| en_auth_testkit::Fault::json(401, refused)));
    let mut statuses = Vec::new();
    for i in 0..8 {
        let scope = format!("scope-{i}");
        let answer = proxy
            .post_token(CUSTOMER, SECRET, &[("scope", &scope)])
            .await;
        statuses.push(answer.status);
    }
    // The first refusal forgets it; five more attempts may go upstream; then it is refused
    // locally.
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 429, 429]);
    assert_eq!(idp.token_requests(), 1 + 6);
}

/// Twenty distinct wrong secrets for a customer on record, against a provider that answers
/// each one first with `first` and then (the lifecycle's one retry) with `second`. Returns
/// (answers refused locally, upstream requests caused by the guesses).
async fn guesses_against(
    first: en_auth_testkit::Fault,
    second: en_auth_testkit::Fault,
) -> (usize, u64) {
    let idp = idp(SECRET).await;
    let limits = Arc::new(LocalLimits::default());
    let proxy = instance(idp.token_url(), &limits).await;
    assert_eq!(proxy.post_token(CUSTOMER, SECRET, &[]).await.status, 200);
    idp.push_faults((0..40).map(|i| {
        if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        }
    }));
    let mut refused_locally = 0;
    for i in 0..20 {
        let answer = proxy.post_token(CUSTOMER, &format!("guess-{i}"), &[]).await;
        if answer.status == 429 && answer.error() == "too_many_requests" {
            refused_locally += 1;
        }
    }
    (refused_locally, idp.token_requests() - 1)
}

/// A provider that fails (503) before it refuses: every upstream call of a guess is counted,
/// the lifecycle's retry included, so a flaky provider gives guessers no extra tries.
#[tokio::test(start_paused = true)]
async fn guesses_stay_counted_when_the_provider_fails_before_it_refuses() {
    let denied = r#"{"error":"invalid_client"}"#;
    let (refused, upstream) = guesses_against(
        en_auth_testkit::Fault::json(503, "{}"),
        en_auth_testkit::Fault::json(401, denied),
    )
    .await;
    assert_eq!(refused, 15);
    assert!(upstream <= 10, "{upstream} upstream requests for 5 guesses");
}

/// A 401 without an OAuth2 body (a gateway's HTML page) is a refused secret too, and a
/// provider answering 500 to everything does not turn guesses into free ones.
#[tokio::test(start_paused = true)]
async fn a_bare_401_and_a_failing_provider_count_guesses_like_refusals() {
    let html = en_auth_testkit::Fault::Respond {
        status: 401,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html>Unauthorized</html>".into(),
    };
    let (refused, upstream) = guesses_against(html.clone(), html).await;
    assert_eq!((refused, upstream), (15, 5));
    let failing = en_auth_testkit::Fault::json(500, "{}");
    let (refused, upstream) = guesses_against(failing.clone(), failing).await;
    assert_eq!(refused, 15);
    assert!(upstream <= 10, "{upstream} upstream requests for 5 guesses");
}

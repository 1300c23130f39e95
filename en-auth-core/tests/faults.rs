//! The lifecycle under fire: a provider that is slow, hangs, fails, rate-limits or answers
//! nonsense, and callers that give up halfway. Each test counts the calls the provider
//! actually received.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use en_auth_core::{
    AccessToken, AdapterCore, AfterResponse, Authorizer, BearerToken, ClientInfo, Error,
    LifecyclePolicy, MemoryTokenStore, ResponseHead, RetryPolicy, TokenCache, TokenStore,
};
use parking_lot::Mutex;

/// What the scripted provider answers.
#[derive(Clone)]
enum Answer {
    /// A token living this long (`None`: no expiry given).
    Token(Option<Duration>),
    /// A token that expired `ago` before it was issued.
    ExpiredToken(Duration),
    /// This error.
    Fail(fn() -> Error),
    /// A panic inside the authorizer.
    Panic,
}

struct Script {
    latency: Duration,
    answer: Answer,
}

/// An in-process identity provider with controllable latency and answers, counting the calls
/// it receives and completes.
struct ScriptedIdp {
    info: ClientInfo,
    script: Mutex<Script>,
    started: AtomicU64,
    completed: AtomicU64,
}

impl ScriptedIdp {
    fn new(latency: Duration, answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            info: ClientInfo::new("scripted-client", "scripted-secret"),
            script: Mutex::new(Script { latency, answer }),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        })
    }

    fn set(&self, latency: Duration, answer: Answer) {
        *self.script.lock() = Script { latency, answer };
    }

    fn calls(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Provider(Arc<ScriptedIdp>);

#[async_trait::async_trait]
impl Authorizer for Provider {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.0.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.0.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (latency, answer) = {
            let script = self.0.script.lock();
            (script.latency, script.answer.clone())
        };
        tokio::time::sleep(latency).await;
        self.0.completed.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Token(lifetime) => Ok(BearerToken::new(format!("tok{n}"), lifetime)),
            Answer::ExpiredToken(ago) => {
                let now = chrono::Utc::now();
                let ago = chrono::Duration::from_std(ago).unwrap();
                Ok(BearerToken::with_times(
                    format!("tok{n}"),
                    now,
                    Some(now - ago),
                ))
            }
            Answer::Fail(make) => Err(make()),
            Answer::Panic => panic!("the scripted provider panics"),
        }
    }
}

fn cache(idp: &Arc<ScriptedIdp>, policy: LifecyclePolicy) -> TokenCache<Provider> {
    TokenCache::builder(Provider(Arc::clone(idp)))
        .policy(policy)
        .build()
}

fn no_retries() -> LifecyclePolicy {
    LifecyclePolicy::default().with_retry(RetryPolicy::none())
}

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

fn server_error() -> Error {
    Error::ServerError {
        status: 503,
        retry_after: None,
    }
}

fn invalid_client() -> Error {
    Error::InvalidClient {
        status: Some(401),
        description: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadlines_shorter_than_the_provider_do_not_cancel_the_fetch() {
    let idp = ScriptedIdp::new(Duration::from_secs(1), Answer::Token(HOUR));
    let cache = cache(&idp, LifecyclePolicy::default());
    let started = Instant::now();
    let (mut timeouts, mut tokens) = (0, 0);
    while started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_millis(300), cache.get()).await {
            Ok(result) => {
                result.expect("a token once the fetch completes");
                tokens += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => timeouts += 1,
        }
    }
    assert!(idp.calls() <= 2, "fetches started: {}", idp.calls());
    assert_eq!(idp.completed(), idp.calls(), "no fetch was abandoned");
    assert!(
        (1..=5).contains(&timeouts),
        "callers gave up only until the first token: {timeouts}"
    );
    assert!(tokens > 50, "tokens served once fetched: {tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_against_a_hanging_provider_share_one_fetch_and_its_error() {
    let idp = ScriptedIdp::new(Duration::from_millis(1500), Answer::Fail(server_error));
    let cache = cache(&idp, no_retries());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        callers.spawn(async move { cache.get().await.map(drop) });
    }
    let mut errors = 0;
    while let Some(result) = callers.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::ServerError { status: 503, .. }),
            "{err:?}"
        );
        errors += 1;
    }
    assert_eq!(errors, 50);
    assert_eq!(idp.calls(), 1, "one fetch for all fifty callers");
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.failures), (1, 1));

    // Right after, within the backoff: the remembered error, at once, no provider call.
    for _ in 0..50 {
        assert!(matches!(cache.get().await, Err(Error::ServerError { .. })));
    }
    assert_eq!(idp.calls(), 1);
    assert_eq!(cache.stats().failures_served, 50);
}

#[tokio::test]
async fn a_permanent_error_costs_one_provider_call_not_one_per_request() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(invalid_client));
    let cache = cache(&idp, LifecyclePolicy::default());
    for _ in 0..100 {
        let err = cache.get().await.unwrap_err();
        assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    }
    assert!(idp.calls() <= 2, "provider calls: {}", idp.calls());
    assert_eq!(cache.stats().failures_served, 99);
}

#[tokio::test]
async fn permanent_failures_back_off_longer_than_transient_ones() {
    let policy = no_retries()
        .with_failure_cooldown(Duration::from_millis(100))
        .with_permanent_failure_backoff(Duration::from_millis(1600));
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(invalid_client));
    let cache = cache(&idp, policy);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        let _ = cache.get().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idp.calls(), 1, "permanent: one call within its backoff");
    idp.set(Duration::ZERO, Answer::Fail(server_error));
    tokio::time::sleep(Duration::from_millis(1000)).await; // past 1.6 s
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        let _ = cache.get().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The transient backoff doubles from 100 ms with jitter, capped by its consecutive count
    // (the permanent failure counted as one): 200, 400 ms… -> a few calls, not one per loop.
    let calls = idp.calls();
    assert!((3..=5).contains(&calls), "provider calls: {calls}");
}

fn rate_limited_3s() -> Error {
    Error::RateLimited {
        retry_after: Some(Duration::from_secs(3)),
        reset_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_by_every_caller() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(rate_limited_3s));
    let cache = cache(&idp, no_retries());
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2800) {
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let cache = cache.clone();
            callers.spawn(async move { cache.get().await.map(drop) });
        }
        while let Some(result) = callers.join_next().await {
            let err = result.unwrap().unwrap_err();
            let Error::RateLimited { retry_after, .. } = err else {
                panic!("{err:?}")
            };
            assert!(retry_after.is_some_and(|d| d <= Duration::from_secs(3)));
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 200, "{answered}");
    assert_eq!(idp.calls(), 1, "no provider call while Retry-After runs");
    idp.set(Duration::ZERO, Answer::Token(HOUR));
    // Once the limit has passed (3 s plus up to 10 % jitter), one call brings the token.
    let mut first_success = None;
    while started.elapsed() < Duration::from_secs(10) {
        if cache.get().await.is_ok() {
            first_success = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = first_success.expect("a token once the limit has passed");
    assert!(at >= Duration::from_secs(3), "asked again after {at:?}");
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let cache = cache.clone();
        callers.spawn(async move { cache.get().await.map(drop) });
    }
    while let Some(result) = callers.join_next().await {
        result.unwrap().expect("the token is cached");
    }
    assert_eq!(idp.calls(), 2, "then exactly one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_with_a_slow_provider_serves_the_current_token_meanwhile() {
    // A 4 s token turns stale after 2 s (the gap is clamped to half its life).
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(Some(Duration::from_secs(4))));
    let cache = cache(&idp, LifecyclePolicy::default());
    let first = access_token(&cache).await.unwrap();
    idp.set(
        Duration::from_secs(2),
        Answer::Token(Some(Duration::from_secs(4))),
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        callers.spawn(async move { access_token(&cache).await });
    }
    while let Some(result) = callers.join_next().await {
        assert_eq!(result.unwrap().unwrap(), first, "the current token");
    }
    assert_eq!(
        idp.completed(),
        1,
        "all fifty answered while the refresh was still running"
    );
    assert_eq!(idp.calls(), 2, "one refresh started");
    assert_eq!(cache.stats().waits, 1, "only the very first caller waited");

    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_ne!(access_token(&cache).await.unwrap(), first, "refreshed");
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_keeps_serving_the_valid_token_on_a_backoff_schedule() {
    let policy = no_retries().with_failure_cooldown(Duration::from_millis(400));
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(Some(Duration::from_secs(4))));
    let cache = cache(&idp, policy);
    let entry = cache.get().await.unwrap();
    let first = entry.token().access_token().to_owned();
    idp.set(Duration::ZERO, Answer::Fail(server_error));
    tokio::time::sleep(Duration::from_millis(2100)).await; // stale from 2 s on
    let started = Instant::now();
    // Until 1.7 s from now, or 300 ms before the hard expiry if the sleep overshot.
    let hard_expiry_in = (entry.expires_at() - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    let window =
        Duration::from_millis(1700).min(hard_expiry_in.saturating_sub(Duration::from_millis(300)));
    let mut served = 0;
    while started.elapsed() < window {
        assert_eq!(access_token(&cache).await.unwrap(), first);
        served += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served > 20, "{served}");
    // Backoff 400 ms, then 800 ms (each jittered down to at most half) in 1.7 s: 2 to 4
    // refresh attempts (1 if the window was cut short), not one per request.
    let refreshes = idp.calls() - 1;
    assert!(
        (1..=4).contains(&refreshes),
        "refresh attempts: {refreshes}"
    );
    tokio::time::sleep(
        hard_expiry_in.saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await; // past the hard expiry
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, Error::ServerError { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_means_no_request_waits_once_warm() {
    let idp = ScriptedIdp::new(
        Duration::from_secs(1),
        Answer::Token(Some(Duration::from_secs(4))),
    );
    let cache = TokenCache::builder(Provider(Arc::clone(&idp)))
        .background_refresh(true)
        .try_build()
        .unwrap();
    cache.warm_up().await.unwrap();
    let waits_after_warm_up = cache.stats().waits;
    assert_eq!(waits_after_warm_up, 1);

    let started = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while started.elapsed() < Duration::from_secs(12) {
        let token = cache.get().await.expect("always a token");
        assert!(token.is_usable());
        seen.insert(token.token().access_token().to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cache.stats().waits,
        waits_after_warm_up,
        "no request waited for the provider"
    );
    assert!(
        seen.len() >= 4,
        "tokens over three lifetimes: {}",
        seen.len()
    );
    let calls = idp.calls();
    assert!(
        (5..=9).contains(&calls),
        "about one refresh per 2 s: {calls}"
    );

    drop(cache);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        idp.calls() <= calls + 1,
        "the task ends with the cache (one fetch may have been in flight)"
    );
    let after_drop = idp.calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(idp.calls(), after_drop, "no provider calls after the drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_retries_failures_and_never_stops() {
    let policy = no_retries()
        .with_background_refresh(true)
        .with_failure_cooldown(Duration::from_millis(100))
        .with_max_failure_backoff(Duration::from_millis(300));
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(server_error));
    let cache = cache(&idp, policy);
    assert!(cache.warm_up().await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed_calls = idp.calls();
    assert!(
        (4..=16).contains(&failed_calls),
        "retried on the capped backoff: {failed_calls}"
    );
    idp.set(Duration::ZERO, Answer::Token(HOUR));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cache.stats().waits, 1, "only warm_up waited");
    let token = cached(&cache).expect("the task obtained a token by itself");
    assert!(token.is_usable());
}

#[tokio::test]
async fn hostile_numbers_are_typed_outcomes_never_panics() {
    fn huge_retry_after() -> Error {
        Error::RateLimited {
            retry_after: Some(Duration::MAX),
            reset_at: None,
        }
    }
    fn big_retry_after() -> Error {
        Error::ServerError {
            status: 503,
            retry_after: Some(Duration::from_secs(10_000_000_000_000)),
        }
    }
    for make in [huge_retry_after as fn() -> Error, big_retry_after] {
        let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(make));
        let cache = cache(&idp, LifecyclePolicy::default());
        for _ in 0..20 {
            let err = cache.get().await.unwrap_err();
            assert!(err.is_transient(), "{err:?}");
        }
        assert_eq!(idp.calls(), 1, "the delay is beyond the budget: no retry");
    }

    // Tokens dead on arrival: refused, remembered, not refetched per request.
    for answer in [
        Answer::Token(Some(Duration::ZERO)),
        Answer::ExpiredToken(Duration::from_secs(5)),
    ] {
        let idp = ScriptedIdp::new(Duration::ZERO, answer);
        let cache = cache(&idp, LifecyclePolicy::default());
        for _ in 0..20 {
            let err = cache.get().await.unwrap_err();
            assert!(matches!(err, Error::InvalidResponse { .. }), "{err:?}");
        }
        assert_eq!(idp.calls(), 1);
    }

    // A lifetime of ~31,700 years is a token, once.
    let idp = ScriptedIdp::new(
        Duration::ZERO,
        Answer::Token(Some(Duration::from_secs(1_000_000_000_000))),
    );
    let cache = cache(&idp, LifecyclePolicy::default());
    for _ in 0..20 {
        cache.get().await.unwrap();
    }
    assert_eq!(idp.calls(), 1);
}

#[tokio::test]
async fn a_zero_default_lifetime_is_refused_or_corrected() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(None));
    let err = TokenCache::builder(Provider(Arc::clone(&idp)))
        .default_lifetime(Duration::ZERO)
        .try_build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfiguration { .. }), "{err:?}");
    let cache = TokenCache::builder(Provider(Arc::clone(&idp)))
        .default_lifetime(Duration::ZERO)
        .build();
    for _ in 0..50 {
        cache.get().await.unwrap();
    }
    assert_eq!(idp.calls(), 1, "not one fetch per request");
}

#[tokio::test]
async fn zero_failure_backoffs_are_refused_or_corrected() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Fail(server_error));
    for policy in [
        no_retries().with_failure_cooldown(Duration::ZERO),
        no_retries().with_permanent_failure_backoff(Duration::ZERO),
        no_retries().with_max_failure_backoff(Duration::ZERO),
    ] {
        let err = TokenCache::builder(Provider(Arc::clone(&idp)))
            .policy(policy)
            .try_build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfiguration { .. }), "{err:?}");
    }
    // Corrected by build(): a failing provider is not asked in a tight loop.
    let cache = TokenCache::builder(Provider(Arc::clone(&idp)))
        .policy(
            no_retries()
                .with_failure_cooldown(Duration::ZERO)
                .with_max_failure_backoff(Duration::ZERO),
        )
        .build();
    let until = std::time::Instant::now() + Duration::from_millis(500);
    let mut requests = 0;
    while std::time::Instant::now() < until {
        assert!(cache.get().await.is_err());
        requests += 1;
        tokio::task::yield_now().await;
    }
    assert!(requests > 100, "{requests}");
    assert!(
        idp.calls() <= 15,
        "{} provider calls in 500 ms",
        idp.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_still_releases_the_store_lock() {
    let store = Arc::new(MemoryTokenStore::new());
    let idp = ScriptedIdp::new(Duration::from_millis(600), Answer::Token(HOUR));
    let make = || {
        TokenCache::builder(Provider(Arc::clone(&idp)))
            .store(Arc::clone(&store) as Arc<dyn TokenStore>)
            .build()
    };
    let (a, b) = (make(), make());
    let key = a.authorizer().cache_key();
    let gave_up = tokio::time::timeout(Duration::from_millis(100), a.get()).await;
    assert!(gave_up.is_err(), "the caller gave up mid-fetch");
    assert!(store.is_locked(&key), "the fetch holds the store lock");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!store.is_locked(&key), "released although its caller left");
    assert!(store.load(&key).await.unwrap().is_some(), "token published");
    let from_b = access_token(&b).await.unwrap();
    assert_eq!(from_b, access_token(&a).await.unwrap());
    assert_eq!(idp.calls(), 1, "one provider call for both caches");
    assert_eq!(b.stats().store_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_provider_does_not_wedge_the_cache() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Panic);
    let cache = cache(
        &idp,
        no_retries().with_failure_cooldown(Duration::from_millis(50)),
    );
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    idp.set(Duration::ZERO, Answer::Token(HOUR));
    tokio::time::sleep(Duration::from_millis(100)).await;
    cache.get().await.expect("recovers after the backoff");
    assert_eq!(idp.calls(), 2);
}

/// A store whose every call hangs (a blackholed Redis without timeouts).
struct HangingStore;

#[async_trait::async_trait]
impl TokenStore for HangingStore {
    async fn load(
        &self,
        _: &en_auth_core::CacheKey,
    ) -> Result<Option<en_auth_core::secrecy::SecretString>, Error> {
        std::future::pending().await
    }
    async fn save(
        &self,
        _: &en_auth_core::CacheKey,
        _: &en_auth_core::secrecy::SecretString,
        _: Duration,
    ) -> Result<(), Error> {
        std::future::pending().await
    }
    async fn remove_if(
        &self,
        _: &en_auth_core::CacheKey,
        _: &en_auth_core::secrecy::SecretString,
    ) -> Result<(), Error> {
        std::future::pending().await
    }
    async fn try_lock(
        &self,
        _: &en_auth_core::CacheKey,
        _: Duration,
    ) -> Result<Option<en_auth_core::StoreLock>, Error> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_delays_but_never_blocks_the_fetch() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(HOUR));
    let cache = TokenCache::builder(Provider(Arc::clone(&idp)))
        .store(Arc::new(HangingStore))
        .build();
    let token = tokio::time::timeout(Duration::from_secs(20), cache.get())
        .await
        .expect("the store's calls time out; the fetch goes on without it")
        .expect("a token from the provider");
    assert!(token.is_usable());
    assert_eq!(idp.calls(), 1);
}

#[test]
fn a_fetch_started_on_a_runtime_that_is_shutting_down_does_not_deadlock() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(HOUR));
    let cache = cache(&idp, LifecyclePolicy::default());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        // Inside the dead runtime's context a spawned task is dropped at once; its guard
        // records the abandoned fetch, taking the lock the spawner must not hold.
        let _entered = handle.enter();
        let started = AdapterCore::new(cache.clone(), "test").start_fetch();
        let failures = cache.stats().failures;
        let again = AdapterCore::new(cache.clone(), "test").start_fetch();
        let _ = done.send((started.is_ok(), failures, again.is_err()));
    });
    let (started, failures, remembered) = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("no deadlock");
    assert!(started);
    assert_eq!(failures, 1, "the abandoned fetch is recorded");
    assert!(remembered, "and backed off, not retried at once");
}

/// A 401 for a token that a refresh already replaced while the request was in flight is
/// answered with the current token at once: replay without another provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_an_already_replaced_token_replays_with_the_current_one() {
    let idp = ScriptedIdp::new(Duration::ZERO, Answer::Token(Some(Duration::from_secs(4))));
    let cache = cache(&idp, no_retries());
    let sent_with = cache.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // stale: a refresh starts
    assert!(cached(&cache).is_some());
    let mut current = cached(&cache).unwrap();
    for _ in 0..200 {
        if !current.same_token(&sent_with) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        current = cached(&cache).unwrap();
    }
    assert!(!current.same_token(&sent_with), "refreshed");
    assert_eq!(idp.calls(), 2);
    // The API now rejects the request that was sent with the old token.
    let core = AdapterCore::new(cache.clone(), "test");
    let headers = http::HeaderMap::new();
    let rejected = ResponseHead::new("https://api.example.com/", 401, &headers);
    let AfterResponse::Replay(replay_with) = core.after_response(&sent_with, rejected, true).await
    else {
        panic!("replayed");
    };
    assert!(replay_with.same_token(&current));
    assert_eq!(idp.calls(), 2, "no provider call for it");
}

/// The cached token as an adapter's request sees it: without waiting.
fn cached<A: Authorizer>(
    cache: &TokenCache<A>,
) -> Option<Arc<en_auth_core::CachedToken<A::Token>>> {
    AdapterCore::new(cache.clone(), "test").cached_token()
}

/// The access token's text, fetched if needed.
async fn access_token<A: Authorizer>(cache: &TokenCache<A>) -> Result<String, Error> {
    Ok(cache.get().await?.token().access_token().to_owned())
}

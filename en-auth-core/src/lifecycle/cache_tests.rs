//! The driver's crate-internal entry points (`start_fetch`, `token_after_rejection`, the
//! per-request read), against an in-process provider, on paused time.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::{BearerToken, ClientInfo, RetryPolicy};

/// An in-process provider issuing tokens of one lifetime, counting its calls.
struct Counting {
    info: ClientInfo,
    lifetime: Duration,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Authorizer for Counting {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(BearerToken::new(format!("tok{n}"), Some(self.lifetime)))
    }
}

fn cache(lifetime: Duration) -> (Arc<AtomicU64>, TokenCache<Counting>) {
    let calls = Arc::new(AtomicU64::new(0));
    let authorizer = Counting {
        info: ClientInfo::new("client", "secret"),
        lifetime,
        calls: Arc::clone(&calls),
    };
    let policy = LifecyclePolicy::default().with_retry(RetryPolicy::none());
    (
        calls,
        TokenCache::builder(authorizer).policy(policy).build(),
    )
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_fetch_started_on_a_runtime_that_is_shutting_down_does_not_deadlock() {
    let (calls, cache) = cache(HOUR);
    let (done, finished) = std::sync::mpsc::channel();
    let in_thread = cache.clone();
    std::thread::spawn(move || {
        let cache = in_thread;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let handle = runtime.handle().clone();
        drop(runtime);
        // Inside the dead runtime's context a spawned task is dropped at once; its guard
        // gives the abandoned fetch back, taking the lock the spawner must not hold.
        let _entered = handle.enter();
        let started = cache.start_fetch();
        let stats = cache.stats();
        let again = cache.start_fetch();
        let _ = done.send((started.is_ok(), stats, again.is_ok(), cache.stats()));
    });
    let (started, stats, again, after) = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("no deadlock");
    assert!(started);
    assert_eq!(stats.fetches, 1, "the fetch was started");
    // An abandoned fetch is not the provider's failure: nothing is remembered against it,
    // and the next caller starts a new fetch instead of getting an error.
    assert_eq!(stats.failures, 0, "not counted as a provider failure");
    assert!(again, "not backed off");
    assert_eq!(after.fetches, 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the provider was never asked"
    );
    // On a live runtime the cache works: nothing was left running or locked.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let token = runtime.block_on(cache.get()).expect("a token");
    assert!(token.is_usable());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A 401 for a token that a refresh already replaced while the request was in flight is
/// answered with the current token at once: replay without another provider call.
#[tokio::test(start_paused = true)]
async fn a_401_for_an_already_replaced_token_replays_with_the_current_one() {
    let (calls, cache) = cache(Duration::from_secs(4));
    let sent_with = cache.get().await.expect("a token");
    tokio::time::sleep(Duration::from_millis(2100)).await; // stale: a refresh starts
    let mut current = cache.cached().expect("a stale token is served");
    for _ in 0..200 {
        if !current.same_token(&sent_with) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        current = cache.cached().expect("a token is served");
    }
    assert!(!current.same_token(&sent_with), "refreshed");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The API now rejects the request that was sent with the old token.
    let replay_with = cache
        .token_after_rejection(&sent_with)
        .await
        .expect("replayed");
    assert!(replay_with.same_token(&current));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no provider call for it");
    assert_eq!(cache.stats().invalidations, 0, "the current token is kept");
}

/// An authorizer whose every call fails permanently.
struct Refusing {
    info: ClientInfo,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Authorizer for Refusing {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::InvalidClient {
            status: Some(401),
            description: None,
        })
    }
}

/// Each call answered with the remembered failure counts once in
/// [`TokenStats::failures_served`], whichever way it asked.
#[tokio::test(start_paused = true)]
async fn a_remembered_failure_served_counts_once_per_call() {
    let calls = Arc::new(AtomicU64::new(0));
    let cache = TokenCache::new(Refusing {
        info: ClientInfo::new("client", "secret"),
        calls: Arc::clone(&calls),
    });
    assert!(cache.get().await.is_err());
    assert_eq!(cache.stats().failures_served, 0, "the fetch's own failure");
    for served in 1..=3 {
        assert!(cache.get().await.is_err());
        assert_eq!(cache.stats().failures_served, served);
    }
    for served in 4..=5 {
        assert!(cache.get_to_pass_on().await.is_err());
        assert_eq!(cache.stats().failures_served, served);
    }
    // A caller that will not wait is answered "nothing now", not the failure, and starts
    // nothing.
    assert!(cache.ready_to_pass_on().is_none());
    assert_eq!(cache.stats().failures_served, 5);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.waits), (1, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A request sent with a token that expired on its way gets a 401: it is replayed with a
/// new token (one provider call), not handed back.
#[tokio::test(start_paused = true)]
async fn a_401_for_a_token_that_expired_in_flight_is_replayed_with_a_new_one() {
    let (calls, cache) = cache(Duration::from_secs(10));
    let sent_with = cache.get().await.expect("token");
    tokio::time::sleep(Duration::from_secs(11)).await; // expired while "in flight"
    let replay_with = cache
        .token_after_rejection(&sent_with)
        .await
        .expect("replayed with a new token");
    assert!(!replay_with.same_token(&sent_with));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Panics on every call.
struct Panicking {
    info: ClientInfo,
}

#[async_trait::async_trait]
impl Authorizer for Panicking {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        panic!("the authorizer panicked")
    }
}

/// With a shared store, a panicking authorizer is a failure like any other: published to the
/// other holders and the store's lock released at once, not left to run out.
#[tokio::test(start_paused = true)]
async fn a_panicking_authorizer_releases_the_store_lock_and_publishes_its_failure() {
    let store: Arc<dyn crate::TokenStore> = Arc::new(crate::MemoryTokenStore::new());
    let make = || {
        TokenCache::builder(Panicking {
            info: ClientInfo::new("client", "secret"),
        })
        .policy(LifecyclePolicy::default().with_retry(RetryPolicy::none()))
        .store(Arc::clone(&store))
        .build()
    };
    let (first, second) = (make(), make());
    let err = first.get().await.expect_err("the panic is a failure");
    assert!(err.to_string().contains("panicked"), "{err}");
    let started = Instant::now();
    let err = second.get().await.expect_err("the published failure");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait for a lock");
    assert_eq!(second.stats().shared_failures, 1);
    assert_eq!(second.stats().lock_waits, 0);
}

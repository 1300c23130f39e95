//! The store protocol of the lifecycle (docs/lifecycle.md, "Sharing through a store"): no
//! write-back of read tokens, a failing store never fails a request, published failures are
//! served without a provider call, and invalidation events drop a token rejected elsewhere.
//!
//! On paused time: the providers and stores are in process, and the store lock of
//! [`FleetStore`] expires on tokio's clock, so a dead holder's lock runs out in virtual time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use en_auth_core::{
    AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error, MemoryTokenStore,
    SharedFailure, StoreEvent, StoreLock, TokenCache, TokenStore, async_trait,
    secrecy::SecretString, value_fingerprint,
};
use parking_lot::Mutex;
use secrecy::ExposeSecret;
use tokio::sync::broadcast;

struct Counting {
    info: ClientInfo,
    calls: Arc<AtomicU64>,
    refuse: bool,
}

#[async_trait]
impl Authorizer for Counting {
    type Token = BearerToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.refuse {
            return Err(Error::InvalidClient {
                status: Some(401),
                description: None,
            });
        }
        Ok(BearerToken::new(
            format!("token-{n}-{}", fastrand::u64(..)),
            Some(Duration::from_secs(3600)),
        ))
    }
    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("test").part("client", "shared").build()
    }
}

fn authorizer(calls: &Arc<AtomicU64>, refuse: bool) -> Counting {
    Counting {
        info: ClientInfo::new("client", "secret"),
        calls: Arc::clone(calls),
        refuse,
    }
}

/// A memory store with the fleet features: counted writes, published failures, events, and a
/// switch that makes every call fail.
#[derive(Default)]
struct FleetStore {
    memory: MemoryTokenStore,
    saves: AtomicU64,
    loads: AtomicU64,
    broken: AtomicBool,
    /// The fetch locks: id and expiry, on tokio's clock.
    locks: Mutex<HashMap<CacheKey, (u64, Instant)>>,
    next_lock: AtomicU64,
    failures: Mutex<HashMap<CacheKey, SharedFailure>>,
    events: Mutex<Option<broadcast::Sender<StoreEvent>>>,
}

impl FleetStore {
    fn check(&self) -> Result<(), Error> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Error::Store {
                message: "down".into(),
                source: None,
            });
        }
        Ok(())
    }

    fn sender(&self) -> broadcast::Sender<StoreEvent> {
        self.events
            .lock()
            .get_or_insert_with(|| broadcast::channel(16).0)
            .clone()
    }
}

#[async_trait]
impl TokenStore for FleetStore {
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.memory.load(key).await
    }
    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error> {
        self.check()?;
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.memory.save(key, value, ttl).await
    }
    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error> {
        self.check()?;
        self.memory.remove_if(key, value).await?;
        let _ = self.sender().send(StoreEvent::invalidated(
            key.as_str(),
            value_fingerprint(value.expose_secret()),
        ));
        Ok(())
    }
    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        self.check()?;
        let now = Instant::now();
        let mut locks = self.locks.lock();
        if locks.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let id = self.next_lock.fetch_add(1, Ordering::SeqCst);
        locks.insert(key.clone(), (id, now + ttl));
        Ok(Some(StoreLock::new(id.to_string())))
    }
    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        self.check()?;
        let mut locks = self.locks.lock();
        if locks
            .get(key)
            .is_some_and(|(id, _)| id.to_string() == lock.id())
        {
            locks.remove(key);
        }
        Ok(())
    }
    async fn publish_failure(&self, key: &CacheKey, failure: &SharedFailure) -> Result<(), Error> {
        self.check()?;
        self.failures.lock().insert(key.clone(), failure.clone());
        Ok(())
    }
    async fn load_failure(&self, key: &CacheKey) -> Result<Option<SharedFailure>, Error> {
        self.check()?;
        Ok(self.failures.lock().get(key).cloned())
    }
    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.sender().subscribe())
    }
}

/// The current access token of `cache`, fetched if needed.
async fn access_token<A: Authorizer>(cache: &TokenCache<A>) -> Result<String, Error> {
    Ok(cache.get().await?.token().access_token().to_owned())
}

fn cache(store: &Arc<FleetStore>, authorizer: Counting) -> TokenCache<Counting> {
    TokenCache::builder(authorizer)
        .store(Arc::clone(store) as Arc<dyn TokenStore>)
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_token_read_from_the_store_is_not_written_back() {
    let store = Arc::new(FleetStore::default());
    let calls = Arc::new(AtomicU64::new(0));
    let a = cache(&store, authorizer(&calls, false));
    let b = cache(&store, authorizer(&calls, false));
    let first = access_token(&a).await.unwrap();
    assert_eq!(store.saves.load(Ordering::SeqCst), 1);
    assert_eq!(access_token(&b).await.unwrap(), first);
    assert_eq!(b.stats().store_hits, 1);
    assert_eq!(store.saves.load(Ordering::SeqCst), 1, "no write-back");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_fails_a_request() {
    let store = Arc::new(FleetStore::default());
    store.broken.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicU64::new(0));
    let cache = cache(&store, authorizer(&calls, false));
    let gets = (0..50).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get().await.map(drop) })
    });
    for get in futures_util::future::join_all(gets).await {
        get.unwrap().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "in-process single flight");
    assert!(cache.stats().store_errors >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_published_failure_is_answered_without_a_provider_call() {
    let store = Arc::new(FleetStore::default());
    let calls = Arc::new(AtomicU64::new(0));
    let holder = cache(&store, authorizer(&calls, true));
    assert!(matches!(
        holder.get().await.unwrap_err(),
        Error::InvalidClient { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let other = cache(&store, authorizer(&calls, true));
    let err = other.get().await.unwrap_err();
    assert!(matches!(err, Error::InvalidClient { .. }), "{err}");
    assert!(!err.is_transient());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the fleet backs off together"
    );
    assert_eq!(other.stats().shared_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_elsewhere_is_dropped_here() {
    let store = Arc::new(FleetStore::default());
    let calls = Arc::new(AtomicU64::new(0));
    let a = cache(&store, authorizer(&calls, false));
    let b = cache(&store, authorizer(&calls, false));
    let token = a.get().await.unwrap();
    let same = b.get().await.unwrap();
    assert!(token.same_token(&same));
    assert!(a.invalidate(&token).await);
    for _ in 0..200 {
        if b.stats().remote_invalidations == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats().remote_invalidations, 1);
    assert!(same.is_rejected(), "b's copy is marked rejected");
    // b no longer serves the rejected token: its next caller waits for a replacement.
    let waits = b.stats().waits;
    let replacement = b.get().await.unwrap();
    assert!(!replacement.same_token(&same));
    assert_eq!(b.stats().waits, waits + 1, "waited for the replacement");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An authorizer whose every fetch takes `delay`, counting calls.
struct Slow {
    info: ClientInfo,
    calls: Arc<AtomicU64>,
    delay: Duration,
}

#[async_trait]
impl Authorizer for Slow {
    type Token = BearerToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(BearerToken::new(
            format!("token-{n}"),
            Some(Duration::from_secs(3600)),
        ))
    }
    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("test").part("client", "shared").build()
    }
}

/// A holder died with the lock; when its lock runs out one waiter takes over and fetches
/// slowly. The other waiters keep waiting for the new holder instead of each fetching on
/// its own one second after the dead holder's lock ran out.
#[tokio::test(start_paused = true)]
async fn waiters_keep_waiting_for_a_holder_that_took_over_a_dead_lock() {
    let store = Arc::new(FleetStore::default());
    let calls = Arc::new(AtomicU64::new(0));
    let retry = en_auth_core::RetryPolicy::default().with_max_elapsed(Duration::from_secs(3));
    let policy = en_auth_core::LifecyclePolicy::default()
        .with_retry(retry)
        .with_store_lock_wait(Duration::from_secs(1));
    let lock_ttl = policy.store_lock_ttl();
    // The dead holder: took the lock with the fleet's TTL just before the waiters came.
    let key = CacheKey::builder("test").part("client", "shared").build();
    let dead = store.try_lock(&key, lock_ttl).await.unwrap();
    assert!(dead.is_some());
    let members: Vec<_> = (0..4)
        .map(|_| {
            TokenCache::builder(Slow {
                info: ClientInfo::new("client", "secret"),
                calls: Arc::clone(&calls),
                delay: Duration::from_millis(2500),
            })
            .policy(policy.clone())
            .store(Arc::clone(&store) as Arc<dyn TokenStore>)
            .build()
        })
        .collect();
    let gets = members.iter().map(|cache| {
        let cache = cache.clone();
        tokio::spawn(async move { access_token(&cache).await })
    });
    let tokens: Vec<String> = futures_util::future::join_all(gets)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one provider call for the whole fleet after the take-over"
    );
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    let timeouts: u64 = members.iter().map(|m| m.stats().lock_timeouts).sum();
    assert_eq!(timeouts, 0);
    // About 10 s of waiting by 3 waiters: their polls back off to twice a second.
    let loads = store.loads.load(Ordering::SeqCst);
    assert!(loads < 400, "{loads} store reads while waiting");
}

/// A token without its own expiry read from the store keeps the default lifetime counted
/// from when it was issued, not from each read: another process never extends it.
///
/// A token's age is read from the wall clock, which paused time does not move: the token is
/// issued a second before it is read instead of read a second after it was issued.
#[tokio::test(start_paused = true)]
async fn a_default_lifetime_counts_from_issue_not_from_each_read() {
    struct NoExpiry {
        info: ClientInfo,
        calls: Arc<AtomicU64>,
    }
    #[async_trait]
    impl Authorizer for NoExpiry {
        type Token = BearerToken;
        fn client_info(&self) -> &ClientInfo {
            &self.info
        }
        async fn authorize(&self) -> Result<BearerToken, Error> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let issued = chrono::Utc::now() - chrono::Duration::seconds(1);
            Ok(BearerToken::with_times(format!("token-{n}"), issued, None))
        }
        fn cache_key(&self) -> CacheKey {
            CacheKey::builder("test").part("client", "shared").build()
        }
    }
    let store = Arc::new(FleetStore::default());
    let calls = Arc::new(AtomicU64::new(0));
    let member = || {
        TokenCache::builder(NoExpiry {
            info: ClientInfo::new("client", "secret"),
            calls: Arc::clone(&calls),
        })
        .default_lifetime(Duration::from_secs(4))
        .store(Arc::clone(&store) as Arc<dyn TokenStore>)
        .build()
    };
    let a = member();
    let first = a.get().await.unwrap();
    let b = member();
    let read = b.get().await.unwrap();
    assert!(read.same_token(&first), "read from the store");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().store_hits, 1);
    let issued = read.token().issued_at().expect("an issue time");
    for (who, token) in [("the fetch", &first), ("the read", &read)] {
        let extended =
            (token.expires_at() - (issued + chrono::Duration::seconds(4))).num_milliseconds();
        assert!(
            extended.abs() <= 50,
            "{who} moved the expiry by {extended} ms"
        );
    }
    // On the lifecycle's clock too: 3 s left for both, not 4 s for the reader.
    let lag = read
        .freshness()
        .expires_at()
        .saturating_duration_since(first.freshness().expires_at());
    assert!(lag <= Duration::from_millis(50), "{lag:?}");
}

/// Caches sharing a `MemoryTokenStore` share a failed fetch too: a wrong secret costs one
/// provider call, not one per cache in turn.
#[tokio::test(start_paused = true)]
async fn caches_on_one_memory_store_share_a_failure() {
    struct SlowRefusal {
        info: ClientInfo,
        calls: Arc<AtomicU64>,
    }
    #[async_trait]
    impl Authorizer for SlowRefusal {
        type Token = BearerToken;
        fn client_info(&self) -> &ClientInfo {
            &self.info
        }
        async fn authorize(&self) -> Result<BearerToken, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(Error::InvalidClient {
                status: Some(401),
                description: None,
            })
        }
        fn cache_key(&self) -> CacheKey {
            CacheKey::builder("test").part("client", "shared").build()
        }
    }
    let store = Arc::new(MemoryTokenStore::new());
    let calls = Arc::new(AtomicU64::new(0));
    let caches: Vec<_> = (0..3)
        .map(|_| {
            TokenCache::builder(SlowRefusal {
                info: ClientInfo::new("client", "secret"),
                calls: Arc::clone(&calls),
            })
            .store(Arc::clone(&store) as Arc<dyn TokenStore>)
            .build()
        })
        .collect();
    let gets = caches.iter().map(|cache| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get().await.map(drop) })
    });
    for result in futures_util::future::join_all(gets).await {
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, Error::InvalidClient { .. }), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one provider call for all");
}

//! A cache outlives the tokio runtime it was first used on: a fetch cut off by a runtime's
//! shutdown is not the provider's failure, and the cache's own tasks start again on the next
//! runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use en_auth_core::secrecy::SecretString;
use en_auth_core::{
    AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error, MemoryTokenStore,
    SharedFailure, StoreEvent, StoreLock, TokenCache, TokenStore, value_fingerprint,
};
use tokio::sync::broadcast;

/// Hangs on its first call; answers at once afterwards.
struct HangsOnce {
    info: ClientInfo,
    calls: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl Authorizer for HangsOnce {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == 0 {
            std::future::pending::<()>().await;
        }
        Ok(BearerToken::new(
            format!("token-{call}"),
            Some(Duration::from_secs(3600)),
        ))
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

#[test]
fn a_fetch_cut_off_by_its_runtimes_shutdown_is_not_remembered_as_a_failure() {
    let calls = Arc::new(AtomicU32::new(0));
    let cache = TokenCache::new(HangsOnce {
        info: ClientInfo::new("svc", "secret"),
        calls: Arc::clone(&calls),
    });
    let first = paused_runtime();
    let gave_up = first.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), cache.get())
            .await
            .is_err()
    });
    assert!(gave_up, "the first fetch hangs");
    drop(first); // shuts down with the fetch still running

    let second = paused_runtime();
    let token = second
        .block_on(cache.get())
        .expect("the next runtime's caller gets a token, not the abandoned fetch's error");
    assert_eq!(token.token().access_token(), "token-1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().failures, 0, "no failure remembered");
}

/// A memory store that also delivers invalidation events, like a fleet store.
struct EventingStore {
    inner: MemoryTokenStore,
    events: broadcast::Sender<StoreEvent>,
}

#[async_trait::async_trait]
impl TokenStore for EventingStore {
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error> {
        self.inner.load(key).await
    }
    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error> {
        self.inner.save(key, value, ttl).await
    }
    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error> {
        self.inner.remove_if(key, value).await
    }
    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        self.inner.try_lock(key, ttl).await
    }
    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        self.inner.unlock(key, lock).await
    }
    async fn publish_failure(&self, key: &CacheKey, failure: &SharedFailure) -> Result<(), Error> {
        self.inner.publish_failure(key, failure).await
    }
    async fn load_failure(&self, key: &CacheKey) -> Result<Option<SharedFailure>, Error> {
        self.inner.load_failure(key).await
    }
    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }
}

#[test]
fn the_store_listener_starts_again_on_a_new_runtime() {
    let calls = Arc::new(AtomicU32::new(1)); // never hangs
    let authorizer = HangsOnce {
        info: ClientInfo::new("svc", "secret"),
        calls: Arc::clone(&calls),
    };
    let key = authorizer.cache_key();
    let (events, _) = broadcast::channel(16);
    let store = Arc::new(EventingStore {
        inner: MemoryTokenStore::new(),
        events: events.clone(),
    });
    let cache = TokenCache::builder(authorizer).store(store).build();

    let first = paused_runtime();
    first.block_on(cache.warm_up()).expect("token");
    drop(first); // the listener ends with its runtime

    let second = paused_runtime();
    second.block_on(async {
        cache.warm_up().await.expect("token");
        let token = cache.get().await.expect("token");
        let encoded = serde_json::to_string(token.token()).expect("encode");
        // Another process rejected this token.
        let sent = events.send(StoreEvent::Invalidated {
            key: key.as_str().to_owned(),
            fingerprint: value_fingerprint(&encoded),
        });
        assert!(sent.is_ok(), "the listener of this runtime is subscribed");
        for _ in 0..100 {
            if cache.stats().remote_invalidations == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.stats().remote_invalidations, 1, "the event arrived");
        let replaced = cache.get().await.expect("a new token");
        assert!(!replaced.same_token(&token));
    });
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two fetches");
}

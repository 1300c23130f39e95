//! Where tokens live beyond one [`TokenCache`](crate::TokenCache): the [`TokenStore`] trait
//! and the in-process [`MemoryTokenStore`].
//!
//! A store holds serialized tokens (JSON) under a [`CacheKey`]. The lifecycle reads it when
//! its own copy is missing or stale and writes every token it obtains, so several caches —
//! in one process with [`MemoryTokenStore`], or across a fleet with a Redis store — share one
//! token per key. A store may also offer a short lock so that, fleet-wide, only one process
//! fetches while the others wait for its result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use crate::{CacheKey, Error};

/// Proof of holding a store lock; pass it back to [`TokenStore::unlock`].
#[derive(Debug)]
pub struct StoreLock(String);

impl StoreLock {
    /// A lock identified by `id` (for stores: a random value only the holder knows).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The lock's identifier.
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// Shared storage of serialized tokens.
///
/// Values are secrets (they contain the access token); implementations must not log them.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The token stored under `key`, if any and not expired.
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error>;

    /// Stores `value` under `key` for `ttl`.
    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error>;

    /// Removes the value under `key` only if it is still `value` (a token rejected by an API
    /// must not remove a newer token another process stored meanwhile).
    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error>;

    /// Tries to take the fetch lock for `key` for at most `ttl`. `Ok(None)`: someone else
    /// holds it. The default grants it at once, for stores with a single user.
    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        let _ = (key, ttl);
        Ok(Some(StoreLock::new("")))
    }

    /// Releases a lock taken with [`try_lock`](TokenStore::try_lock).
    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        let _ = (key, lock);
        Ok(())
    }
}

/// In-process store: share one instance (via `Arc`) between caches that use the same
/// credentials so they share one token. Its fetch lock works like a fleet store's: one holder
/// per key at a time, released by [`TokenStore::unlock`] or when its time to live ends.
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: Mutex<HashMap<CacheKey, (SecretString, Instant)>>,
    locks: Mutex<HashMap<CacheKey, (u64, Instant)>>,
    next_lock: std::sync::atomic::AtomicU64,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("entries", &self.entries.lock().len())
            .finish()
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error> {
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some((value, until)) if *until > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error> {
        let until = Instant::now()
            .checked_add(ttl)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        self.entries
            .lock()
            .insert(key.clone(), (value.clone(), until));
        Ok(())
    }

    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error> {
        let mut entries = self.entries.lock();
        if entries
            .get(key)
            .is_some_and(|(v, _)| v.expose_secret() == value.expose_secret())
        {
            entries.remove(key);
        }
        Ok(())
    }

    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        let now = Instant::now();
        let mut locks = self.locks.lock();
        if locks.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let id = self
            .next_lock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(86_400));
        locks.insert(key.clone(), (id, until));
        Ok(Some(StoreLock::new(id.to_string())))
    }

    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        let mut locks = self.locks.lock();
        if locks
            .get(key)
            .is_some_and(|(id, _)| id.to_string() == lock.id())
        {
            locks.remove(key);
        }
        Ok(())
    }
}

impl MemoryTokenStore {
    /// Whether someone holds the fetch lock for `key` right now (for tests and diagnostics).
    pub fn is_locked(&self, key: &CacheKey) -> bool {
        self.locks
            .lock()
            .get(key)
            .is_some_and(|(_, until)| *until > Instant::now())
    }
}

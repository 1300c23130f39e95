//! Where tokens live beyond one [`TokenCache`](crate::TokenCache): the [`TokenStore`] trait
//! and the in-process [`MemoryTokenStore`].
//!
//! A store holds serialized tokens (JSON) under a [`CacheKey`]; a store other processes can
//! read files them under a name of its own making ([`CacheKey::name_with`] a
//! [`FleetKey`](crate::FleetKey)), never under anything printed. The lifecycle reads it when
//! its own copy is missing or stale and writes every token it obtains, so several caches —
//! in one process with [`MemoryTokenStore`], or across a fleet with a Redis store — share one
//! token per key. A store may also offer a short lock so that, fleet-wide, only one process
//! fetches while the others wait for its result, a [`SharedFailure`] record so that those
//! waiters learn at once when the holder's fetch failed, and [`StoreEvent`]s so that a token
//! rejected (401) in one process is dropped from the memory of the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{CacheKey, Error};

/// Something a store learned from another process, delivered by [`TokenStore::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// A token was rejected by an API and removed from the store by another process: caches
    /// holding the token with this [fingerprint](value_fingerprint) drop it.
    Invalidated {
        /// This process's label of the [`CacheKey`] the token was stored under
        /// ([`CacheKey::as_str`]). Labels differ between processes, so a shared store
        /// translates the name it received (e.g. [`CacheKey::name_with`] its fleet key) back
        /// to the label of the local key before delivering the event.
        key: String,
        /// [`value_fingerprint`] of the removed value.
        fingerprint: String,
    },
}

impl StoreEvent {
    /// An [`Invalidated`](StoreEvent::Invalidated) event.
    pub fn invalidated(key: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        StoreEvent::Invalidated {
            key: key.into(),
            fingerprint: fingerprint.into(),
        }
    }
}

/// A short, non-reversible name for a stored value (a serialized token), to tell other
/// processes which token to drop without sending the token: the first 16 bytes of its
/// SHA-256, in hex. Tokens are long random strings, so the digest reveals nothing usable.
pub fn value_fingerprint(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fetch failure as a store keeps it for the other processes of a fleet (see
/// [`TokenStore::publish_failure`]): what kind of error it was and until when to back off.
/// It carries what [`Error`] carries, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFailure {
    /// Kind of error: `invalid_client`, `invalid_credentials`, `authorization`,
    /// `rate_limited`, `server_error`, `invalid_response`, `transport`, `configuration`.
    pub kind: String,
    /// HTTP status of the provider's answer, if any.
    #[serde(default)]
    pub status: Option<u16>,
    /// The provider's `error` code (for `authorization`).
    #[serde(default)]
    pub error: Option<String>,
    /// The provider's `error_description` or the error's reason.
    #[serde(default)]
    pub description: Option<String>,
    /// Until when the fleet should not ask the provider again.
    pub retry_at: DateTime<Utc>,
}

impl SharedFailure {
    /// The record of `err`, to be waited out until `retry_at`.
    pub fn from_error(err: &Error, retry_at: DateTime<Utc>) -> Self {
        let (kind, status, error, description) = match err {
            Error::InvalidClient {
                status,
                description,
            } => ("invalid_client", *status, None, description.clone()),
            Error::InvalidCredentials => ("invalid_credentials", None, None, None),
            Error::Authorization {
                status,
                error,
                description,
                ..
            } => (
                "authorization",
                *status,
                Some(error.clone()),
                description.clone(),
            ),
            Error::RateLimited { .. } => ("rate_limited", Some(429), None, None),
            Error::ServerError { status, .. } => ("server_error", Some(*status), None, None),
            Error::InvalidResponse { status, reason } => {
                ("invalid_response", *status, None, Some(reason.clone()))
            }
            Error::Transport { message, .. } => ("transport", None, None, Some(message.clone())),
            other => ("configuration", None, None, Some(other.to_string())),
        };
        Self {
            kind: kind.into(),
            status,
            error,
            description,
            retry_at,
        }
    }

    /// The error this record stands for, as the process that failed saw it (the delay still
    /// to wait becomes the retry-after of rate limits and server errors).
    pub fn to_error(&self) -> Error {
        let remaining = (self.retry_at - Utc::now()).to_std().ok();
        let described = |fallback: &str| {
            self.description
                .clone()
                .unwrap_or_else(|| fallback.to_owned())
        };
        match self.kind.as_str() {
            "invalid_client" => Error::InvalidClient {
                status: self.status,
                description: self.description.clone(),
            },
            "invalid_credentials" => Error::InvalidCredentials,
            "authorization" => Error::Authorization {
                status: self.status,
                error: self.error.clone().unwrap_or_else(|| "unknown".into()),
                description: self.description.clone(),
                error_uri: None,
            },
            "rate_limited" => Error::RateLimited {
                retry_after: remaining,
                reset_at: Some(self.retry_at),
            },
            "server_error" => Error::ServerError {
                status: self
                    .status
                    .filter(|s| (500..600).contains(s))
                    .unwrap_or(503),
                retry_after: remaining,
            },
            "invalid_response" => Error::InvalidResponse {
                status: self.status,
                reason: described("unusable answer"),
            },
            "transport" => Error::Transport {
                message: described("the identity provider could not be reached"),
                timeout: false,
                source: None,
            },
            _ => Error::InvalidConfiguration {
                setting: "token fetch".into(),
                reason: described("another process failed to fetch the token"),
            },
        }
    }
}

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

    /// Records that the fetch for `key` failed, for the other holders of the store to read
    /// with [`load_failure`](TokenStore::load_failure) until `failure.retry_at` (the record
    /// must vanish then). Default: nothing is shared.
    async fn publish_failure(&self, key: &CacheKey, failure: &SharedFailure) -> Result<(), Error> {
        let _ = (key, failure);
        Ok(())
    }

    /// The failure recorded for `key` by [`publish_failure`](TokenStore::publish_failure),
    /// if it has not run out. Default: none.
    async fn load_failure(&self, key: &CacheKey) -> Result<Option<SharedFailure>, Error> {
        let _ = key;
        Ok(None)
    }

    /// Events from other processes (tokens they rejected), if the store can deliver them.
    /// Each call subscribes anew. Default: none.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
}

/// In-process store: share one instance (via `Arc`) between caches that use the same
/// credentials so they share one token. Its fetch lock works like a fleet store's: one holder
/// per key at a time, released by [`TokenStore::unlock`] or when its time to live ends; a
/// failed fetch is shared too ([`TokenStore::publish_failure`]), so the caches back off
/// together instead of each asking the provider in turn. Entries are filed under the
/// [`CacheKey`] itself: nothing leaves the process, so the store needs no fleet key.
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: Mutex<HashMap<CacheKey, (SecretString, Instant)>>,
    locks: Mutex<HashMap<CacheKey, (u64, Instant)>>,
    failures: Mutex<HashMap<CacheKey, SharedFailure>>,
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

    async fn publish_failure(&self, key: &CacheKey, failure: &SharedFailure) -> Result<(), Error> {
        let now = Utc::now();
        let mut failures = self.failures.lock();
        failures.retain(|_, f| f.retry_at > now);
        if failure.retry_at > now {
            failures.insert(key.clone(), failure.clone());
        }
        Ok(())
    }

    async fn load_failure(&self, key: &CacheKey) -> Result<Option<SharedFailure>, Error> {
        let now = Utc::now();
        let mut failures = self.failures.lock();
        match failures.get(key) {
            Some(failure) if failure.retry_at > now => Ok(Some(failure.clone())),
            Some(_) => {
                failures.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
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

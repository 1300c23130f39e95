//! Redis token store for en-auth: every process of a fleet that shares one Redis shares each
//! token, and the fleet asks the identity provider **once per token lifetime**.
//!
//! A fleet needs a **shared fleet key**: the same secret (at least 32 random bytes) in every
//! process, from `EN_AUTH_FLEET_KEY` or [`RedisTokenStoreBuilder::fleet_key`]. Without one,
//! connecting fails with [`Error::MissingConfiguration`]: a store that cannot share must not
//! start as if it did.
//!
//! ```no_run
//! use std::sync::Arc;
//! use en_auth_core::{Authorizer, TokenCache};
//! use en_auth_redis::RedisTokenStore;
//!
//! # async fn demo(authorizer: impl Authorizer<Token = en_auth_core::BearerToken>) -> Result<(), en_auth_core::Error> {
//! // The fleet key comes from EN_AUTH_FLEET_KEY, the same in every process.
//! let store = RedisTokenStore::connect("redis://127.0.0.1:6379").await?;
//! // or from your secret manager:
//! # let fleet_key = String::new();
//! let store = RedisTokenStore::builder("redis://127.0.0.1:6379").fleet_key(&fleet_key).connect().await?;
//! let cache = TokenCache::builder(authorizer).store(Arc::new(store)).build();
//! let token = cache.get().await?; // one process fetches; the others read it from Redis
//! # let _ = token; Ok(()) }
//! ```
//!
//! What it does (details in `docs/fleet.md`):
//! - **Keys** `<prefix>:v1:tok:<kind>:<name>`, the name an HMAC-SHA256 with the fleet key of
//!   the [`CacheKey`]'s digest of every input that changes the token
//!   ([`CacheKey::name_with`]): without the fleet key a name reveals nothing about the
//!   client or its secret. Lock `<prefix>:v1:lock:…`, published failures `<prefix>:v1:fail:…`
//!   (their `retry_at` clamped to [`RedisTokenStoreBuilder::max_failure_wait`] when read),
//!   events on the channel `<prefix>:v1:events`.
//! - **Values** a versioned JSON record (schema version, token, `expires_at`, `issued_at`),
//!   optionally encrypted with AES-256-GCM ([`EncryptionKeys`]); the Redis TTL is the token's
//!   remaining lifetime. A value that does not parse or decrypt is a miss and gets
//!   overwritten by the next token.
//! - **Lock** `SET NX PX` with a random value, released by compare-and-delete (Lua).
//! - **Invalidation** after a 401: compare-and-delete of exactly the rejected token, and a
//!   `PUBLISH` so other processes drop their copy.
//! - **Availability** every command has a short timeout (default 200 ms); after a failure a
//!   circuit breaker answers at once with an error for a cool-down (default 5 s), and the
//!   lifecycle fetches in-process meanwhile. No request fails because Redis is down, and
//!   [`connect`](RedisTokenStore::connect) succeeds even when Redis is not reachable yet.
//!
//! The hot path never touches Redis: a cached token is served from memory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod crypto;
mod record;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use en_auth_core::{CacheKey, Error, FleetKey, SharedFailure, StoreEvent, StoreLock, TokenStore};
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::Instrument;

pub use crypto::EncryptionKeys;

/// Version of the key layout and of the value record; part of every key.
pub const SCHEMA_VERSION: u32 = 1;

/// Default Redis command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

/// Default time the circuit breaker stays open after a failed command.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// Default longest wait a failure record read from Redis can impose (see
/// [`RedisTokenStoreBuilder::max_failure_wait`]).
pub const DEFAULT_MAX_FAILURE_WAIT: Duration = Duration::from_secs(3600);

/// Longest interval between pings of the events connection: longer ones would only let a dead
/// connection go unnoticed for longer.
const MAX_EVENTS_PING: Duration = Duration::from_secs(3600);

/// How many key names a store remembers to turn other processes' events back into local
/// keys; beyond that the memory starts again (keys in use are remembered again at their next
/// store call).
const MAX_REMEMBERED_NAMES: usize = 10_000;

/// Stands in for "never" when a configured duration does not fit after now: 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + duration`, or a far-future instant when that does not fit: durations come from
/// configuration and must never panic.
fn saturating_after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Counters of what the store did, for tests and dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Redis commands sent (each script, pipeline or command counts once).
    pub commands: u64,
    /// Commands that failed or timed out.
    pub errors: u64,
    /// Calls answered at once with an error because the circuit breaker was open.
    pub short_circuited: u64,
    /// How often the circuit breaker opened.
    pub breaker_trips: u64,
    /// Values found that could not be read (other schema, unknown key id, tampered): misses.
    pub unreadable_values: u64,
    /// Invalidation events received from other processes.
    pub events_received: u64,
}

#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    errors: AtomicU64,
    short_circuited: AtomicU64,
    breaker_trips: AtomicU64,
    unreadable_values: AtomicU64,
    events_received: AtomicU64,
}

/// Configures a [`RedisTokenStore`].
///
/// ```no_run
/// # async fn demo(fleet_key: String) -> Result<(), en_auth_core::Error> {
/// use std::time::Duration;
/// use en_auth_redis::{EncryptionKeys, RedisTokenStore};
/// let store = RedisTokenStore::builder("rediss://redis.internal:6380")
///     .fleet_key(&fleet_key) // the same in every process; else from EN_AUTH_FLEET_KEY
///     .prefix("billing")
///     .command_timeout(Duration::from_millis(150))
///     .encryption(EncryptionKeys::new("2026-11", &[7u8; 32])?)
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
pub struct RedisTokenStoreBuilder {
    url: String,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    breaker_cooldown: Duration,
    encryption: Option<EncryptionKeys>,
    fleet_key: Option<Result<FleetKey, Error>>,
    tls_root: Option<Vec<u8>>,
    events_ping: Duration,
    max_failure_wait: Duration,
}

impl std::fmt::Debug for RedisTokenStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("encryption", &self.encryption)
            .field("fleet_key", &self.fleet_key.as_ref().map(|_| "[REDACTED]"))
            .field("max_failure_wait", &self.max_failure_wait)
            .finish_non_exhaustive()
    }
}

impl RedisTokenStoreBuilder {
    /// Namespace of every key (default `en-auth`); give services that must not share tokens
    /// different prefixes, or different Redis databases.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Timeout of every Redis command (default 200 ms). Keep it short: a slow Redis must not
    /// slow requests down; the lifecycle fetches on its own instead.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Timeout of one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the circuit breaker stays open after a failed command (default 5 s): during
    /// that time calls fail at once without touching Redis.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// How often the connection that listens for other processes' events is pinged (default
    /// 10 s). A ping unanswered within the connect timeout means the connection is dead
    /// (a Redis host that vanished without closing it, a partition): it is replaced, so
    /// the process does not stop hearing about rejected tokens for good. Kept between
    /// 100 ms and one hour.
    pub fn events_ping_interval(mut self, interval: Duration) -> Self {
        self.events_ping = interval.clamp(Duration::from_millis(100), MAX_EVENTS_PING);
        self
    }

    /// The longest a failure another process published can make this one wait before it
    /// asks the provider itself (default [`DEFAULT_MAX_FAILURE_WAIT`], one hour). A record
    /// read from Redis is data anyone with write access could have written: its `retry_at`
    /// is clamped to now plus this bound, so no record can stop the fleet from fetching for
    /// good.
    pub fn max_failure_wait(mut self, bound: Duration) -> Self {
        self.max_failure_wait = bound;
        self
    }

    /// Encrypts values at rest with AES-256-GCM (recommended).
    pub fn encryption(mut self, keys: EncryptionKeys) -> Self {
        self.encryption = Some(keys);
        self
    }

    /// For `rediss://` URLs: trust only this CA certificate (PEM) instead of the system's
    /// root certificates, e.g. for a private CA.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// The fleet key this store names keys with (see [`FleetKey`]): at least 32 bytes of
    /// random data, the same in every process of the fleet and as secret as the client
    /// secrets. Stores with different fleet keys share nothing, even in one process. Without
    /// this call, [`connect`](Self::connect) reads [`FLEET_KEY_ENV`](en_auth_core::FLEET_KEY_ENV).
    pub fn fleet_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.fleet_key = Some(FleetKey::new(key));
        self
    }

    /// Creates the store. Fails on configuration errors: no fleet key
    /// ([`Error::MissingConfiguration`] naming `EN_AUTH_FLEET_KEY` when neither
    /// [`fleet_key`](Self::fleet_key) nor the variable gives one), a fleet key shorter than
    /// 32 bytes, a malformed URL. An unreachable Redis is logged as a warning and the store
    /// starts degraded: every call fails fast and the lifecycle fetches in-process until
    /// Redis answers.
    pub async fn connect(self) -> Result<RedisTokenStore, Error> {
        let fleet_key = match self.fleet_key {
            Some(key) => key?,
            None => FleetKey::from_env()?,
        };
        let (client, manager) = connect_lazily(
            &self.url,
            self.tls_root.clone(),
            self.command_timeout,
            self.connect_timeout,
        )?;
        let (events, _) = broadcast::channel(64);
        let (alive_tx, alive_rx) = watch::channel(());
        let prefix = format!("{}:v{SCHEMA_VERSION}", self.prefix);
        let inner = Arc::new(Inner {
            manager,
            channel: format!("{prefix}:events"),
            prefix,
            command_timeout: self.command_timeout,
            cooldown: self.breaker_cooldown,
            max_failure_wait: self.max_failure_wait,
            fleet_key,
            names: Mutex::new(HashMap::new()),
            encryption: self.encryption,
            open_until: Mutex::new(None),
            failing: AtomicBool::new(false),
            counters: Counters::default(),
            events: events.clone(),
            _alive: alive_tx,
        });
        tokio::spawn(listen(
            client,
            inner.channel.clone(),
            self.connect_timeout,
            self.events_ping,
            Arc::downgrade(&inner),
            events,
            alive_rx,
        ));
        let store = RedisTokenStore { inner };
        if let Err(err) = store.ping().await {
            tracing::warn!(
                error = %err, url = %redact_url(&self.url),
                "Redis is not reachable; starting degraded: each process fetches its own \
                 tokens until Redis answers"
            );
        }
        Ok(store)
    }
}

/// A [`TokenStore`] in Redis (6 or later), shared by every process that connects to it with
/// the same prefix and [fleet key](RedisTokenStoreBuilder::fleet_key). See the
/// [crate documentation](crate).
#[derive(Clone)]
pub struct RedisTokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    manager: ConnectionManager,
    prefix: String,
    channel: String,
    command_timeout: Duration,
    cooldown: Duration,
    max_failure_wait: Duration,
    fleet_key: FleetKey,
    /// Names this store gave keys ([`CacheKey::name_with`]) → the keys, to deliver other
    /// processes' events under the local key's label.
    names: Mutex<HashMap<String, CacheKey>>,
    encryption: Option<EncryptionKeys>,
    open_until: Mutex<Option<Instant>>,
    failing: AtomicBool,
    counters: Counters,
    events: broadcast::Sender<StoreEvent>,
    _alive: watch::Sender<()>,
}

impl std::fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.inner.prefix)
            .field("encrypted", &self.inner.encryption.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisTokenStore {
    /// Connects with the defaults (prefix `en-auth`, 200 ms command timeout, no encryption)
    /// and the fleet key from [`FLEET_KEY_ENV`](en_auth_core::FLEET_KEY_ENV); fails with
    /// [`Error::MissingConfiguration`] naming that variable when it is not set. See
    /// [`builder`](Self::builder) and [`RedisTokenStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a store for `url` (`redis://[user:password@]host:port[/db]` or
    /// `rediss://…` for TLS).
    pub fn builder(url: impl Into<String>) -> RedisTokenStoreBuilder {
        RedisTokenStoreBuilder {
            url: url.into(),
            prefix: "en-auth".into(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Duration::from_secs(1),
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            encryption: None,
            fleet_key: None,
            tls_root: None,
            events_ping: Duration::from_secs(10),
            max_failure_wait: DEFAULT_MAX_FAILURE_WAIT,
        }
    }

    /// What the store did so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            commands: load(&c.commands),
            errors: load(&c.errors),
            short_circuited: load(&c.short_circuited),
            breaker_trips: load(&c.breaker_trips),
            unreadable_values: load(&c.unreadable_values),
            events_received: load(&c.events_received),
        }
    }

    /// Whether the circuit breaker is closed (the last command worked or none failed lately).
    pub fn is_available(&self) -> bool {
        self.inner
            .open_until
            .lock()
            .is_none_or(|until| until <= Instant::now())
    }

    /// The Redis key a token for `key` is stored under.
    pub fn token_key(&self, key: &CacheKey) -> String {
        self.inner.key("tok", key)
    }

    /// The Redis key of the fetch lock for `key`.
    pub fn lock_key(&self, key: &CacheKey) -> String {
        self.inner.key("lock", key)
    }

    /// The Redis key of a published failure for `key`.
    pub fn failure_key(&self, key: &CacheKey) -> String {
        self.inner.key("fail", key)
    }

    /// How many tokens the whole fleet fetched from the provider for `key` (counted in Redis
    /// with every token written; kept for a day after the last one): one per token lifetime
    /// when sharing works.
    pub async fn fleet_fetches(&self, key: &CacheKey) -> Result<u64, Error> {
        let fetches_key = self.inner.key("fetches", key);
        let mut conn = self.inner.manager.clone();
        self.inner
            .run("fleet_fetches", async move {
                conn.get::<_, Option<u64>>(fetches_key).await
            })
            .await
            .map(|n| n.unwrap_or(0))
    }

    /// Sends `PING` (through the circuit breaker).
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.inner.manager.clone();
        self.inner
            .run("ping", async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await
            .map(drop)
    }
}

impl Inner {
    /// The name of `key` in Redis, remembered for [`local_label`](Self::local_label).
    fn name(&self, key: &CacheKey) -> String {
        let name = key.name_with(&self.fleet_key);
        let mut names = self.names.lock();
        if !names.contains_key(&name) {
            if names.len() >= MAX_REMEMBERED_NAMES {
                names.clear();
            }
            names.insert(name.clone(), key.clone());
        }
        name
    }

    /// The label of the local key another process's event names, if this store used it.
    fn local_label(&self, name: &str) -> Option<String> {
        self.names
            .lock()
            .get(name)
            .map(|key| key.as_str().to_owned())
    }

    fn key(&self, kind: &str, key: &CacheKey) -> String {
        format!("{}:{kind}:{}", self.prefix, self.name(key))
    }

    /// Runs one command through the circuit breaker and the command timeout.
    async fn run<T>(
        &self,
        op: &'static str,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        if let Some(until) = *self.open_until.lock() {
            let now = Instant::now();
            if until > now {
                self.counters
                    .short_circuited
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Error::Store {
                    message: format!(
                        "Redis unavailable (circuit open, next try in {} ms)",
                        (until - now).as_millis()
                    ),
                    source: None,
                });
            }
        }
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.command_timeout, command)
            .instrument(tracing::debug_span!("redis_token_store", op))
            .await;
        match outcome {
            Ok(Ok(value)) => {
                self.close();
                Ok(value)
            }
            Ok(Err(err)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let unreachable = err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error();
                if unreachable {
                    self.trip();
                }
                Err(Error::Store {
                    message: format!("Redis command failed: {err}"),
                    source: Some(Box::new(err)),
                })
            }
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.trip();
                Err(Error::Store {
                    message: format!(
                        "Redis command timed out after {} ms",
                        self.command_timeout.as_millis()
                    ),
                    source: None,
                })
            }
        }
    }

    fn trip(&self) {
        *self.open_until.lock() = Some(saturating_after(Instant::now(), self.cooldown));
        self.counters.breaker_trips.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::debug!(
                cooldown_ms = self.cooldown.as_millis() as u64,
                "Redis circuit breaker opened"
            );
        }
    }

    fn close(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            *self.open_until.lock() = None;
            tracing::info!("Redis reachable again; circuit breaker closed");
        }
    }

    fn unreadable(&self) {
        self.counters
            .unreadable_values
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut conn = self.manager.clone();
        self.run(
            "get",
            async move { conn.get::<_, Option<Vec<u8>>>(key).await },
        )
        .await
    }
}

#[async_trait]
impl TokenStore for RedisTokenStore {
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error> {
        let redis_key = self.inner.key("tok", key);
        let Some(raw) = self.inner.get(&redis_key).await? else {
            return Ok(None);
        };
        match record::open(&raw, &redis_key, self.inner.encryption.as_ref()) {
            Some(record) if record.is_live() => Ok(Some(record.token)),
            Some(_) => Ok(None),
            None => {
                self.inner.unreadable();
                Ok(None)
            }
        }
    }

    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Ok(());
        }
        let redis_key = self.inner.key("tok", key);
        let sealed = record::seal(value, ttl, &redis_key, self.inner.encryption.as_ref())?;
        let fail_key = self.inner.key("fail", key);
        let fetches_key = self.inner.key("fetches", key);
        let mut conn = self.inner.manager.clone();
        // The lifecycle saves only tokens it fetched from the provider, so the counter is the
        // fleet's provider fetches for this key (kept for a day after the last one).
        self.inner
            .run("save", async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&redis_key)
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .del(&fail_key)
                    .ignore()
                    .incr(&fetches_key, 1)
                    .ignore()
                    .expire(&fetches_key, 86_400)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error> {
        let redis_key = self.inner.key("tok", key);
        // A failed read or delete does not skip the message below: the other processes must
        // drop the rejected token from memory whatever happened to the stored copy.
        let removed: Result<(), Error> = async {
            if let Some(raw) = self.inner.get(&redis_key).await? {
                let same = record::open(&raw, &redis_key, self.inner.encryption.as_ref())
                    .is_some_and(|record| record.token.expose_secret() == value.expose_secret());
                if same {
                    let mut conn = self.inner.manager.clone();
                    let script = redis::Script::new(UNLOCK_SCRIPT);
                    let key_for_script = redis_key.clone();
                    self.inner
                        .run("remove_if", async move {
                            script
                                .key(key_for_script)
                                .arg(raw)
                                .invoke_async::<i64>(&mut conn)
                                .await
                        })
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        // Tell the others even when the stored token is already another one: they may still
        // hold the rejected one in memory.
        let message = serde_json::json!({
            "k": self.inner.name(key),
            "f": en_auth_core::value_fingerprint(value.expose_secret()),
        })
        .to_string();
        let channel = self.inner.channel.clone();
        let mut conn = self.inner.manager.clone();
        let published = self
            .inner
            .run("publish", async move {
                conn.publish::<_, _, i64>(channel, message).await
            })
            .await
            .map(drop);
        removed.and(published)
    }

    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        let lock_key = self.inner.key("lock", key);
        let id = crypto::random_hex(16);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.inner.manager.clone();
        let value = id.clone();
        let taken: Option<String> = self
            .inner
            .run("lock", async move {
                redis::cmd("SET")
                    .arg(&lock_key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(taken.map(|_| StoreLock::new(id)))
    }

    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        let lock_key = self.inner.key("lock", key);
        let mut conn = self.inner.manager.clone();
        self.inner
            .run("unlock", async move {
                redis::Script::new(UNLOCK_SCRIPT)
                    .key(lock_key)
                    .arg(lock.id())
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(drop)
    }

    async fn publish_failure(&self, key: &CacheKey, failure: &SharedFailure) -> Result<(), Error> {
        let Ok(ttl) = (failure.retry_at - chrono::Utc::now()).to_std() else {
            return Ok(());
        };
        let ttl = ttl.min(self.inner.max_failure_wait);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Ok(());
        }
        let fail_key = self.inner.key("fail", key);
        let value = serde_json::to_string(failure).map_err(Error::store)?;
        let mut conn = self.inner.manager.clone();
        self.inner
            .run("publish_failure", async move {
                redis::cmd("SET")
                    .arg(&fail_key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn load_failure(&self, key: &CacheKey) -> Result<Option<SharedFailure>, Error> {
        let fail_key = self.inner.key("fail", key);
        let Some(raw) = self.inner.get(&fail_key).await? else {
            return Ok(None);
        };
        let Ok(failure) = serde_json::from_slice::<SharedFailure>(&raw) else {
            self.inner.unreadable();
            return Ok(None);
        };
        Ok(Some(clamp_failure(
            failure,
            chrono::Utc::now(),
            self.inner.max_failure_wait,
        )))
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.inner.events.subscribe())
    }
}

/// `failure` with its `retry_at` no later than `now + bound`: a record read from Redis is
/// trusted for what went wrong, not for how long the fleet must stop asking.
fn clamp_failure(
    mut failure: SharedFailure,
    now: chrono::DateTime<chrono::Utc>,
    bound: Duration,
) -> SharedFailure {
    let latest = chrono::Duration::from_std(bound)
        .ok()
        .and_then(|bound| now.checked_add_signed(bound))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    if failure.retry_at > latest {
        failure.retry_at = latest;
    }
    failure
}

/// Listens on the events channel with a connection of its own, reconnecting while the store
/// lives; forwards invalidations to [`TokenStore::events`] subscribers.
async fn listen(
    client: redis::Client,
    channel: String,
    connect_timeout: Duration,
    ping_every: Duration,
    store: std::sync::Weak<Inner>,
    events: broadcast::Sender<StoreEvent>,
    mut alive: watch::Receiver<()>,
) {
    loop {
        if let Ok(Ok(mut pubsub)) =
            tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await
        {
            let subscribed = tokio::time::timeout(connect_timeout, pubsub.subscribe(&channel))
                .await
                .is_ok_and(|r| r.is_ok());
            if subscribed {
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(ping_every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await; // the first tick is immediate
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(
                                connect_timeout,
                                sink.ping::<redis::Value>(),
                            )
                            .await;
                            if matches!(pong, Ok(Ok(_))) {
                                continue;
                            }
                            tracing::info!("Redis events connection unresponsive; reconnecting");
                            break;
                        }
                        _ = alive.changed() => return,
                    };
                    let Some(message) = message else { break };
                    let Ok(body) =
                        serde_json::from_slice::<serde_json::Value>(message.get_payload_bytes())
                    else {
                        continue;
                    };
                    let (Some(name), Some(fingerprint)) = (body["k"].as_str(), body["f"].as_str())
                    else {
                        continue;
                    };
                    let Some(inner) = store.upgrade() else { return };
                    inner
                        .counters
                        .events_received
                        .fetch_add(1, Ordering::Relaxed);
                    // A key this store never named is one no cache of this process holds.
                    if let Some(label) = inner.local_label(name) {
                        let _ = events.send(StoreEvent::invalidated(label, fingerprint));
                    }
                }
            }
        }
        if store.upgrade().is_none() {
            return;
        }
        let pause = Duration::from_millis(fastrand::u64(500..=1000));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = alive.changed() => return,
        }
    }
}

/// A Redis client for `url` (`redis://` or `rediss://`, trusting only `tls_root` when given)
/// and a connection manager on it with en-auth's settings: connects on first use, each
/// command answered within `command_timeout` (or an error), one quick retry, reconnecting in
/// the background after failures. Fails only on a malformed URL; the error names the URL with
/// its password redacted. The token store and the proxy's shared limits connect through it.
pub fn connect_lazily(
    url: &str,
    tls_root: Option<Vec<u8>>,
    command_timeout: Duration,
    connect_timeout: Duration,
) -> Result<(redis::Client, ConnectionManager), Error> {
    let client = match tls_root {
        None => redis::Client::open(url),
        Some(root) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            },
        ),
    }
    .map_err(|err| Error::InvalidConfiguration {
        setting: "Redis URL".into(),
        reason: format!(
            "{:?} ({}); use redis://host:port/db or rediss://host:port/db",
            err.kind(),
            redact_url(url)
        ),
    })?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(command_timeout))
        .set_connection_timeout(Some(connect_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let manager =
        ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|err| {
            Error::InvalidConfiguration {
                setting: "Redis URL".into(),
                reason: format!("cannot use it: {:?}", err.kind()),
            }
        })?;
    Ok((client, manager))
}

/// `redis://user:password@host` → `redis://user:***@host`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}

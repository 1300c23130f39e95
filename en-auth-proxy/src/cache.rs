//! The proxy's cache: one core [`TokenCache`] per (client id, audience/resources, scopes) key
//! and secret, bounded in number, with authentication on every hit.
//!
//! - **Keys.** A key is what changes the token besides the credentials: client id, audience,
//!   resources and normalized scopes (sorted, without duplicates).
//! - **Authentication on every hit.** Each cached entry remembers an HMAC-SHA256 of the secret
//!   that created it, keyed with the proxy's secret key (random per process unless set, see
//!   `ProxyBuilder::secret_key`); the secret itself is kept only
//!   inside the entry's authorizer, to renew the token. A request's secret is HMACed the same
//!   way and compared in constant time (`subtle`). A token is only ever handed to a caller
//!   that presented the secret it was obtained with.
//! - **A wrong secret is never answered from cache.** It gets an entry of its own (at most
//!   [`SECRETS_PER_KEY`] per key), whose lifecycle asks upstream. When upstream refuses, the
//!   entry remembers the refusal for the refusal window (the lifecycle's permanent-failure
//!   backoff), so repeating the same wrong secret is refused locally without reaching
//!   upstream. A secret upstream accepts (a rotated one) simply becomes another entry.
//! - **Created late.** [`ProxyCache::find`] only looks; an entry is created
//!   ([`ProxyCache::entry`]) once the request passed the lock-out, quota and budget checks,
//!   so a refused request costs no memory.
//! - **Bounded in keys and bytes.** At most `max_keys` keys and about `max_cache_bytes` bytes
//!   (each entry counts its key's strings, its secret, its token and a fixed overhead);
//!   beyond either, keys without a usable token go first, then the least recently used
//!   (their lifecycles end with them). Ranking reads each entry's token without side
//!   effects ([`TokenCache::has_usable_token`]): eviction never starts a renewal.
//! - **Lifecycle.** Everything about when to fetch — one fetch per entry at a time, renewal
//!   started in the background `2 × min_remaining` before expiry while callers keep getting
//!   the current token, failures remembered with backoff, and the floor below which a token
//!   is not handed out (`min_remaining`, the lifecycle's pass-on floor) — is the core
//!   lifecycle's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use en_auth_core::{
    AccessToken, Authorizer, CachedToken, ClientInfo, Error, LifecyclePolicy, RetryPolicy,
    STORE_CALL_TIMEOUT, TokenCache, TokenStore,
};
use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::quota::Limits;
use crate::upstream::{Acceptance, TokenRequest, Upstream, UpstreamAuthorizer, UpstreamToken};

/// Most secrets remembered per key: the current one, one being rotated in, and a few wrong
/// ones being refused locally.
pub const SECRETS_PER_KEY: usize = 4;

/// What an entry is counted for besides its strings: the entry, its lifecycle (machine,
/// locks, channels, counters), the map's slot and the allocator's rounding.
const ENTRY_OVERHEAD: usize = 2048;

/// What identifies a cached token besides the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyKey {
    /// The customer's client id.
    pub client_id: String,
    /// Audience, resources and scopes asked for.
    pub request: TokenRequest,
}

impl ProxyKey {
    /// The bytes of the key's strings.
    fn text_bytes(&self) -> usize {
        self.client_id.len()
            + self.request.audience.as_ref().map_or(0, String::len)
            + self
                .request
                .resources
                .iter()
                .map(String::len)
                .sum::<usize>()
            + self.request.scope.len()
    }
}

/// One secret's token lifecycle under a key.
pub struct Entry {
    mac: [u8; 32],
    /// The core lifecycle for this key and secret.
    pub cache: TokenCache<UpstreamAuthorizer>,
    last_used: AtomicI64,
    /// Bytes counted for the key's strings (in the map and in the authorizer), the secret and
    /// the fixed overhead.
    fixed_bytes: usize,
    /// Bytes counted for the token last seen.
    token_bytes: AtomicUsize,
    /// Whether the entry is still in the map (its bytes are counted).
    cached: AtomicBool,
}

impl Entry {
    /// The keyed hash (HMAC with the proxy's secret key) of the secret of this entry.
    pub fn secret_mac(&self) -> &[u8; 32] {
        &self.mac
    }

    /// The cached token if it may be handed out now without waiting: the lifecycle's
    /// pass-on rule ([`LifecyclePolicy::min_pass_on_lifetime`], clamped to a quarter of a
    /// short token's life). Seeing a token in its renewal window starts the renewal in the
    /// background (once).
    pub fn hand_out(&self) -> Option<Arc<CachedToken<UpstreamToken>>> {
        self.cache.ready_to_pass_on()
    }

    /// A token to hand out, waiting for the renewal (or the first fetch) when the cached one
    /// is below the minimum remaining lifetime. When upstream cannot give a new one, the
    /// current token is still returned while it has half the minimum left; below that the
    /// answer is upstream's failure.
    pub async fn get(&self) -> Result<Arc<CachedToken<UpstreamToken>>, Error> {
        self.cache.get_to_pass_on().await
    }

    /// Bytes this entry is counted for.
    fn bytes(&self) -> usize {
        self.fixed_bytes
            .saturating_add(self.token_bytes.load(Ordering::Relaxed))
    }
}

/// Bytes counted for a token: the access token (kept as is and as a header), its scope.
fn token_bytes(token: &CachedToken<UpstreamToken>) -> usize {
    let token = token.token();
    2 * token.access_token().len() + token.scope().map_or(0, str::len) + 64
}

/// The keyed map of entries.
pub struct ProxyCache {
    /// HMAC-SHA256 keyed with the proxy's secret key; cloned per request.
    mac: Hmac<Sha256>,
    slots: RwLock<HashMap<ProxyKey, Vec<Arc<Entry>>>>,
    /// Bytes counted for the entries in `slots` (recounted exactly when evicting).
    bytes: AtomicUsize,
    upstream: Arc<Upstream>,
    store: Option<Arc<dyn TokenStore>>,
    policy: LifecyclePolicy,
    config: Arc<ProxyConfig>,
    metrics: Arc<Metrics>,
    /// Where every entry's authorizer remembers the secrets the upstream accepted.
    limits: Arc<Limits>,
    /// Requests being admitted (checked and charged before their entry exists), per key and
    /// secret; see [`ProxyCache::admission`].
    admitting: Admitting,
    /// A use counter: entries remember the tick of their last use (exact LRU order).
    clock: AtomicI64,
}

impl ProxyCache {
    /// A cache whose secrets are hashed with `secret_key` (random when `None`).
    pub(crate) fn new(
        config: Arc<ProxyConfig>,
        upstream: Arc<Upstream>,
        store: Option<Arc<dyn TokenStore>>,
        metrics: Arc<Metrics>,
        secret_key: Option<&SecretSlice<u8>>,
        limits: Arc<Limits>,
    ) -> Result<Self, Error> {
        let mut random = [0u8; 32];
        let key: &[u8] = match secret_key {
            Some(key) => key.expose_secret(),
            None => {
                getrandom::getrandom(&mut random).map_err(|e| Error::InvalidConfiguration {
                    setting: "random".into(),
                    reason: format!("the operating system's random source failed: {e}"),
                })?;
                &random
            }
        };
        let refusal = config.refusal();
        let policy = LifecyclePolicy::default()
            // Renewal starts at twice the minimum, so callers rarely wait for it; below the
            // minimum a token is not handed out.
            .with_expiration_gap(config.min_remaining().saturating_mul(2))
            .with_min_pass_on_lifetime(config.min_remaining())
            // A refused secret is refused locally for this long (doubling on repeats).
            .with_permanent_failure_backoff(refusal)
            .with_max_failure_backoff(refusal.max(std::time::Duration::from_secs(300)))
            // One retry for a blip; a customer waits for at most a few seconds more.
            .with_retry(
                RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_max_elapsed(std::time::Duration::from_secs(
                        config.upstream_timeout_secs.max(1),
                    )),
            );
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| {
            Error::InvalidConfiguration {
                setting: "secret key".into(),
                reason: "HMAC refused its key".into(),
            }
        })?;
        Ok(Self {
            mac,
            slots: RwLock::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            upstream,
            store,
            policy,
            config,
            metrics,
            limits,
            admitting: Mutex::default(),
            clock: AtomicI64::new(0),
        })
    }

    fn tick(&self) -> i64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The keyed hash of a client's secret (also what the limit store remembers).
    pub fn mac(&self, client_id: &str, secret: &SecretString) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&(client_id.len() as u64).to_be_bytes());
        mac.update(client_id.as_bytes());
        mac.update(secret.expose_secret().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The entry for `key` whose secret's keyed hash is `mac`, if there is one. Creates
    /// nothing.
    pub fn find(&self, key: &ProxyKey, mac: &[u8; 32]) -> Option<Arc<Entry>> {
        let entry = find(self.slots.read().get(key), mac)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some(entry)
    }

    /// Whether the shared token store holds a token for `key` and `secret`. Its key includes
    /// the secret's hash, so a token there proves the secret. `false` without a store, or
    /// when the store fails or is slow.
    pub async fn stored(&self, key: &ProxyKey, secret: &SecretString) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let cache_key = self.authorizer(key, secret, None).cache_key();
        matches!(
            tokio::time::timeout(STORE_CALL_TIMEOUT, store.load(&cache_key)).await,
            Ok(Ok(Some(_)))
        )
    }

    /// Waits until no other request for `key` and the secret whose keyed hash is `mac` is
    /// being admitted, and admits this one until the returned guard is dropped. Identical
    /// concurrent requests are thus checked and charged one after the other: the first one
    /// creates the entry (before dropping the guard) and the next ones find it and join its
    /// fetch, instead of each being charged while none has created the entry yet.
    pub(crate) async fn admission(&self, key: &ProxyKey, mac: &[u8; 32]) -> Admission<'_> {
        let id = (key.clone(), *mac);
        let lock = {
            let mut admitting = self.admitting.lock();
            if let Some(lock) = admitting.get(&id).and_then(Weak::upgrade) {
                lock
            } else {
                // Requests cancelled while waiting can leave dead entries behind.
                if admitting.len() >= 1024 {
                    admitting.retain(|_, lock| lock.strong_count() > 0);
                }
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                admitting.insert(id.clone(), Arc::downgrade(&lock));
                lock
            }
        };
        let guard = lock.lock_owned().await;
        Admission {
            admitting: &self.admitting,
            id,
            guard: Some(guard),
        }
    }

    /// The entry for `key` whose secret is `secret` (keyed hash `mac`), created when there is
    /// none. Call it only for a request that will be served or sent upstream.
    pub fn entry(&self, key: &ProxyKey, secret: &SecretString, mac: [u8; 32]) -> Arc<Entry> {
        let now = self.tick();
        if let Some(entry) = self.find(key, &mac) {
            return entry;
        }
        let mut slots = self.slots.write();
        if let Some(entry) = find(slots.get(key), &mac) {
            entry.last_used.store(now, Ordering::Relaxed);
            return entry;
        }
        let entry = Arc::new(self.new_entry(key, secret, mac, now));
        let new_key = !slots.contains_key(key);
        let over_keys = new_key && slots.len() >= self.config.max_keys;
        let over_bytes = self
            .bytes
            .load(Ordering::Relaxed)
            .saturating_add(entry.bytes())
            > self.config.max_cache_bytes;
        if over_keys || over_bytes {
            self.evict(&mut slots, entry.bytes());
        }
        let slot = slots.entry(key.clone()).or_default();
        if slot.len() >= SECRETS_PER_KEY {
            // Drop the least recently used secret, preferring ones without a usable token.
            let victim = slot
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| {
                    (
                        e.cache.has_usable_token(),
                        e.last_used.load(Ordering::Relaxed),
                    )
                })
                .map(|(i, _)| i)
                .unwrap_or(0);
            let dropped = slot.swap_remove(victim);
            self.uncount(&dropped);
        }
        entry.cached.store(true, Ordering::Relaxed);
        self.bytes.fetch_add(entry.bytes(), Ordering::Relaxed);
        slot.push(Arc::clone(&entry));
        self.metrics.set_cached_keys(slots.len());
        entry
    }

    /// Counts the bytes of the token `entry` now holds (after it was fetched), and evicts if
    /// the cache is over its bound in bytes.
    pub fn settle(&self, entry: &Entry, token: &CachedToken<UpstreamToken>) {
        let bytes = token_bytes(token);
        let before = entry.token_bytes.swap(bytes, Ordering::Relaxed);
        if before == bytes || !entry.cached.load(Ordering::Relaxed) {
            return;
        }
        let total = if bytes > before {
            self.bytes.fetch_add(bytes - before, Ordering::Relaxed) + (bytes - before)
        } else {
            self.bytes
                .fetch_sub(before - bytes, Ordering::Relaxed)
                .saturating_sub(before - bytes)
        };
        if total > self.config.max_cache_bytes {
            let mut slots = self.slots.write();
            self.evict(&mut slots, 0);
            self.metrics.set_cached_keys(slots.len());
        }
    }

    fn uncount(&self, entry: &Entry) {
        if entry.cached.swap(false, Ordering::Relaxed) {
            let bytes = entry.bytes();
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(bytes))
                });
        }
    }

    /// Makes room for `incoming` more bytes and, when the map is at `max_keys`, one more key:
    /// drops keys without a usable token first (a flood of made-up keys cannot push out
    /// customers' tokens), then the least recently used; a sixteenth of the bound at least,
    /// so that eviction runs rarely. Ranks by reading tokens only: nothing is renewed.
    fn evict(&self, slots: &mut HashMap<ProxyKey, Vec<Arc<Entry>>>, incoming: usize) {
        let max_keys = self.config.max_keys;
        let max_bytes = self.config.max_cache_bytes;
        // Recount exactly: tokens renewed since they were counted may differ a little.
        let mut total: usize = slots.values().flatten().map(|e| e.bytes()).sum();
        let key_target = if slots.len() >= max_keys {
            max_keys.saturating_sub((max_keys / 16).max(1))
        } else {
            usize::MAX
        };
        let byte_target = max_bytes
            .saturating_sub(max_bytes / 16)
            .saturating_sub(incoming);
        let mut ranks: Vec<((bool, i64), &ProxyKey)> = slots
            .iter()
            .map(|(key, entries)| {
                // Any unexpired token counts: one in its renewal window is a customer's too.
                let has_token = entries.iter().any(|e| e.cache.has_usable_token());
                let last = entries
                    .iter()
                    .map(|e| e.last_used.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(i64::MIN);
                ((has_token, last), key)
            })
            .collect();
        ranks.sort_unstable_by_key(|(rank, _)| *rank);
        let mut left = slots.len();
        let mut victims = Vec::new();
        for (_, key) in ranks {
            if left <= key_target && total <= byte_target {
                break;
            }
            total = total.saturating_sub(slots[key].iter().map(|e| e.bytes()).sum());
            left -= 1;
            victims.push(key.clone());
        }
        for key in &victims {
            if let Some(entries) = slots.remove(key) {
                for entry in &entries {
                    entry.cached.store(false, Ordering::Relaxed);
                }
            }
        }
        self.bytes.store(total, Ordering::Relaxed);
        self.metrics.evicted(victims.len());
    }

    /// The authorizer of `key` and `secret`; with the secret's keyed hash, it remembers the
    /// secret as accepted whenever the upstream issues a token for it.
    fn authorizer(
        &self,
        key: &ProxyKey,
        secret: &SecretString,
        mac: Option<[u8; 32]>,
    ) -> UpstreamAuthorizer {
        let info = ClientInfo::new(key.client_id.clone(), secret.expose_secret().to_owned());
        UpstreamAuthorizer::new(
            info,
            key.request.clone(),
            self.config.upstream_auth_of(&key.client_id),
            Arc::clone(&self.upstream),
            mac.map(|secret_mac| Acceptance {
                limits: Arc::clone(&self.limits),
                secret_mac,
                recount: std::sync::atomic::AtomicBool::new(false),
            }),
        )
    }

    fn new_entry(&self, key: &ProxyKey, secret: &SecretString, mac: [u8; 32], now: i64) -> Entry {
        let mut builder = TokenCache::builder(self.authorizer(key, secret, Some(mac)))
            .policy(self.policy.clone());
        if let Some(store) = &self.store {
            builder = builder.store(Arc::clone(store));
        }
        Entry {
            mac,
            cache: builder.build(),
            last_used: AtomicI64::new(now),
            fixed_bytes: ENTRY_OVERHEAD + 2 * key.text_bytes() + secret.expose_secret().len(),
            token_bytes: AtomicUsize::new(0),
            cached: AtomicBool::new(false),
        }
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        self.slots.read().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many bytes the cached entries take (what `max_cache_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Requests being admitted, per key and secret's keyed hash.
type Admitting = Mutex<HashMap<(ProxyKey, [u8; 32]), Weak<tokio::sync::Mutex<()>>>>;

/// A request being admitted for a key and secret (see [`ProxyCache::admission`]); the next
/// identical request is admitted when this is dropped.
pub(crate) struct Admission<'a> {
    admitting: &'a Admitting,
    id: (ProxyKey, [u8; 32]),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut admitting = self.admitting.lock();
        if admitting
            .get(&self.id)
            .is_some_and(|lock| lock.strong_count() == 0)
        {
            admitting.remove(&self.id);
        }
    }
}

/// The entry whose MAC equals `mac`, compared in constant time against every entry.
fn find(slot: Option<&Vec<Arc<Entry>>>, mac: &[u8; 32]) -> Option<Arc<Entry>> {
    let mut found = None;
    for entry in slot? {
        if bool::from(entry.mac.ct_eq(mac)) {
            found = Some(Arc::clone(entry));
        }
    }
    found
}

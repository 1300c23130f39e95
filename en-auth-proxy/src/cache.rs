//! The proxy's cache: one core [`TokenCache`] per (client id, audience/resources, scopes) key
//! and secret, bounded in number, with authentication on every hit.
//!
//! - **Keys.** A key is what changes the token besides the credentials: client id, audience,
//!   resources and normalized scopes (sorted, without duplicates).
//! - **Authentication on every hit.** Each cached entry remembers an HMAC-SHA256 of the secret
//!   that created it, keyed with a random per-process key; the secret itself is kept only
//!   inside the entry's authorizer, to renew the token. A request's secret is HMACed the same
//!   way and compared in constant time (`subtle`). A token is only ever handed to a caller
//!   that presented the secret it was obtained with.
//! - **A wrong secret is never answered from cache.** It gets an entry of its own (at most
//!   [`SECRETS_PER_KEY`] per key), whose lifecycle asks upstream. When upstream refuses, the
//!   entry remembers the refusal for the refusal window (the lifecycle's permanent-failure
//!   backoff), so repeating the same wrong secret is refused locally without reaching
//!   upstream. A secret upstream accepts (a rotated one) simply becomes another entry.
//! - **Bounded.** At most `max_keys` keys; beyond it, keys without a usable token go first,
//!   then the least recently used (their lifecycles end with them).
//! - **Lifecycle.** Everything about when to fetch — one fetch per entry at a time, renewal
//!   started in the background `2 × min_remaining` before expiry while callers keep getting
//!   the current token, failures remembered with backoff, and the floor below which a token
//!   is not handed out (`min_remaining`, the lifecycle's pass-on floor) — is the core
//!   lifecycle's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use en_auth_core::{
    CachedToken, ClientInfo, Error, LifecyclePolicy, RetryPolicy, TokenCache, TokenStore,
};
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::upstream::{TokenRequest, Upstream, UpstreamAuthorizer, UpstreamToken};

/// Most secrets remembered per key: the current one, one being rotated in, and a few wrong
/// ones being refused locally.
pub const SECRETS_PER_KEY: usize = 4;

/// What identifies a cached token besides the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyKey {
    /// The customer's client id.
    pub client_id: String,
    /// Audience, resources and scopes asked for.
    pub request: TokenRequest,
}

/// One secret's token lifecycle under a key.
pub struct Entry {
    mac: [u8; 32],
    /// The core lifecycle for this key and secret.
    pub cache: TokenCache<UpstreamAuthorizer>,
    last_used: AtomicI64,
}

impl Entry {
    /// The keyed hash (HMAC with the process's random key) of the secret of this entry.
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
}

/// The keyed map of entries.
pub struct ProxyCache {
    /// HMAC-SHA256 keyed with 32 random bytes drawn at start; cloned per request.
    mac: Hmac<Sha256>,
    slots: RwLock<HashMap<ProxyKey, Vec<Arc<Entry>>>>,
    upstream: Arc<Upstream>,
    store: Option<Arc<dyn TokenStore>>,
    policy: LifecyclePolicy,
    config: Arc<ProxyConfig>,
    metrics: Arc<Metrics>,
    /// A use counter: entries remember the tick of their last use (exact LRU order).
    clock: AtomicI64,
}

impl ProxyCache {
    pub(crate) fn new(
        config: Arc<ProxyConfig>,
        upstream: Arc<Upstream>,
        store: Option<Arc<dyn TokenStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, en_auth_core::Error> {
        let mut mac_key = [0u8; 32];
        getrandom::getrandom(&mut mac_key).map_err(|e| {
            en_auth_core::Error::InvalidConfiguration {
                setting: "random".into(),
                reason: format!("the operating system's random source failed: {e}"),
            }
        })?;
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
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).map_err(|_| {
            en_auth_core::Error::InvalidConfiguration {
                setting: "hmac".into(),
                reason: "HMAC refused its key".into(),
            }
        })?;
        Ok(Self {
            mac,
            slots: RwLock::new(HashMap::new()),
            upstream,
            store,
            policy,
            config,
            metrics,
            clock: AtomicI64::new(0),
        })
    }

    fn tick(&self) -> i64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The keyed hash of a client's secret.
    fn mac(&self, client_id: &str, secret: &SecretString) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&(client_id.len() as u64).to_be_bytes());
        mac.update(client_id.as_bytes());
        mac.update(secret.expose_secret().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The entry for `key` whose secret is `secret`, created when there is none.
    pub fn entry(&self, key: &ProxyKey, secret: &SecretString) -> Arc<Entry> {
        let mac = self.mac(&key.client_id, secret);
        let now = self.tick();
        if let Some(entry) = find(self.slots.read().get(key), &mac) {
            entry.last_used.store(now, Ordering::Relaxed);
            return entry;
        }
        let mut slots = self.slots.write();
        if let Some(entry) = find(slots.get(key), &mac) {
            entry.last_used.store(now, Ordering::Relaxed);
            return entry;
        }
        if !slots.contains_key(key) && slots.len() >= self.config.max_keys {
            let evicted = evict(&mut slots, self.config.max_keys);
            self.metrics.evicted(evicted);
        }
        let entry = Arc::new(self.new_entry(key, secret, mac, now));
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
            slot.swap_remove(victim);
        }
        slot.push(Arc::clone(&entry));
        self.metrics.set_cached_keys(slots.len());
        entry
    }

    fn new_entry(&self, key: &ProxyKey, secret: &SecretString, mac: [u8; 32], now: i64) -> Entry {
        let info = ClientInfo::new(key.client_id.clone(), secret.expose_secret().to_owned());
        let authorizer = UpstreamAuthorizer::new(
            info,
            key.request.clone(),
            self.config.upstream_auth_of(&key.client_id),
            Arc::clone(&self.upstream),
        );
        let mut builder = TokenCache::builder(authorizer).policy(self.policy.clone());
        if let Some(store) = &self.store {
            builder = builder.store(Arc::clone(store));
        }
        Entry {
            mac,
            cache: builder.build(),
            last_used: AtomicI64::new(now),
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

/// Drops a sixteenth of `max` keys (at least one): keys without a usable token first (a
/// flood of made-up keys cannot push out customers' tokens), then the least recently used.
/// Returns how many.
fn evict(slots: &mut HashMap<ProxyKey, Vec<Arc<Entry>>>, max: usize) -> usize {
    let n = (max / 16).max(1).min(slots.len());
    let mut ranks: Vec<((bool, i64), ProxyKey)> = slots
        .iter()
        .map(|(key, entries)| {
            // Any unexpired token counts: one in its renewal window is a customer's too.
            let has_token = entries.iter().any(|e| e.cache.has_usable_token());
            let last = entries
                .iter()
                .map(|e| e.last_used.load(Ordering::Relaxed))
                .max()
                .unwrap_or(i64::MIN);
            ((has_token, last), key.clone())
        })
        .collect();
    if n < ranks.len() {
        ranks.select_nth_unstable_by_key(n, |(rank, _)| *rank);
    }
    for (_, key) in ranks.into_iter().take(n) {
        slots.remove(&key);
    }
    n
}

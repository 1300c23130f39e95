//! The verified-token cache: machine clients send the same token for its whole lifetime, so
//! a verifier sees each token thousands of times. The signature is checked once; later
//! sightings of the same token reuse the verified claims.
//!
//! Rules:
//! - Entries are keyed by the SHA-256 of the whole token: a token that differs in any byte
//!   (another signature, a tampered payload) is another entry and gets a full verification.
//! - Only tokens that passed the full verification (signature, algorithm, `typ`, issuer,
//!   audience, time claims) are stored, never failures.
//! - Nothing accepted from the cache could be refused by a fresh verification. On every hit
//!   the verifier re-runs each check whose answer can change: the time claims (`exp`, `nbf`,
//!   `iat`, with the same leeway) against the current clock, the policy checks (scopes,
//!   `client_id`, `token_use`, `org_id`), and whether the signing key is still published in
//!   the issuer's key set (the very same key, not only the same `kid`). Everything else is a
//!   function of the token's bytes and the verifier's configuration; a reconfigured verifier
//!   gets a new, empty cache, so verifiers with different issuers or audiences never share
//!   entries.
//! - An entry is also dropped after [`DEFAULT_TOKEN_CACHE_MAX_AGE`] (configurable).
//! - The cache is bounded: two generations of at most half the capacity each; a new entry
//!   goes into the young one, and when it is full the old generation is dropped and the
//!   young one becomes old (a hit in the old generation moves the entry back). A flood of
//!   distinct valid tokens therefore never holds more than the capacity, and tokens in use
//!   stay.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::Claims;
use crate::jwks::VerificationKey;

/// Default capacity of the verified-token cache: one entry per token in use. 4096 distinct
/// live tokens cover a busy service's machine clients; an entry costs its claims (about the
/// size of the token).
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 4096;
/// Default longest time a verified token is answered from the cache before it is verified
/// again (its expiry and its key's removal end an entry sooner).
pub const DEFAULT_TOKEN_CACHE_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Settings of the verified-token cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenCacheSettings {
    pub capacity: usize,
    pub max_age: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_TOKEN_CACHE_CAPACITY,
            max_age: DEFAULT_TOKEN_CACHE_MAX_AGE,
        }
    }
}

/// The SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(crate) fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl Hash for TokenDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniformly distributed hash: eight of its bytes are a good table index.
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

/// A hasher that passes a [`TokenDigest`]'s word through.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

type Generation = HashMap<TokenDigest, Entry, BuildHasherDefault<PassThrough>>;

/// A verified token's claims and the key that verified them.
#[derive(Clone)]
pub(crate) struct Entry {
    pub claims: Arc<Claims>,
    pub key: Arc<VerificationKey>,
    /// Whether the token named its key's `kid` (else it used the set's only key).
    pub token_names_kid: bool,
    pub verified_at: Instant,
}

/// Verified tokens of one verifier configuration.
pub(crate) struct TokenCache {
    settings: TokenCacheSettings,
    generations: Mutex<(Generation, Generation)>,
    hits: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(settings: TokenCacheSettings) -> Self {
        Self {
            settings,
            generations: Mutex::new((Generation::default(), Generation::default())),
            hits: AtomicU64::new(0),
        }
    }

    /// The entry for `digest` if it is younger than the maximum age. The caller re-runs the
    /// checks that depend on time and on the key set.
    pub(crate) fn get(&self, digest: &TokenDigest) -> Option<Entry> {
        let mut generations = self.generations.lock();
        let (young, old) = &mut *generations;
        let entry = match young.get(digest) {
            Some(entry) => entry.clone(),
            None => {
                let entry = old.remove(digest)?;
                self.insert_young(&mut generations, *digest, entry.clone());
                entry
            }
        };
        if entry.verified_at.elapsed() >= self.settings.max_age {
            generations.0.remove(digest);
            return None;
        }
        Some(entry)
    }

    /// Forgets `digest` (its key is gone or it expired).
    pub(crate) fn remove(&self, digest: &TokenDigest) {
        let mut generations = self.generations.lock();
        generations.0.remove(digest);
        generations.1.remove(digest);
    }

    /// Remembers a verified token.
    pub(crate) fn insert(&self, digest: TokenDigest, entry: Entry) {
        if self.settings.capacity == 0 {
            return;
        }
        let mut generations = self.generations.lock();
        generations.1.remove(&digest);
        self.insert_young(&mut generations, digest, entry);
    }

    fn insert_young(
        &self,
        generations: &mut (Generation, Generation),
        digest: TokenDigest,
        entry: Entry,
    ) {
        let half = self.settings.capacity.div_ceil(2);
        if generations.0.len() >= half && !generations.0.contains_key(&digest) {
            generations.1 = std::mem::take(&mut generations.0);
        }
        generations.0.insert(digest, entry);
    }

    /// Counts a token answered from the cache.
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Tokens answered from the cache so far.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Entries held (both generations).
    pub(crate) fn len(&self) -> usize {
        let generations = self.generations.lock();
        generations.0.len() + generations.1.len()
    }
}

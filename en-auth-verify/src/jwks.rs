//! The JWKS cache: an identity provider's public keys, fetched once and shared.
//!
//! Rules:
//! - Keys are fetched on first use (lazily, so building a verifier does no I/O), by one task
//!   while the others wait.
//! - A token whose `kid` is not in the cached set triggers a refetch — how key rotation is
//!   picked up without a restart — but at most once per
//!   [`min_refresh_interval`](JwksCache::min_refresh_interval), so a flood of tokens with
//!   made-up `kid`s cannot turn the verifier into a weapon against the provider.
//! - A set older than `max_age` is refetched on the next verification.
//! - When a refetch fails, the cached keys keep being served.
//! - Only signing keys of asymmetric families are taken: a symmetric (`oct`) key in a public
//!   JWKS is skipped, which rules out RSA/HMAC confusion at the source.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use en_auth_core::{Error, discover, get_document, secure_url};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};

/// A key a token may be verified with.
pub(crate) struct VerificationKey {
    pub key: DecodingKey,
    pub family: jsonwebtoken::AlgorithmFamily,
    /// The key's own `alg`, when the JWKS names one: tokens must then use exactly it.
    pub alg: Option<Algorithm>,
}

pub(crate) struct KeySet {
    pub(crate) by_kid: HashMap<String, Arc<VerificationKey>>,
    /// With a single key, tokens without a `kid` may use it.
    pub(crate) only: Option<Arc<VerificationKey>>,
    fetched_at: Instant,
}

/// Where the key set is published.
#[derive(Clone, Debug)]
pub(crate) enum JwksLocation {
    /// A JWKS URL.
    Url(String),
    /// Found through `{issuer}/.well-known/openid-configuration`.
    Discover(String),
}

/// An identity provider's public keys, cached.
pub(crate) struct JwksCache {
    location: JwksLocation,
    resolved_url: tokio::sync::OnceCell<String>,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    refresh: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    /// At most one refetch for unknown `kid`s per this interval. Default 10 s.
    pub min_refresh_interval: Duration,
    /// Refetch a set older than this. Default 1 hour.
    pub max_age: Duration,
    fetches: AtomicU64,
}

/// Default of [`JwksCache::min_refresh_interval`]: short enough that a rotation is picked up
/// within seconds, long enough that junk `kid`s cost the provider one request per 10 s.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Default of [`JwksCache::max_age`].
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

impl JwksCache {
    pub(crate) fn new(location: JwksLocation, http: reqwest::Client) -> Self {
        Self {
            location,
            resolved_url: tokio::sync::OnceCell::new(),
            http,
            keys: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            max_age: DEFAULT_MAX_AGE,
            fetches: AtomicU64::new(0),
        }
    }

    /// A new, empty cache for the same key set with the same settings, changed by `change`
    /// (used when a shared verifier is reconfigured: its clones keep the old cache).
    pub(crate) fn reconfigured(
        &self,
        location: Option<JwksLocation>,
        change: impl FnOnce(&mut Self),
    ) -> Self {
        let mut fresh = Self::new(
            location.unwrap_or_else(|| self.location.clone()),
            self.http.clone(),
        );
        fresh.min_refresh_interval = self.min_refresh_interval;
        fresh.max_age = self.max_age;
        change(&mut fresh);
        fresh
    }

    /// JWKS documents fetched so far (attempts, failed ones included).
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key for a token's `kid`, refetching the set when the rules above allow.
    pub(crate) async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerificationKey>, Error> {
        let current = self.keys.read().clone();
        let set = match current {
            Some(set) if set.fetched_at.elapsed() < self.max_age => set,
            stale_or_none => {
                // Missing: must fetch. Too old: try to refresh, keep the old set on failure.
                match self.refresh_if_allowed().await {
                    Ok(set) => set,
                    Err(err) => stale_or_none.ok_or(err)?,
                }
            }
        };
        if let Some(key) = lookup(&set, kid) {
            return Ok(key);
        }
        // Unknown kid: perhaps the provider rotated its keys.
        let refreshed = self.refresh_if_allowed().await.unwrap_or(set);
        lookup(&refreshed, kid).ok_or_else(|| Error::InvalidToken {
            reason: match kid {
                // Escaped: the kid comes from the token and ends up in logs.
                Some(kid) => format!(
                    "no key with kid `{}` in the issuer's key set",
                    en_auth_core::untrusted_text(kid)
                ),
                None => "token has no kid and the key set has several keys".into(),
            },
        })
    }

    /// Refetches the set unless a fetch was attempted within the minimum interval. Single
    /// flight: concurrent callers share one fetch.
    async fn refresh_if_allowed(&self) -> Result<Arc<KeySet>, Error> {
        let before = *self.last_attempt.lock();
        let _flight = self.refresh.lock().await;
        let current = self.keys.read().clone();
        let last = *self.last_attempt.lock();
        let fetched_while_waiting = last != before;
        let recently = last.is_some_and(|at| at.elapsed() < self.min_refresh_interval);
        if fetched_while_waiting || recently {
            return current.ok_or_else(|| Error::Transport {
                message: "the issuer's key set is unavailable (the last fetch failed)".into(),
                timeout: false,
                source: None,
            });
        }
        *self.last_attempt.lock() = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                *self.keys.write() = Some(Arc::clone(&set));
                Ok(set)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not fetch the issuer's key set; keeping cached keys");
                Err(err)
            }
        }
    }

    async fn url(&self) -> Result<&str, Error> {
        self.resolved_url
            .get_or_try_init(|| async {
                match &self.location {
                    JwksLocation::Url(url) => Ok(secure_url("jwks_url", url)?.to_string()),
                    JwksLocation::Discover(issuer) => discover_jwks_uri(&self.http, issuer).await,
                }
            })
            .await
            .map(String::as_str)
    }

    async fn fetch(&self) -> Result<KeySet, Error> {
        let url = self.url().await?;
        let body = get_document(&self.http, url).await?;
        parse_key_set(&body)
    }
}

/// The usable keys of a JWKS document (see the module's rules).
pub(crate) fn parse_key_set(body: &[u8]) -> Result<KeySet, Error> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| Error::InvalidResponse {
        status: Some(200),
        // serde quotes mistyped values (an unknown `alg`, a string for the set): escaped, capped.
        reason: format!(
            "JWKS is not valid: {}",
            en_auth_core::untrusted_text(&e.to_string())
        ),
    })?;
    let mut by_kid = HashMap::new();
    let mut usable = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match jwk.algorithm {
            AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => jsonwebtoken::AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => jsonwebtoken::AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            tracing::debug!(kid = ?jwk.common.key_id, "skipping a key that cannot be used");
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = Arc::new(VerificationKey { key, family, alg });
        if let Some(kid) = &jwk.common.key_id {
            by_kid.insert(kid.clone(), Arc::clone(&key));
        }
        usable.push(key);
    }
    tracing::debug!(keys = usable.len(), "fetched the issuer's key set");
    Ok(KeySet {
        by_kid,
        only: (usable.len() == 1).then(|| usable.remove(0)),
        fetched_at: Instant::now(),
    })
}

fn lookup(set: &KeySet, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
    match kid {
        Some(kid) => set.by_kid.get(kid).cloned(),
        None => set.only.clone(),
    }
}

async fn discover_jwks_uri(http: &reqwest::Client, issuer: &str) -> Result<String, Error> {
    let config = discover(http, issuer).await?;
    let uri = config.jwks_uri.ok_or_else(|| Error::InvalidResponse {
        status: Some(200),
        reason: "OIDC discovery document has no jwks_uri".into(),
    })?;
    Ok(secure_url("jwks_uri", &uri)?.to_string())
}

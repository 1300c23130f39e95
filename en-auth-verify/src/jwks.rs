//! The JWKS cache: an identity provider's public keys, fetched once and shared.
//!
//! Rules:
//! - Keys are fetched on first use (lazily, so building a verifier does no I/O).
//! - Every fetch runs in its own task; callers only wait for its outcome, which is shared with
//!   every waiter. A caller that gives up (a client disconnect, a server timeout layer)
//!   cancels nothing: the fetch it started still completes and serves everyone after it.
//! - A token whose `kid` is not in the cached set starts a refetch — how an unannounced key
//!   rotation is picked up without a restart — but fetches start at most once per
//!   [`DEFAULT_MIN_REFRESH_INTERVAL`] (configurable), so a flood of tokens with made-up `kid`s
//!   cannot turn the verifier into a weapon against the provider. The interval counts from
//!   the start of a fetch that really runs, so cancelling requests cannot use it up.
//! - The set is refreshed in the background every [`DEFAULT_REFRESH_EVERY`] (configurable),
//!   so keys that providers publish ahead of use are known before the first token signed
//!   with them arrives. A set older than that is refreshed in the background on the next
//!   verification as well; the cached keys keep serving meanwhile, so a hanging JWKS
//!   endpoint never holds up a token whose key is known.
//! - When a refetch fails, the cached keys keep being served.
//! - Only signing keys of asymmetric families are taken: a symmetric (`oct`) key in a public
//!   JWKS is skipped, which rules out RSA/HMAC confusion at the source.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use en_auth_core::{Error, discover, get_document, secure_url};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

/// A key a token may be verified with.
pub(crate) struct VerificationKey {
    pub key: DecodingKey,
    pub family: jsonwebtoken::AlgorithmFamily,
    /// The key's own `alg`, when the JWKS names one: tokens must then use exactly it.
    pub alg: Option<Algorithm>,
    /// The key's `kid`, if it has one.
    pub kid: Option<String>,
    /// The JWK as published (empty for a shared secret): a refetch that finds the same key
    /// keeps the same `Arc`, so the verified-token cache knows the key is still published.
    fingerprint: String,
}

impl VerificationKey {
    /// A shared-secret key (never part of a JWKS).
    pub(crate) fn shared(key: DecodingKey, alg: Algorithm) -> Self {
        Self {
            key,
            family: alg.family(),
            alg: Some(alg),
            kid: None,
            fingerprint: String::new(),
        }
    }
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
    /// Given once, in memory: never fetched.
    Fixed,
}

/// Default of the minimum interval between two fetches: short enough that a rotation is
/// picked up within seconds, long enough that junk `kid`s cost the provider one request per
/// 10 s.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Default period of the background refresh of the key set. Providers publish new keys well
/// ahead of use (Auth0, Cognito and most OIDC providers: hours to days), so 15 minutes learns
/// them in time while costing the provider four requests an hour; 5 to 60 minutes are all
/// sensible.
pub const DEFAULT_REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// The shortest refresh period accepted (a zero period would spin).
const MIN_REFRESH_EVERY: Duration = Duration::from_millis(10);
/// The longest refresh period accepted (timer arithmetic must not overflow); far beyond any
/// sensible setting.
const MAX_REFRESH_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The outcome of one fetch, shared with every caller that waited for it.
type Outcome = Result<(), Arc<Error>>;

/// The fetch state: when the last one started, the one under way, the last failure.
#[derive(Default)]
struct Flight {
    last_started: Option<Instant>,
    running: Option<watch::Receiver<Option<Outcome>>>,
    last_error: Option<Arc<Error>>,
}

/// Settings of a [`JwksCache`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct JwksSettings {
    /// At most one fetch starts per this interval.
    pub min_refresh_interval: Duration,
    /// The background refresh period; also the age at which a set counts as stale.
    pub refresh_every: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            refresh_every: DEFAULT_REFRESH_EVERY,
        }
    }
}

/// What the fetch tasks share with the cache.
struct Shared {
    location: JwksLocation,
    resolved_url: tokio::sync::OnceCell<String>,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    flight: Mutex<Flight>,
    settings: JwksSettings,
    fetches: AtomicU64,
    /// Fetches whose key set replaced the cached one.
    updates: AtomicU64,
    /// The periodic refresh task, once started (restarted if its runtime shut down).
    timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// An identity provider's public keys, cached.
pub(crate) struct JwksCache {
    shared: Arc<Shared>,
}

impl JwksCache {
    pub(crate) fn new(location: JwksLocation, http: reqwest::Client) -> Self {
        Self::with_settings(location, http, JwksSettings::default())
    }

    fn with_settings(
        location: JwksLocation,
        http: reqwest::Client,
        settings: JwksSettings,
    ) -> Self {
        let settings = JwksSettings {
            refresh_every: settings
                .refresh_every
                .clamp(MIN_REFRESH_EVERY, MAX_REFRESH_EVERY),
            ..settings
        };
        Self {
            shared: Arc::new(Shared {
                location,
                resolved_url: tokio::sync::OnceCell::new(),
                http,
                keys: RwLock::new(None),
                flight: Mutex::new(Flight::default()),
                settings,
                fetches: AtomicU64::new(0),
                updates: AtomicU64::new(0),
                timer: Mutex::new(None),
            }),
        }
    }

    /// A cache holding the keys of `document` for good: no fetch, no refresh.
    pub(crate) fn fixed(document: &[u8], http: reqwest::Client) -> Result<Self, Error> {
        let set = parse_key_set(document, None)?;
        if set.by_kid.is_empty() && set.only.is_none() {
            return Err(Error::InvalidConfiguration {
                setting: "jwks".into(),
                reason: "the JWKS document has no usable signing key".into(),
            });
        }
        let cache = Self::new(JwksLocation::Fixed, http);
        *cache.shared.keys.write() = Some(Arc::new(set));
        Ok(cache)
    }

    /// A new, empty cache for the same key set with the same settings, changed by `change`
    /// (used when a shared verifier is reconfigured: its clones keep the old cache).
    pub(crate) fn reconfigured(
        &self,
        location: Option<JwksLocation>,
        change: impl FnOnce(&mut JwksSettings),
    ) -> Self {
        let mut settings = self.shared.settings;
        change(&mut settings);
        let fresh = Self::with_settings(
            location.unwrap_or_else(|| self.shared.location.clone()),
            self.shared.http.clone(),
            settings,
        );
        if matches!(fresh.shared.location, JwksLocation::Fixed) {
            // Nothing to fetch them from again.
            *fresh.shared.keys.write() = self.shared.keys.read().clone();
        }
        fresh
    }

    /// JWKS fetches started so far (failed ones included).
    pub(crate) fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// Fetches so far whose key set replaced the cached one.
    pub(crate) fn updates(&self) -> u64 {
        self.shared.updates.load(Ordering::Relaxed)
    }

    /// The cached key for `kid`, without any waiting; starts a background refresh when the
    /// set is stale. `None` when the key is not (or no longer) published.
    pub(crate) fn cached_key(&self, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
        let set = self.shared.keys.read().clone()?;
        self.refresh_if_stale(&set);
        lookup(&set, kid)
    }

    /// The key for a token's `kid`, fetching the set when the rules above allow.
    pub(crate) async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerificationKey>, Error> {
        self.start_timer();
        let current = self.shared.keys.read().clone();
        if let Some(set) = &current {
            self.refresh_if_stale(set);
            if let Some(key) = lookup(set, kid) {
                return Ok(key);
            }
        }
        // No keys yet, or an unknown kid (perhaps the provider rotated its keys): start a fetch
        // or join the one under way, and wait for its outcome.
        let outcome = match Shared::start_fetch(&self.shared, true) {
            Some(receiver) => Some(wait(receiver).await),
            None => None,
        };
        let latest = self.shared.keys.read().clone();
        match latest {
            Some(set) => lookup(&set, kid).ok_or_else(|| unknown_kid(kid)),
            None => Err(match outcome {
                Some(Err(err)) => copy_error(&err),
                _ => match self.shared.flight.lock().last_error.clone() {
                    Some(err) => copy_error(&err),
                    None => unavailable(),
                },
            }),
        }
    }

    fn refresh_if_stale(&self, set: &KeySet) {
        if set.fetched_at.elapsed() >= self.shared.settings.refresh_every {
            // In the background: the cached keys keep serving meanwhile.
            let _ = Shared::start_fetch(&self.shared, true);
        }
    }

    /// Starts the periodic refresh on the first verification (building a verifier does no
    /// I/O and needs no runtime), and again if the runtime it ran on has shut down (a
    /// verifier may outlive one). The task holds the cache weakly and ends when the last
    /// verifier sharing it is dropped.
    fn start_timer(&self) {
        if matches!(self.shared.location, JwksLocation::Fixed) {
            return;
        }
        let mut timer = self.shared.timer.lock();
        if timer.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let period = self.shared.settings.refresh_every;
        *timer = Some(runtime.spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let _ = Shared::start_fetch(&shared, false);
            }
        }));
    }
}

impl Shared {
    /// Starts a fetch in its own task, or joins the one under way. `None` when `limited` and
    /// a fetch started within the minimum interval (the rate limit of request-driven
    /// fetches; the periodic refresh paces itself).
    fn start_fetch(
        shared: &Arc<Shared>,
        limited: bool,
    ) -> Option<watch::Receiver<Option<Outcome>>> {
        if matches!(shared.location, JwksLocation::Fixed) {
            return None;
        }
        let mut flight = shared.flight.lock();
        if let Some(running) = &flight.running {
            if running.has_changed().is_ok() {
                return Some(running.clone());
            }
            // Its task is gone without an answer (its runtime shut down): it does not count
            // against the rate limit, start another.
            flight.running = None;
            flight.last_started = None;
        }
        if limited
            && flight
                .last_started
                .is_some_and(|at| at.elapsed() < shared.settings.min_refresh_interval)
        {
            return None;
        }
        // reqwest needs tokio anyway; without a runtime there is nothing to run the fetch on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            flight.last_error = Some(Arc::new(Error::InvalidConfiguration {
                setting: "runtime".into(),
                reason: "verifying with a JWKS needs a tokio runtime".into(),
            }));
            return None;
        };
        flight.last_started = Some(Instant::now());
        let (sender, receiver) = watch::channel(None);
        flight.running = Some(receiver.clone());
        drop(flight);
        shared.fetches.fetch_add(1, Ordering::Relaxed);

        let task = {
            let shared = Arc::clone(shared);
            async move {
                let outcome = shared.fetch_and_store().await;
                let mut flight = shared.flight.lock();
                flight.running = None;
                if let Err(err) = &outcome {
                    flight.last_error = Some(Arc::clone(err));
                }
                drop(flight);
                let _ = sender.send(Some(outcome));
            }
        };
        runtime.spawn(task);
        Some(receiver)
    }

    async fn fetch_and_store(&self) -> Outcome {
        let fetched = self.fetch().await.and_then(|set| {
            // A set with no key a token could name (empty, or only `enc`/`oct`/unreadable
            // keys) is a failed fetch: the cached keys keep serving.
            if set.by_kid.is_empty() && set.only.is_none() {
                return Err(Error::InvalidResponse {
                    status: Some(200),
                    reason: "the JWKS document has no usable signing key".into(),
                });
            }
            Ok(set)
        });
        match fetched {
            Ok(set) => {
                *self.keys.write() = Some(Arc::new(set));
                self.updates.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not fetch the issuer's key set; keeping cached keys");
                Err(Arc::new(err))
            }
        }
    }

    async fn url(&self) -> Result<&str, Error> {
        self.resolved_url
            .get_or_try_init(|| async {
                match &self.location {
                    JwksLocation::Url(url) => Ok(secure_url("jwks_url", url)?.to_string()),
                    JwksLocation::Discover(issuer) => discover_jwks_uri(&self.http, issuer).await,
                    JwksLocation::Fixed => Err(Error::InvalidConfiguration {
                        setting: "jwks".into(),
                        reason: "a fixed key set is never fetched".into(),
                    }),
                }
            })
            .await
            .map(String::as_str)
    }

    async fn fetch(&self) -> Result<KeySet, Error> {
        let url = self.url().await?;
        let body = get_document(&self.http, url).await?;
        let previous = self.keys.read().clone();
        parse_key_set(&body, previous.as_deref())
    }
}

/// The usable signing keys of a JWKS document. Keys equal to one in `previous` keep its `Arc`.
pub(crate) fn parse_key_set(body: &[u8], previous: Option<&KeySet>) -> Result<KeySet, Error> {
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
        let fingerprint = serde_json::to_string(jwk).unwrap_or_default();
        let kid = jwk.common.key_id.clone();
        let known = previous
            .and_then(|p| lookup_exact(p, kid.as_deref()))
            .filter(|k| !fingerprint.is_empty() && k.fingerprint == fingerprint);
        let key = match known {
            Some(key) => key,
            None => {
                let Ok(key) = DecodingKey::from_jwk(jwk) else {
                    tracing::debug!(kid = ?kid, "skipping a key that cannot be used");
                    continue;
                };
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                Arc::new(VerificationKey {
                    key,
                    family,
                    alg,
                    kid: kid.clone(),
                    fingerprint,
                })
            }
        };
        if let Some(kid) = kid {
            by_kid.insert(kid, Arc::clone(&key));
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

/// The key published under exactly this `kid` (or the one key without a kid).
fn lookup_exact(set: &KeySet, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
    match kid {
        Some(kid) => set.by_kid.get(kid).cloned(),
        None => set.only.clone().filter(|k| k.kid.is_none()),
    }
}

async fn wait(mut receiver: watch::Receiver<Option<Outcome>>) -> Outcome {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
        // The task ended without an answer (its runtime shut down).
        Err(_) => Err(Arc::new(unavailable())),
    }
}

fn unknown_kid(kid: Option<&str>) -> Error {
    Error::InvalidToken {
        reason: match kid {
            // Escaped: the kid comes from the token and ends up in logs.
            Some(kid) => format!(
                "no key with kid `{}` in the issuer's key set",
                en_auth_core::untrusted_text(kid)
            ),
            None => "token has no kid and the key set has several keys".into(),
        },
    }
}

fn unavailable() -> Error {
    Error::Transport {
        message: "the issuer's key set is unavailable (the last fetch failed)".into(),
        timeout: false,
        source: None,
    }
}

/// A fetch failure as seen by one of its waiters (`Error` is not `Clone`: its sources are
/// not). The kind, status and text carry over; the source chain stays with the log line.
fn copy_error(err: &Error) -> Error {
    match err {
        Error::InvalidConfiguration { setting, reason } => Error::InvalidConfiguration {
            setting: setting.clone(),
            reason: reason.clone(),
        },
        Error::ServerError {
            status,
            retry_after,
        } => Error::ServerError {
            status: *status,
            retry_after: *retry_after,
        },
        Error::InvalidResponse { status, reason } => Error::InvalidResponse {
            status: *status,
            reason: reason.clone(),
        },
        Error::Transport {
            message, timeout, ..
        } => Error::Transport {
            message: message.clone(),
            timeout: *timeout,
            source: None,
        },
        other => Error::Transport {
            message: format!("the issuer's key set is unavailable: {other}"),
            timeout: false,
            source: None,
        },
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

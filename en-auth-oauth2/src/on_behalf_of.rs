//! [`OnBehalfOf`]: a downstream token for each caller of an API, by token exchange (RFC 8693)
//! of the caller's own token, with one token lifecycle per caller. The rules are on
//! [`OnBehalfOf`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use en_auth_core::{BearerToken, CachedToken, ClientInfo, Error, LifecyclePolicy, TokenCache};
use parking_lot::Mutex;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::token_exchange::{
    ACCESS_TOKEN_TYPE, CallerLimit, ExchangeSettings, SubjectToken, TokenExchangeAuthorizer,
    exchange_builder_methods,
};

/// How many caller tokens an [`OnBehalfOf`] remembers by default: more concurrent users than
/// a typical API instance serves within a token's lifetime. Each costs its caller's token, the
/// downstream token (both usually 1-2 KiB as JWTs, at most [`MAX_CALLER_TOKEN_BYTES`] for
/// the caller's) and about a kilobyte of cache: a few megabytes at most, usually less.
pub const DEFAULT_MAX_CALLERS: usize = 1_000;

/// Caller tokens longer than this are refused ([`Error::InvalidToken`]) before anything is
/// remembered: the same bound as `en_auth::verify`'s `DEFAULT_MAX_TOKEN_BYTES`.
pub const MAX_CALLER_TOKEN_BYTES: usize = 16 * 1024;

/// A caller's token, as it arrived (the bearer token of a verified request), and when it
/// expires.
///
/// **Only a token your service has verified** (`en_auth::verify::RequireAuth`, or your own
/// verifier) belongs here: [`OnBehalfOf`] trusts it — each new token costs one exchange and a
/// place among the remembered callers, and the `exp` read by [`new`](Self::new) is not
/// checked.
///
/// [`new`](Self::new) takes the expiry from the token's `exp` when it is a JWT (read when the
/// caller is first seen, not on every request). With `en_auth::verify`, build it from the
/// verified request with [`verified`](Self::verified); give an opaque token's verified
/// expiry with [`with_expiry`](Self::with_expiry). `Debug` never shows the token.
///
/// ```
/// use en_auth_oauth2::CallerToken;
/// let caller = CallerToken::new("opaque-token").with_exp(4_102_444_800); // 2100-01-01
/// assert!(caller.expires_at().is_some());
/// assert!(!format!("{caller:?}").contains("opaque-token"));
/// ```
#[derive(Clone)]
pub struct CallerToken {
    token: SecretString,
    expiry: Expiry,
}

/// When a caller's token expires.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    /// As given (`None`: it does not).
    Given(Option<DateTime<Utc>>),
    /// The JWT's `exp`, read only when needed.
    FromJwt,
}

impl CallerToken {
    /// The caller's token; its expiry is the JWT's `exp`, if it is a JWT with one.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: SecretString::from(token.into()),
            expiry: Expiry::FromJwt,
        }
    }

    /// A token your verifier accepted, and its verified `exp` (seconds since the epoch;
    /// `None`: it has none). With `en_auth::verify`, in a handler behind `RequireAuth` whose
    /// `caller: Authenticated`:
    /// `obo.token_for(CallerToken::verified(caller.token(), caller.exp)).await`.
    pub fn verified(token: &SecretString, exp: Option<i64>) -> Self {
        Self {
            token: SecretString::from(token.expose_secret().to_owned()),
            expiry: Expiry::Given(exp.and_then(|exp| DateTime::from_timestamp(exp, 0))),
        }
    }

    /// The caller's token expires at `at` (the verified `exp`).
    pub fn with_expiry(mut self, at: DateTime<Utc>) -> Self {
        self.expiry = Expiry::Given(Some(at));
        self
    }

    /// The caller's token expires at `exp` seconds since the epoch (a JWT's `exp` claim, as
    /// `Claims::exp` holds it).
    pub fn with_exp(self, exp: i64) -> Self {
        match DateTime::from_timestamp(exp, 0) {
            Some(at) => self.with_expiry(at),
            None => self,
        }
    }

    /// When the caller's token expires, if known.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self.expiry {
            Expiry::Given(at) => at,
            Expiry::FromJwt => jwt_exp(self.token.expose_secret()),
        }
    }

    fn key(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"en-auth on-behalf-of caller\0");
        hasher.update(self.token.expose_secret().as_bytes());
        hasher.finalize().into()
    }
}

impl From<&str> for CallerToken {
    fn from(token: &str) -> Self {
        Self::new(token)
    }
}

impl From<String> for CallerToken {
    fn from(token: String) -> Self {
        Self::new(token)
    }
}

impl From<&String> for CallerToken {
    fn from(token: &String) -> Self {
        Self::new(token.as_str())
    }
}

impl fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerToken")
            .field("token", &"[REDACTED]")
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// The `exp` of a JWT's payload, read without verifying it; `None` for anything else.
fn jwt_exp(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() {
        return None;
    }
    DateTime::from_timestamp(exp.clamp(0.0, 1e11) as i64, 0)
}

/// A downstream token for each caller of an API, by token exchange (RFC 8693)
/// of the caller's own token, with one token lifecycle per caller.
///
/// An API that has verified its caller's access token and must call another API *as that
/// caller* exchanges the caller's token for one meant for the downstream API (its `audience`
/// or `resource`). Doing so on every request would cost one token request per request; sharing
/// one downstream token between callers would let one user act as another. The rules:
///
/// - **Verified callers only.** Give it only tokens your service verified: every new token
///   costs one exchange and a place among the remembered callers.
/// - **One lifecycle per caller's token.** Each distinct caller token gets its own
///   [`TokenCache`]: concurrent requests of one caller share one exchange (single flight), and
///   later requests reuse its result until it goes stale. Two callers never share a token.
/// - **Keyed by a hash.** Caller tokens are looked up by their SHA-256; the token itself is
///   kept only as the secret the exchange sends, never in a key, `Debug`, log or error.
/// - **Bounded.** At most [`DEFAULT_MAX_CALLERS`] caller tokens are remembered
///   ([`with_max_callers`](Self::with_max_callers)); past that an expired one is dropped, or
///   else the least recently used (counted by [`evicted_callers`](Self::evicted_callers): when
///   it grows, raise the bound). A caller token over [`MAX_CALLER_TOKEN_BYTES`] is refused.
/// - **Never past the caller's token.** A downstream token's expiry is clamped to the caller
///   token's `exp`; once that has passed, [`token_for`](Self::token_for) refuses it with
///   [`Error::InvalidToken`] without asking the provider, and the entry is dropped. There is no
///   clock-skew leeway here (unlike the verifier's): a token past its `exp` would be refused
///   by the provider anyway, and `InvalidToken` tells the caller to renew it (a 401).
/// - **A rejected token is replaced.** When the downstream API answers 401, hand the token to
///   [`invalidate`](Self::invalidate): the next request exchanges anew.
///
/// Its clock is the lifecycle's (tokio's): the wall clock is read once per caller, when first
/// seen, to turn the caller token's `exp` into a deadline.
///
/// ```no_run
/// use en_auth_core::ClientInfo;
/// use en_auth_oauth2::OnBehalfOf;
///
/// # async fn handler(obo: OnBehalfOf, bearer: &str) -> Result<(), en_auth_core::Error> {
/// // Built once, shared by every request (clones share the callers' tokens).
/// let obo = OnBehalfOf::new(
///     ClientInfo::new("orders-api", "orders-api-secret"),
///     "https://idp.example.com/oauth2/token",
/// )
/// .with_audience("https://inventory.example.com");
///
/// // In a handler: the caller's (verified) bearer token in, a downstream token out.
/// let token = obo.token_for(bearer).await?;
/// let response = reqwest::Client::new()
///     .get("https://inventory.example.com/items")
///     .header("authorization", token.authorization())
///     .send()
///     .await;
/// if response.is_ok_and(|r| r.status() == 401) {
///     obo.invalidate(bearer, &token).await; // the next request exchanges anew
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OnBehalfOf {
    settings: ExchangeSettings,
    subject_token_type: String,
    max_callers: usize,
    policy: LifecyclePolicy,
    callers: Arc<Mutex<Callers>>,
    evicted: Arc<AtomicU64>,
}

/// The remembered callers: one cache per caller token, by its hash.
#[derive(Default)]
struct Callers {
    entries: HashMap<[u8; 32], Entry>,
    /// The entries by last use (`Entry::last_used`, unique), least recent first.
    by_use: BTreeMap<u64, [u8; 32]>,
    /// The entries whose caller's expiry is known, by deadline.
    by_deadline: BTreeSet<(Instant, [u8; 32])>,
    /// Use counter: an entry's `last_used` orders it for eviction.
    uses: u64,
}

struct Entry {
    cache: TokenCache<TokenExchangeAuthorizer>,
    last_used: u64,
}

impl Entry {
    fn limit(&self) -> Option<&CallerLimit> {
        self.cache.authorizer().caller_limit()
    }
}

impl Callers {
    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_use.remove(&entry.last_used);
            if let Some(limit) = entry.limit() {
                self.by_deadline.remove(&(limit.deadline, *key));
            }
        }
    }

    /// Makes room for one more entry: an expired one goes, else the least recently used.
    /// Returns whether a caller whose token is still valid was dropped.
    fn evict_one(&mut self, now: Instant) -> bool {
        if let Some(&(deadline, key)) = self.by_deadline.first() {
            if deadline <= now {
                self.remove(&key);
                return false;
            }
        }
        match self.by_use.first_key_value() {
            Some((_, &key)) => {
                self.remove(&key);
                true
            }
            None => false,
        }
    }
}

impl OnBehalfOf {
    /// Exchanges callers' tokens as client `client_info` at `token_url` (which must be
    /// `https://`, or `http://` on loopback). The callers' tokens are sent as
    /// [`ACCESS_TOKEN_TYPE`] (see [`with_subject_token_type`](Self::with_subject_token_type)).
    pub fn new(client_info: ClientInfo, token_url: impl AsRef<str>) -> Self {
        Self {
            settings: ExchangeSettings::new(client_info, token_url.as_ref()),
            subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            max_callers: DEFAULT_MAX_CALLERS,
            policy: LifecyclePolicy::default(),
            callers: Arc::default(),
            evicted: Arc::default(),
        }
    }

    /// A changed configuration starts with no remembered callers (a clone made before keeps
    /// its own).
    fn forget_callers(&mut self) {
        self.callers = Arc::default();
        self.evicted = Arc::default();
    }

    /// The settings, to change: the remembered callers are forgotten.
    fn settings_mut(&mut self) -> &mut ExchangeSettings {
        self.forget_callers();
        &mut self.settings
    }

    exchange_builder_methods!();

    /// The type callers' tokens are sent as (`subject_token_type`; default
    /// [`ACCESS_TOKEN_TYPE`]).
    pub fn with_subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject_token_type = token_type.into();
        self.forget_callers();
        self
    }

    /// Remember at most `max` caller tokens (default [`DEFAULT_MAX_CALLERS`]; at least 1).
    pub fn with_max_callers(mut self, max: usize) -> Self {
        self.max_callers = max.max(1);
        self.forget_callers();
        self
    }

    /// The lifecycle rules of each caller's token (default: [`LifecyclePolicy::default`]).
    pub fn with_policy(mut self, policy: LifecyclePolicy) -> Self {
        self.policy = policy;
        self.forget_callers();
        self
    }

    /// The downstream token for `caller` (its bearer token as a `&str`, or a
    /// [`CallerToken`]): the remembered one while it is usable, otherwise one exchange,
    /// shared with the caller's concurrent requests.
    ///
    /// **Call it only with a token your service has verified** (see [`CallerToken`]).
    ///
    /// A caller token that has expired, is empty or longer than [`MAX_CALLER_TOKEN_BYTES`] is
    /// [`Error::InvalidToken`], and no request is sent; exchange failures are the provider's
    /// answer (`invalid_grant` for a token it does not accept).
    pub async fn token_for(
        &self,
        caller: impl Into<CallerToken>,
    ) -> Result<Arc<CachedToken<BearerToken>>, Error> {
        let caller = caller.into();
        let cache = self.cache_for(&caller)?;
        cache.get().await
    }

    /// The `Authorization` header value (`Bearer …`) of [`token_for`](Self::token_for).
    pub async fn authorization_for(
        &self,
        caller: impl Into<CallerToken>,
    ) -> Result<HeaderValue, Error> {
        Ok(self.token_for(caller).await?.authorization().clone())
    }

    /// Reports that the downstream API rejected `token` (a 401), obtained for `caller`: if it
    /// is still the caller's current token, the next [`token_for`](Self::token_for) of that
    /// caller gets a new exchange (meanwhile the rejected token is replaced in the
    /// background, as [`TokenCache::invalidate`] does). Returns whether the token was
    /// marked; `false` for a caller not remembered, a token already replaced, or a second
    /// report within the policy's rejection interval.
    pub async fn invalidate(
        &self,
        caller: impl Into<CallerToken>,
        token: &Arc<CachedToken<BearerToken>>,
    ) -> bool {
        let key = caller.into().key();
        let Some(cache) = self
            .callers
            .lock()
            .entries
            .get(&key)
            .map(|entry| entry.cache.clone())
        else {
            return false;
        };
        cache.authorizer().set_rejected(true);
        let marked = cache.invalidate(token).await;
        if !marked {
            cache.authorizer().set_rejected(false);
        }
        marked
    }

    /// How many caller tokens are remembered now.
    pub fn remembered_callers(&self) -> usize {
        self.callers.lock().entries.len()
    }

    /// How many callers whose token was still valid were dropped to make room for another
    /// (the bound, [`with_max_callers`](Self::with_max_callers), is too small for the load
    /// when this grows: each such caller's next request costs an exchange again).
    pub fn evicted_callers(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The cache of `caller`'s token: the remembered one, or a new one (dropping, at the
    /// bound, an expired or else the least recently used entry).
    fn cache_for(
        &self,
        caller: &CallerToken,
    ) -> Result<TokenCache<TokenExchangeAuthorizer>, Error> {
        let token = caller.token.expose_secret();
        if token.trim().is_empty() {
            return Err(Error::InvalidToken {
                reason: "the caller's token is empty".into(),
            });
        }
        if token.len() > MAX_CALLER_TOKEN_BYTES {
            return Err(Error::InvalidToken {
                reason: format!(
                    "the caller's token is longer than {MAX_CALLER_TOKEN_BYTES} bytes: not exchanged"
                ),
            });
        }
        let expired = || Error::InvalidToken {
            reason: "the caller's token has expired: it is not exchanged".into(),
        };
        let key = caller.key();
        let now = Instant::now();
        let mut callers = self.callers.lock();
        callers.uses += 1;
        let uses = callers.uses;
        if let Some(entry) = callers.entries.get_mut(&key) {
            match entry.limit().copied() {
                Some(limit) if limit.deadline <= now => {
                    callers.remove(&key);
                    return Err(expired());
                }
                Some(_) => {}
                None => {
                    // First seen without an expiry, now with one (an opaque token given its
                    // verified `exp`): from now on it bounds the entry too.
                    if let Some(at) = caller.expires_at() {
                        let limit = CallerLimit::new(at);
                        if limit.passed() {
                            callers.remove(&key);
                            return Err(expired());
                        }
                        entry.cache.authorizer().limit_to_caller(limit);
                        callers.by_deadline.insert((limit.deadline, key));
                    }
                }
            }
            let Some(entry) = callers.entries.get_mut(&key) else {
                return Err(expired());
            };
            let previous = std::mem::replace(&mut entry.last_used, uses);
            let cache = entry.cache.clone();
            callers.by_use.remove(&previous);
            callers.by_use.insert(uses, key);
            return Ok(cache);
        }
        // A new caller: the wall clock is read here, once, to place its token's expiry on the
        // lifecycle's clock.
        let limit = caller.expires_at().map(CallerLimit::new);
        if limit.is_some_and(|limit| limit.passed()) {
            return Err(expired());
        }
        while callers.entries.len() >= self.max_callers && !callers.by_use.is_empty() {
            if callers.evict_one(now) {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    max_callers = self.max_callers,
                    "on behalf of: a caller whose token is still valid was dropped to make room; \
                     its next request costs an exchange (raise with_max_callers)"
                );
            }
        }
        let subject = SubjectToken::value(token, self.subject_token_type.clone());
        let authorizer = TokenExchangeAuthorizer::with_settings(self.settings.clone(), subject);
        if let Some(limit) = limit {
            authorizer.limit_to_caller(limit);
            callers.by_deadline.insert((limit.deadline, key));
        }
        let cache = TokenCache::builder(authorizer)
            .policy(self.policy.clone())
            .build();
        callers.entries.insert(
            key,
            Entry {
                cache: cache.clone(),
                last_used: uses,
            },
        );
        callers.by_use.insert(uses, key);
        Ok(cache)
    }
}

impl fmt::Debug for OnBehalfOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("OnBehalfOf");
        self.settings.debug_fields(&mut s);
        s.field("subject_token_type", &self.subject_token_type)
            .field("max_callers", &self.max_callers)
            .field("remembered_callers", &self.remembered_callers())
            .field("evicted_callers", &self.evicted_callers())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use en_auth_core::Authorizer;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"ES256"}"#), b64(payload))
    }

    #[test]
    fn the_expiry_of_a_jwt_is_read_and_anything_else_has_none() {
        let at = jwt_exp(&jwt(r#"{"sub":"alice","exp":4102444800}"#)).unwrap();
        assert_eq!(at.timestamp(), 4_102_444_800);
        for hostile in [
            "",
            "opaque",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &jwt("[1,2]"),
            &jwt(r#"{"exp":"soon"}"#),
            &jwt(r#"{"exp":1e400}"#),
            &jwt(r#"{"exp":-5}"#),
        ] {
            let exp = jwt_exp(hostile);
            assert!(
                exp.is_none_or(|at| at.timestamp() == 0),
                "{hostile}: {exp:?}"
            );
        }
    }

    fn obo(max: usize) -> OnBehalfOf {
        OnBehalfOf::new(
            ClientInfo::new("svc", "secret"),
            "https://idp.example.com/t",
        )
        .with_max_callers(max)
    }

    fn remembered(obo: &OnBehalfOf, name: &str) -> bool {
        obo.callers
            .lock()
            .entries
            .contains_key(&CallerToken::new(name).key())
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_bounded_expired_ones_refused_and_the_least_recently_used_dropped() {
        let obo = obo(2);
        let later = Utc::now() + chrono::Duration::hours(1);
        let caller = |name: &str| CallerToken::new(name).with_expiry(later);
        let a = obo.cache_for(&caller("a")).unwrap();
        obo.cache_for(&caller("b")).unwrap();
        // `a` used again: `b` is now the least recently used.
        assert!(
            obo.cache_for(&caller("a"))
                .unwrap()
                .authorizer()
                .cache_key()
                == a.authorizer().cache_key()
        );
        obo.cache_for(&caller("c")).unwrap();
        assert_eq!(obo.remembered_callers(), 2);
        assert!(remembered(&obo, "a") && remembered(&obo, "c") && !remembered(&obo, "b"));
        assert_eq!(obo.evicted_callers(), 1);

        let expired = CallerToken::new("d").with_expiry(Utc::now() - chrono::Duration::seconds(1));
        let err = obo.cache_for(&expired).unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
        assert!(obo.cache_for(&CallerToken::new(" ")).is_err());
        assert!(!format!("{obo:?} {:?}", caller("secret-caller")).contains("secret-caller"));
        let indexes = |obo: &OnBehalfOf| {
            let callers = obo.callers.lock();
            (
                callers.entries.len(),
                callers.by_use.len(),
                callers.by_deadline.len(),
            )
        };
        assert_eq!(indexes(&obo), (2, 2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_bound_an_expired_caller_goes_before_the_least_recently_used() {
        let obo = obo(2);
        let soon = Utc::now() + chrono::Duration::seconds(30);
        let later = Utc::now() + chrono::Duration::hours(1);
        obo.cache_for(&CallerToken::new("old").with_expiry(later))
            .unwrap();
        obo.cache_for(&CallerToken::new("short").with_expiry(soon))
            .unwrap();
        // `short` is the most recently used, but its token has expired by now.
        tokio::time::advance(std::time::Duration::from_secs(31)).await;
        obo.cache_for(&CallerToken::new("new").with_expiry(later))
            .unwrap();
        assert!(remembered(&obo, "old") && remembered(&obo, "new") && !remembered(&obo, "short"));
        assert_eq!(
            obo.evicted_callers(),
            0,
            "an expired caller is not an eviction"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_first_seen_without_an_expiry_is_bounded_once_it_has_one() {
        let obo = obo(10);
        obo.cache_for(&CallerToken::new("opaque")).unwrap();
        let exp = Utc::now() + chrono::Duration::seconds(60);
        obo.cache_for(&CallerToken::new("opaque").with_expiry(exp))
            .unwrap();
        // Later requests without it: still bounded by it (on the lifecycle's clock).
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        let err = obo.cache_for(&CallerToken::new("opaque")).unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
        assert_eq!(obo.remembered_callers(), 0);
    }

    // Real clock: the wall clock and the lifecycle's both move between reading the expiry and
    // judging it.
    #[tokio::test]
    async fn a_caller_token_expiring_this_instant_is_refused() {
        let obo = obo(10);
        let err = obo
            .cache_for(&CallerToken::new("ending").with_expiry(Utc::now()))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
        assert_eq!(obo.remembered_callers(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_token_expiring_in_the_far_future_is_taken() {
        let obo = obo(10);
        for exp in [4_102_444_800, 8_000_000_000_000, i64::MAX] {
            obo.cache_for(&CallerToken::new(format!("far-{exp}")).with_exp(exp))
                .unwrap();
        }
        let far = DateTime::<Utc>::MAX_UTC;
        obo.cache_for(&CallerToken::new("farthest").with_expiry(far))
            .unwrap();
        assert_eq!(obo.remembered_callers(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_caller_token_is_refused_and_not_remembered() {
        let obo = obo(10);
        let huge = "a".repeat(MAX_CALLER_TOKEN_BYTES + 1);
        let err = obo.cache_for(&CallerToken::new(huge)).unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
        assert_eq!(obo.remembered_callers(), 0);
        obo.cache_for(&CallerToken::new("a".repeat(MAX_CALLER_TOKEN_BYTES)))
            .unwrap();
    }

    #[test]
    fn a_verified_caller_token_takes_the_verified_expiry_and_is_not_decoded() {
        let token = SecretString::from(jwt(r#"{"exp":4102444800}"#));
        let caller = CallerToken::verified(&token, Some(4_102_444_801));
        assert_eq!(caller.expires_at().unwrap().timestamp(), 4_102_444_801);
        assert!(CallerToken::verified(&token, None).expires_at().is_none());
        assert_eq!(
            CallerToken::new(token.expose_secret())
                .expires_at()
                .unwrap()
                .timestamp(),
            4_102_444_800
        );
    }
}

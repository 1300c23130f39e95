//! [`OnBehalfOf`]: a downstream token for each caller of an API, by token exchange (RFC 8693)
//! of the caller's own token, with one token lifecycle per caller. The rules are on
//! [`OnBehalfOf`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use en_auth_core::{BearerToken, CachedToken, ClientInfo, Error, LifecyclePolicy, TokenCache};
use parking_lot::Mutex;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::client_auth::ClientAuthentication;
use crate::grant::GrantAuthentication;
use crate::token_exchange::{
    ACCESS_TOKEN_TYPE, ExchangeSettings, SubjectToken, TokenExchangeAuthorizer,
};

/// How many caller tokens an [`OnBehalfOf`] remembers by default: a few thousand bytes each
/// (a cache and a token), so about a megabyte at most, and more concurrent users than a
/// typical API instance serves within a token's lifetime.
pub const DEFAULT_MAX_CALLERS: usize = 1_000;

/// A caller's token, as it arrived (the bearer token of a verified request), and when it
/// expires.
///
/// [`new`](Self::new) reads `exp` from the token when it is a JWT (the token was verified
/// before it got here; the expiry only bounds how long its exchanged token is kept). Give
/// the verified expiry with [`with_expiry`](Self::with_expiry) when you have it (an opaque
/// token, or `en_auth::verify::Authenticated`'s `exp`). `Debug` never shows the token.
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
    expires_at: Option<DateTime<Utc>>,
}

impl CallerToken {
    /// The caller's token; its expiry is the JWT's `exp`, if it is a JWT with one.
    pub fn new(token: impl Into<String>) -> Self {
        let token = token.into();
        let expires_at = jwt_exp(&token);
        Self {
            token: SecretString::from(token),
            expires_at,
        }
    }

    /// The caller's token expires at `at` (the verified `exp`).
    pub fn with_expiry(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
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
        self.expires_at
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
            .field("expires_at", &self.expires_at)
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
/// - **One lifecycle per caller's token.** Each distinct caller token gets its own
///   [`TokenCache`]: concurrent requests of one caller share one exchange (single flight), and
///   later requests reuse its result until it goes stale. Two callers never share a token.
/// - **Keyed by a hash.** Caller tokens are looked up by their SHA-256; the token itself is
///   kept only as the secret the exchange sends, never in a key, `Debug`, log or error.
/// - **Bounded.** At most [`DEFAULT_MAX_CALLERS`] caller tokens are remembered
///   ([`with_max_callers`](Self::with_max_callers)); past that the least recently used
///   is dropped, after the expired ones.
/// - **Never past the caller's token.** A downstream token's expiry is clamped to the caller
///   token's `exp`; once that has passed, [`token_for`](Self::token_for) refuses it with
///   [`Error::InvalidToken`] without asking the provider, and the entry is dropped.
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
/// // In a handler: the caller's bearer token in, a downstream token out.
/// let token = obo.token_for(bearer).await?;
/// let response = reqwest::Client::new()
///     .get("https://inventory.example.com/items")
///     .header("authorization", token.authorization())
///     .send()
///     .await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OnBehalfOf {
    settings: ExchangeSettings,
    subject_token_type: String,
    max_callers: usize,
    policy: LifecyclePolicy,
    callers: Arc<Mutex<Callers>>,
}

/// The remembered callers: one cache per caller token, by its hash.
#[derive(Default)]
struct Callers {
    entries: HashMap<[u8; 32], Entry>,
    /// Use counter: an entry's `last_used` orders it for eviction.
    uses: u64,
}

struct Entry {
    cache: TokenCache<TokenExchangeAuthorizer>,
    expires_at: Option<DateTime<Utc>>,
    last_used: u64,
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
        }
    }

    /// A changed configuration starts with no remembered callers (a clone made before keeps
    /// its own).
    fn changed(mut self) -> Self {
        self.callers = Arc::default();
        self
    }

    /// The downstream API's logical name (`audience`).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.settings.audience = Some(audience.into());
        self.changed()
    }

    /// A downstream resource URI (`resource`); may be called more than once.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.settings.resources.push(resource.into());
        self.changed()
    }

    /// Asks for these scopes (sent space-separated as `scope`).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.scopes = scopes.into_iter().map(Into::into).collect();
        self.changed()
    }

    /// Asks for a token of this type (`requested_token_type`); another type is refused.
    pub fn with_requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.settings.requested_token_type = Some(token_type.into());
        self.changed()
    }

    /// The type callers' tokens are sent as (`subject_token_type`; default
    /// [`ACCESS_TOKEN_TYPE`]).
    pub fn with_subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject_token_type = token_type.into();
        self.changed()
    }

    /// This service acts as `actor` (`actor_token`, RFC 8693 §1.1 delegation), read afresh per
    /// exchange.
    pub fn with_actor(mut self, actor: SubjectToken) -> Self {
        self.settings.actor = Some(actor);
        self.changed()
    }

    /// How the client authenticates (default: `client_secret_basic`, or none for a client
    /// with an empty secret).
    ///
    /// With mutual TLS ([`ClientAuthentication::tls_client_auth`]) token requests present the
    /// certificate; the rules are those of
    /// [`ServiceAccountAuthorizer::with_authentication`](crate::ServiceAccountAuthorizer::with_authentication).
    pub fn with_authentication(mut self, authentication: ClientAuthentication) -> Self {
        self.settings.authentication = GrantAuthentication::Client(authentication);
        self.settings.http.authentication_changed();
        self.changed()
    }

    /// No client authentication: `client_id` only (a public client).
    pub fn without_client_authentication(mut self) -> Self {
        self.settings.authentication = GrantAuthentication::Public;
        self.changed()
    }

    /// Remember at most `max` caller tokens (default [`DEFAULT_MAX_CALLERS`]; at least 1).
    pub fn with_max_callers(mut self, max: usize) -> Self {
        self.max_callers = max.max(1);
        self.changed()
    }

    /// The lifecycle rules of each caller's token (default: [`LifecyclePolicy::default`]).
    pub fn with_policy(mut self, policy: LifecyclePolicy) -> Self {
        self.policy = policy;
        self.changed()
    }

    /// Lifetime given to tokens whose answer has no `expires_in` (still never past the
    /// caller's token).
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.default_lifetime = Some(lifetime);
        self.changed()
    }

    /// Uses your own HTTP client for token requests. Not with mutual TLS client
    /// authentication: token requests then fail with `Error::InvalidConfiguration` rather
    /// than go out without the certificate (see
    /// [`with_root_certificate`](Self::with_root_certificate)).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.settings.http.set_custom(http);
        self.changed()
    }

    /// Trusts this certificate authority for the provider's TLS certificate, besides the
    /// system's roots. Replaces a client given with
    /// [`with_http_client`](Self::with_http_client).
    pub fn with_root_certificate(mut self, root: reqwest::Certificate) -> Self {
        self.settings.http.add_root(root);
        self.changed()
    }

    /// The downstream token for `caller` (its bearer token as a `&str`, or a
    /// [`CallerToken`]): the remembered one while it is usable, otherwise one exchange,
    /// shared with the caller's concurrent requests.
    ///
    /// A caller token that has expired (or is empty) is [`Error::InvalidToken`], and no
    /// request is sent; exchange failures are the provider's answer (`invalid_grant` for a
    /// token it does not accept).
    pub async fn token_for(
        &self,
        caller: impl Into<CallerToken>,
    ) -> Result<Arc<CachedToken<BearerToken>>, Error> {
        let caller = caller.into();
        let cache = self.cache_for(&caller, Utc::now())?;
        cache.get().await
    }

    /// The `Authorization` header value (`Bearer …`) of [`token_for`](Self::token_for).
    pub async fn authorization_for(
        &self,
        caller: impl Into<CallerToken>,
    ) -> Result<HeaderValue, Error> {
        Ok(self.token_for(caller).await?.authorization().clone())
    }

    /// How many caller tokens are remembered now.
    pub fn remembered_callers(&self) -> usize {
        self.callers.lock().entries.len()
    }

    /// The cache of `caller`'s token: the remembered one, or a new one (dropping expired and,
    /// at the bound, the least recently used entries).
    fn cache_for(
        &self,
        caller: &CallerToken,
        now: DateTime<Utc>,
    ) -> Result<TokenCache<TokenExchangeAuthorizer>, Error> {
        if caller.token.expose_secret().trim().is_empty() {
            return Err(Error::InvalidToken {
                reason: "the caller's token is empty".into(),
            });
        }
        let key = caller.key();
        let mut callers = self.callers.lock();
        if caller.expires_at.is_some_and(|at| at <= now) {
            callers.entries.remove(&key);
            return Err(Error::InvalidToken {
                reason: "the caller's token has expired: it is not exchanged".into(),
            });
        }
        callers.uses += 1;
        let uses = callers.uses;
        if let Some(entry) = callers.entries.get_mut(&key) {
            entry.last_used = uses;
            return Ok(entry.cache.clone());
        }
        if callers.entries.len() >= self.max_callers {
            callers
                .entries
                .retain(|_, entry| entry.expires_at.is_none_or(|at| at > now));
        }
        while callers.entries.len() >= self.max_callers {
            let Some(oldest) = callers
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| *key)
            else {
                break;
            };
            callers.entries.remove(&oldest);
        }
        let subject = SubjectToken::value(
            caller.token.expose_secret(),
            self.subject_token_type.clone(),
        );
        let mut authorizer = TokenExchangeAuthorizer::with_settings(self.settings.clone(), subject);
        authorizer.not_after = caller.expires_at;
        let cache = TokenCache::builder(authorizer)
            .policy(self.policy.clone())
            .build();
        callers.entries.insert(
            key,
            Entry {
                cache: cache.clone(),
                expires_at: caller.expires_at,
                last_used: uses,
            },
        );
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

    #[test]
    fn callers_are_bounded_expired_ones_refused_and_the_least_recently_used_dropped() {
        let obo = OnBehalfOf::new(
            ClientInfo::new("svc", "secret"),
            "https://idp.example.com/t",
        )
        .with_max_callers(2);
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let caller = |name: &str| CallerToken::new(name).with_expiry(later);
        let a = obo.cache_for(&caller("a"), now).unwrap();
        obo.cache_for(&caller("b"), now).unwrap();
        // `a` used again: `b` is now the least recently used.
        assert!(
            obo.cache_for(&caller("a"), now)
                .unwrap()
                .authorizer()
                .cache_key()
                == a.authorizer().cache_key()
        );
        obo.cache_for(&caller("c"), now).unwrap();
        assert_eq!(obo.remembered_callers(), 2);
        let keys: Vec<_> = obo.callers.lock().entries.keys().copied().collect();
        assert!(keys.contains(&caller("a").key()) && keys.contains(&caller("c").key()));

        let expired = CallerToken::new("d").with_expiry(now - chrono::Duration::seconds(1));
        let err = obo.cache_for(&expired, now).unwrap_err();
        assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
        assert!(obo.cache_for(&CallerToken::new(" "), now).is_err());
        assert!(!format!("{obo:?} {:?}", caller("secret-caller")).contains("secret-caller"));
    }
}

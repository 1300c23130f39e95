//! Tokens: the [`AccessToken`] trait every authorizer's token implements, the ready-made
//! [`BearerToken`], and the expiry rule with its [`EXPIRATION_GAP`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long before its expiry a token is treated as expired and refreshed.
///
/// 60 seconds covers the clock skew usually seen between a client, its identity provider and
/// the API (a few seconds), the time a request spends in flight, and a couple of retries of a
/// refresh — while costing under 2 % of a typical one-hour token. For short-lived tokens the
/// gap is clamped to half the token's lifetime (see [`expires_within`]), so a 10-second token
/// is still used for 5 seconds. Override it per use with
/// [`LifecyclePolicy::expiration_gap`](crate::LifecyclePolicy).
pub const EXPIRATION_GAP: Duration = Duration::from_secs(60);

/// A token an [`Authorizer`](crate::Authorizer) obtains: the string sent as
/// `Authorization: Bearer …` and when it stops being valid.
pub trait AccessToken: Clone + Send + Sync + 'static {
    /// The token as sent in the `Authorization` header.
    fn access_token(&self) -> &str;

    /// When the token expires; `None` when the provider did not say (the lifecycle then
    /// applies its default lifetime).
    fn expires_at(&self) -> Option<DateTime<Utc>>;

    /// When the token was obtained, used to clamp the expiration gap for short-lived tokens.
    /// `None` disables the clamp.
    fn issued_at(&self) -> Option<DateTime<Utc>> {
        None
    }
}

/// Whether `token` expires within `gap` from `now`, with the gap clamped to half the token's
/// lifetime when its issue time is known. A token with no expiry never expires here; the
/// lifecycle gives such tokens a default lifetime.
///
/// ```
/// use std::time::Duration;
/// use chrono::Utc;
/// use en_auth_core::{expires_within, BearerToken};
///
/// let now = Utc::now();
/// let hour = BearerToken::new("t", Some(Duration::from_secs(3600)));
/// assert!(!expires_within(&hour, Duration::from_secs(60), now));
/// // A 4-second token refreshes after 2 seconds, not immediately.
/// let short = BearerToken::new("t", Some(Duration::from_secs(4)));
/// assert!(!expires_within(&short, Duration::from_secs(60), now));
/// assert!(expires_within(&short, Duration::from_secs(60), now + chrono::Duration::milliseconds(2100)));
/// ```
pub fn expires_within<T: AccessToken>(token: &T, gap: Duration, now: DateTime<Utc>) -> bool {
    expires_within_millis(token, gap, now.timestamp_millis())
}

/// [`expires_within`] against the system clock. This runs on every request, so it works in
/// integer milliseconds since the epoch rather than calendar types.
pub fn expires_within_now<T: AccessToken>(token: &T, gap: Duration) -> bool {
    expires_within_millis(token, gap, now_millis())
}

/// Milliseconds since the epoch, from the system clock.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn expires_within_millis<T: AccessToken>(token: &T, gap: Duration, now_ms: i64) -> bool {
    let Some(expires_at) = token.expires_at() else {
        return false;
    };
    let expires_ms = expires_at.timestamp_millis();
    let mut gap_ms = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
    if let Some(issued_at) = token.issued_at() {
        let half_life_ms = (expires_ms.saturating_sub(issued_at.timestamp_millis()) / 2).max(0);
        gap_ms = gap_ms.min(half_life_ms);
    }
    expires_ms.saturating_sub(gap_ms) <= now_ms
}

/// A bearer token with an optional lifetime: the token most authorizers return.
///
/// Its `Debug` shows `[REDACTED]` instead of the token. It serializes (for token stores)
/// with the token in clear, so only hand the serialized form to a store you trust.
///
/// ```
/// use std::time::Duration;
/// use en_auth_core::{AccessToken, BearerToken};
/// let t = BearerToken::new("eyJhbGciOi...", Some(Duration::from_secs(3600)));
/// assert_eq!(t.access_token(), "eyJhbGciOi...");
/// assert!(t.expires_at().is_some());
/// assert!(!format!("{t:?}").contains("eyJ"));
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct BearerToken {
    #[serde(serialize_with = "serialize_secret")]
    access_token: SecretString,
    expires_at: Option<DateTime<Utc>>,
    issued_at: DateTime<Utc>,
}

impl BearerToken {
    /// A token obtained now that lives for `lifetime` (`None` if the provider did not say).
    pub fn new(access_token: impl Into<String>, lifetime: Option<Duration>) -> Self {
        let issued_at = Utc::now();
        let expires_at = lifetime
            .and_then(|l| chrono::Duration::from_std(l).ok())
            .and_then(|l| issued_at.checked_add_signed(l));
        Self {
            access_token: SecretString::from(access_token.into()),
            expires_at,
            issued_at,
        }
    }

    /// A token with explicit issue and expiry times (e.g. read from a JWT's `iat`/`exp`).
    pub fn with_times(
        access_token: impl Into<String>,
        issued_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            access_token: SecretString::from(access_token.into()),
            expires_at,
            issued_at,
        }
    }
}

impl AccessToken for BearerToken {
    fn access_token(&self) -> &str {
        self.access_token.expose_secret()
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    fn issued_at(&self) -> Option<DateTime<Utc>> {
        Some(self.issued_at)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

/// Serializes a secret string in clear. Used only where a token must be written to a store.
pub fn serialize_secret<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

/// Deserializes an optional secret string (counterpart of [`serialize_secret`] for options).
pub fn deserialize_optional_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// Serializes an optional secret string in clear.
pub fn serialize_optional_secret<S: Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

//! [`CachedToken`]: a token as the cache holds it, with its ready-made `Authorization` value
//! and its [`Freshness`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use http::HeaderValue;
use tokio::time::Instant;

use super::state::{Arrival, Freshness};
use crate::{AccessToken, Error};

/// A token as the cache holds it: the token, its ready-made `Authorization` value, and when
/// it turns stale and expires ([`Freshness`], computed once when it arrived).
pub struct CachedToken<T> {
    token: T,
    authorization: HeaderValue,
    /// Its own expiry on the wall clock, or its issue plus the default lifetime.
    expires_at: DateTime<Utc>,
    freshness: Freshness,
    /// The lifecycle's name for this token.
    pub(crate) generation: u64,
    /// Set when an API rejected it: the per-request check then asks the lifecycle.
    rejected: AtomicBool,
}

/// A token read or fetched, before the lifecycle has judged its freshness.
pub(crate) struct Prepared<T> {
    token: T,
    authorization: HeaderValue,
    expires_at: DateTime<Utc>,
    /// What the lifecycle needs to judge it.
    pub arrival: Arrival,
}

impl<T: AccessToken> Prepared<T> {
    /// Builds the header value of `token` and tells what is known of its times. Fails when
    /// the token cannot be sent as a header.
    pub fn new(
        token: T,
        scheme: &str,
        default_lifetime: std::time::Duration,
        now: Instant,
        stale_on_arrival: bool,
    ) -> Result<Self, Error> {
        let mut authorization = HeaderValue::try_from(format!("{scheme} {}", token.access_token()))
            .map_err(|_| Error::InvalidResponse {
                status: None,
                reason: "the access token contains characters not allowed in an HTTP header".into(),
            })?;
        authorization.set_sensitive(true);
        // The wall clock is read here only, to turn the token's own times into durations;
        // everything after runs on the lifecycle's clock.
        let wall = Utc::now();
        let issued = token.issued_at().filter(|at| *at <= wall).unwrap_or(wall);
        let age = (wall - issued).to_std().unwrap_or_default();
        let own_expiry_in = token
            .expires_at()
            .map(|at| (at - wall).to_std().unwrap_or_default());
        let expires_at = token.expires_at().unwrap_or_else(|| {
            chrono::Duration::from_std(default_lifetime)
                .ok()
                .and_then(|life| issued.checked_add_signed(life))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        Ok(Self {
            token,
            authorization,
            expires_at,
            arrival: Arrival {
                now,
                own_expiry_in,
                age,
                stale_on_arrival,
            },
        })
    }

    /// The token itself.
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The cached token, judged and named.
    pub fn finish(self, freshness: Freshness, generation: u64) -> CachedToken<T> {
        CachedToken {
            token: self.token,
            authorization: self.authorization,
            expires_at: self.expires_at,
            freshness,
            generation,
            rejected: AtomicBool::new(false),
        }
    }
}

impl<T: AccessToken> CachedToken<T> {
    /// Whether `other` carries the same access token.
    pub fn same_token(&self, other: &Self) -> bool {
        self.token.access_token() == other.token.access_token()
    }
}

impl<T> CachedToken<T> {
    /// The token.
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The `Authorization` header value, `Bearer <token>` (or `DPoP <token>`, see
    /// [`Authorizer::token_scheme`](crate::Authorizer::token_scheme)), marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// When the token stops being usable (its own expiry or the default lifetime), on the
    /// wall clock.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// When it turns stale and expires, on the lifecycle's clock.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Whether the token may still be sent: it has not expired. (A token an API rejected
    /// stays usable for the other APIs until its replacement arrives; see
    /// [`is_rejected`](Self::is_rejected).)
    pub fn is_usable(&self) -> bool {
        self.freshness.is_alive(Instant::now())
    }

    /// Whether an API (or, with a shared store, another process) rejected this token.
    pub fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Acquire)
    }

    pub(crate) fn mark_rejected(&self) {
        self.rejected.store(true, Ordering::Release);
    }

    /// Served as is without asking the lifecycle: fresh and not rejected.
    #[inline]
    pub(crate) fn serves_as_is(&self, now: Instant) -> bool {
        self.freshness.is_fresh(now) && !self.rejected.load(Ordering::Relaxed)
    }
}

impl<T> fmt::Debug for CachedToken<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("rejected", &self.is_rejected())
            .finish()
    }
}

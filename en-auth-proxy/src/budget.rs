//! The upstream's request budget, as its rate-limit headers describe it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use en_auth_core::Error;
use http::HeaderMap;
use parking_lot::Mutex;

// The rate-limit headers are read as en-auth-oauth2's token client reads them.
use en_auth_oauth2::token_endpoint::{
    MAX_RETRY_AFTER as MAX_WAIT, rate_limit_reset as reset_at, retry_after,
};

/// The longest one answer stops every upstream call (a 429's `Retry-After`, a rate-limit
/// reset): a gateway answering `Retry-After: 86400` must not stop the proxy for a day. After
/// it, the next request probes the upstream again (and a new 429 blocks again). A spent
/// per-client quota blocks only that client, up to [`MAX_WAIT`].
const MAX_GLOBAL_BLOCK: Duration = Duration::from_secs(300);
/// Why a token is requested: cache misses come before refreshes when the budget is low.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// No usable token: a customer is waiting.
    Miss,
    /// A token exists but is due for renewal.
    Refresh,
}

impl Purpose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::Miss => "miss",
            Purpose::Refresh => "refresh",
        }
    }
}

/// The upstream's request budget, as its rate-limit headers describe it.
///
/// - `X-RateLimit-Limit` / `-Remaining` / `-Reset`: the tenant-wide budget. When `remaining`
///   is at or below the reserve, only cache misses are sent upstream (refreshes of tokens
///   that are still valid wait for the reset); at zero, nothing is sent until the reset.
/// - `Retry-After` and 429: nothing is sent until the named time.
/// - `Auth0-Client-Quota-Limit: b=per_hour;q=100;r=0;t=3600,…`: a client whose quota shows
///   `r=0` is not sent upstream for `t` seconds.
pub struct RateLimits {
    reserve: u64,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    /// Nothing goes upstream before this (429, `Retry-After`).
    blocked_until: Option<Instant>,
    /// Clients whose own quota is spent, until when.
    clients: HashMap<String, Instant>,
}

/// Most clients remembered as out of quota; older entries are dropped first.
const MAX_BLOCKED_CLIENTS: usize = 10_000;

/// The wait after a 429 that named no time.
const DEFAULT_429_WAIT: Duration = Duration::from_secs(1);

impl RateLimits {
    /// A budget that keeps `reserve` requests for cache misses.
    pub fn new(reserve: u64) -> Self {
        Self {
            reserve,
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// The last `X-RateLimit-Remaining` seen, if its window has not reset.
    pub fn remaining(&self) -> Option<u64> {
        let state = self.state.lock();
        match state.reset_at {
            Some(reset) if Instant::now() >= reset => None,
            _ => state.remaining,
        }
    }

    /// The last `X-RateLimit-Limit` seen.
    pub fn limit(&self) -> Option<u64> {
        self.state.lock().limit
    }

    /// Whether a request for `client_id` may go upstream now; if not, the rate-limit error
    /// to answer with. A request that is let through spends one of `remaining`.
    pub(crate) fn admit(&self, client_id: &str, purpose: Purpose) -> Result<(), Error> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let refused = |until: Instant| Error::RateLimited {
            retry_after: Some(until.saturating_duration_since(now)),
            reset_at: chrono::Duration::from_std(until.saturating_duration_since(now))
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d)),
        };
        if let Some(until) = state.blocked_until.filter(|&u| now < u) {
            return Err(refused(until));
        }
        if let Some(&until) = state.clients.get(client_id).filter(|&&u| now < u) {
            return Err(refused(until));
        }
        if let (Some(remaining), Some(reset)) = (state.remaining, state.reset_at) {
            if now < reset {
                if remaining == 0 || (purpose == Purpose::Refresh && remaining <= self.reserve) {
                    return Err(refused(reset));
                }
                state.remaining = Some(remaining - 1);
            }
        }
        Ok(())
    }

    /// Reads an answer's rate-limit headers.
    pub(crate) fn observe(&self, client_id: &str, status: u16, headers: &HeaderMap) {
        let now = Instant::now();
        let number = |name: &str| header_str(headers, name).and_then(|v| v.parse::<u64>().ok());
        let until =
            |at: DateTime<Utc>| now + (at - Utc::now()).to_std().unwrap_or_default().min(MAX_WAIT);
        let cap = now + MAX_GLOBAL_BLOCK;
        let mut state = self.state.lock();
        if let Some(limit) = number("x-ratelimit-limit") {
            state.limit = Some(limit);
        }
        if let Some(remaining) = number("x-ratelimit-remaining") {
            state.remaining = Some(remaining);
            state.reset_at = Some(
                reset_at(headers)
                    .map_or(now + Duration::from_secs(1), until)
                    .min(cap),
            );
        }
        let named = retry_after(headers).map(|d| now + d);
        if status == 429 {
            let reset = reset_at(headers).map(until);
            let wait = named
                .into_iter()
                .chain(reset)
                .max()
                .unwrap_or(now + DEFAULT_429_WAIT);
            state.blocked_until = Some(wait.min(cap));
        } else if let Some(named) = named {
            state.blocked_until = Some(named.min(cap));
        }
        if let Some(quota) = header_str(headers, "auth0-client-quota-limit") {
            if let Some(wait) = spent_quota(quota) {
                if state.clients.len() >= MAX_BLOCKED_CLIENTS {
                    state.clients.retain(|_, until| *until > now);
                    if state.clients.len() >= MAX_BLOCKED_CLIENTS {
                        state.clients.clear();
                    }
                }
                state.clients.insert(client_id.to_owned(), now + wait);
            }
        }
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// For an `Auth0-Client-Quota-Limit` value (`b=per_hour;q=100;r=0;t=3600,b=per_day;…`): how
/// long until the longest spent bucket (`r=0`) resets, if any is spent.
fn spent_quota(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|bucket| {
            let mut remaining = None;
            let mut reset = None;
            for part in bucket.split(';') {
                match part.trim().split_once('=') {
                    Some(("r", v)) => remaining = v.trim().parse::<u64>().ok(),
                    Some(("t", v)) => reset = v.trim().parse::<u64>().ok(),
                    _ => {}
                }
            }
            (remaining == Some(0)).then(|| Duration::from_secs(reset.unwrap_or(60)).min(MAX_WAIT))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn spent_client_quota_is_found() {
        assert_eq!(
            spent_quota("b=per_hour;q=100;r=90;t=3600,b=per_day;q=2000;r=1990;t=86400"),
            None
        );
        assert_eq!(
            spent_quota("b=per_hour;q=100;r=0;t=1200,b=per_day;q=2000;r=1900;t=86400"),
            Some(Duration::from_secs(1200))
        );
        assert_eq!(spent_quota("garbage;;=,=="), None);
    }

    #[test]
    fn low_budget_keeps_the_reserve_for_misses_and_zero_stops_all() {
        let limits = RateLimits::new(2);
        let reset = (Utc::now().timestamp() + 60).to_string();
        limits.observe(
            "a",
            200,
            &headers(&[
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset", &reset),
            ]),
        );
        assert!(limits.admit("a", Purpose::Refresh).is_err());
        assert!(limits.admit("a", Purpose::Miss).is_ok());
        assert!(limits.admit("a", Purpose::Miss).is_ok());
        let err = limits.admit("a", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d > Duration::from_secs(50))
        );
    }

    #[test]
    fn a_429_blocks_until_retry_after_and_a_spent_client_quota_blocks_that_client() {
        let limits = RateLimits::new(0);
        limits.observe("a", 429, &headers(&[("retry-after", "30")]));
        assert!(limits.admit("b", Purpose::Miss).is_err());
        let limits = RateLimits::new(0);
        limits.observe(
            "a",
            200,
            &headers(&[("auth0-client-quota-limit", "b=per_hour;q=1;r=0;t=600")]),
        );
        assert!(limits.admit("a", Purpose::Miss).is_err());
        assert!(limits.admit("b", Purpose::Miss).is_ok());
    }

    #[test]
    fn one_answer_blocks_every_upstream_call_for_five_minutes_at_most() {
        let limits = RateLimits::new(0);
        let reset = (Utc::now().timestamp() + 86_000).to_string();
        limits.observe(
            "a",
            429,
            &headers(&[("retry-after", "86400"), ("x-ratelimit-reset", &reset)]),
        );
        let err = limits.admit("b", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. }
                if d <= MAX_GLOBAL_BLOCK && d > Duration::from_secs(290)),
            "{err:?}"
        );
        let limits = RateLimits::new(0);
        limits.observe(
            "a",
            200,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
        );
        let err = limits.admit("b", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d <= MAX_GLOBAL_BLOCK),
            "{err:?}"
        );
    }
}

//! The upstream's request budget, as its rate-limit headers describe it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use en_auth_core::Error;
use http::HeaderMap;
use parking_lot::Mutex;

// The rate-limit headers are read as en-auth-oauth2's token client reads them.
use en_auth_oauth2::token_endpoint::{
    MAX_RETRY_AFTER as MAX_WAIT, rate_limit_reset as reset_at, retry_after,
};

use crate::clock::Clock;
use crate::limits::{Budget, LimitStore, UnixMillis};

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
/// - 429 (with `Retry-After` or `X-RateLimit-Reset`, else a second) and 503 with
///   `Retry-After`: nothing is sent until the named time. `Retry-After` on any other status
///   (a 401, a 200) is ignored.
/// - `Auth0-Client-Quota-Limit: b=per_hour;q=100;r=0;t=3600,…`: a client whose quota shows
///   `r=0` is not sent upstream for `t` seconds. A 429 with such a spent client bucket while
///   the tenant's `X-RateLimit-Remaining` is not 0 is that client's own limit: it blocks that
///   client only (for `t` or `Retry-After`, whichever is longer), not the others.
///
/// Shared through a [`LimitStore`] ([`RateLimits::shared`]), all three hold for every
/// instance of a fleet: a 429 seen by one blocks the others' upstream calls until it passes,
/// a spent client quota blocks that client everywhere, and the remaining budget is counted
/// down fleet-wide. Each instance keeps a mirror in memory: what it saw blocks it without a
/// round trip, and when the store fails it goes on with the mirror alone.
pub struct RateLimits {
    reserve: u64,
    state: Mutex<BudgetState>,
    store: Option<Arc<dyn LimitStore>>,
    clock: Clock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("reserve", &self.reserve)
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// Store keys (the store prefixes them with the fleet's namespace).
const BLOCKED_KEY: &str = "upstream:blocked";
const BUDGET_KEY: &str = "upstream:budget";
fn client_key(client_id: &str) -> String {
    format!("upstream:client:{client_id}")
}

/// `at` (an instant) in the store's time, given the same moment in both clocks.
fn to_unix(at: Instant, now: Instant, unix: UnixMillis) -> UnixMillis {
    let ahead = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
    unix.saturating_add(ahead)
}

/// `at` (store time) as an instant, no later than `now + cap`.
fn to_instant(at: UnixMillis, now: Instant, unix: UnixMillis, cap: Duration) -> Instant {
    now + Duration::from_millis(at.saturating_sub(unix)).min(cap)
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
            store: None,
            clock: Clock::new(),
        }
    }

    /// A budget shared with every instance that uses `store` (see [`RateLimits`]).
    pub fn shared(reserve: u64, store: Arc<dyn LimitStore>) -> Self {
        Self {
            store: Some(store),
            ..Self::new(reserve)
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
    /// to answer with. A request that is let through spends one of `remaining` (the fleet's,
    /// when shared).
    ///
    /// What this instance saw is checked first, in memory; with a shared store, the fleet's
    /// blocks are then read and one request taken from the fleet's budget (two round trips;
    /// only requests about to go upstream pay them). A failing store leaves the instance's
    /// own budget in charge.
    pub(crate) async fn admit(&self, client_id: &str, purpose: Purpose) -> Result<(), Error> {
        let now = Instant::now();
        let Some(store) = &self.store else {
            return self.admit_locally(client_id, purpose, now, true);
        };
        self.admit_locally(client_id, purpose, now, false)?;
        let unix = self.clock.now();
        let client = client_key(client_id);
        let (global, own) = tokio::join!(
            store.held_until(BLOCKED_KEY, unix, MAX_GLOBAL_BLOCK),
            store.held_until(&client, unix, MAX_WAIT)
        );
        let (Ok(global), Ok(own)) = (global, own) else {
            return self.admit_locally(client_id, purpose, now, true);
        };
        // Data from the store is clamped as what this instance sees itself is.
        let global = global.map(|at| to_instant(at, now, unix, MAX_GLOBAL_BLOCK));
        let own = own.map(|at| to_instant(at, now, unix, MAX_WAIT));
        if global.is_some() || own.is_some() {
            let mut state = self.state.lock();
            if let Some(until) = global.filter(|&u| now < u) {
                state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
                return Err(refused(now, until));
            }
            if let Some(until) = own.filter(|&u| now < u) {
                remember_client(&mut state, client_id, until, now);
                return Err(refused(now, until));
            }
        }
        let keep = match purpose {
            Purpose::Miss => 0,
            Purpose::Refresh => self.reserve,
        };
        match store
            .take_budget(BUDGET_KEY, keep, unix, MAX_GLOBAL_BLOCK)
            .await
        {
            Ok(Budget::Taken { remaining }) => {
                self.state.lock().remaining = Some(remaining);
                Ok(())
            }
            Ok(Budget::Spent { reset }) => {
                Err(refused(now, to_instant(reset, now, unix, MAX_GLOBAL_BLOCK)))
            }
            Ok(Budget::Unknown) => Ok(()),
            Err(_) => self.admit_locally(client_id, purpose, now, true),
        }
    }

    /// The checks against what this instance saw; `spend` takes one request from its own
    /// copy of the budget (when no store counts it for the fleet).
    pub(crate) fn admit_locally(
        &self,
        client_id: &str,
        purpose: Purpose,
        now: Instant,
        spend: bool,
    ) -> Result<(), Error> {
        let mut state = self.state.lock();
        if let Some(until) = state.blocked_until.filter(|&u| now < u) {
            return Err(refused(now, until));
        }
        if let Some(&until) = state.clients.get(client_id).filter(|&&u| now < u) {
            return Err(refused(now, until));
        }
        if !spend {
            return Ok(());
        }
        if let (Some(remaining), Some(reset)) = (state.remaining, state.reset_at) {
            if now < reset {
                if remaining == 0 || (purpose == Purpose::Refresh && remaining <= self.reserve) {
                    return Err(refused(now, reset));
                }
                state.remaining = Some(remaining - 1);
            }
        }
        Ok(())
    }

    /// Reads an answer's rate-limit headers; with a shared store, tells the fleet what they
    /// say (a failing store is not an error: this instance goes on with what it saw).
    pub(crate) async fn observe(&self, client_id: &str, status: u16, headers: &HeaderMap) {
        let now = Instant::now();
        let seen = self.observe_locally(client_id, status, headers, now);
        let Some(store) = &self.store else { return };
        let unix = self.clock.now();
        let client = client_key(client_id);
        let blocked = async {
            if let Some(until) = seen.blocked_until {
                let _ = store
                    .hold_until(BLOCKED_KEY, to_unix(until, now, unix))
                    .await;
            }
        };
        let budget = async {
            if let Some((remaining, reset)) = seen.budget {
                let _ = store
                    .set_budget(BUDGET_KEY, remaining, to_unix(reset, now, unix))
                    .await;
            }
        };
        let spent = async {
            if let Some(until) = seen.client_until {
                let _ = store.hold_until(&client, to_unix(until, now, unix)).await;
            }
        };
        tokio::join!(blocked, budget, spent);
    }

    /// Updates this instance's state from an answer; returns what the fleet should know.
    pub(crate) fn observe_locally(
        &self,
        client_id: &str,
        status: u16,
        headers: &HeaderMap,
        now: Instant,
    ) -> Seen {
        let mut seen = Seen::default();
        let number = |name: &str| header_str(headers, name).and_then(|v| v.parse::<u64>().ok());
        let until =
            |at: DateTime<Utc>| now + (at - Utc::now()).to_std().unwrap_or_default().min(MAX_WAIT);
        let cap = now + MAX_GLOBAL_BLOCK;
        let mut state = self.state.lock();
        if let Some(limit) = number("x-ratelimit-limit") {
            state.limit = Some(limit);
        }
        let remaining = number("x-ratelimit-remaining");
        if let Some(remaining) = remaining {
            let reset = reset_at(headers)
                .map_or(now + Duration::from_secs(1), until)
                .min(cap);
            state.remaining = Some(remaining);
            state.reset_at = Some(reset);
            seen.budget = Some((remaining, reset));
        }
        let named = retry_after(headers);
        let client_spent = header_str(headers, "auth0-client-quota-limit").and_then(spent_quota);
        let tenant_spent = remaining == Some(0);
        let mut client_wait = client_spent;
        match status {
            // The client's own quota is spent, not the tenant's budget: Auth0 refuses this
            // client only, so only this client waits; every other customer is still served.
            429 if client_spent.is_some() && !tenant_spent => {
                client_wait = client_spent.max(named).map(|wait| wait.min(MAX_WAIT));
            }
            429 => {
                let reset = reset_at(headers).map(until);
                let wait = named
                    .map(|d| now + d)
                    .into_iter()
                    .chain(reset)
                    .max()
                    .unwrap_or(now + DEFAULT_429_WAIT);
                state.blocked_until = Some(wait.min(cap));
                seen.blocked_until = state.blocked_until;
            }
            // Unavailable for a while: the whole upstream is.
            503 => {
                if let Some(named) = named {
                    state.blocked_until = Some((now + named).min(cap));
                    seen.blocked_until = state.blocked_until;
                }
            }
            // A `Retry-After` on any other answer (a 401, a 200) blocks nobody: it is not a
            // rate limit, and one customer's answer must not stop the others.
            _ => {}
        }
        if let Some(wait) = client_wait {
            remember_client(&mut state, client_id, now + wait, now);
            seen.client_until = Some(now + wait);
        }
        seen
    }
}

/// What one answer said that the fleet should know.
#[derive(Default)]
pub(crate) struct Seen {
    /// Nothing goes upstream before this.
    blocked_until: Option<Instant>,
    /// Requests remaining until the reset.
    budget: Option<(u64, Instant)>,
    /// The client's own quota is spent until this.
    client_until: Option<Instant>,
}

/// The rate-limit error for a request refused until `until`.
fn refused(now: Instant, until: Instant) -> Error {
    Error::RateLimited {
        retry_after: Some(until.saturating_duration_since(now)),
        reset_at: chrono::Duration::from_std(until.saturating_duration_since(now))
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d)),
    }
}

/// Blocks `client_id` until `until` in this instance's memory (bounded).
fn remember_client(state: &mut BudgetState, client_id: &str, until: Instant, now: Instant) {
    if state.clients.len() >= MAX_BLOCKED_CLIENTS && !state.clients.contains_key(client_id) {
        state.clients.retain(|_, until| *until > now);
        if state.clients.len() >= MAX_BLOCKED_CLIENTS {
            state.clients.clear();
        }
    }
    let entry = state.clients.entry(client_id.to_owned()).or_insert(until);
    *entry = (*entry).max(until);
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

    #[tokio::test]
    async fn low_budget_keeps_the_reserve_for_misses_and_zero_stops_all() {
        let limits = RateLimits::new(2);
        let reset = (Utc::now().timestamp() + 60).to_string();
        limits
            .observe(
                "a",
                200,
                &headers(&[
                    ("x-ratelimit-limit", "10"),
                    ("x-ratelimit-remaining", "2"),
                    ("x-ratelimit-reset", &reset),
                ]),
            )
            .await;
        assert!(limits.admit("a", Purpose::Refresh).await.is_err());
        assert!(limits.admit("a", Purpose::Miss).await.is_ok());
        assert!(limits.admit("a", Purpose::Miss).await.is_ok());
        let err = limits.admit("a", Purpose::Miss).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d > Duration::from_secs(50))
        );
    }

    #[tokio::test]
    async fn a_429_blocks_until_retry_after_and_a_spent_client_quota_blocks_that_client() {
        let limits = RateLimits::new(0);
        limits
            .observe("a", 429, &headers(&[("retry-after", "30")]))
            .await;
        assert!(limits.admit("b", Purpose::Miss).await.is_err());
        let limits = RateLimits::new(0);
        limits
            .observe(
                "a",
                200,
                &headers(&[("auth0-client-quota-limit", "b=per_hour;q=1;r=0;t=600")]),
            )
            .await;
        assert!(limits.admit("a", Purpose::Miss).await.is_err());
        assert!(limits.admit("b", Purpose::Miss).await.is_ok());
    }

    #[tokio::test]
    async fn retry_after_blocks_everyone_only_on_429_and_503() {
        for status in [200, 400, 401, 403, 500, 502] {
            let limits = RateLimits::new(0);
            limits
                .observe("a", status, &headers(&[("retry-after", "30")]))
                .await;
            assert!(limits.admit("a", Purpose::Miss).await.is_ok(), "{status}");
        }
        let limits = RateLimits::new(0);
        limits
            .observe("a", 503, &headers(&[("retry-after", "30")]))
            .await;
        assert!(limits.admit("b", Purpose::Miss).await.is_err());
    }

    #[tokio::test]
    async fn a_429_for_a_spent_client_quota_blocks_that_client_unless_the_tenant_is_spent() {
        let quota = ("auth0-client-quota-limit", "b=per_hour;q=1;r=0;t=600");
        let limits = RateLimits::new(0);
        limits
            .observe(
                "a",
                429,
                &headers(&[quota, ("x-ratelimit-remaining", "7"), ("retry-after", "5")]),
            )
            .await;
        let err = limits.admit("a", Purpose::Miss).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d > Duration::from_secs(590)),
            "{err:?}"
        );
        assert!(limits.admit("b", Purpose::Miss).await.is_ok());
        let limits = RateLimits::new(0);
        limits
            .observe("a", 429, &headers(&[quota, ("x-ratelimit-remaining", "0")]))
            .await;
        assert!(limits.admit("b", Purpose::Miss).await.is_err());
    }

    #[tokio::test]
    async fn one_answer_blocks_every_upstream_call_for_five_minutes_at_most() {
        let limits = RateLimits::new(0);
        let reset = (Utc::now().timestamp() + 86_000).to_string();
        limits
            .observe(
                "a",
                429,
                &headers(&[("retry-after", "86400"), ("x-ratelimit-reset", &reset)]),
            )
            .await;
        let err = limits.admit("b", Purpose::Miss).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. }
                if d <= MAX_GLOBAL_BLOCK && d > Duration::from_secs(290)),
            "{err:?}"
        );
        let limits = RateLimits::new(0);
        limits
            .observe(
                "a",
                200,
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ]),
            )
            .await;
        let err = limits.admit("b", Purpose::Miss).await.unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d <= MAX_GLOBAL_BLOCK),
            "{err:?}"
        );
    }
}

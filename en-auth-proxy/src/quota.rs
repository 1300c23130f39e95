//! The proxy's rules for who is served, over a [`LimitStore`]: per-customer quotas, the
//! wrong-secret lock-out, the memory of accepted secrets and the budget for requests of
//! client ids with no accepted secret on record. The store only counts and remembers; the
//! rules (what counts, when to refuse) are here, once.
//!
//! Times come from one [`Clock`] that follows tokio's clock (so tests run on paused time),
//! anchored to the wall clock at start (so instances sharing a store agree on windows, which
//! are aligned to the epoch).
//!
//! A store that fails is not a reason to refuse anyone: every rule lets the request through
//! when its store call fails (the Redis store falls back to local memory by itself).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::limits::{LimitStore, Mac, Recall, UnixMillis};
use crate::upstream::TokenRequest;

/// Distinct attempts (see [`attempt`]) of secrets not known to be good (and not accepted
/// since) that may be tried for one client id within the refusal window; further ones are
/// refused locally, without asking the upstream: a caller cycling through wrong secrets or
/// what they ask for cannot hammer the upstream through the proxy. Counted when an attempt
/// is about to go upstream, not when its answer comes, so concurrent guesses and guessers
/// that hang up count too; the same attempt repeated counts once.
pub const MAX_REFUSALS_PER_WINDOW: u64 = 5;

/// Distinct tried attempts remembered per client id (more than [`MAX_REFUSALS_PER_WINDOW`]:
/// the count stays above it while guessing goes on).
const TRIED_SECRETS_PER_CLIENT: usize = 16;

/// Accepted secrets remembered per client id (the current one, one being rotated in, …);
/// the one accepted longest ago is forgotten first.
pub const ACCEPTED_SECRETS_PER_CLIENT: usize = 4;

/// How long an accepted secret is remembered after the upstream last accepted it.
pub const ACCEPTED_SECRET_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What one upstream attempt of a secret not known to be good is counted as: the secret's
/// keyed hash bound to what it asks for (a SHA-256 over both; unguessable without the proxy's
/// key, as the keyed hash is). The same wrong secret asking for another audience or scope is
/// another upstream request, so another attempt.
pub(crate) fn attempt(secret_mac: &Mac, request: &TokenRequest) -> Mac {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(secret_mac);
    let mut part = |text: &str| {
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    };
    part(request.audience.as_deref().unwrap_or(""));
    part(&request.scope);
    for resource in &request.resources {
        part(resource);
    }
    hash.finalize().into()
}

const MINUTE: Duration = Duration::from_secs(60);

/// Until the end of the `window`-long window (aligned to the epoch) containing `now`; at
/// least a second, as `Retry-After` counts seconds.
fn rest_of_window(window: Duration, now: UnixMillis) -> Duration {
    let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    let end = (now - now % w).saturating_add(w);
    Duration::from_millis(end - now).max(Duration::from_secs(1))
}

/// The source a request is counted under: an IPv4 address (IPv4-mapped IPv6 ones too), or
/// the /64 prefix of an IPv6 address.
fn source_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX));
                format!("{prefix}/64")
            }
        },
    }
}

/// Why a request without a secret known to be good is not sent upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// This source spent its budget.
    Source(Duration),
    /// All sources together spent the global budget.
    Global(Duration),
}

/// The proxy's limits; see the [module docs](self).
pub(crate) struct Limits {
    store: Arc<dyn LimitStore>,
    clock: Clock,
    refusal_window: Duration,
    unknown_per_minute: u64,
    unknown_per_source_per_minute: u64,
}

impl Limits {
    pub(crate) fn new(
        store: Arc<dyn LimitStore>,
        refusal_window: Duration,
        unknown_per_minute: u64,
        unknown_per_source_per_minute: u64,
    ) -> Self {
        Self {
            store,
            clock: Clock::new(),
            refusal_window,
            unknown_per_minute,
            unknown_per_source_per_minute,
        }
    }

    /// Counts `add` requests of `client_id` against `per_minute` (0 only checks).
    /// `Err(wait)`: over its quota until the minute ends, `wait` from now.
    pub(crate) async fn quota(
        &self,
        client_id: &str,
        per_minute: u64,
        add: u64,
    ) -> Result<(), Duration> {
        let now = self.clock.now();
        let key = format!("quota:{client_id}");
        let count = self.counted(&key, MINUTE, now, add).await;
        // Checking (add 0): at the quota already. Counting: past it with this one.
        let over = if add == 0 {
            count >= per_minute
        } else {
            count > per_minute
        };
        if over {
            Err(rest_of_window(MINUTE, now))
        } else {
            Ok(())
        }
    }

    /// Counts an attempt (an [`attempt`] of a secret not known to be good: the secret and
    /// what it asks for) as tried for `client_id`, before it goes upstream. `Some(wait)` when
    /// more than [`MAX_REFUSALS_PER_WINDOW`] distinct attempts were tried for it within the
    /// refusal window: refuse it locally. The same wrong secret asking for other audiences or
    /// scopes counts again (each would be its own upstream request). The window runs from the
    /// latest attempt (the set's time to live is renewed on every addition), so it extends
    /// while guessing goes on; `wait` is the whole window.
    pub(crate) async fn tried(&self, client_id: &str, attempt: Mac) -> Option<Duration> {
        let key = format!("tried:{client_id}");
        let now = self.clock.now();
        let window = self.refusal_window.max(Duration::from_secs(1));
        match self
            .store
            .remember(&key, attempt, TRIED_SECRETS_PER_CLIENT, window, now)
            .await
        {
            Ok(tried) => (tried > MAX_REFUSALS_PER_WINDOW).then_some(window),
            Err(err) => {
                tracing::debug!(error = %err, "limit store: remember failed");
                None
            }
        }
    }

    /// Before an upstream call for the secret whose keyed hash is `secret_mac`: `None` when it
    /// is known to be good, or when `attempt` may go upstream (it is then counted as tried,
    /// see [`tried`](Self::tried)); `Some(wait)` past the limit.
    pub(crate) async fn gate(
        &self,
        client_id: &str,
        secret_mac: &Mac,
        attempt: Mac,
    ) -> Option<Duration> {
        if self.recall(client_id, secret_mac).await.member {
            return None;
        }
        self.tried(client_id, attempt).await
    }

    /// Whether `secret_mac` was accepted for `client_id`, and whether any secret was.
    pub(crate) async fn recall(&self, client_id: &str, secret_mac: &Mac) -> Recall {
        let key = format!("accepted:{client_id}");
        match self.store.recall(&key, secret_mac, self.clock.now()).await {
            Ok(recall) => recall,
            Err(err) => {
                tracing::debug!(error = %err, "limit store: recall failed");
                Recall::default()
            }
        }
    }

    /// The upstream accepted (or the shared token store proved) the secret whose keyed hash
    /// is `secret_mac` for `client_id`, in `attempt`: exempt from the lock-out from now on,
    /// and that attempt no longer counted among those tried (a customer's own first request
    /// or a rotation leaves the guessers no less, and no more: the wrong secrets stay counted).
    pub(crate) async fn accepted(&self, client_id: &str, secret_mac: Mac, attempt: Mac) {
        let key = format!("accepted:{client_id}");
        let now = self.clock.now();
        if let Err(err) = self
            .store
            .remember(
                &key,
                secret_mac,
                ACCEPTED_SECRETS_PER_CLIENT,
                ACCEPTED_SECRET_TTL,
                now,
            )
            .await
        {
            tracing::debug!(error = %err, "limit store: remember failed");
        }
        self.untried(client_id, &attempt).await;
    }

    /// `attempt` was accepted, or never left the proxy (its budget held it back, or the token
    /// endpoint is not known yet): it no longer counts as tried for `client_id`.
    pub(crate) async fn untried(&self, client_id: &str, attempt: &Mac) {
        let tried = format!("tried:{client_id}");
        if let Err(err) = self.store.forget(&tried, attempt).await {
            tracing::debug!(error = %err, "limit store: forget failed");
        }
    }

    /// The upstream refused the secret whose keyed hash is `secret_mac` for `client_id` (a
    /// revoked or leaked one): no longer known to be good, from now on it counts as tried
    /// like any other.
    pub(crate) async fn refused(&self, client_id: &str, secret_mac: &Mac) {
        let key = format!("accepted:{client_id}");
        if let Err(err) = self.store.forget(&key, secret_mac).await {
            tracing::debug!(error = %err, "limit store: forget failed");
        }
    }

    /// Charges one request of a client id with no accepted secret on record to the budget of
    /// its source (when known) and to the global one; a source over its own budget does not
    /// spend the global one, nor its own any further (its count stops one past the budget).
    /// IPv6 sources are counted per /64 (one host usually holds a whole /64), IPv4-mapped
    /// IPv6 addresses as the IPv4 address.
    pub(crate) async fn charge_unknown(&self, source: Option<IpAddr>) -> Result<(), Unknown> {
        let now = self.clock.now();
        if let Some(ip) = source {
            let key = format!("unknown:{}", source_of(ip));
            let per_source = self.unknown_per_source_per_minute;
            let over = self.counted(&key, MINUTE, now, 0).await > per_source
                || self.counted(&key, MINUTE, now, 1).await > per_source;
            if over {
                return Err(Unknown::Source(rest_of_window(MINUTE, now)));
            }
        }
        if self.counted("unknown", MINUTE, now, 1).await > self.unknown_per_minute {
            return Err(Unknown::Global(rest_of_window(MINUTE, now)));
        }
        Ok(())
    }

    /// The counter after adding; 0 when the store failed (nobody is refused for that).
    async fn counted(&self, key: &str, window: Duration, now: UnixMillis, add: u64) -> u64 {
        match self.store.add(key, window, now, add).await {
            Ok(count) => count,
            Err(err) => {
                tracing::debug!(error = %err, "limit store: count failed");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LocalLimits;

    fn limits() -> Limits {
        Limits::new(
            Arc::new(LocalLimits::default()),
            Duration::from_secs(30),
            6,
            2,
        )
    }

    /// Sleeps (paused time) to one second into a fresh minute of the limits' clock.
    async fn fresh_minute(l: &Limits) {
        let into = l.clock.now() % 60_000;
        tokio::time::sleep(Duration::from_millis(61_000 - into)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn quotas_count_per_client_per_minute() {
        let l = limits();
        fresh_minute(&l).await;
        for _ in 0..3 {
            assert_eq!(l.quota("a", 3, 0).await, Ok(()));
            assert_eq!(l.quota("a", 3, 1).await, Ok(()));
        }
        let wait = l.quota("a", 3, 0).await.unwrap_err();
        assert_eq!(wait, Duration::from_secs(59));
        assert!(l.quota("a", 3, 1).await.is_err());
        assert_eq!(l.quota("b", 3, 1).await, Ok(()));
        tokio::time::sleep(wait).await;
        assert_eq!(l.quota("a", 3, 1).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_out_counts_distinct_secrets_and_ends_a_window_after_the_last() {
        let l = limits();
        // The same secret again (a customer's concurrent first requests) counts once.
        for _ in 0..10 {
            assert_eq!(l.tried("c", [0; 32]).await, None);
        }
        for n in 1..MAX_REFUSALS_PER_WINDOW {
            assert_eq!(l.tried("c", [n as u8; 32]).await, None, "secret {n}");
        }
        let wait = l.tried("c", [9; 32]).await.expect("the sixth is refused");
        assert_eq!(wait, Duration::from_secs(30));
        assert_eq!(l.tried("other", [9; 32]).await, None);
        // Guessing goes on: the window runs from the latest secret tried.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(l.tried("c", [10; 32]).await.is_some());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(l.tried("c", [0; 32]).await.is_some(), "still within 30 s");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            l.tried("c", [11; 32]).await,
            None,
            "a window after the last"
        );
        // A secret accepted since it was tried no longer counts: five wrong ones still may.
        assert_eq!(l.tried("d", [0; 32]).await, None);
        l.accepted("d", [0; 32], [0; 32]).await;
        for n in 1..=MAX_REFUSALS_PER_WINDOW {
            assert_eq!(l.tried("d", [n as u8; 32]).await, None, "secret {n}");
        }
        assert!(l.tried("d", [99; 32]).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_secrets_are_recalled_several_per_client() {
        let l = limits();
        assert_eq!(l.recall("c", &[1; 32]).await, Recall::default());
        l.accepted("c", [1; 32], [1; 32]).await;
        l.accepted("c", [2; 32], [2; 32]).await;
        for m in [[1; 32], [2; 32]] {
            assert_eq!(
                l.recall("c", &m).await,
                Recall {
                    member: true,
                    any: true
                }
            );
        }
        assert_eq!(
            l.recall("c", &[3; 32]).await,
            Recall {
                member: false,
                any: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_clients_have_a_budget_per_source_and_a_global_one() {
        let l = limits();
        fresh_minute(&l).await;
        let ip = |n: u8| Some(IpAddr::from([127, 0, 0, n]));
        assert_eq!(l.charge_unknown(ip(1)).await, Ok(()));
        assert_eq!(l.charge_unknown(ip(1)).await, Ok(()));
        assert!(matches!(
            l.charge_unknown(ip(1)).await,
            Err(Unknown::Source(_))
        ));
        // The refused one did not spend the global budget: 4 more from others.
        for n in [2, 2, 3, 3] {
            assert_eq!(l.charge_unknown(ip(n)).await, Ok(()));
        }
        assert!(matches!(
            l.charge_unknown(ip(4)).await,
            Err(Unknown::Global(_))
        ));
        assert!(matches!(
            l.charge_unknown(None).await,
            Err(Unknown::Global(_))
        ));
        tokio::time::sleep(MINUTE).await;
        assert_eq!(l.charge_unknown(ip(1)).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn sources_are_ipv4_addresses_and_ipv6_prefixes_counted_up_to_one_past_the_budget() {
        let l = Limits::new(
            Arc::new(LocalLimits::default()),
            Duration::from_secs(30),
            1_000,
            2,
        );
        fresh_minute(&l).await;
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // One /64: every address in it is one source.
        assert_eq!(l.charge_unknown(v6("2001:db8:1:2::1")).await, Ok(()));
        assert_eq!(l.charge_unknown(v6("2001:db8:1:2:ffff::7")).await, Ok(()));
        for n in 0..50 {
            let ip = v6(&format!("2001:db8:1:2:{n:x}::{n:x}"));
            assert!(matches!(
                l.charge_unknown(ip).await,
                Err(Unknown::Source(_))
            ));
        }
        // The next /64 is another source.
        assert_eq!(l.charge_unknown(v6("2001:db8:1:3::1")).await, Ok(()));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert_eq!(l.charge_unknown(v6("10.0.0.1")).await, Ok(()));
        assert_eq!(l.charge_unknown(v6("::ffff:10.0.0.1")).await, Ok(()));
        assert!(matches!(
            l.charge_unknown(v6("10.0.0.1")).await,
            Err(Unknown::Source(_))
        ));
        // A source over its budget is counted no further: one past it.
        let now = l.clock.now();
        for key in ["unknown:2001:db8:1:2::/64", "unknown:10.0.0.1"] {
            assert_eq!(l.store.add(key, MINUTE, now, 0).await.unwrap(), 3, "{key}");
        }
        // 5 charged in total (the refused ones spent nothing).
        assert_eq!(l.store.add("unknown", MINUTE, now, 0).await.unwrap(), 5);
    }
}

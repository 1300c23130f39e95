//! [`Backoff`]: the one backoff schedule of en-auth.
//!
//! Retries inside a fetch ([`RetryPolicy`](crate::RetryPolicy)), the failure memory of the
//! lifecycle, the failure a fleet publishes, the proxy's refusals and the Redis circuit
//! breaker all wait according to this schedule, so a fleet that failed together spreads out
//! the same way everywhere.
//!
//! # The schedule
//!
//! The delay after the *n*-th consecutive failure (0-based) is drawn from `[c/2, c]` with
//! `c = min(initial · 2ⁿ, max)`. A delay the server named (`Retry-After`, a rate-limit
//! reset) wins when it is longer, capped by the caller, plus up to 10 % of it (at most 1 s)
//! so that processes told the same instant do not return in the same millisecond.

use std::time::Duration;

/// An exponential backoff with jitter, the one schedule of en-auth: retries inside a fetch,
/// the lifecycle's failure memory and the failure a fleet publishes all wait by it.
///
/// The delay after the *n*-th consecutive failure (0-based) is drawn from `[c/2, c]` with
/// `c = min(initial · 2ⁿ, max)`. A delay the server named wins when it is longer, capped by
/// the caller, plus up to 10 % of it (at most 1 s), so that processes told the same instant
/// do not return in the same millisecond.
///
/// ```
/// use std::time::Duration;
/// use en_auth_core::Backoff;
/// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(backoff.ceiling(3), Duration::from_secs(8));
/// let d = backoff.delay(3);
/// assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(8));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay ceiling after the first failure.
    pub initial: Duration,
    /// The largest ceiling: doubling stops here.
    pub max: Duration,
}

impl Backoff {
    /// A schedule starting at `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The ceiling after the `n`-th consecutive failure (0-based): `min(initial · 2ⁿ, max)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.initial
            .saturating_mul(2u32.saturating_pow(n.min(31)))
            .min(self.max)
    }

    /// A jittered delay after the `n`-th failure, drawn from `[ceiling/2, ceiling]`.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_at(n, fastrand::f64())
    }

    /// [`delay`](Self::delay) with the random draw given: `unit` in `[0, 1]` picks the point
    /// in `[ceiling/2, ceiling]` (for deterministic callers and tests).
    pub fn delay_at(&self, n: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(n);
        (ceiling / 2).saturating_add(scale(ceiling / 2, unit))
    }

    /// The delay after the `n`-th failure when the server may have named one: the longer of
    /// the jittered backoff and `named` (capped at `cap`) plus up to 10 % of it (at most 1 s).
    pub fn honouring(&self, n: u32, named: Option<Duration>, cap: Duration) -> Duration {
        self.honouring_at(n, named, cap, fastrand::f64(), fastrand::f64())
    }

    /// [`honouring`](Self::honouring) with both random draws given.
    pub fn honouring_at(
        &self,
        n: u32,
        named: Option<Duration>,
        cap: Duration,
        unit: f64,
        spread_unit: f64,
    ) -> Duration {
        let backoff = self.delay_at(n, unit);
        match named {
            Some(named) => {
                let named = named.min(cap);
                let spread = (named / 10).min(Duration::from_secs(1));
                named
                    .saturating_add(scale(spread, spread_unit))
                    .max(backoff)
            }
            None => backoff,
        }
    }
}

/// `d · unit` for `unit` in `[0, 1]` (clamped), in whole nanoseconds.
pub(crate) fn scale(d: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    let ns = d.as_nanos().min(u128::from(u64::MAX)) as f64;
    Duration::from_nanos((ns * unit) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_ceiling_doubles_and_stops_at_the_max() {
        let b = Backoff::new(S(1), S(30));
        let ceilings: Vec<u64> = (0..7).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.ceiling(u32::MAX), S(30), "no overflow for huge counts");
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn the_delay_lies_in_the_upper_half_of_the_ceiling() {
        let b = Backoff::new(S(2), S(60));
        assert_eq!(b.delay_at(2, 0.0), S(4));
        assert_eq!(b.delay_at(2, 1.0), S(8));
        assert_eq!(b.delay_at(2, 0.5), S(6));
        assert_eq!(b.delay_at(2, f64::NAN), S(4));
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(d >= S(4) && d <= S(8), "{d:?}");
        }
    }

    #[test]
    fn a_named_delay_wins_when_longer_capped_with_a_bounded_spread() {
        let b = Backoff::new(S(1), S(60));
        // Named 20 s: 20 s plus up to 1 s.
        assert_eq!(b.honouring_at(0, Some(S(20)), S(300), 0.0, 0.0), S(20));
        assert_eq!(b.honouring_at(0, Some(S(20)), S(300), 0.0, 1.0), S(21));
        // Named 3 s: up to 0.3 s of spread.
        assert_eq!(
            b.honouring_at(0, Some(S(3)), S(300), 0.0, 1.0),
            Duration::from_millis(3300)
        );
        // Capped: a server asking for a year gets the cap.
        assert_eq!(
            b.honouring_at(0, Some(S(365 * 86_400)), S(300), 0.0, 0.0),
            S(300)
        );
        // Shorter than the backoff: the backoff wins.
        assert_eq!(
            b.honouring_at(5, Some(Duration::from_millis(10)), S(300), 1.0, 0.0),
            S(32)
        );
        assert_eq!(b.honouring_at(1, None, S(300), 1.0, 1.0), S(2));
    }
}

//! Per-customer quotas: token requests per client per minute, in fixed one-minute windows
//! aligned to the clock (so every instance and every operator counts the same minutes).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Most clients tracked at once; past it, counts of past minutes are dropped first.
const MAX_TRACKED: usize = 100_000;

/// Counts each client's requests in the current minute.
#[derive(Default)]
pub struct Quotas {
    windows: Mutex<HashMap<String, (u64, u64)>>,
}

impl Quotas {
    /// Counts one request of `client_id` against `per_minute`. `Err(wait)`: the client is over
    /// its quota until the minute ends, `wait` from now.
    pub fn take(&self, client_id: &str, per_minute: u64) -> Result<(), Duration> {
        self.count(client_id, per_minute, 1)
    }

    /// Whether `client_id` is over `per_minute` already, without counting a request.
    pub fn peek(&self, client_id: &str, per_minute: u64) -> Result<(), Duration> {
        self.count(client_id, per_minute, 0)
    }

    fn count(&self, client_id: &str, per_minute: u64, add: u64) -> Result<(), Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let minute = now.as_secs() / 60;
        let mut windows = self.windows.lock();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(client_id) {
            windows.retain(|_, (m, _)| *m == minute);
            if windows.len() >= MAX_TRACKED {
                // Every tracked client asked this minute: this one goes uncounted rather
                // than resetting everyone's count.
                return Ok(());
            }
        }
        let wait = || {
            let next = Duration::from_secs((minute + 1) * 60);
            next.saturating_sub(now).max(Duration::from_secs(1))
        };
        if add == 0 {
            let count = windows
                .get(client_id)
                .filter(|(m, _)| *m == minute)
                .map_or(0, |(_, n)| *n);
            return if count >= per_minute {
                Err(wait())
            } else {
                Ok(())
            };
        }
        let window = windows.entry(client_id.to_owned()).or_insert((minute, 0));
        if window.0 != minute {
            *window = (minute, 0);
        }
        window.1 = window.1.saturating_add(add);
        if window.1 > per_minute {
            return Err(wait());
        }
        Ok(())
    }
}

/// Upstream refusals of secrets a client id has seen within one refusal window before
/// further unknown secrets for it are refused locally: a caller cycling through many wrong
/// secrets (each remembered only for itself) cannot hammer the upstream through the proxy.
pub const MAX_REFUSALS_PER_WINDOW: u32 = 5;

/// Counts upstream refusals (`invalid_client`) per client id, in windows of the refusal time,
/// and remembers the keyed hash of the secret the upstream last accepted for each client id:
/// that secret is never locked out, so whoever merely knows a customer's client id cannot
/// lock the customer out by sending wrong secrets.
#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    accepted: Mutex<HashMap<String, [u8; 32]>>,
}

impl Refusals {
    /// `Err(wait)` while `client_id` has had [`MAX_REFUSALS_PER_WINDOW`] upstream refusals in
    /// the current window and `secret_mac` (the keyed hash of the presented secret) is not the
    /// one the upstream last accepted: such secrets are refused locally.
    pub fn check(&self, client_id: &str, secret_mac: &[u8; 32]) -> Result<(), Duration> {
        use subtle::ConstantTimeEq;
        let known_good = self
            .accepted
            .lock()
            .get(client_id)
            .is_some_and(|accepted| bool::from(accepted.ct_eq(secret_mac)));
        if known_good {
            return Ok(());
        }
        let now = Instant::now();
        match self.windows.lock().get(client_id) {
            Some((until, count)) if *until > now && *count >= MAX_REFUSALS_PER_WINDOW => Err(until
                .saturating_duration_since(now)
                .max(Duration::from_secs(1))),
            _ => Ok(()),
        }
    }

    /// Counts one upstream refusal of a secret for `client_id`; a window lasts `window`.
    pub fn record(&self, client_id: &str, window: Duration) {
        let now = Instant::now();
        let mut windows = self.windows.lock();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(client_id) {
            windows.retain(|_, (until, _)| *until > now);
            if windows.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = windows
            .entry(client_id.to_owned())
            .or_insert((now + window, 0));
        if entry.0 <= now {
            *entry = (now + window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Whether the upstream has accepted a secret for `client_id` (since the start, or since
    /// the memory of accepted secrets was last cleared).
    pub fn is_known(&self, client_id: &str) -> bool {
        self.accepted.lock().contains_key(client_id)
    }

    /// The upstream accepted the secret whose keyed hash is `secret_mac` for `client_id`: it
    /// is exempt from the lock-out from now on. The count of refusals is kept: an accepted
    /// secret does not give the guessers a fresh allowance.
    pub fn accepted(&self, client_id: &str, secret_mac: [u8; 32]) {
        let mut accepted = self.accepted.lock();
        if accepted.len() >= MAX_TRACKED && !accepted.contains_key(client_id) {
            // Bounded: past the cap, forget everything (customers re-earn it on their next
            // accepted request); the cap is far above any real number of customers.
            accepted.clear();
        }
        accepted.insert(client_id.to_owned(), secret_mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client() {
        let q = Quotas::default();
        // A minute boundary may fall between the calls; then the window starts over, which
        // only makes more calls pass. Count failures, which need the same minute.
        let results: Vec<_> = (0..5).map(|_| q.take("a", 3)).collect();
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused <= 2);
        assert!(q.take("b", 3).is_ok());
        if let Some(Err(wait)) = results.last() {
            assert!(*wait <= Duration::from_secs(60));
        }
    }
}

//! Retrying transient failures of the identity provider: exponential backoff with jitter,
//! honouring `Retry-After`, within a bounded total time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Backoff, Error};

/// How transient failures ([`Error::is_transient`]) of `authorize`/`refresh` are retried.
///
/// The waits follow the one [`Backoff`] schedule from `initial_backoff` to `max_backoff`: the
/// delay before attempt *n + 1* is drawn from `[d/2, d]` with
/// `d = min(initial_backoff · 2ⁿ, max_backoff)` — the jitter keeps a fleet that failed together
/// from retrying together. When the server names a delay (`Retry-After`, rate-limit reset), the
/// delay is at least that. No retry starts that would end after `max_elapsed`: the error is
/// returned instead, carrying the server's retry-after / reset time.
///
/// ```
/// use std::time::Duration;
/// use en_auth_core::RetryPolicy;
/// let policy = RetryPolicy::default().with_max_attempts(3).with_max_elapsed(Duration::from_secs(5));
/// assert_eq!(policy.max_attempts, 3);
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 1 disables retries. Default 4.
    pub max_attempts: u32,
    /// Backoff before the first retry (before jitter). Default 200 ms: long enough for a
    /// restarting provider, short enough to stay unnoticed on one blip.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff. Default 5 s.
    pub max_backoff: Duration,
    /// No retry is started that would end later than this after the first attempt began.
    /// Default 30 s: a caller waiting on a first token should hear of an outage within a
    /// request timeout or so, not hang.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff).
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Sets [`max_elapsed`](Self::max_elapsed).
    pub fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = max_elapsed;
        self
    }

    /// The schedule of the waits between attempts.
    pub fn schedule(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff)
    }

    /// Runs `operation` until it succeeds, fails permanently, or the budget is spent.
    ///
    /// The budget is [`max_elapsed`](Self::max_elapsed): every attempt is cut off when it
    /// runs out (an attempt that hangs ends as a timed-out [`Error::Transport`]), and no retry
    /// starts whose wait plus the previous attempt's duration would end after it. A
    /// server-named delay gets up to 10 % (at most 1 s) of jitter on top; one longer than the
    /// budget ends the retries at once with the server's error.
    pub async fn run<T, F, Fut>(&self, mut operation: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let attempt_started = Instant::now();
            let remaining = self.max_elapsed.saturating_sub(started.elapsed());
            let outcome = match tokio::time::timeout(remaining, operation()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Transport {
                    message: format!(
                        "no answer from the identity provider within the fetch deadline of {} s",
                        self.max_elapsed.as_secs_f64()
                    ),
                    timeout: true,
                    source: None,
                }),
            };
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) if err.is_transient() => err,
                Err(err) => return Err(err),
            };
            // A named delay longer than the budget is capped just past it, so the check below
            // ends the retries with the server's error.
            let cap = self.max_elapsed.saturating_add(Duration::from_secs(1));
            let delay = self
                .schedule()
                .honouring(attempt - 1, err.retry_after(), cap);
            let would_end = started
                .elapsed()
                .saturating_add(delay)
                .saturating_add(attempt_started.elapsed());
            if attempt >= self.max_attempts || would_end > self.max_elapsed {
                tracing::debug!(attempt, error = %err, "giving up on transient failure");
                return Err(err);
            }
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying after transient failure");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy::default();
        for retry in 0..10 {
            let ceiling = (p.initial_backoff * 2u32.pow(retry)).min(p.max_backoff);
            let d = p.schedule().delay(retry);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "retry {retry}: {d:?} vs {ceiling:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::InvalidClient {
                    status: Some(401),
                    description: None,
                })
            })
            .await;
        assert!(matches!(result, Err(Error::InvalidClient { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = RetryPolicy::default()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::ServerError {
                        status: 503,
                        retry_after: None,
                    })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_budget_returns_the_rate_limit() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = RetryPolicy::default()
            .with_max_elapsed(Duration::from_secs(10))
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::RateLimited {
                    retry_after: Some(Duration::from_secs(60)),
                    reset_at: None,
                })
            })
            .await;
        assert!(matches!(result, Err(Error::RateLimited { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_off_at_the_budget() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = RetryPolicy::default()
            .with_max_elapsed(Duration::from_secs(5))
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await;
        assert!(
            matches!(result, Err(Error::Transport { timeout: true, .. })),
            "{result:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry past the budget");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_would_outlast_the_budget_is_not_started() {
        // Each attempt takes 2 s and fails; with a 5 s budget, the second attempt would end
        // after 2 + backoff + 2 > ... so only as many attempts as fit are made.
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = RetryPolicy::default()
            .with_max_attempts(10)
            .with_max_elapsed(Duration::from_secs(5))
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err(Error::ServerError {
                    status: 503,
                    retry_after: None,
                })
            })
            .await;
        assert!(matches!(result, Err(Error::ServerError { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result = RetryPolicy::default()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Error::RateLimited {
                        retry_after: Some(Duration::from_secs(3)),
                        reset_at: None,
                    })
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(result.is_ok());
        assert!(started.elapsed() >= Duration::from_secs(3));
    }
}

//! One fetch: registered under the state lock, run in a task of its own with its deadline,
//! settled with the machine, its outcome handed to every waiter. A fetch cut off by its
//! runtime's shutdown is abandoned (not remembered as a failure); a panic inside it is a
//! failure like any other.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::cache::{Driven, Outcome, OutcomeReceiver, TokenCache};
use super::cached::{CachedToken, Prepared};
use super::fleet::{FetchContext, Judge, Judged};
use super::state::{FlightId, Freshness};
use super::stats::bump;
use crate::{Authorizer, Error};

impl<A: Authorizer> TokenCache<A> {
    /// Registers fetch `id` (the machine has just started it): where its outcome will
    /// appear, and the task to spawn once the lock is released. Fails only without a tokio
    /// runtime (then the machine forgets the fetch).
    pub(super) fn register(
        &self,
        driven: &mut Driven<A::Token>,
        id: FlightId,
    ) -> Result<PendingFlight<A>, Error> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            driven.machine.on_abandoned(id);
            return Err(Error::InvalidConfiguration {
                setting: "runtime".into(),
                reason: "fetching a token needs a tokio runtime; call from within one".into(),
            });
        };
        let (publish, outcome) = watch::channel(None);
        driven.flight = Some((id, outcome));
        bump(&self.inner.counters.fetches);
        Ok(PendingFlight {
            runtime,
            guard: FlightGuard {
                cache: self.clone(),
                id,
                publish,
                settled: false,
            },
        })
    }
}

impl<A: Authorizer> Judge<A::Token> for TokenCache<A> {
    /// Prepares and judges a token that just arrived (from the provider or the store).
    fn judge(&self, token: A::Token) -> Result<Judged<A::Token>, Error> {
        let policy = &self.inner.policy;
        // Asked only when the policy leaves staleness to the authorizer.
        let stale = policy.expiration_gap.is_none() && self.inner.authorizer.expired(&token);
        let prepared = Prepared::new(
            token,
            self.inner.authorizer.token_scheme(),
            policy.default_lifetime,
            Instant::now(),
            stale,
        )?;
        let freshness = Freshness::on_arrival(policy, prepared.arrival, fastrand::f64())?;
        Ok((prepared, freshness))
    }
}

impl<A: Authorizer> TokenCache<A> {
    pub(super) fn fetch_context(&self) -> FetchContext<'_, A::Token> {
        FetchContext {
            policy: &self.inner.policy,
            counters: &self.inner.counters,
            client_id: self.client_id(),
            spends_token: self.inner.authorizer.refresh_spends_token(),
            judge: self,
        }
    }

    /// Gets a new token: through the fleet when there is a store, else from the provider
    /// (refresh when there is a previous token, authorize otherwise), with retries. With a
    /// store and an authorizer whose refresh spends a refresh token
    /// ([`Authorizer::refresh_spends_token`]), the fleet chooses the token to refresh under
    /// its lock, and may refresh the stored token where this cache has none.
    async fn fetch(
        &self,
        previous: Option<&CachedToken<A::Token>>,
    ) -> Result<Judged<A::Token>, Error> {
        match &self.inner.fleet {
            None => {
                self.ask_provider(previous.map(|cached| Cow::Borrowed(cached.token())))
                    .await
            }
            // The fleet picks the token the refresh starts from under its lock: for refresh
            // tokens, the newest stored one when another process rotated it (docs/fleet.md,
            // "Refresh tokens across a fleet"); else the cache's own.
            Some(fleet) => {
                fleet
                    .fetch(&self.fetch_context(), previous, |base| {
                        self.ask_provider(base)
                    })
                    .await
            }
        }
    }

    /// Asks the provider, with retries: a refresh of `base` when there is one, else a new
    /// authorization. A panicking authorizer is a failure like any other: with a store, it is
    /// published and the store's lock released, instead of left to run out.
    async fn ask_provider(
        &self,
        base: Option<Cow<'_, A::Token>>,
    ) -> Result<Judged<A::Token>, Error> {
        let provider = async {
            let authorizer = &self.inner.authorizer;
            let counters = &self.inner.counters;
            let base = base.as_deref();
            let started = Instant::now();
            let token = self
                .inner
                .policy
                .retry
                .run(|| async {
                    match base {
                        Some(base) => {
                            bump(&counters.refreshes);
                            authorizer.refresh(base).await
                        }
                        None => {
                            bump(&counters.authorizations);
                            authorizer.authorize().await
                        }
                    }
                })
                .await?;
            let judged = self.judge(token)?;
            tracing::debug!(
                client_id = self.client_id(),
                refreshed = base.is_some(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "token obtained"
            );
            Ok(judged)
        };
        CatchPanic(Box::pin(provider))
            .await
            .unwrap_or_else(|()| Err(panicked()))
    }

    /// The longest a fetch may take, store included: past it the fetch fails as timed out.
    fn fetch_deadline(&self) -> Duration {
        let policy = &self.inner.policy;
        let store = if self.inner.fleet.is_some() {
            // Waiting for another holder and one that took over from it, then our own store
            // calls, each cut off after STORE_CALL_TIMEOUT.
            policy
                .store_lock_ttl()
                .saturating_add(Duration::from_secs(1))
                .saturating_mul(2)
                .saturating_add(super::fleet::STORE_CALL_TIMEOUT.saturating_mul(8))
        } else {
            Duration::ZERO
        };
        policy
            .retry
            .max_elapsed
            .saturating_add(store)
            .saturating_add(Duration::from_secs(1))
    }

    /// Records a fetch's result with the machine and in the mirror.
    fn settle(&self, id: FlightId, result: Result<Judged<A::Token>, Error>) -> Outcome<A::Token> {
        let mut driven = self.lock_state();
        driven.end_flight(id);
        match result {
            Ok((prepared, freshness)) => {
                let generation = driven.machine.next_generation();
                let token = Arc::new(prepared.finish(freshness, generation));
                driven
                    .machine
                    .on_fetched(id, Arc::clone(&token), generation, freshness);
                *self.inner.current.write() = Some(Arc::clone(&token));
                Ok(token)
            }
            Err(err) => {
                bump(&self.inner.counters.failures);
                let err = Arc::new(err);
                let now = Instant::now();
                let delay = driven.machine.on_failed(id, Arc::clone(&err), now);
                let next_attempt_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if driven.machine.has_usable(now) {
                    tracing::warn!(client_id = self.client_id(), error = %err, next_attempt_in_ms,
                        "token refresh failed; serving the current token until it expires");
                } else {
                    tracing::warn!(client_id = self.client_id(), error = %err, next_attempt_in_ms,
                        "could not obtain a token");
                }
                Err(err)
            }
        }
    }

    /// A fetch ended without an outcome (its runtime shut down).
    fn abandon(&self, id: FlightId) {
        let mut driven = self.lock_state();
        driven.end_flight(id);
        driven.machine.on_abandoned(id);
    }
}

/// A registered fetch, to be spawned once the state lock is released.
pub(super) struct PendingFlight<A: Authorizer> {
    runtime: tokio::runtime::Handle,
    guard: FlightGuard<A>,
}

impl<A: Authorizer> PendingFlight<A> {
    pub(super) fn outcome(&self) -> OutcomeReceiver<A::Token> {
        self.guard.publish.subscribe()
    }

    pub(super) fn spawn(self) {
        let PendingFlight { runtime, mut guard } = self;
        runtime.spawn(async move {
            let cache = guard.cache.clone();
            let previous = cache.inner.current.read().clone();
            let deadline = cache.fetch_deadline();
            let fetch = tokio::time::timeout(deadline, cache.fetch(previous.as_deref()));
            let result = match CatchPanic(Box::pin(fetch)).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Transport {
                    message: format!(
                        "the token fetch did not finish within its deadline of {} s (provider \
                         and token store included)",
                        deadline.as_secs()
                    ),
                    timeout: true,
                    source: None,
                }),
                // A panic outside the provider call (a store's): remembered like any
                // failure, so it is not repeated on every request.
                Err(()) => Err(panicked()),
            };
            let outcome = cache.settle(guard.id, result);
            guard.settled = true;
            guard.publish.send_replace(Some(outcome));
        });
    }
}

/// Owned by a fetch task. If the task ends without settling — its runtime shut down — the
/// drop frees the fetch slot without remembering a failure; waiters see the channel close
/// without an outcome and ask again.
struct FlightGuard<A: Authorizer> {
    cache: TokenCache<A>,
    id: FlightId,
    publish: watch::Sender<Option<Outcome<A::Token>>>,
    settled: bool,
}

impl<A: Authorizer> Drop for FlightGuard<A> {
    fn drop(&mut self) {
        if !self.settled {
            self.cache.abandon(self.id);
        }
    }
}

/// Runs a future, turning a panic inside it into `Err(())`.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

fn panicked() -> Error {
    Error::Transport {
        message: "the token fetch panicked".into(),
        timeout: false,
        source: None,
    }
}

pub(super) fn abandoned_fetch() -> Error {
    Error::Transport {
        message: "the token fetch ended without a result (its runtime shut down)".into(),
        timeout: false,
        source: None,
    }
}

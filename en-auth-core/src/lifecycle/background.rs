//! The cache's own tasks: the background refresh (a loop over
//! [`TokenState::next_wake`](super::state::TokenState::next_wake)) and the listener for
//! other processes' events. Both hold the cache weakly and end when it is dropped; both can
//! start again on a new runtime when theirs shut down.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{broadcast, watch};

use tokio::time::Instant;

use super::cache::{Inner, OutcomeReceiver, TokenCache};
use super::state::Wake;
use super::stats::bump;
use crate::{Authorizer, StoreEvent};

/// Starts the background refresh once, if the policy asks for it and a runtime is at hand.
pub(super) fn start<A: Authorizer>(cache: &TokenCache<A>) {
    let inner = &cache.inner;
    if !inner.policy.background_refresh || inner.background_started.load(Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if inner.background_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = std::sync::Arc::downgrade(inner);
    runtime.spawn(refresh_loop(weak, inner.alive.clone()));
}

/// Starts, once per runtime, the task that applies the store's events to this cache.
pub(super) fn start_listener<A: Authorizer>(cache: &TokenCache<A>) {
    let Some(fleet) = &cache.inner.fleet else {
        return;
    };
    if fleet.listener_started.load(Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if fleet.listener_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some(events) = fleet.store().events() else {
        return; // the store sends none: nothing to restart either
    };
    let weak = std::sync::Arc::downgrade(&cache.inner);
    runtime.spawn(listen(weak, cache.inner.alive.clone(), events));
}

/// Clears a "started" flag when its task ends in any way (its runtime shut down included),
/// so the next caller starts it again.
struct Restartable<A: Authorizer> {
    cache: Weak<Inner<A>>,
    flag: fn(&Inner<A>) -> Option<&AtomicBool>,
}

impl<A: Authorizer> Drop for Restartable<A> {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            if let Some(flag) = (self.flag)(&inner) {
                flag.store(false, Ordering::Release);
            }
        }
    }
}

fn upgrade<A: Authorizer>(cache: &Weak<Inner<A>>) -> Option<TokenCache<A>> {
    cache.upgrade().map(TokenCache::from_inner)
}

async fn refresh_loop<A: Authorizer>(cache: Weak<Inner<A>>, mut alive: watch::Receiver<()>) {
    let _restartable = Restartable {
        cache: cache.clone(),
        flag: |inner| Some(&inner.background_started),
    };
    loop {
        // The cache is held only between the sleeps: dropping it ends the loop.
        let Some(wake) = upgrade(&cache).map(|c| next_wake(&c)) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = alive.changed() => return,
        }
        let Some(step) = upgrade(&cache).map(|c| background_step(&c)) else {
            return;
        };
        if let Some(mut outcome) = step {
            tokio::select! {
                _ = outcome.wait_for(Option::is_some) => {}
                _ = alive.changed() => return,
            }
        }
    }
}

async fn listen<A: Authorizer>(
    cache: Weak<Inner<A>>,
    mut alive: watch::Receiver<()>,
    mut events: broadcast::Receiver<StoreEvent>,
) {
    let _restartable = Restartable {
        cache: cache.clone(),
        flag: |inner| inner.fleet.as_ref().map(|fleet| &fleet.listener_started),
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = alive.changed() => return,
        };
        let Some(cache) = upgrade(&cache) else { return };
        match event {
            Ok(StoreEvent::Invalidated { key, fingerprint }) => {
                apply_remote_invalidation(&cache, &key, &fingerprint);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The background refresh's step: join the running fetch or start one; `None` to sleep.
fn background_step<A: Authorizer>(cache: &TokenCache<A>) -> Option<OutcomeReceiver<A::Token>> {
    let (outcome, flight) = {
        let mut driven = cache.lock_state();
        match driven.machine.on_wake(Instant::now()) {
            Wake::Join => {
                let outcome = driven.flight.as_ref().map(|(_, outcome)| outcome.clone());
                if outcome.is_none() {
                    // The machine's fetch has no task (never expected): forget it, so the
                    // next wake starts one instead of spinning.
                    driven.machine.forget_flight();
                }
                return outcome;
            }
            Wake::Sleep => return None,
            Wake::Start(id) => {
                let flight = cache.register(&mut driven, id).ok()?;
                (flight.outcome(), flight)
            }
        }
    };
    flight.spawn();
    Some(outcome)
}

/// When the background refresh should next wake.
fn next_wake<A: Authorizer>(cache: &TokenCache<A>) -> Instant {
    cache.lock_state().machine.next_wake(Instant::now())
}

/// Applies another process's report that the token with `fingerprint` was rejected.
fn apply_remote_invalidation<A: Authorizer>(cache: &TokenCache<A>, key: &str, fingerprint: &str) {
    let Some(fleet) = &cache.inner.fleet else {
        return;
    };
    if fleet.key.as_str() != key {
        return;
    }
    let Some(current) = cache.inner.current.read().clone() else {
        return;
    };
    let Ok(encoded) = (fleet.encode)(current.token()) else {
        return;
    };
    if crate::value_fingerprint(&encoded) != fingerprint {
        return;
    }
    let mut driven = cache.lock_state();
    let marked = driven.machine.on_rejected_elsewhere(current.generation);
    if marked {
        // Under the lock: no request is served the token as is once it is marked.
        current.mark_rejected();
    }
    drop(driven);
    if marked {
        bump(&cache.inner.counters.remote_invalidations);
        tracing::debug!(
            client_id = cache.client_id(),
            "token rejected in another process; dropped"
        );
    }
}

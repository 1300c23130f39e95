//! The token lifecycle: when a token is fetched, served, refreshed and dropped.
//!
//! `docs/lifecycle.md` is the one normative list of the rules, with timelines. This module
//! is laid out one concept per file:
//!
//! - `state` — [`Freshness`] and the synchronous decision machine that owns every rule:
//!   freshness, backoff, the 401 bound, the background schedule. No I/O, no clock reads.
//! - `cache` — [`TokenCache`], the driver: single flight (one spawned fetch, its outcome
//!   shared by every waiter), nothing else.
//! - `fleet` — sharing through a [`TokenStore`](crate::TokenStore): lock, published failures,
//!   waiters, as a decorator around the fetch.
//! - `background` — the refresh loop over the machine's next wake, and the store listener.
//! - `policy` — [`LifecyclePolicy`]; `backoff` — the one [`Backoff`] schedule;
//!   `stats` — [`TokenStats`]; `cached` — [`CachedToken`]; `builder` — [`TokenCacheBuilder`].
//!
//! # Clock
//!
//! The lifecycle runs on tokio's clock ([`tokio::time::Instant`]): tests pause it and a
//! token's hour passes in microseconds. The wall clock is read once per token, when it
//! arrives, to turn its `expires_at` into a duration.
//!
//! # Tasks
//!
//! Fetches run on the tokio runtime of the caller that starts them. A caller that gives up
//! cancels nothing: the fetch finishes and its token serves the next caller.

mod background;
mod backoff;
mod builder;
mod cache;
mod cached;
mod fleet;
mod flight;
mod policy;
mod state;
mod stats;

pub use backoff::Backoff;
pub use builder::TokenCacheBuilder;
pub use cache::TokenCache;
pub use cached::CachedToken;
pub use fleet::STORE_CALL_TIMEOUT;
pub use policy::{
    DEFAULT_PROOF_TIMEOUT, LifecyclePolicy, MIN_DEFAULT_LIFETIME, MIN_FAILURE_BACKOFF,
};
pub use state::Freshness;
pub use stats::TokenStats;

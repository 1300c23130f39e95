//! The proxy's one clock: wall-clock milliseconds (the limit store's times, which every
//! instance of a fleet shares) that advance with tokio's clock, so tests on paused time move
//! quota windows, lock-outs and upstream blocks alike.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::limits::UnixMillis;

/// Wall-clock milliseconds that advance with tokio's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start_unix: UnixMillis,
    start: tokio::time::Instant,
}

impl Clock {
    /// Reads the wall clock once; from then on follows tokio's clock.
    pub(crate) fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            start_unix: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            start: tokio::time::Instant::now(),
        }
    }

    /// Now, in milliseconds since the epoch.
    pub(crate) fn now(&self) -> UnixMillis {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_unix.saturating_add(elapsed)
    }
}

//! Reconnect backoff: full-jitter exponential, reset after a stable connection, and overridden by
//! a draining server's `reconnect_after` window.
//!
//! No delay a server gives is obeyed to the millisecond: a server that tells a crowd "come back
//! in 5 s" (`Retry-After`, `retry_after_ms`) would get the whole crowd back in the same
//! millisecond. A server delay `d` is a window `[d, 2·d]` and the client picks a uniformly random
//! point in it ([`server_delay`]); `reconnect_after {min_ms, max_ms}` already is a window.
//!
//! After the k-th consecutive failure (k ≥ 1) the delay is uniform in
//! `[min(floor, envelope), envelope]` with `envelope = min(cap, base · 2^(k-1))`. Full jitter
//! (rather than "exponential plus a little noise") is what spreads a crowd of clients that lost
//! the same server at the same moment across the whole window instead of sending them back in
//! synchronized waves.

use super::config::BackoffConfig;
use super::rng::Rng;

/// The delay to wait after a server said "retry after `delay_ms`": uniform in `[d, 2·d]`.
pub fn server_delay(delay_ms: u64, rng: &mut Rng) -> u64 {
    rng.between(delay_ms, delay_ms.saturating_mul(2))
}

#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    /// Consecutive failed attempts since the last stable connection.
    failures: u32,
    /// A draining server's window, used once for the next reconnect instead of the envelope.
    drain: Option<(u64, u64)>,
}

/// The outcome of counting a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    /// `max_attempts` reached: stop.
    GiveUp,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        Self {
            cfg,
            failures: 0,
            drain: None,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn stable_ms(&self) -> u64 {
        self.cfg.stable_ms
    }

    /// Counts one failed attempt (or a connection that died before it was stable).
    pub fn record_failure(&mut self) -> Verdict {
        self.failures = self.failures.saturating_add(1);
        match self.cfg.max_attempts {
            Some(max) if self.failures >= max => Verdict::GiveUp,
            _ => Verdict::Retry,
        }
    }

    /// The connection stayed open for the stable period.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Remembers a `reconnect_after` window (a reversed window is read as `[max, min]`).
    pub fn set_drain_window(&mut self, min_ms: u64, max_ms: u64) {
        self.drain = Some((min_ms.min(max_ms), min_ms.max(max_ms)));
    }

    pub fn has_drain_window(&self) -> bool {
        self.drain.is_some()
    }

    pub fn clear_drain_window(&mut self) {
        self.drain = None;
    }

    /// `[low, high]` of the delay after `failures` consecutive failures.
    pub fn envelope(&self, failures: u32) -> (u64, u64) {
        let exp = failures.saturating_sub(1).min(63);
        let high = self
            .cfg
            .base_ms
            .checked_shl(exp)
            .filter(|v| v >> exp == self.cfg.base_ms);
        let high = high.unwrap_or(u64::MAX).min(self.cfg.cap_ms);
        (self.cfg.floor_ms.min(high), high)
    }

    /// The delay before the next attempt: from the drain window if the server sent one (used up
    /// here), else from the envelope of the current failure count.
    pub fn next_delay(&mut self, rng: &mut Rng) -> u64 {
        if let Some((lo, hi)) = self.drain.take() {
            return rng.between(lo, hi);
        }
        let (lo, hi) = self.envelope(self.failures.max(1));
        rng.between(lo, hi)
    }
}

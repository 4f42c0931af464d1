//! Liveness of the open transport.
//!
//! The server pings every `ping_interval_ms` on every transport, so any server frame proves the
//! transport alive. After `welcome` the deadline is `ping_interval_ms + grace`; every frame pushes
//! it out. When it passes the transport is dead — unless the timer itself fired late.
//!
//! Browsers throttle timers in background tabs (to once a minute, or not at all while frozen). A
//! heartbeat handled long after its deadline says more about our timers than about the server:
//! frames may be sitting in the event queue. So a late deadline sends a ping and waits a short
//! probe window for any frame before declaring the transport dead.

use super::time::Instant;

#[derive(Clone, Debug)]
pub struct Heartbeat {
    grace_ms: u64,
    late_threshold_ms: u64,
    probe_window_ms: u64,
    /// Silence limit in ms (ping interval + grace); 0 when not running.
    timeout_ms: u64,
    deadline: Option<Instant>,
    /// End of the liveness probe window, when a probe ping is out.
    probe_deadline: Option<Instant>,
}

/// What to do when a heartbeat deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing due yet.
    Alive,
    /// The timer was late: send a ping and wait for the probe window.
    SendProbe,
    /// No frame within the deadline (or the probe window): close and reconnect.
    Dead,
}

impl Heartbeat {
    pub fn new(grace_ms: u64, late_threshold_ms: u64, probe_window_ms: u64) -> Self {
        Self {
            grace_ms,
            late_threshold_ms,
            probe_window_ms,
            timeout_ms: 0,
            deadline: None,
            probe_deadline: None,
        }
    }

    /// A session opened: start watching.
    pub fn start(&mut self, now: Instant, ping_interval_ms: u64) {
        self.timeout_ms = ping_interval_ms.saturating_add(self.grace_ms);
        self.deadline = Some(now.plus(self.timeout_ms));
        self.probe_deadline = None;
    }

    pub fn stop(&mut self) {
        self.deadline = None;
        self.probe_deadline = None;
    }

    /// Any server frame arrived on the open transport.
    pub fn on_frame(&mut self, now: Instant) {
        if self.deadline.is_some() || self.probe_deadline.is_some() {
            self.deadline = Some(now.plus(self.timeout_ms));
            self.probe_deadline = None;
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        Instant::earliest(self.deadline, self.probe_deadline)
    }

    pub fn on_timeout(&mut self, now: Instant) -> Verdict {
        if let Some(end) = self.probe_deadline {
            if now >= end {
                self.stop();
                return Verdict::Dead;
            }
            return Verdict::Alive;
        }
        match self.deadline {
            Some(at) if now >= at => {
                if now.millis_since(at) > self.late_threshold_ms {
                    self.start_probe(now);
                    Verdict::SendProbe
                } else {
                    self.stop();
                    Verdict::Dead
                }
            }
            _ => Verdict::Alive,
        }
    }

    /// The page became visible or resumed: if the deadline already passed (timers were
    /// throttled), probe now instead of waiting for the late timer. Returns true if a ping is due.
    pub fn check_overdue(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(at) if now >= at && self.probe_deadline.is_none() => {
                self.start_probe(now);
                true
            }
            _ => false,
        }
    }

    /// Forces a liveness probe (e.g. after the page resumed), unless one is already out.
    pub fn force_probe(&mut self, now: Instant) -> bool {
        if self.deadline.is_none() || self.probe_deadline.is_some() {
            return false;
        }
        self.start_probe(now);
        true
    }

    fn start_probe(&mut self, now: Instant) {
        self.deadline = None;
        self.probe_deadline = Some(now.plus(self.probe_window_ms));
    }
}

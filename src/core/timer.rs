//! The connection-lifecycle timers: an enum plus a small fixed table.
//!
//! Each timer is either armed at a deadline or not. The next deadline the core reports is the
//! earliest armed entry (together with the deadlines kept by the heartbeat, the send queue and
//! typing, which own per-item timers). Arming a timer again replaces its deadline.

use super::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// End of a backoff wait: start the next connection attempt.
    Reconnect,
    /// The primary transport was asked to open but has not delivered `welcome` yet.
    FirstFrame,
    /// Time to probe the next higher transport rung in the background.
    ProbeStart,
    /// The probe transport has not delivered `welcome` yet.
    ProbeFirstFrame,
    /// The connection has stayed open long enough to forget earlier failures.
    Stable,
}

const ALL: [Timer; 5] = [
    Timer::Reconnect,
    Timer::FirstFrame,
    Timer::ProbeStart,
    Timer::ProbeFirstFrame,
    Timer::Stable,
];

#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; ALL.len()],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    pub fn stop_all(&mut self) {
        self.deadlines = Default::default();
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        let mut next = None;
        for &at in &self.deadlines {
            next = Instant::earliest(next, at);
        }
        next
    }

    /// Disarms and returns the earliest timer whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        // The first of the earliest, as `min_by_key` picks.
        let mut found: Option<(Instant, Timer)> = None;
        for t in ALL {
            if let Some(at) = self.get(t).filter(|&at| at <= now) {
                match found {
                    Some((best, _)) if best <= at => {}
                    _ => found = Some((at, t)),
                }
            }
        }
        let (_, timer) = found?;
        self.stop(timer);
        Some(timer)
    }
}

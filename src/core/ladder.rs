//! The transport ladder: WebSocket → SSE → long polling, and every reason to move on it.
//!
//! This file answers "why did it fall back to SSE?". The ladder steps **down** one rung when:
//! - opening the current rung failed [`Config::step_down_after`] times in a row (network error,
//!   blocked upgrade, no `welcome` in time on WebSocket or long polling) — [`FallbackReason::OpenFailures`];
//! - the rung opened but died before delivering a single server frame (a proxy that accepts a
//!   WebSocket and kills it) — [`FallbackReason::DiedBeforeFirstFrame`], at once;
//! - an SSE stream opened but no `welcome` arrived before the first-frame deadline (a buffering
//!   proxy holds the stream) — [`FallbackReason::NoWelcomeInTime`], at once.
//!
//! It never steps below the last rung. It moves **up** only through a successful background probe
//! (see `Client` docs): while open on a lower rung, the client periodically opens the next higher
//! rung with the resume token and switches when that rung's `welcome` arrives.
//!
//! It also remembers the last rung that delivered a `welcome`, so the glue can persist it and
//! start there next time instead of rediscovering a hostile proxy on every page load.
//!
//! [`Config::step_down_after`]: super::Config::step_down_after

use super::event::TransportKind;

/// Why the ladder stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    OpenFailures { count: u32 },
    DiedBeforeFirstFrame,
    NoWelcomeInTime,
}

/// One step down the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub from: TransportKind,
    pub to: TransportKind,
    pub reason: FallbackReason,
}

#[derive(Clone, Debug)]
pub struct Ladder {
    rungs: Vec<TransportKind>,
    current: usize,
    open_failures: u32,
    step_down_after: u32,
    remembered: Option<TransportKind>,
    last_fallback: Option<Fallback>,
}

impl Ladder {
    /// `rungs` best first (duplicates removed; empty means all three). Starts at `start` if listed.
    pub fn new(rungs: &[TransportKind], start: Option<TransportKind>, step_down_after: u32) -> Self {
        let mut list: Vec<TransportKind> = Vec::new();
        for &kind in rungs {
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        if list.is_empty() {
            list = vec![TransportKind::WebSocket, TransportKind::Sse, TransportKind::LongPoll];
        }
        let current = start.and_then(|s| list.iter().position(|&k| k == s)).unwrap_or(0);
        Self {
            rungs: list,
            current,
            open_failures: 0,
            step_down_after: step_down_after.max(1),
            remembered: start,
            last_fallback: None,
        }
    }

    /// The rung the next primary attempt uses.
    pub fn current(&self) -> TransportKind {
        // `current` is always a valid index: it only moves within `0..rungs.len()`.
        self.rungs.get(self.current).copied().unwrap_or(TransportKind::LongPoll)
    }

    pub fn rungs(&self) -> &[TransportKind] {
        &self.rungs
    }

    /// The most recent step down, for diagnostics.
    pub fn last_fallback(&self) -> Option<Fallback> {
        self.last_fallback
    }

    /// The next higher rung to probe while open on `kind`, if any.
    pub fn probe_target(&self, kind: TransportKind) -> Option<TransportKind> {
        let at = self.rungs.iter().position(|&k| k == kind)?;
        at.checked_sub(1).and_then(|i| self.rungs.get(i).copied())
    }

    /// Opening `kind` failed. Steps down after `step_down_after` consecutive failures.
    pub fn on_open_failed(&mut self, kind: TransportKind) -> Option<Fallback> {
        if kind != self.current() {
            return None;
        }
        self.open_failures += 1;
        if self.open_failures >= self.step_down_after {
            let count = self.open_failures;
            return self.step_down(FallbackReason::OpenFailures { count });
        }
        None
    }

    /// `kind` opened but closed before any server frame: step down at once.
    pub fn on_died_before_first_frame(&mut self, kind: TransportKind) -> Option<Fallback> {
        if kind != self.current() {
            return None;
        }
        self.step_down(FallbackReason::DiedBeforeFirstFrame)
    }

    /// No `welcome` in time. On SSE that is a buffering proxy: step down at once. Elsewhere it
    /// counts as an ordinary open failure.
    pub fn on_no_welcome(&mut self, kind: TransportKind) -> Option<Fallback> {
        if kind == TransportKind::Sse && kind == self.current() {
            self.step_down(FallbackReason::NoWelcomeInTime)
        } else {
            self.on_open_failed(kind)
        }
    }

    /// `kind` delivered a `welcome` (as primary or as a successful probe): it becomes the
    /// current rung. Returns the kind if the remembered rung changed.
    pub fn on_welcome(&mut self, kind: TransportKind) -> Option<TransportKind> {
        if let Some(at) = self.rungs.iter().position(|&k| k == kind) {
            self.current = at;
        }
        self.open_failures = 0;
        if self.remembered == Some(kind) {
            None
        } else {
            self.remembered = Some(kind);
            Some(kind)
        }
    }

    fn step_down(&mut self, reason: FallbackReason) -> Option<Fallback> {
        self.open_failures = 0;
        let from = self.current();
        if self.current + 1 >= self.rungs.len() {
            return None;
        }
        self.current += 1;
        let fallback = Fallback { from, to: self.current(), reason };
        self.last_fallback = Some(fallback);
        Some(fallback)
    }
}

//! The transport ladder: WebSocket → SSE → long polling, and every reason to move on it.
//!
//! This file answers "why did it fall back to SSE?". Opening a transport has two steps: the
//! ticket (`POST /v1/ticket`, a plain fetch that sees every HTTP status) and the transport's own
//! connection (whose refusals a browser mostly cannot see). Only the second step says anything
//! about the transport, and only when the server was admitting: a WebSocket refused because the
//! server is full looks exactly like a WebSocket blocked by a proxy. So a failure of the second
//! step is a **strike** held in suspense, and it counts only when the **next ticket step
//! succeeds** (the server is admitting, so the transport itself is the problem). A ticket step
//! answered `429`/`503` (overloaded, draining), or failing on the network, discards the strike:
//! overload or an unreachable server never moves the ladder.
//!
//! A counted strike steps the ladder **down** one rung when:
//! - opening the current rung failed [`Config::step_down_after`] times in a row (network error,
//!   blocked upgrade, no `welcome` in time on WebSocket or long polling) — [`FallbackReason::OpenFailures`];
//! - the rung opened but died before delivering a single server frame (a proxy that accepts a
//!   WebSocket and kills it) — [`FallbackReason::DiedBeforeFirstFrame`], at once;
//! - an SSE stream opened but no `welcome` arrived before the first-frame deadline (a buffering
//!   proxy holds the stream) — [`FallbackReason::NoWelcomeInTime`], at once.
//!
//! It never steps below the last rung. It moves **up** only through a successful background probe
//! (see `Client` docs): while open on a lower rung, the client periodically opens the next higher
//! rung as a probe of its session and switches once that rung's `welcome` arrives.
//!
//! It also remembers the last rung that delivered a `welcome`, so the glue can persist it and
//! start there next time instead of rediscovering a hostile proxy on every page load.
//!
//! [`Config::step_down_after`]: super::Config::step_down_after

use alloc::vec::Vec;

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

/// How a transport's own connection failed (after its ticket was issued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// The connection was refused or failed before it opened.
    OpenFailed,
    /// It opened and closed before delivering a single server frame.
    DiedBeforeFirstFrame,
    /// It opened and no `welcome` arrived in time.
    NoWelcome,
}

#[derive(Clone, Debug)]
pub struct Ladder {
    rungs: Vec<TransportKind>,
    current: usize,
    open_failures: u32,
    step_down_after: u32,
    remembered: Option<TransportKind>,
    last_fallback: Option<Fallback>,
    /// The last transport failure, until the next ticket step says whether it counts.
    suspect: Option<(TransportKind, Strike)>,
}

impl Ladder {
    /// `rungs` best first (duplicates removed; empty means all three). Starts at `start` if listed.
    pub fn new(
        rungs: &[TransportKind],
        start: Option<TransportKind>,
        step_down_after: u32,
    ) -> Self {
        const ALL: [TransportKind; 3] = [
            TransportKind::WebSocket,
            TransportKind::Sse,
            TransportKind::LongPoll,
        ];
        let rungs = if rungs.is_empty() { &ALL[..] } else { rungs };
        let mut list: Vec<TransportKind> = Vec::new();
        for &kind in rungs {
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        let current = start
            .and_then(|s| list.iter().position(|&k| k == s))
            .unwrap_or(0);
        Self {
            rungs: list,
            current,
            open_failures: 0,
            step_down_after: step_down_after.max(1),
            remembered: start,
            last_fallback: None,
            suspect: None,
        }
    }

    /// The rung the next primary attempt uses.
    pub fn current(&self) -> TransportKind {
        // `current` is always a valid index: it only moves within `0..rungs.len()`.
        self.rungs
            .get(self.current)
            .copied()
            .unwrap_or(TransportKind::LongPoll)
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

    /// The connection of `kind` failed after its ticket was issued: held until the next ticket
    /// step (see the module docs).
    pub fn on_transport_failed(&mut self, kind: TransportKind, strike: Strike) {
        self.suspect = Some((kind, strike));
    }

    /// A ticket step succeeded: the server is admitting, so a held strike counts. Returns the
    /// step down it caused, if any.
    pub fn on_ticket_issued(&mut self) -> Option<Fallback> {
        let (kind, strike) = self.suspect.take()?;
        if kind != self.current() {
            return None;
        }
        match strike {
            Strike::DiedBeforeFirstFrame => self.step_down(FallbackReason::DiedBeforeFirstFrame),
            // A buffering proxy holds SSE streams: nothing will get through, step down at once.
            Strike::NoWelcome if kind == TransportKind::Sse => {
                self.step_down(FallbackReason::NoWelcomeInTime)
            }
            Strike::NoWelcome | Strike::OpenFailed => {
                self.open_failures += 1;
                if self.open_failures >= self.step_down_after {
                    let count = self.open_failures;
                    return self.step_down(FallbackReason::OpenFailures { count });
                }
                None
            }
        }
    }

    /// A ticket step was refused as overloaded or could not reach the server: a held strike
    /// says nothing about the transport.
    pub fn on_ticket_refused(&mut self) {
        self.suspect = None;
    }

    /// `kind` delivered a `welcome` (as primary or as a successful probe): it becomes the
    /// current rung. Returns the kind if the remembered rung changed.
    pub fn on_welcome(&mut self, kind: TransportKind) -> Option<TransportKind> {
        if let Some(at) = self.rungs.iter().position(|&k| k == kind) {
            self.current = at;
        }
        self.open_failures = 0;
        self.suspect = None;
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
        let fallback = Fallback {
            from,
            to: self.current(),
            reason,
        };
        self.last_fallback = Some(fallback);
        Some(fallback)
    }
}

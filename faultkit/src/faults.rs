//! What the proxy can do to traffic ([`Faults`], the JSON body of `POST /faults`) and what it
//! counted while doing it ([`Counters`], in `GET /faults`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// The faults in force. Every field is optional; `Faults::default()` forwards everything
/// untouched. Setting faults replaces the previous set as a whole.
///
/// Faults that act on bytes (`blackhole`, `latency`, `reset`) apply to open connections at
/// once; faults that act on requests (`refuse_websocket`, `kill_after_upgrade_ms`,
/// `buffer_sse`, `reject`) apply to requests that start after they were set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Stop forwarding in both directions; sockets stay open (new ones are accepted and then
    /// hang). Like a network partition: what was held flows again once it is lifted, unless an
    /// end gave up and closed meanwhile.
    pub blackhole: bool,
    /// Answer every WebSocket upgrade `502 Bad Gateway` (a proxy that does not pass upgrades).
    pub refuse_websocket: bool,
    /// Pass the upgrade (the client sees `101`), then reset both connections this many
    /// milliseconds later (0: at once).
    pub kill_after_upgrade_ms: Option<u64>,
    /// Hold every byte of a `text/event-stream` response (its head too) until the response
    /// ends, like a buffering corporate proxy.
    pub buffer_sse: bool,
    /// Answer opening requests with an error status and `Retry-After` instead of forwarding.
    pub reject: Option<Reject>,
    /// Delay every chunk of bytes, in both directions, keeping their order.
    pub latency: Option<Latency>,
    /// Reset (TCP RST) every connection at a random time.
    pub reset: Option<Reset>,
}

/// The requests a client makes to open a session, which [`Reject`] can refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opening {
    /// `POST /v1/ticket`.
    Ticket,
    /// `GET /v1/ws` (the upgrade request).
    Ws,
    /// `GET /v1/sse`.
    Sse,
    /// `GET /v1/poll` with a `ticket` (opening a long-poll session, not a held poll).
    Poll,
}

impl Opening {
    pub const ALL: [Opening; 4] = [Opening::Ticket, Opening::Ws, Opening::Sse, Opening::Poll];
}

/// Refuse opening requests like an overloaded server or load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// HTTP status, typically 429 or 503.
    pub status: u16,
    /// `Retry-After` in seconds (also `retry_after_ms` in the JSON body).
    #[serde(default)]
    pub retry_after_s: u64,
    /// Which openings to refuse; empty means all of them.
    #[serde(default)]
    pub only: Vec<Opening>,
    /// Forward this many of the openings it applies to first, then start refusing (a server
    /// that fills up between a ticket and the transport open: `only: [ticket, ws]`, `skip: 1`).
    #[serde(default)]
    pub skip: u64,
    /// Refuse only this many requests, then forward again. `None`: every one.
    #[serde(default)]
    pub limit: Option<u64>,
}

impl Reject {
    pub fn applies_to(&self, opening: Opening) -> bool {
        self.only.is_empty() || self.only.contains(&opening)
    }
}

/// A delay of `ms` plus a uniformly random `0..=jitter_ms`, per chunk, never reordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
}

/// Each connection is reset at a uniformly random time in `min_ms..=max_ms` after it was
/// accepted or after the fault was set, whichever is later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reset {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Faults {
    /// No fault: forward everything.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn blackhole() -> Self {
        Self { blackhole: true, ..Self::default() }
    }

    pub fn refuse_websocket() -> Self {
        Self { refuse_websocket: true, ..Self::default() }
    }

    pub fn kill_after_upgrade(ms: u64) -> Self {
        Self { kill_after_upgrade_ms: Some(ms), ..Self::default() }
    }

    pub fn buffer_sse() -> Self {
        Self { buffer_sse: true, ..Self::default() }
    }

    pub fn reject(status: u16, retry_after_s: u64) -> Self {
        Self {
            reject: Some(Reject { status, retry_after_s, only: Vec::new(), skip: 0, limit: None }),
            ..Self::default()
        }
    }

    pub fn latency(ms: u64, jitter_ms: u64) -> Self {
        Self { latency: Some(Latency { ms, jitter_ms }), ..Self::default() }
    }

    pub fn reset(min_ms: u64, max_ms: u64) -> Self {
        Self { reset: Some(Reset { min_ms, max_ms }), ..Self::default() }
    }

    /// These faults and `other`'s (for combining: `Faults::refuse_websocket().and(Faults::buffer_sse())`).
    pub fn and(mut self, other: Faults) -> Self {
        self.blackhole |= other.blackhole;
        self.refuse_websocket |= other.refuse_websocket;
        self.buffer_sse |= other.buffer_sse;
        self.kill_after_upgrade_ms = other.kill_after_upgrade_ms.or(self.kill_after_upgrade_ms);
        self.reject = other.reject.or(self.reject);
        self.latency = other.latency.or(self.latency);
        self.reset = other.reset.or(self.reset);
        self
    }
}

/// What the proxy saw and did since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub tickets: AtomicU64,
    pub websocket_upgrades: AtomicU64,
    pub sse_opens: AtomicU64,
    pub poll_opens: AtomicU64,
    pub rejected: AtomicU64,
    pub refused_websocket: AtomicU64,
    pub killed_after_upgrade: AtomicU64,
    pub buffered_sse_responses: AtomicU64,
    pub resets: AtomicU64,
    pub upstream_connect_failures: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A copy of [`Counters`] (and the connections each upstream got), as served by `GET /faults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub connections: u64,
    pub open_connections: u64,
    /// New connections routed to each upstream, in the order the upstreams were given.
    pub per_upstream: Vec<u64>,
    pub requests: u64,
    pub tickets: u64,
    pub websocket_upgrades: u64,
    pub sse_opens: u64,
    pub poll_opens: u64,
    pub rejected: u64,
    pub refused_websocket: u64,
    pub killed_after_upgrade: u64,
    pub buffered_sse_responses: u64,
    pub resets: u64,
    pub upstream_connect_failures: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, open: u64, per_upstream: Vec<u64>) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        CounterSnapshot {
            connections: get(&self.connections),
            open_connections: open,
            per_upstream,
            requests: get(&self.requests),
            tickets: get(&self.tickets),
            websocket_upgrades: get(&self.websocket_upgrades),
            sse_opens: get(&self.sse_opens),
            poll_opens: get(&self.poll_opens),
            rejected: get(&self.rejected),
            refused_websocket: get(&self.refused_websocket),
            killed_after_upgrade: get(&self.killed_after_upgrade),
            buffered_sse_responses: get(&self.buffered_sse_responses),
            resets: get(&self.resets),
            upstream_connect_failures: get(&self.upstream_connect_failures),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_unknown_fields() {
        let f: Faults = serde_json::from_str(
            r#"{"reject":{"status":503,"retry_after_s":2,"only":["ws","sse"]},"latency":{"ms":50}}"#,
        )
        .expect("valid faults");
        let reject = f.reject.as_ref().expect("reject");
        assert!(reject.applies_to(Opening::Ws) && !reject.applies_to(Opening::Ticket));
        assert_eq!(f.latency, Some(Latency { ms: 50, jitter_ms: 0 }));
        assert!(serde_json::from_str::<Faults>(r#"{"blackhol":true}"#).is_err());
        assert_eq!(serde_json::from_str::<Faults>("{}").ok(), Some(Faults::none()));
    }
}

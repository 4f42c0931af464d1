//! Prometheus text metrics, hand-written: a few atomics and one render function.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::broker::BrokerStats;
use crate::config::TransportKind;

/// Why frames or connections were dropped.
#[derive(Clone, Copy, Debug)]
pub enum DropReason {
    SlowConsumer,
    RateLimited,
    Malformed,
    TooLarge,
    HeartbeatTimeout,
    Unauthorized,
    OriginNotAllowed,
    Overloaded,
    /// A ticket refused by the accept-rate budget.
    AcceptRate,
    /// A TCP connection refused by the total or per-address connection cap.
    ConnectionCap,
    /// An HTTP request refused by the total or per-address cap on requests in flight.
    RequestCap,
}

impl DropReason {
    const ALL: [Self; 11] = [
        Self::SlowConsumer,
        Self::RateLimited,
        Self::Malformed,
        Self::TooLarge,
        Self::HeartbeatTimeout,
        Self::Unauthorized,
        Self::OriginNotAllowed,
        Self::Overloaded,
        Self::AcceptRate,
        Self::ConnectionCap,
        Self::RequestCap,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Unauthorized => "unauthorized",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Overloaded => "overloaded",
            Self::AcceptRate => "accept_rate",
            Self::ConnectionCap => "connection_cap",
            Self::RequestCap => "request_cap",
        }
    }
}

const TRANSPORTS: [TransportKind; 3] = [
    TransportKind::WebSocket,
    TransportKind::Sse,
    TransportKind::Poll,
];

#[derive(Default)]
pub struct Metrics {
    connections: [AtomicU64; 3],
    pub sessions: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub messages_published: AtomicU64,
    drops: [AtomicU64; 11],
    /// Open TCP connections (upgraded WebSockets included), kept by [`crate::listener`].
    pub tcp_connections: AtomicU64,
    /// HTTP requests whose response has not ended (SSE streams and held polls included).
    pub requests_in_flight: AtomicU64,
    /// Room events the hub missed because its broker receiver lagged (each triggered a resync).
    pub broker_lagged_events: AtomicU64,
    /// Rooms with at least one local subscriber.
    pub local_rooms: AtomicU64,
    /// Background tasks restarted after a panic ([`crate::supervisor`]).
    pub task_restarts: AtomicU64,
}

fn transport_index(kind: TransportKind) -> usize {
    match kind {
        TransportKind::WebSocket => 0,
        TransportKind::Sse => 1,
        TransportKind::Poll => 2,
    }
}

impl Metrics {
    pub fn set_connections(&self, kind: TransportKind, n: u64) {
        self.connections[transport_index(kind)].store(n, Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn frames_out(&self, n: u64) {
        self.frames_out.fetch_add(n, Relaxed);
    }

    /// Renders the Prometheus text exposition format. `coalescing`: write windows hold now.
    pub fn render(&self, broker: &BrokerStats, draining: bool, coalescing: bool) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        gauge(
            "rtlink_sessions",
            "Sessions, connected or resumable.",
            self.sessions.load(Relaxed),
        );
        gauge(
            "rtlink_rooms_local",
            "Rooms with a subscriber on this node.",
            self.local_rooms.load(Relaxed),
        );
        gauge(
            "rtlink_broker_rooms",
            "Rooms held by the broker.",
            broker.rooms,
        );
        gauge(
            "rtlink_presence_members",
            "Presence entries across rooms.",
            broker.presence_members,
        );
        gauge(
            "rtlink_history_messages",
            "Messages held in room history.",
            broker.history_messages,
        );
        gauge(
            "rtlink_history_bytes",
            "Bytes held in room history (in-process broker; 0 with Redis).",
            broker.history_bytes,
        );
        gauge(
            "rtlink_tcp_connections",
            "Open TCP connections, upgraded WebSockets included.",
            self.tcp_connections.load(Relaxed),
        );
        gauge(
            "rtlink_http_requests_in_flight",
            "HTTP requests whose response has not ended (SSE streams, held polls).",
            self.requests_in_flight.load(Relaxed),
        );
        gauge(
            "rtlink_draining",
            "1 while the server drains.",
            u64::from(draining),
        );
        gauge(
            "rtlink_write_coalescing",
            "1 while write windows hold frames (the server is busy, or --write-window-above-cpu 0).",
            u64::from(coalescing),
        );
        let _ = writeln!(
            out,
            "# HELP rtlink_connections Open transports.\n# TYPE rtlink_connections gauge"
        );
        for kind in TRANSPORTS {
            let n = self.connections[transport_index(kind)].load(Relaxed);
            let _ = writeln!(
                out,
                "rtlink_connections{{transport=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            "rtlink_frames_in_total",
            "Frames received from clients.",
            self.frames_in.load(Relaxed),
        );
        counter(
            "rtlink_frames_out_total",
            "Frames written to clients.",
            self.frames_out.load(Relaxed),
        );
        counter(
            "rtlink_messages_published_total",
            "Messages stored by publishes on this node.",
            self.messages_published.load(Relaxed),
        );
        counter(
            "rtlink_broker_lagged_events_total",
            "Broker events missed by a lagging receiver (resynced).",
            self.broker_lagged_events.load(Relaxed),
        );
        counter(
            "rtlink_task_restarts_total",
            "Background tasks (hub dispatcher, heartbeat, sweep) restarted after a panic.",
            self.task_restarts.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP rtlink_drops_total Dropped connections or frames.\n# TYPE rtlink_drops_total counter");
        for reason in DropReason::ALL {
            let n = self.drops[reason as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "rtlink_drops_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        out
    }
}

//! Everything tunable about the client, with the defaults the protocol document recommends.

use alloc::{vec, vec::Vec};

use super::event::TransportKind;

/// Reconnect backoff: full-jitter exponential. See [`super::backoff`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Envelope of the first retry; doubles per consecutive failure.
    pub base_ms: u64,
    /// Largest envelope.
    pub cap_ms: u64,
    /// Smallest delay (clamped to the envelope), so a retry never fires in the same tick.
    pub floor_ms: u64,
    /// Give up (state `Closed`) after this many consecutive failed attempts. `None`: never.
    pub max_attempts: Option<u32>,
    /// A connection open this long resets the failure count.
    pub stable_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 30_000,
            floor_ms: 100,
            max_attempts: None,
            stable_ms: 10_000,
        }
    }
}

/// Client configuration. `Config::default()` is what the protocol document describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The transport ladder, best first. Unknown order is fine; an empty list means all three.
    pub transports: Vec<TransportKind>,
    /// The rung to start from, typically the one the glue persisted after
    /// [`super::Event::TransportRemembered`]. Ignored if not in `transports`.
    pub start_transport: Option<TransportKind>,
    pub backoff: BackoffConfig,
    /// Consecutive failures to open a rung before stepping down to the next.
    pub step_down_after: u32,
    /// A transport that does not deliver `welcome` within this time after being asked to open
    /// has failed; for SSE this means a buffering proxy, and the ladder steps down at once.
    pub first_frame_timeout_ms: u64,
    /// While open on a lower rung, try the next higher rung about this often (±25 % jitter).
    pub probe_interval_ms: u64,
    /// Silence allowed beyond the server's `ping_interval_ms` before the transport is dead.
    pub heartbeat_grace_ms: u64,
    /// A heartbeat timer handled this much later than its deadline means the page's timers were
    /// throttled: probe with a ping before declaring death.
    pub late_timer_threshold_ms: u64,
    /// How long to wait for any frame after such a liveness ping.
    pub liveness_probe_window_ms: u64,
    /// Largest number of unacknowledged publishes kept (queued or in flight).
    pub send_queue_capacity: usize,
    /// A publish not acknowledged this long after it was last transmitted fails with `timeout`.
    pub ack_timeout_ms: u64,
    /// Send `typing: true` at most this often while keystrokes continue.
    pub typing_throttle_ms: u64,
    /// Send `typing: false` after this long without a keystroke.
    pub typing_idle_ms: u64,
    /// Forget someone else's typing this long after their last start (in case a stop was lost).
    pub typing_expiry_ms: u64,
    /// Used when a server announces `ping_interval_ms: 0`.
    pub default_ping_interval_ms: u64,
    /// An auth failure (HTTP 401, close 4009) less than this long after the client last
    /// re-authenticated is final: the fresh token did not help.
    pub reauth_window_ms: u64,
    /// How many server URLs the glue holds (`url: string[]`), preferred first; 0 counts as 1.
    /// The core names them by index (see [`super::endpoints`]).
    pub endpoints: usize,
    /// Ticket steps without an answer in a row before an endpoint is down and the next attempt
    /// goes to the next one.
    pub failover_after: u32,
    /// An endpoint's first down period (jittered in `[d/2, d]`); doubles per consecutive one.
    pub endpoint_down_ms: u64,
    /// Longest down period.
    pub endpoint_down_cap_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transports: vec![
                TransportKind::WebSocket,
                TransportKind::Sse,
                TransportKind::LongPoll,
            ],
            start_transport: None,
            backoff: BackoffConfig::default(),
            step_down_after: 2,
            first_frame_timeout_ms: 8_000,
            probe_interval_ms: 60_000,
            heartbeat_grace_ms: 10_000,
            late_timer_threshold_ms: 1_000,
            liveness_probe_window_ms: 5_000,
            send_queue_capacity: 256,
            ack_timeout_ms: 15_000,
            typing_throttle_ms: 3_000,
            typing_idle_ms: 5_000,
            typing_expiry_ms: 6_000,
            default_ping_interval_ms: 25_000,
            reauth_window_ms: 60_000,
            endpoints: 1,
            failover_after: 2,
            endpoint_down_ms: 30_000,
            endpoint_down_cap_ms: 600_000,
        }
    }
}

//! The rtlink wire protocol, shared by the client SDK and `rtlink-server`.
//!
//! Everything that crosses the network is defined here and nowhere else: the frames a client sends
//! ([`ClientFrame`]), the frames a server sends ([`ServerFrame`]), the close codes and what a client
//! must do on each ([`CloseCode`]), the error codes carried by a nack ([`ErrorCode`]) and the
//! envelopes that carry frames over Server-Sent Events and long polling ([`envelope`]).
//!
//! Frames are JSON objects tagged by `"t"`. [`codec`] (feature `json`, on by default) encodes them
//! and decodes untrusted bytes into typed errors without ever panicking. The crate itself does no
//! I/O. `docs/PROTOCOL.md` at the repository root is the prose version of this crate.

#![no_std]
extern crate alloc;

mod close_code;
#[cfg(feature = "json")]
pub mod codec;
pub mod envelope;
mod error_code;
mod frames;

pub use close_code::{CloseAction, CloseCode};
pub use error_code::ErrorCode;
pub use frames::{ClientFrame, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo};

/// The protocol version this crate speaks. A peer announcing another version is refused with
/// [`CloseCode::UNSUPPORTED_VERSION`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest frame, in bytes of its encoded form, that either side accepts.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// HTTP paths, fixed by the protocol so any client finds any server.
pub mod paths {
    /// `POST` with `Authorization: Bearer <token>` → `{"ticket": "...", "expires_in_ms": n}`.
    pub const TICKET: &str = "/v1/ticket";
    /// WebSocket upgrade: `GET /v1/ws?ticket=T`.
    pub const WEBSOCKET: &str = "/v1/ws";
    /// Server-Sent Events stream: `GET /v1/sse?ticket=T&v=1[&resume=R]`.
    pub const SSE: &str = "/v1/sse";
    /// Long polling: `GET /v1/poll?ticket=T&v=1[&resume=R]` to open, then
    /// `GET /v1/poll?session=R&cursor=N` to wait for frames after `N`.
    pub const POLL: &str = "/v1/poll";
    /// Upstream frames for SSE and long polling: `POST` an [`crate::envelope::UpstreamBatch`].
    pub const SEND: &str = "/v1/send";
    /// Readiness: 200 when serving, 503 while draining.
    pub const HEALTH: &str = "/healthz";
    /// Prometheus text metrics.
    pub const METRICS: &str = "/metrics";
}

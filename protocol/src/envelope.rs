//! How frames travel when the transport is not a WebSocket.
//!
//! - **SSE** (server → client): each [`crate::ServerFrame`] is one event, `id: <seq>` then
//!   `data: <frame JSON>` and a blank line, event type `message`. Keep-alives are comment lines
//!   (`: ka`). `seq` counts frames of the session from 1.
//! - **Long polling** (server → client): each `POST /v1/poll` with a [`PollRequest`] body answers
//!   one [`PollBatch`]: the frames after the request's `cursor` (waiting up to the server's hold
//!   time when there are none), and the new cursor. Frames up to the cursor a client sends back
//!   are forgotten by the server; later ones are sent again, so a lost response loses nothing.
//! - **Upstream** (client → server, for SSE and long polling): `POST /v1/send` with an
//!   [`UpstreamBatch`] as the body (`Content-Type: text/plain` to avoid a CORS preflight), at
//!   most `limits.max_batch_bytes` long; a client splits longer queues into several bodies.
//!
//! Secrets (resume tokens) travel only in bodies, never in URLs: a transport that resumes a
//! session names it in the [`TicketRequest`] of its ticket.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{ClientFrame, ErrorCode, ServerFrame};

/// The body of a long-poll response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollBatch {
    /// The sequence number of the last frame in this batch (or the request's cursor if empty).
    pub cursor: u64,
    pub frames: Vec<ServerFrame>,
}

/// The body of `POST /v1/send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamBatch {
    /// The session's resume token (from `welcome`).
    pub session: String,
    pub frames: Vec<ClientFrame>,
}

/// The body of `POST /v1/poll` after the opening poll (sent as `text/plain`: no CORS preflight).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The session's resume token (from `welcome`).
    pub session: String,
    /// The sequence number of the last frame the client processed.
    #[serde(default)]
    pub cursor: u64,
}

/// The optional JSON body of `POST /v1/ticket`: what the transport opened with the ticket does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRequest {
    /// Continue this session (a resume token from `welcome`) instead of opening a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Open the transport as a probe of the session in `resume`: it gets its own `welcome` but
    /// the session stays on its current transport until the client sends `switch` on the probe.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub probe: bool,
}

/// How much longer than `max_frame_bytes` a `POST /v1/send` body may be, so that a single frame
/// of the largest size always fits in one body with its envelope (`{"session":…,"frames":[…]}`).
pub const UPSTREAM_ENVELOPE_ALLOWANCE: usize = 4096;

/// The largest `POST /v1/send` body a server with this frame limit accepts (announced in
/// `welcome.limits.max_batch_bytes`).
pub const fn max_batch_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_add(UPSTREAM_ENVELOPE_ALLOWANCE)
}

/// The body of `POST /v1/ticket`'s success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketResponse {
    pub ticket: String,
    pub expires_in_ms: u64,
}

/// The JSON body of every HTTP error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    pub error: ErrorCode,
    pub message: String,
    /// Set with 429 and 503: when to try again (also in the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

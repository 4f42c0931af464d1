//! How frames travel when the transport is not a WebSocket.
//!
//! - **SSE** (server → client): each [`crate::ServerFrame`] is one event, `id: <seq>` then
//!   `data: <frame JSON>` and a blank line, event type `message`. Keep-alives are comment lines
//!   (`: ka`). `seq` counts frames of the session from 1.
//! - **Long polling** (server → client): each `GET /v1/poll` answers one [`PollBatch`]: the frames
//!   after the request's `cursor` (waiting up to the server's hold time when there are none), and
//!   the new cursor. Frames up to the cursor a client sends back are forgotten by the server;
//!   later ones are sent again, so a lost response loses nothing.
//! - **Upstream** (client → server, for SSE and long polling): `POST /v1/send` with an
//!   [`UpstreamBatch`] as the body (`Content-Type: text/plain` to avoid a CORS preflight).

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

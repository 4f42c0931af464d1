//! The frames: one enum per direction, JSON objects tagged by `"t"`.
//!
//! Payloads are opaque UTF-8 strings (the SDK puts JSON text there): the server never parses them,
//! so a message is checked for size and fanned out without per-subscriber JSON work.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{CloseCode, ErrorCode};

/// A frame sent by a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on a WebSocket. (SSE and long polling send no hello: the ticket request
    /// carries `resume`, see [`crate::envelope::TicketRequest`], and the URL carries `v`.)
    Hello {
        /// Protocol version; must equal [`crate::PROTOCOL_VERSION`].
        v: u32,
        /// Resume token from an earlier `welcome`, to continue that session. Without it, the
        /// session named by the ticket (if any) is resumed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// Liveness probe; the server answers `pong`.
    Ping,
    /// Answer to a server `ping`.
    Pong,
    /// Join a room. With `since`, the server first replays history after that offset.
    Subscribe {
        room: String,
        /// The last offset the client has seen in this room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The room epoch `since` belongs to (from an earlier `subscribed`). If the room's
        /// history was reset since (a server without shared storage restarted), offsets start
        /// again from 1 and `since` means nothing: the server answers `recovered: false` and
        /// replays the new epoch's history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// On a subscribe without `since` (joining fresh): first replay up to this many of the
        /// room's most recent retained messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
    },
    /// Leave a room (also leaves its presence).
    Unsubscribe { room: String },
    /// Publish to a room. `id` is unique per client and deduplicates resends.
    Publish {
        room: String,
        id: String,
        payload: String,
    },
    /// Set this connection's presence metadata (opaque JSON text) in a subscribed room.
    Presence { room: String, meta: String },
    /// Typing started (`active: true`) or stopped.
    Typing { room: String, active: bool },
    /// The client ends the session.
    Close { code: CloseCode, reason: String },
    /// Sent on a probe transport after its `welcome`: move the session here. Only then does the
    /// server attach the session to this transport and close the old one with 4006.
    Switch,
}

/// A frame sent by a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The session is open (first frame on every transport).
    Welcome {
        v: u32,
        /// Public session id; also the presence connection id.
        session: String,
        /// Secret that resumes this session and authenticates upstream POSTs.
        resume_token: String,
        /// True when an earlier session was resumed (presence and dedupe state kept).
        resumed: bool,
        /// The server pings at least this often; silence longer than this plus grace is death.
        ping_interval_ms: u64,
        user: UserInfo,
        limits: Limits,
    },
    /// Liveness probe; the client answers `pong`.
    Ping,
    /// Answer to a client `ping`.
    Pong,
    /// A subscription is active. With `recovered: true`, `head` is the room's newest offset and
    /// the replay after the client's `since` follows. With `recovered: false` the client cannot
    /// be made whole (history was trimmed, or the room's epoch changed): it must resync the room
    /// from its own source of truth, and delivery continues with the offset after `head`.
    Subscribed {
        room: String,
        head: u64,
        recovered: bool,
        /// Identifies this incarnation of the room's offsets; sent back in `subscribe`.
        #[serde(default)]
        epoch: String,
    },
    /// The session left the room.
    Unsubscribed { room: String },
    /// A message in a room. Offsets are contiguous per room, starting at 1.
    Message {
        room: String,
        offset: u64,
        sender: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        payload: String,
    },
    /// A publish was stored at `offset`.
    Ack {
        id: String,
        room: String,
        offset: u64,
    },
    /// A request was refused. `id` is the publish id, or the room for subscribe and presence.
    Nack {
        id: String,
        code: ErrorCode,
        reason: String,
    },
    /// Everyone present in a room, sent after `subscribed`.
    PresenceSnapshot {
        room: String,
        conns: Vec<PresenceConn>,
    },
    /// A connection joined a room's presence.
    PresenceJoin { room: String, conn: PresenceConn },
    /// A connection changed its metadata.
    PresenceUpdate { room: String, conn: PresenceConn },
    /// A connection left (after the server's grace period).
    PresenceLeave {
        room: String,
        session: String,
        user: String,
    },
    /// Several presence changes of a large room at once, coalesced over a short interval:
    /// `joins` are joins and updates (the connection's latest state), `leaves` connections that
    /// left. A session appears at most once, in one of the two.
    PresenceDiff {
        room: String,
        joins: Vec<PresenceConn>,
        leaves: Vec<PresenceLeft>,
    },
    /// Someone started or stopped typing. The server sends `active: false` itself when a start
    /// is not followed by a stop within its typing TTL.
    Typing {
        room: String,
        user: String,
        name: String,
        active: bool,
    },
    /// The server is draining: reconnect at a random point in `[min_ms, max_ms]` from now.
    ReconnectAfter { min_ms: u64, max_ms: u64 },
    /// The server ends the transport; `code` says what the client does next.
    Close { code: CloseCode, reason: String },
    /// A frame type from a newer server; clients ignore it.
    #[serde(other)]
    Unknown,
}

/// Who the token says the user is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
}

/// Limits the server enforces, announced so the client can refuse early with a clear error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: u64,
    /// Sustained publishes per second per connection.
    pub rate_per_sec: u32,
    /// Token-bucket burst.
    pub burst: u32,
    pub max_rooms: u32,
    /// How long a disconnected session stays resumable.
    pub resume_window_ms: u64,
    /// How long the server remembers publish ids (a resend within it is answered with the
    /// original ack instead of being stored again). 0: not announced.
    #[serde(default)]
    pub dedupe_window_ms: u64,
    /// Largest `POST /v1/send` body. 0: not announced (then `max_frame_bytes`).
    #[serde(default)]
    pub max_batch_bytes: u64,
    /// Payload bytes per second one user may publish on a node, over all their sessions
    /// (beyond it and its burst: `nack rate_limited`). 0: not announced.
    #[serde(default)]
    pub publish_bytes_per_sec: u64,
    /// Burst of that budget, in payload bytes. 0: not announced.
    #[serde(default)]
    pub publish_bytes_burst: u64,
}

/// One connection in a room's presence. A user with two tabs is two connections with one `user`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceConn {
    /// The connection's session id.
    pub session: String,
    pub user: String,
    pub name: String,
    /// Opaque JSON text set by the client, empty string when unset.
    #[serde(default)]
    pub meta: String,
}

/// A connection that left a room's presence (in [`ServerFrame::PresenceDiff`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceLeft {
    pub session: String,
    pub user: String,
}

impl ServerFrame {
    /// The frame's tag, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Message { .. } => "message",
            Self::Ack { .. } => "ack",
            Self::Nack { .. } => "nack",
            Self::PresenceSnapshot { .. } => "presence_snapshot",
            Self::PresenceJoin { .. } => "presence_join",
            Self::PresenceUpdate { .. } => "presence_update",
            Self::PresenceLeave { .. } => "presence_leave",
            Self::PresenceDiff { .. } => "presence_diff",
            Self::Typing { .. } => "typing",
            Self::ReconnectAfter { .. } => "reconnect_after",
            Self::Close { .. } => "close",
            Self::Unknown => "unknown",
        }
    }
}

impl ClientFrame {
    /// The frame's tag, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Presence { .. } => "presence",
            Self::Typing { .. } => "typing",
            Self::Close { .. } => "close",
            Self::Switch => "switch",
        }
    }
}

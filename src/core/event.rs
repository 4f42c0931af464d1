//! What goes into the core ([`Input`]) and what comes out ([`Output`], [`Event`]).

use alloc::{string::String, vec::Vec};

use rtlink_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};

use super::ladder::Fallback;
use super::state::{CloseReason, State};

/// The three ways to reach the server, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransportKind {
    WebSocket,
    Sse,
    LongPoll,
}

/// A transport instance, minted by the core in [`Output::OpenTransport`]. Input carrying an id
/// the core no longer tracks (an old transport, a closed probe) is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransportId(pub u64);

/// Identifies one publish from [`super::Client::publish`] until it is acked or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SendId(pub u64);

/// Why a transport could not be opened, as far as the glue can tell from the HTTP answer of the
/// ticket step or the transport's own connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// HTTP 401: the token or ticket was refused. Fetch a fresh token and retry once.
    Unauthorized,
    /// HTTP 403: terminal.
    Forbidden,
    /// HTTP 404 `unknown_session`: the session to resume is gone; start a new one at once.
    SessionUnknown,
    /// HTTP 429/503: the server is overloaded or draining. Wait at least `retry_after_ms` (from
    /// the body, else `Retry-After`), jittered; never a reason to step down the ladder.
    Overloaded { retry_after_ms: Option<u64> },
    /// The ticket step got no answer (network error, timeout) or a 5xx: the server cannot be
    /// reached at all, whatever the transport. Back off; the ladder does not move.
    Unreachable,
    /// The transport's own connection failed after its ticket was issued (blocked upgrade,
    /// refused stream, network error): a strike against the rung (see [`super::ladder`]).
    Network,
}

/// Everything the glue and the app tell the core. Feed with [`super::Client::handle_input`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    // --- app commands ---
    /// Start connecting (from `Idle`). Ignored in any other state.
    Connect,
    /// End the session for good: pending publishes fail, state becomes `Closed`.
    Close,
    /// Join a room. `history`: on joining, first deliver up to this many of the room's most
    /// recent messages (0: only what is published from now on).
    Subscribe {
        room: String,
        history: u32,
    },
    Unsubscribe {
        room: String,
    },
    /// Set own presence metadata (opaque JSON text) in a subscribed room; re-announced after
    /// a reconnect that lost the session. Ignored for rooms not subscribed.
    SetPresence {
        room: String,
        meta: String,
    },
    /// The user typed in `room`'s input.
    Keystroke {
        room: String,
    },
    /// The user cleared the input or left it.
    TypingStop {
        room: String,
    },
    /// The app's async `getToken()` answered [`Output::RequestToken`].
    TokenReady(String),
    /// The app's `getToken()` failed; `terminal` means do not retry (e.g. logged out).
    TokenFailed {
        terminal: bool,
    },

    // --- browser lifecycle ---
    Online,
    Offline,
    Hidden,
    Visible,
    /// Page frozen or entering the back/forward cache: treated like offline.
    Frozen,
    /// Page resumed from frozen.
    Resumed,

    // --- transport events, reported by the glue ---
    /// The ticket step of [`Output::FetchTicket`] succeeded.
    TicketIssued {
        id: TransportId,
        ticket: String,
    },
    TransportOpened {
        id: TransportId,
    },
    Frame {
        id: TransportId,
        frame: ServerFrame,
    },
    /// The transport ended. `code` is the WebSocket close code if there was one.
    TransportClosed {
        id: TransportId,
        code: Option<CloseCode>,
        reason: String,
    },
    /// The ticket step or the transport's connection failed.
    OpenFailed {
        id: TransportId,
        error: OpenError,
    },
}

/// What the core asks of the glue. Drain with [`super::Client::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Call the app's `getToken()` and answer with [`Input::TokenReady`] or [`Input::TokenFailed`].
    RequestToken,
    /// First step of opening transport `id`: `POST /v1/ticket` with `Authorization: Bearer
    /// <token>` and the JSON body `{"resume"?: resume, "probe"?: true}`. Answer with
    /// [`Input::TicketIssued`], or [`Input::OpenFailed`] mapped from the HTTP answer
    /// (no answer or a 5xx: [`OpenError::Unreachable`]). `endpoint`: which of the glue's URLs
    /// (an index into [`super::Config::endpoints`], 0 = the first).
    FetchTicket {
        id: TransportId,
        endpoint: usize,
        token: String,
        resume: Option<String>,
        probe: bool,
    },
    /// Second step: connect transport `id` of `kind` with the ticket, on the ticket's endpoint.
    /// For WebSocket the core sends `hello` itself after [`Input::TransportOpened`]; SSE and
    /// long polling resume the session the ticket names.
    OpenTransport {
        id: TransportId,
        endpoint: usize,
        kind: TransportKind,
        ticket: String,
    },
    /// Send a frame on a transport (for SSE/long polling: POST it upstream).
    Send { id: TransportId, frame: ClientFrame },
    /// Close the transport and forget it; do not report its close back (it would be ignored).
    CloseTransport {
        id: TransportId,
        code: Option<CloseCode>,
    },
    /// Something for the app.
    Event(Event),
}

/// A member of a room's presence, aggregated over the user's connections (tabs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub user: String,
    pub name: String,
    /// The metadata most recently set by any of the user's connections.
    pub meta: String,
    /// How many connections (tabs, devices) the user has in the room.
    pub connections: u32,
}

/// Someone typing in a room.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypingUser {
    pub user: String,
    pub name: String,
}

/// Things the app sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed. The flat fields repeat what a status line shows.
    StateChanged {
        state: State,
        transport: Option<TransportKind>,
        /// Attempt number since the last stable connection (1 = first try); 0 when not relevant.
        attempt: u32,
        /// When backing off: milliseconds until the next attempt.
        retry_in_ms: Option<u64>,
    },
    /// A room message, delivered exactly once and in offset order.
    Message {
        room: String,
        offset: u64,
        sender: String,
        name: Option<String>,
        payload: String,
    },
    PublishAcked {
        send_id: SendId,
        offset: u64,
    },
    /// The publish will not be stored. `code` is the server's nack code, `Timeout` when no ack
    /// came in time, `Closed` when the client closed first.
    PublishFailed {
        send_id: SendId,
        code: ErrorCode,
        reason: String,
    },
    /// The first `subscribed` for a room the app subscribed to (not repeated on reconnects).
    Subscribed {
        room: String,
    },
    /// The server refused the subscription; the room is dropped.
    SubscribeFailed {
        room: String,
        code: ErrorCode,
        reason: String,
    },
    /// Messages were lost beyond the server's history: reload the room from its source of truth.
    /// Delivery continues from the room's current head.
    ResyncNeeded {
        room: String,
    },
    /// The room's full member list (sorted by user) after any change.
    PresenceChanged {
        room: String,
        members: Vec<Member>,
    },
    /// Who else is typing in the room (sorted by user) after any change.
    TypingChanged {
        room: String,
        users: Vec<TypingUser>,
    },
    /// The transport that last delivered a `welcome` changed: persist it and pass it back as
    /// [`super::Config::start_transport`] next time.
    TransportRemembered(TransportKind),
    /// The ladder stepped down to a lower transport, and why.
    Fallback(Fallback),
    /// The client stopped for good (not after an app `Close`); the state is now `Closed`.
    Error {
        reason: CloseReason,
    },
}

/// Why [`super::Client::publish`] refused to queue a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The bounded queue of unacknowledged publishes is full; nothing was dropped.
    QueueFull,
    /// The app has not subscribed to the room (the server requires it).
    NotSubscribed,
    /// Larger than the server's announced `max_frame_bytes`.
    TooLarge,
    /// The client is closed.
    Closed,
}

// `core` is also the name of this module, so the standard `fmt` is imported under another name.
use core::fmt as core_fmt;

impl core_fmt::Display for SendError {
    fn fmt(&self, f: &mut core_fmt::Formatter<'_>) -> core_fmt::Result {
        f.write_str(match self {
            Self::QueueFull => "send queue full",
            Self::NotSubscribed => "not subscribed to the room",
            Self::TooLarge => "payload larger than the server allows",
            Self::Closed => "client closed",
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl std::error::Error for SendError {}

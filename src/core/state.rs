//! Connection states: the public [`State`] the app sees, and the internal [`Phase`] whose variants
//! carry the transports they own, so "one primary transport and at most one probe" holds by
//! construction.

use alloc::string::String;

use rtlink_protocol::CloseCode;

use super::event::{TransportId, TransportKind};
use super::time::Instant;

/// The connection state shown to the app (carried by [`super::Event::StateChanged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Created, `Connect` not yet called.
    Idle,
    /// Fetching a token or opening a transport; `attempt` counts from 1 since the last stable
    /// connection.
    Connecting {
        transport: TransportKind,
        attempt: u32,
    },
    /// A session is open on `transport`.
    Open {
        transport: TransportKind,
        session: String,
    },
    /// Waiting before the next attempt.
    BackingOff { until: Instant, attempt: u32 },
    /// The browser is offline or the page is frozen: no attempts until it comes back.
    Offline,
    /// Stopped for good; the client ignores further input.
    Closed { reason: CloseReason },
}

/// Why the client stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The app called `Close`.
    ClientClosed,
    /// The server closed with a terminal code (normal, unsupported version, forbidden).
    Server { code: CloseCode, reason: String },
    /// Authentication failed again right after fetching a fresh token.
    Unauthorized,
    /// HTTP 403 on open: this origin or user is not allowed.
    Forbidden,
    /// The app's token provider failed terminally.
    TokenFailed,
    /// `max_attempts` consecutive attempts failed.
    GaveUp { attempts: u32 },
}

impl CloseReason {
    /// The stable, machine-readable code of the terminal error (the JS `RtlinkError.code`).
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::ClientClosed => "closed",
            Self::Server { code, .. } => match code.0 {
                4002 => "unsupported_version",
                4010 => "forbidden",
                4013 => "disconnected",
                _ => "closed",
            },
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TokenFailed => "token_failed",
            Self::GaveUp { .. } => "gave_up",
        }
    }
}

/// A transport the core asked the glue to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: TransportId,
    pub kind: TransportKind,
    /// The glue reported [`super::Input::TransportOpened`].
    pub opened: bool,
    /// At least one server frame arrived on it.
    pub got_frame: bool,
}

impl Slot {
    pub fn new(id: TransportId, kind: TransportKind) -> Self {
        Self {
            id,
            kind,
            opened: false,
            got_frame: false,
        }
    }
}

/// A background attempt to move an open session to a higher rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    AwaitingToken {
        kind: TransportKind,
    },
    /// `FetchTicket` (with `probe: true`) is out.
    AwaitingTicket {
        id: TransportId,
        kind: TransportKind,
    },
    /// The probe transport is opening; waiting for its `welcome` (the session stays on the
    /// primary meanwhile).
    Opening {
        slot: Slot,
    },
}

impl Probe {
    /// The transport id the glue holds for the probe, if any.
    pub fn id(&self) -> Option<TransportId> {
        match *self {
            Probe::Opening { slot } => Some(slot.id),
            Probe::AwaitingTicket { id, .. } => Some(id),
            Probe::AwaitingToken { .. } => None,
        }
    }
}

/// Where the connection is, named after what it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    /// `RequestToken` is out for the next primary attempt.
    AwaitingToken,
    /// `FetchTicket` is out for the primary transport `id` (its kind is decided when the ticket
    /// arrives: a held strike may step the ladder down first).
    AwaitingTicket {
        id: TransportId,
    },
    /// The primary transport is opening; waiting for `welcome`.
    AwaitingWelcome {
        slot: Slot,
    },
    Open {
        slot: Slot,
        probe: Option<Probe>,
    },
    BackingOff {
        until: Instant,
    },
    Offline,
    Closed {
        reason: CloseReason,
    },
}

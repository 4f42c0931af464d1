//! Connection states: the public [`State`] the app sees, and the internal [`Phase`] whose variants
//! carry the transports they own, so "one primary transport and at most one probe" holds by
//! construction.

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
    Connecting { transport: TransportKind, attempt: u32 },
    /// A session is open on `transport`.
    Open { transport: TransportKind, session: String },
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
        Self { id, kind, opened: false, got_frame: false }
    }
}

/// A background attempt to move an open session to a higher rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    AwaitingToken { kind: TransportKind },
    Opening { slot: Slot },
}

impl Probe {
    pub fn slot(&self) -> Option<Slot> {
        match *self {
            Probe::Opening { slot } => Some(slot),
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
    /// The primary transport is opening; waiting for `welcome`.
    AwaitingWelcome { slot: Slot },
    Open { slot: Slot, probe: Option<Probe> },
    BackingOff { until: Instant },
    Offline,
    Closed { reason: CloseReason },
}

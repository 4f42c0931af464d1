//! The three browser transports behind one small interface.
//!
//! Opening a transport has two steps, each asked for by the core: [`ticket::TicketFetch`] trades
//! the bearer token for a single-use ticket (`POST /v1/ticket`, because browsers cannot set
//! headers on WebSocket or EventSource; the body names the session to resume), then the
//! transport opens its connection with the ticket. It reports what happens through an
//! [`EventSink`], always from a browser callback and never from inside one of its own methods, so
//! the driver is never re-entered. Dropping a transport (or a ticket fetch) closes its
//! connection, aborts its requests and removes its listeners.
//!
//! Frames travel as JSON text both ways; [`crate::core::wire`] reads and writes them.

mod http;
mod long_poll;
mod sse;
mod status;
pub(crate) mod ticket;
mod upstream;
mod websocket;

use alloc::rc::Rc;
use alloc::string::String;

use crate::core::wire::DecodeError;
use crate::core::{ServerFrame, TransportKind};

pub(crate) use http::OpenFailure;

/// What a transport tells the driver.
pub(crate) enum TransportEvent {
    /// The connection is up (frames may follow).
    Opened,
    /// One server frame, or why its text is not one.
    Frame(Result<ServerFrame, DecodeError>),
    /// The connection ended after it had opened.
    Closed { code: Option<u16>, reason: String },
    /// The connection never opened.
    OpenFailed(OpenFailure),
}

pub(crate) type EventSink = Rc<dyn Fn(TransportEvent)>;

/// Where and how to connect.
pub(crate) struct OpenParams<'a> {
    /// Server base URL, e.g. `https://rt.example.com` (no trailing slash).
    pub base_url: &'a str,
    /// The single-use ticket from the ticket step.
    pub ticket: &'a str,
}

pub(crate) enum Transport {
    /// The ticket step, before the connection (held for its `Drop`, which aborts the request).
    #[allow(dead_code)]
    Ticket(ticket::TicketFetch),
    WebSocket(websocket::WebSocketTransport),
    Sse(sse::SseTransport),
    LongPoll(long_poll::LongPollTransport),
}

impl Transport {
    pub(crate) fn open(kind: TransportKind, params: OpenParams<'_>, sink: EventSink) -> Self {
        match kind {
            TransportKind::WebSocket => Self::WebSocket(websocket::WebSocketTransport::open(params, sink)),
            TransportKind::Sse => Self::Sse(sse::SseTransport::open(params, sink)),
            TransportKind::LongPoll => Self::LongPoll(long_poll::LongPollTransport::open(params, sink)),
        }
    }

    /// Sends one client frame (its JSON text). Frames are delivered in order.
    pub(crate) fn send(&self, frame: String) {
        match self {
            // The core sends nothing before the transport opened.
            Self::Ticket(_) => {}
            Self::WebSocket(t) => t.send(frame),
            Self::Sse(t) => t.send(frame),
            Self::LongPoll(t) => t.send(frame),
        }
    }
}

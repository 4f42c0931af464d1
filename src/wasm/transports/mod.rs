//! The three browser transports behind one small interface.
//!
//! Opening a transport has two steps, each asked for by the core: [`ticket::TicketFetch`] trades
//! the bearer token for a single-use ticket (`POST /v1/ticket`, because browsers cannot set
//! headers on WebSocket or EventSource; the body names the session to resume), then the
//! transport opens its connection with the ticket. It reports what happens through an
//! [`EventSink`], always from a browser callback and never from inside one of its own methods, so
//! the driver is never re-entered. Dropping a transport (or a ticket fetch) closes its
//! connection, aborts its requests and removes its listeners.

mod http;
mod long_poll;
mod sse;
mod status;
pub(crate) mod ticket;
mod upstream;
mod websocket;

use std::rc::Rc;

use wasm_bindgen::JsValue;

pub(crate) use http::OpenFailure;

/// What a transport tells the driver.
pub(crate) enum TransportEvent {
    /// The connection is up (frames may follow).
    Opened,
    /// One server frame, already parsed from JSON.
    Frame(JsValue),
    /// The connection ended after it had opened, or the server sent malformed data.
    Closed { code: Option<u16>, reason: String },
    /// The connection never opened.
    OpenFailed(OpenFailure),
}

pub(crate) type EventSink = Rc<dyn Fn(TransportEvent)>;

/// Where and how to connect.
pub(crate) struct OpenParams {
    /// Server base URL, e.g. `https://rt.example.com` (no trailing slash).
    pub base_url: String,
    /// The single-use ticket from the ticket step.
    pub ticket: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSocket,
    Sse,
    LongPoll,
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
    pub(crate) fn open(kind: Kind, params: OpenParams, sink: EventSink) -> Self {
        match kind {
            Kind::WebSocket => Self::WebSocket(websocket::WebSocketTransport::open(params, sink)),
            Kind::Sse => Self::Sse(sse::SseTransport::open(params, sink)),
            Kind::LongPoll => Self::LongPoll(long_poll::LongPollTransport::open(params, sink)),
        }
    }

    /// Sends one client frame (a JS object). Frames are delivered in order.
    pub(crate) fn send(&self, frame: JsValue) {
        match self {
            // The core sends nothing before the transport opened.
            Self::Ticket(_) => {}
            Self::WebSocket(t) => t.send(&frame),
            Self::Sse(t) => t.send(frame),
            Self::LongPoll(t) => t.send(frame),
        }
    }
}

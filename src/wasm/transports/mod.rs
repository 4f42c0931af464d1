//! The three browser transports behind one small interface.
//!
//! A transport is opened with a bearer token: it first trades the token for a single-use ticket
//! (`POST /v1/ticket`, because browsers cannot set headers on WebSocket or EventSource), then opens
//! its connection. It reports what happens through an [`EventSink`], always from a browser callback
//! and never from inside one of its own methods, so the driver is never re-entered. Dropping a
//! transport closes its connection, aborts its requests and removes its listeners.

mod http;
mod long_poll;
mod sse;
mod status;
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
    pub token: String,
    pub resume: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSocket,
    Sse,
    LongPoll,
}

pub(crate) enum Transport {
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
            Self::WebSocket(t) => t.send(&frame),
            Self::Sse(t) => t.send(frame),
            Self::LongPoll(t) => t.send(frame),
        }
    }
}

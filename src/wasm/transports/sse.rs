//! Server-Sent Events transport: an `EventSource` down, ordered POSTs up.
//!
//! The EventSource's own reconnect is never used: on the first error it is closed and the driver
//! decides (resume, backoff, or step down the ladder), so one policy governs every transport.

use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;

use wasm_bindgen::JsValue;
use web_sys::EventSource;

use super::http;
use super::status::Status;
use super::upstream::Upstream;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};
use crate::core::wire;
use crate::wasm::get;
use crate::wasm::listener::{soon, Listener};

pub(crate) struct SseTransport {
    inner: Rc<Inner>,
}

struct Inner {
    /// `None` when the constructor refused the URL (reported as a failure to open).
    es: Option<EventSource>,
    _listeners: Vec<Listener>,
    upstream: Upstream,
    status: Status,
}

impl SseTransport {
    pub(crate) fn open(params: OpenParams<'_>, sink: EventSink) -> Self {
        let url = http::transport_url(params.base_url, "/v1/sse", params.ticket);
        let inner = Rc::new_cyclic(|weak: &Weak<Inner>| {
            let upstream = Upstream::new(params.base_url, sink.clone());
            let status = Status::new(sink);
            let Ok(es) = EventSource::new(&url) else {
                // Reported from a callback like every other outcome (never from inside `open`).
                let weak = weak.clone();
                soon(move || {
                    if let Some(inner) = weak.upgrade() {
                        inner.status.fail(OpenFailure::Network("EventSource refused the URL".into()));
                    }
                });
                return Inner { es: None, _listeners: Vec::new(), upstream, status };
            };
            let target: &web_sys::EventTarget = es.as_ref();
            let on = |kind, f: fn(&Inner, JsValue)| {
                let weak = weak.clone();
                Listener::new(target, kind, move |e| {
                    if let Some(inner) = weak.upgrade() {
                        f(&inner, e);
                    }
                })
            };
            let listeners = alloc::vec![on("open", on_open), on("message", on_message), on("error", on_error)];
            Inner { es: Some(es), _listeners: listeners, upstream, status }
        });
        Self { inner }
    }

    pub(crate) fn send(&self, frame: String) {
        self.inner.upstream.send(frame);
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.inner.status.shut();
        if let Some(es) = &self.inner.es {
            es.close();
        }
    }
}

fn on_open(inner: &Inner, _: JsValue) {
    if !inner.status.opened.replace(true) {
        inner.status.report(TransportEvent::Opened);
    }
}

fn on_message(inner: &Inner, e: JsValue) {
    if inner.status.done.get() {
        return;
    }
    // "message" events are MessageEvents; `data` is read as a plain property (no typed getter).
    let Some(data) = get(&e, "data").as_string() else { return };
    match wire::decode(&data) {
        Ok(frame) => {
            if let Some(welcome) = http::welcome_info(&frame) {
                inner.upstream.set_session(welcome);
            }
            inner.status.report(TransportEvent::Frame(Ok(frame)));
        }
        Err(error) => {
            if let Some(es) = &inner.es {
                es.close();
            }
            inner.status.finish(TransportEvent::Frame(Err(error)));
        }
    }
}

fn on_error(inner: &Inner, _: JsValue) {
    if let Some(es) = &inner.es {
        es.close();
    }
    inner.status.finish(if inner.status.opened.get() {
        TransportEvent::Closed { code: None, reason: "event stream ended".into() }
    } else {
        TransportEvent::OpenFailed(OpenFailure::Network("event stream refused".into()))
    });
}

//! Server-Sent Events transport: an `EventSource` down, ordered POSTs up.
//!
//! The EventSource's own reconnect is never used: on the first error it is closed and the driver
//! decides (resume, backoff, or step down the ladder), so one policy governs every transport.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::JSON;
use web_sys::EventSource;

use super::http;
use super::upstream::Upstream;
use super::status::Status;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};
use crate::wasm::listener::Listener;

pub(crate) struct SseTransport {
    inner: Rc<Inner>,
}

struct Inner {
    es: RefCell<Option<EventSource>>,
    listeners: RefCell<Vec<Listener>>,
    upstream: Upstream,
    status: Status,
}

impl SseTransport {
    pub(crate) fn open(params: OpenParams, sink: EventSink) -> Self {
        let inner = Rc::new(Inner {
            es: RefCell::new(None),
            listeners: RefCell::new(Vec::new()),
            upstream: Upstream::new(&params.base_url, sink.clone()),
            status: Status::new(sink),
        });
        connect(&inner, &params);
        Self { inner }
    }

    pub(crate) fn send(&self, frame: wasm_bindgen::JsValue) {
        self.inner.upstream.send(frame);
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.inner.status.shut();
        self.inner.listeners.borrow_mut().clear();
        if let Some(es) = self.inner.es.borrow_mut().take() {
            es.close();
        }
    }
}

fn connect(inner: &Rc<Inner>, params: &OpenParams) {
    let url = http::transport_url(&params.base_url, "/v1/sse", &params.ticket);
    let es = match EventSource::new(&url) {
        Ok(es) => es,
        Err(_) => {
            // Reported from a callback like every other outcome (never from inside `open`).
            let weak = Rc::downgrade(inner);
            crate::wasm::listener::on_settle(&js_sys::Promise::resolve(&wasm_bindgen::JsValue::UNDEFINED), Box::new(move |_| {
                if let Some(inner) = weak.upgrade() {
                    inner.status.fail(OpenFailure::Network("EventSource refused the URL".into()));
                }
            }));
            return;
        }
    };
    let weak = Rc::downgrade(inner);
    let on_open = {
        let weak = weak.clone();
        move |_| {
            let Some(inner) = weak.upgrade() else { return };
            if !inner.status.opened.replace(true) {
                (inner.status.sink)(TransportEvent::Opened);
            }
        }
    };
    let on_message = {
        let weak = weak.clone();
        move |e: web_sys::Event| {
            let Some(inner) = weak.upgrade() else { return };
            if inner.status.done.get() {
                return;
            }
            // "message" events are MessageEvents; `data` is read as a plain property (no typed getter).
            let Some(data) = crate::wasm::get(&e, "data").as_string() else { return };
            match JSON::parse(&data) {
                Ok(frame) => {
                    if let Some(welcome) = http::welcome_info(&frame) {
                        inner.upstream.set_session(welcome);
                    }
                    (inner.status.sink)(TransportEvent::Frame(frame));
                }
                Err(_) => {
                    inner.status.done.set(true);
                    if let Some(es) = inner.es.borrow().as_ref() {
                        es.close();
                    }
                    (inner.status.sink)(TransportEvent::Closed { code: Some(4000), reason: "malformed frame from server".into() });
                }
            }
        }
    };
    let on_error = move |_| {
        let Some(inner) = weak.upgrade() else { return };
        if let Some(es) = inner.es.borrow().as_ref() {
            es.close();
        }
        if inner.status.done.replace(true) {
            return;
        }
        if inner.status.opened.get() {
            (inner.status.sink)(TransportEvent::Closed { code: None, reason: "event stream ended".into() });
        } else {
            (inner.status.sink)(TransportEvent::OpenFailed(OpenFailure::Network("event stream refused".into())));
        }
    };
    let target: &web_sys::EventTarget = es.as_ref();
    *inner.listeners.borrow_mut() = vec![
        Listener::new(target, "open", on_open),
        Listener::new(target, "message", on_message),
        Listener::new(target, "error", on_error),
    ];
    *inner.es.borrow_mut() = Some(es);
}

//! Client → server frames for SSE and long polling: ordered `POST /v1/send` batches.
//!
//! At most one POST is in flight, so frames reach the server in the order they were sent; frames
//! queued meanwhile go out together in the next batch. Frames sent before the session's resume
//! token is known (before `welcome`) wait for it.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Array, Object, JSON};
use wasm_bindgen::JsValue;
use web_sys::AbortController;

use super::http::{self, OpenFailure};
use crate::core::text::concat;
use super::{EventSink, TransportEvent};

pub(crate) struct Upstream {
    inner: Rc<Inner>,
}

struct Inner {
    url: String,
    session: RefCell<Option<String>>,
    queue: RefCell<Vec<JsValue>>,
    in_flight: Cell<bool>,
    failed: Cell<bool>,
    abort: Option<AbortController>,
    sink: EventSink,
}

impl Upstream {
    pub(crate) fn new(base_url: &str, sink: EventSink) -> Self {
        Self {
            inner: Rc::new(Inner {
                url: concat(&[base_url, "/v1/send"]),
                session: RefCell::new(None),
                queue: RefCell::new(Vec::new()),
                in_flight: Cell::new(false),
                failed: Cell::new(false),
                abort: AbortController::new().ok(),
                sink,
            }),
        }
    }

    pub(crate) fn set_session(&self, token: String) {
        *self.inner.session.borrow_mut() = Some(token);
        pump(&self.inner);
    }

    pub(crate) fn send(&self, frame: JsValue) {
        self.inner.queue.borrow_mut().push(frame);
        pump(&self.inner);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(a) = &self.inner.abort {
            a.abort();
        }
    }
}

fn pump(inner: &Rc<Inner>) {
    if inner.in_flight.get() || inner.failed.get() || inner.queue.borrow().is_empty() {
        return;
    }
    let Some(session) = inner.session.borrow().clone() else { return };
    let frames: Array = inner.queue.borrow_mut().drain(..).collect();
    let body = Object::new();
    crate::wasm::set(&body, "session", &session.into());
    crate::wasm::set(&body, "frames", &frames);
    let Ok(text) = JSON::stringify(&body) else { return };
    let text = String::from(text);
    inner.in_flight.set(true);
    let weak: Weak<Inner> = Rc::downgrade(inner);
    let signal = inner.abort.as_ref().map(super::status::signal);
    let url = inner.url.clone();
    http::fetch(&url, "POST", Some(("content-type", "text/plain")), Some(&text), signal.as_ref(), Box::new(move |result| {
        let failure = match result {
            Ok(reply) if reply.ok => None,
            Ok(reply) => Some(http::failure(&reply)),
            Err(f) => Some(f),
        };
        let Some(inner) = weak.upgrade() else { return };
        inner.in_flight.set(false);
        match failure {
            None => pump(&inner),
            Some(f) => {
                // A lost upstream means this transport is unusable; the core reconnects and resends
                // whatever was not acknowledged.
                inner.failed.set(true);
                let code = match f {
                    OpenFailure::SessionUnknown => Some(4007),
                    _ => None,
                };
                (inner.sink)(TransportEvent::Closed { code, reason: concat(&["upstream failed: ", &f.describe()]) });
            }
        }
    }));
}

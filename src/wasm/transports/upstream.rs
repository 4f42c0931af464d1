//! Client → server frames for SSE and long polling: ordered `POST /v1/send` batches.
//!
//! At most one POST is in flight, so frames reach the server in the order they were sent; frames
//! queued meanwhile go out in the next batches, each cut to the server's body limit
//! ([`crate::core::batch`]). Frames sent before the session's resume token is known (before
//! `welcome`) wait for it.

use alloc::boxed::Box;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use web_sys::AbortController;

use super::http::{self, OpenFailure, WelcomeInfo};
use super::{EventSink, TransportEvent};
use crate::core::batch::take_batch;
use crate::core::text::concat;

pub(crate) struct Upstream {
    inner: Rc<Inner>,
}

struct Inner {
    url: String,
    session: Cell<Option<WelcomeInfo>>,
    /// Encoded frames not yet posted, oldest first.
    queue: Cell<Vec<String>>,
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
                session: Cell::new(None),
                queue: Cell::new(Vec::new()),
                in_flight: Cell::new(false),
                failed: Cell::new(false),
                abort: AbortController::new().ok(),
                sink,
            }),
        }
    }

    pub(crate) fn set_session(&self, welcome: WelcomeInfo) {
        self.inner.session.set(Some(welcome));
        pump(&self.inner);
    }

    pub(crate) fn send(&self, frame: String) {
        let mut queue = self.inner.queue.take();
        queue.push(frame);
        self.inner.queue.set(queue);
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
    if inner.in_flight.get() || inner.failed.get() {
        return;
    }
    let Some(welcome) = inner.session.take() else { return };
    let mut queue = inner.queue.take();
    let body = take_batch(&welcome.token, &mut queue, welcome.max_batch_bytes);
    inner.queue.set(queue);
    inner.session.set(Some(welcome));
    let Some(body) = body else { return };
    inner.in_flight.set(true);
    let weak: Weak<Inner> = Rc::downgrade(inner);
    let signal = inner.abort.as_ref().map(super::status::signal);
    http::fetch(&inner.url, "POST", Some(("content-type", "text/plain")), Some(&body), signal.as_ref(), Box::new(move |result| {
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
                    OpenFailure::TooLarge => Some(4001),
                    _ => None,
                };
                (inner.sink)(TransportEvent::Closed { code, reason: concat(&["upstream failed: ", &f.describe()]) });
            }
        }
    }));
}

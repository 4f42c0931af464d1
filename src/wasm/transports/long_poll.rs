//! Long-polling transport: one `GET /v1/poll?ticket` that opens the session, then a loop of held
//! `POST /v1/poll` requests down (their `text/plain` JSON body carries the resume token: it never
//! appears in a URL, and a simple request needs no CORS preflight), ordered POSTs up.
//!
//! Each response carries a cursor; the next request sends it back so the server resends anything a
//! lost response carried. Dropping the transport aborts the held request and ends the loop.

use alloc::boxed::Box;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;

use wasm_bindgen::JsValue;

use super::http;
use super::status::Status;
use super::upstream::Upstream;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};
use crate::core::json::{self, Json};
use crate::core::text::{concat, push_dec, push_json_str};
use crate::core::wire;

pub(crate) struct LongPollTransport {
    inner: Rc<Inner>,
}

struct Inner {
    upstream: Upstream,
    status: Status,
}

impl LongPollTransport {
    pub(crate) fn open(params: OpenParams<'_>, sink: EventSink) -> Self {
        let inner = Rc::new(Inner { upstream: Upstream::new(params.base_url, sink.clone()), status: Status::new(sink) });
        if let Some(signal) = inner.status.signal() {
            start(Rc::downgrade(&inner), &params, signal);
        }
        Self { inner }
    }

    pub(crate) fn send(&self, frame: String) {
        self.inner.upstream.send(frame);
    }
}

impl Drop for LongPollTransport {
    fn drop(&mut self) {
        self.inner.status.shut();
    }
}

/// What one poll answers: the batch's cursor and frames, or the failure.
type PollResult = Result<(u64, Vec<Json>), OpenFailure>;

/// One poll: the opening `GET` (no body) or a `POST` with the session and cursor.
fn poll(url: &str, body: Option<&str>, signal: &JsValue, done: Box<dyn FnOnce(PollResult)>) {
    let (method, header) = match body {
        Some(_) => ("POST", Some(("content-type", "text/plain"))),
        None => ("GET", None),
    };
    http::fetch(url, method, header, body, Some(signal), Box::new(move |reply| {
        done(reply.and_then(|reply| {
            if !reply.ok {
                return Err(http::failure(&reply));
            }
            match json::parse(&reply.body) {
                Some(Json::Obj(members)) => {
                    let mut batch = (0, Vec::new());
                    for (key, value) in members {
                        match (key.as_str(), value) {
                            ("cursor", v) => batch.0 = v.as_u64().unwrap_or(0),
                            ("frames", Json::Arr(frames)) => batch.1 = frames,
                            _ => {}
                        }
                    }
                    Ok(batch)
                }
                _ => Err(OpenFailure::Network("poll: malformed batch".into())),
            }
        }))
    }));
}

/// Delivers a batch; returns false when the transport finished or was dropped meanwhile. The
/// session's resume token, when a `welcome` carries it, goes to `session`.
fn deliver(weak: &Weak<Inner>, frames: &[Json], session: &mut Option<String>) -> bool {
    for value in frames {
        let Some(inner) = weak.upgrade() else { return false };
        if inner.status.done.get() {
            return false;
        }
        match wire::decode_value(value) {
            Ok(frame) => {
                if let Some(welcome) = http::welcome_info(&frame) {
                    *session = Some(welcome.token.clone());
                    inner.upstream.set_session(welcome);
                }
                inner.status.report(TransportEvent::Frame(Ok(frame)));
            }
            Err(error) => {
                inner.status.finish(TransportEvent::Frame(Err(error)));
                return false;
            }
        }
    }
    weak.upgrade().is_some_and(|i| !i.status.done.get())
}

/// The first request: the poll that opens the session with the ticket (its batch carries
/// `welcome`).
fn start(weak: Weak<Inner>, params: &OpenParams<'_>, signal: JsValue) {
    let url = http::transport_url(params.base_url, "/v1/poll", params.ticket);
    let base_url = String::from(params.base_url);
    poll(&url, None, &signal.clone(), Box::new(move |first| match first {
        Ok((cursor, frames)) => opened(weak, &base_url, signal, cursor, &frames),
        Err(f) => {
            if let Some(inner) = weak.upgrade() {
                inner.status.fail(f);
            }
        }
    }));
}

fn opened(weak: Weak<Inner>, base_url: &str, signal: JsValue, cursor: u64, frames: &[Json]) {
    match weak.upgrade() {
        Some(inner) if !inner.status.done.get() => inner.status.report(TransportEvent::Opened),
        _ => return,
    }
    let mut session = None;
    if !deliver(&weak, frames, &mut session) {
        return;
    }
    let Some(token) = session else {
        if let Some(inner) = weak.upgrade() {
            inner.status.finish(TransportEvent::Closed { code: Some(4012), reason: "poll opened without welcome".into() });
        }
        return;
    };
    let mut body_start = String::from("{\"session\":");
    push_json_str(&mut body_start, &token);
    body_start.push_str(",\"cursor\":");
    let url = concat(&[base_url, "/v1/poll"]);
    next(weak, Rc::new(Continuation { url, body_start }), signal, cursor);
}

/// The fixed parts of every poll after the first.
struct Continuation {
    url: String,
    /// `{"session":"<token>","cursor":` (the cursor and `}` follow).
    body_start: String,
}

/// The held request after the first: one at a time, each sending back the last cursor.
fn next(weak: Weak<Inner>, cont: Rc<Continuation>, signal: JsValue, cursor: u64) {
    let mut body = cont.body_start.clone();
    push_dec(&mut body, cursor);
    body.push('}');
    poll(&cont.url.clone(), Some(&body), &signal.clone(), Box::new(move |result| {
        let Some(inner) = weak.upgrade() else { return };
        if inner.status.done.get() {
            return;
        }
        match result {
            Ok((cursor, frames)) => {
                drop(inner);
                let mut ignored = None;
                if deliver(&weak, &frames, &mut ignored) {
                    next(weak, cont, signal, cursor);
                }
            }
            Err(f) => {
                let code = if f == OpenFailure::SessionUnknown { Some(4007) } else { None };
                inner.status.finish(TransportEvent::Closed { code, reason: concat(&["poll failed: ", &f.describe()]) });
            }
        }
    }));
}

//! Long-polling transport: a loop of held `GET /v1/poll` requests down, ordered POSTs up.
//!
//! Each response carries a cursor; the next request sends it back so the server resends anything a
//! lost response carried. Dropping the transport aborts the held request and ends the loop.

use std::cell::Cell;
use std::rc::{Rc, Weak};

use js_sys::{Array, Reflect, JSON};
use wasm_bindgen::JsValue;
use web_sys::{AbortController, AbortSignal};

use super::http;
use super::upstream::Upstream;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};

pub(crate) struct LongPollTransport {
    inner: Rc<Inner>,
}

struct Inner {
    upstream: Upstream,
    done: Cell<bool>,
    abort: Option<AbortController>,
    sink: EventSink,
}

impl LongPollTransport {
    pub(crate) fn open(params: OpenParams, sink: EventSink) -> Self {
        let inner = Rc::new(Inner {
            upstream: Upstream::new(&params.base_url, sink.clone()),
            done: Cell::new(false),
            abort: AbortController::new().ok(),
            sink,
        });
        let weak = Rc::downgrade(&inner);
        if let Some(signal) = inner.abort.as_ref().map(|a| a.signal()) {
            wasm_bindgen_futures::spawn_local(run(weak, params, signal));
        }
        Self { inner }
    }

    pub(crate) fn send(&self, frame: JsValue) {
        self.inner.upstream.send(frame);
    }
}

impl Drop for LongPollTransport {
    fn drop(&mut self) {
        self.inner.done.set(true);
        if let Some(a) = &self.inner.abort {
            a.abort();
        }
    }
}

/// One poll: the batch's cursor and frames, or the failure.
async fn poll(url: &str, signal: &AbortSignal) -> Result<(u64, Array), OpenFailure> {
    let resp = http::fetch(url, "GET", &[], None, Some(signal)).await?;
    if !resp.ok() {
        return Err(http::failure(&resp).await);
    }
    let body = http::text(&resp).await?;
    let batch = JSON::parse(&body).map_err(|_| OpenFailure::Network("poll: malformed batch".into()))?;
    let cursor = Reflect::get(&batch, &"cursor".into()).ok().and_then(|c| c.as_f64()).unwrap_or(0.0) as u64;
    let frames: Array = Reflect::get(&batch, &"frames".into()).map(|v| Array::from(&v)).unwrap_or_default();
    Ok((cursor, frames))
}

/// Delivers a batch; returns false when the transport was dropped meanwhile.
fn deliver(weak: &Weak<Inner>, frames: &Array, session: &mut Option<String>) -> bool {
    for frame in frames.iter() {
        let Some(inner) = weak.upgrade() else { return false };
        if inner.done.get() {
            return false;
        }
        if let Some(token) = http::welcome_token(&frame) {
            inner.upstream.set_session(token.clone());
            *session = Some(token);
        }
        (inner.sink)(TransportEvent::Frame(frame));
    }
    weak.upgrade().is_some_and(|i| !i.done.get())
}

async fn run(weak: Weak<Inner>, params: OpenParams, signal: AbortSignal) {
    let first = async {
        let ticket = http::ticket(&params.base_url, &params.token, &signal).await?;
        let url = http::transport_url(&params.base_url, "/v1/poll", &ticket, params.resume.as_deref());
        poll(&url, &signal).await
    };
    let (mut cursor, frames) = match first.await {
        Ok(batch) => batch,
        Err(f) => {
            if let Some(inner) = weak.upgrade() {
                if !inner.done.replace(true) {
                    (inner.sink)(TransportEvent::OpenFailed(f));
                }
            }
            return;
        }
    };
    match weak.upgrade() {
        Some(inner) if !inner.done.get() => (inner.sink)(TransportEvent::Opened),
        _ => return,
    }
    let mut session = None;
    if !deliver(&weak, &frames, &mut session) {
        return;
    }
    let Some(token) = session else {
        if let Some(inner) = weak.upgrade() {
            inner.done.set(true);
            (inner.sink)(TransportEvent::Closed { code: Some(4012), reason: "poll opened without welcome".into() });
        }
        return;
    };
    let base = format!("{}/v1/poll?session={}&cursor=", params.base_url, http::enc(&token));
    loop {
        let result = poll(&format!("{base}{cursor}"), &signal).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.done.get() {
            return;
        }
        match result {
            Ok((next, frames)) => {
                drop(inner);
                cursor = next;
                let mut ignored = None;
                if !deliver(&weak, &frames, &mut ignored) {
                    return;
                }
            }
            Err(f) => {
                inner.done.set(true);
                let code = if f == OpenFailure::SessionUnknown { Some(4007) } else { None };
                (inner.sink)(TransportEvent::Closed { code, reason: format!("poll failed: {}", f.describe()) });
                return;
            }
        }
    }
}

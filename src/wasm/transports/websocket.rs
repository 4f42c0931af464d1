//! WebSocket transport: one JSON frame per text message. The core sends `hello` after `Opened`.

use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use wasm_bindgen::JsValue;
use web_sys::WebSocket;

use super::http;
use super::status::Status;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};
use crate::core::text::{concat, dec};
use crate::core::wire;
use crate::wasm::get;
use crate::wasm::listener::{soon, Listener};

pub(crate) struct WebSocketTransport {
    inner: Rc<Inner>,
}

struct Inner {
    /// `None` when the constructor refused the URL (reported as a failure to open).
    ws: Option<WebSocket>,
    _listeners: Vec<Listener>,
    /// Frames sent before the socket opened, flushed on open.
    pending: Cell<Vec<String>>,
    status: Status,
}

impl WebSocketTransport {
    pub(crate) fn open(params: OpenParams<'_>, sink: EventSink) -> Self {
        let url = ws_url(params.base_url, params.ticket);
        let inner = Rc::new_cyclic(|weak: &Weak<Inner>| {
            let status = Status::new(sink);
            let Ok(ws) = WebSocket::new(&url) else {
                // Reported from a callback like every other outcome (never from inside `open`).
                let weak = weak.clone();
                soon(move || {
                    if let Some(inner) = weak.upgrade() {
                        inner.status.fail(OpenFailure::Network("WebSocket constructor refused the URL".into()));
                    }
                });
                return Inner { ws: None, _listeners: Vec::new(), pending: Cell::default(), status };
            };
            let target: &web_sys::EventTarget = ws.as_ref();
            let on = |kind, f: fn(&Inner, JsValue)| {
                let weak = weak.clone();
                Listener::new(target, kind, move |e| {
                    if let Some(inner) = weak.upgrade() {
                        f(&inner, e);
                    }
                })
            };
            let listeners = alloc::vec![on("open", on_open), on("message", on_message), on("close", on_close)];
            Inner { ws: Some(ws), _listeners: listeners, pending: Cell::default(), status }
        });
        Self { inner }
    }

    pub(crate) fn send(&self, frame: String) {
        match &self.inner.ws {
            Some(ws) if self.inner.status.opened.get() => {
                let _ = ws.send_with_str(&frame);
            }
            _ => {
                let mut pending = self.inner.pending.take();
                pending.push(frame);
                self.inner.pending.set(pending);
            }
        }
    }
}

impl Drop for WebSocketTransport {
    fn drop(&mut self) {
        self.inner.status.shut();
        if let Some(ws) = &self.inner.ws {
            let _ = ws.close_with_code_and_reason(1000, "client closed");
        }
    }
}

fn ws_url(base: &str, ticket: &str) -> String {
    let (scheme, rest) = if let Some(rest) = base.strip_prefix("https://") {
        ("wss://", rest)
    } else if let Some(rest) = base.strip_prefix("http://") {
        ("ws://", rest)
    } else {
        ("", base)
    };
    concat(&[scheme, rest, "/v1/ws?ticket=", &http::enc(ticket)])
}

fn on_open(inner: &Inner, _: JsValue) {
    inner.status.opened.set(true);
    if let Some(ws) = &inner.ws {
        for text in inner.pending.take() {
            let _ = ws.send_with_str(&text);
        }
    }
    inner.status.report(TransportEvent::Opened);
}

fn on_message(inner: &Inner, e: JsValue) {
    if inner.status.done.get() {
        return;
    }
    // "message" events are MessageEvents; `data` is read as a plain property (no typed getter).
    let Some(text) = get(&e, "data").as_string() else { return };
    match wire::decode(&text) {
        Ok(frame) => inner.status.report(TransportEvent::Frame(Ok(frame))),
        Err(error) => {
            if let Some(ws) = &inner.ws {
                let _ = ws.close_with_code_and_reason(4000, "malformed frame from server");
            }
            inner.status.finish(TransportEvent::Frame(Err(error)));
        }
    }
}

fn on_close(inner: &Inner, e: JsValue) {
    // "close" events are CloseEvents (codes 1000-4999); 0 means a field-less synthetic event.
    let (code, reason) = match get(&e, "code").as_f64().unwrap_or(0.0) as u16 {
        0 => (1006, String::new()),
        code => (code, get(&e, "reason").as_string().unwrap_or_default()),
    };
    inner.status.finish(if inner.status.opened.get() {
        TransportEvent::Closed { code: Some(code), reason }
    } else {
        TransportEvent::OpenFailed(OpenFailure::Network(concat(&["WebSocket closed before open (", &dec(code.into()), ")"])))
    });
}

//! WebSocket transport: one JSON frame per text message. The core sends `hello` after `Opened`.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::JSON;
use wasm_bindgen::JsValue;
use web_sys::WebSocket;

use super::http;
use crate::core::text::{concat, dec};
use super::status::Status;
use super::{EventSink, OpenFailure, OpenParams, TransportEvent};
use crate::wasm::listener::Listener;

pub(crate) struct WebSocketTransport {
    inner: Rc<Inner>,
}

struct Inner {
    ws: RefCell<Option<WebSocket>>,
    listeners: RefCell<Vec<Listener>>,
    /// Frames sent before the socket opened, flushed on open.
    pending: RefCell<Vec<String>>,
    status: Status,
}

impl WebSocketTransport {
    pub(crate) fn open(params: OpenParams, sink: EventSink) -> Self {
        let inner = Rc::new(Inner {
            ws: RefCell::new(None),
            listeners: RefCell::new(Vec::new()),
            pending: RefCell::new(Vec::new()),
            status: Status::new(sink),
        });
        connect(&inner, &params);
        Self { inner }
    }

    pub(crate) fn send(&self, frame: &JsValue) {
        let Ok(text) = JSON::stringify(frame) else { return };
        let text = String::from(text);
        if self.inner.status.opened.get() {
            if let Some(ws) = self.inner.ws.borrow().as_ref() {
                let _ = ws.send_with_str(&text);
            }
        } else {
            self.inner.pending.borrow_mut().push(text);
        }
    }
}

impl Drop for WebSocketTransport {
    fn drop(&mut self) {
        self.inner.status.shut();
        self.inner.listeners.borrow_mut().clear();
        if let Some(ws) = self.inner.ws.borrow_mut().take() {
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

fn connect(inner: &Rc<Inner>, params: &OpenParams) {
    let ws = match WebSocket::new(&ws_url(&params.base_url, &params.ticket)) {
        Ok(ws) => ws,
        Err(_) => {
            // Reported from a callback like every other outcome (never from inside `open`).
            let weak = Rc::downgrade(inner);
            crate::wasm::listener::on_settle(&js_sys::Promise::resolve(&JsValue::UNDEFINED), Box::new(move |_| {
                if let Some(inner) = weak.upgrade() {
                    inner.status.fail(OpenFailure::Network("WebSocket constructor refused the URL".into()));
                }
            }));
            return;
        }
    };
    let weak = Rc::downgrade(inner);
    let on_open = {
        let weak: Weak<Inner> = weak.clone();
        move |_| {
            let Some(inner) = weak.upgrade() else { return };
            inner.status.opened.set(true);
            if let Some(ws) = inner.ws.borrow().as_ref() {
                for text in inner.pending.borrow_mut().drain(..) {
                    let _ = ws.send_with_str(&text);
                }
            }
            (inner.status.sink)(TransportEvent::Opened);
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
            let Some(text) = crate::wasm::get(&e, "data").as_string() else { return };
            match JSON::parse(&text) {
                Ok(frame) => (inner.status.sink)(TransportEvent::Frame(frame)),
                Err(_) => {
                    inner.status.done.set(true);
                    if let Some(ws) = inner.ws.borrow().as_ref() {
                        let _ = ws.close_with_code_and_reason(4000, "malformed frame from server");
                    }
                    (inner.status.sink)(TransportEvent::Closed { code: Some(4000), reason: "malformed frame from server".into() });
                }
            }
        }
    };
    let on_close = move |e: web_sys::Event| {
        let Some(inner) = weak.upgrade() else { return };
        if inner.status.done.replace(true) {
            return;
        }
        // "close" events are CloseEvents (codes 1000-4999); 0 means a field-less synthetic event.
        let (code, reason) = match crate::wasm::get(&e, "code").as_f64().unwrap_or(0.0) as u16 {
            0 => (1006, String::new()),
            code => (code, crate::wasm::get(&e, "reason").as_string().unwrap_or_default()),
        };
        if inner.status.opened.get() {
            (inner.status.sink)(TransportEvent::Closed { code: Some(code), reason });
        } else {
            (inner.status.sink)(TransportEvent::OpenFailed(OpenFailure::Network(concat(&["WebSocket closed before open (", &dec(code.into()), ")"]))));
        }
    };
    let target: &web_sys::EventTarget = ws.as_ref();
    let listeners = vec![
        Listener::new(target, "open", on_open),
        Listener::new(target, "message", on_message),
        Listener::new(target, "close", on_close),
    ];
    *inner.listeners.borrow_mut() = listeners;
    *inner.ws.borrow_mut() = Some(ws);
}

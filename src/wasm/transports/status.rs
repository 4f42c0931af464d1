//! What every transport tracks the same way: whether it opened, whether it is finished, the abort
//! signal carried by all its requests, and the sink it reports through.

use core::cell::Cell;

use wasm_bindgen::JsValue;
use web_sys::AbortController;

use super::{EventSink, OpenFailure, TransportEvent};

/// `controller.signal`, read as a plain property (no typed getter import).
pub(crate) fn signal(controller: &AbortController) -> JsValue {
    crate::wasm::get(controller, "signal")
}

pub(crate) struct Status {
    /// The connection came up (reported `Opened`).
    pub opened: Cell<bool>,
    /// Nothing more is reported: it failed, closed, or the transport was dropped.
    pub done: Cell<bool>,
    abort: Option<AbortController>,
    pub sink: EventSink,
}

impl Status {
    pub(crate) fn new(sink: EventSink) -> Self {
        Self { opened: Cell::new(false), done: Cell::new(false), abort: AbortController::new().ok(), sink }
    }

    pub(crate) fn signal(&self) -> Option<JsValue> {
        self.abort.as_ref().map(signal)
    }

    /// Reports an event unless the transport already finished.
    pub(crate) fn report(&self, event: TransportEvent) {
        if !self.done.get() {
            (self.sink)(event);
        }
    }

    /// Reports the end (a close or a failure to open), once; nothing is reported after it.
    pub(crate) fn finish(&self, event: TransportEvent) {
        if !self.done.replace(true) {
            (self.sink)(event);
        }
    }

    /// Reports that the transport could not open, unless it already finished.
    pub(crate) fn fail(&self, f: OpenFailure) {
        self.finish(TransportEvent::OpenFailed(f));
    }

    /// The transport is dropped: report nothing more, abort every request in flight.
    pub(crate) fn shut(&self) {
        self.done.set(true);
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

//! The driver's one timer: `setTimeout` with a callback it owns, cancelled on drop.
//!
//! The shape of gloo-timers' `Timeout` (own the closure, `clearTimeout` in `Drop`, `#[must_use]`),
//! written here because gloo-timers builds wasm-bindgen and js-sys with their `std` feature,
//! and a module that links std carries std's formatting panic handler (see [`super::panic`]).
//! Measured: the same size as gloo-timers' `Timeout` in this module.

use wasm_bindgen::prelude::*;

use super::listener::{callback, Callback, LiveGuard};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &JsValue, ms: u32) -> JsValue;

    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// A pending `setTimeout`; dropping it cancels the call.
#[must_use = "a Timeout is cancelled when dropped"]
pub(crate) struct Timeout {
    id: JsValue,
    _callback: Callback,
    _live: LiveGuard,
}

impl Timeout {
    /// Calls `f` once after `ms` milliseconds, unless dropped first.
    pub(crate) fn new(ms: u32, f: impl FnOnce() + 'static) -> Self {
        let mut f = Some(f);
        let cb = callback(move |_| {
            if let Some(f) = f.take() {
                f();
            }
        });
        Self { id: set_timeout(cb.as_ref(), ms), _callback: cb, _live: LiveGuard::new() }
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

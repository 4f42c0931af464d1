//! The browser glue: runs the sans-IO core with real transports and one timer, behind a compact
//! boundary to the hand-written JS façade (`js/rtlink.js`), which owns the public API
//! (`RealtimeClient`, `Room`, `Presence`, `Typing`), the app's listeners and the event objects.
//!
//! The boundary, both ways:
//! - In: one [`Driver`] per client, and its one method [`Driver::input`]: an operation code with
//!   a room name, a text and a number ([`driver::op`]).
//! - Out: one callback, the façade's [`Sink`], called once per record with an event code, four
//!   strings and two numbers ([`driver::record`]). Records are reported after the driver's
//!   borrow is released, so app listeners may call back in.
//!
//! Ownership is the whole design: a driver owns the core, its transports and its one timer;
//! dropping any of them removes what it added. No closure is leaked with `forget`. Nothing here
//! assumes a `window`: timers, `fetch`, `performance` and the transports' constructors are
//! taken from the global scope, which a page and a worker both have.

mod driver;
mod listener;
mod panic;
mod timer;
mod transports;

pub use driver::Driver;

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;

    /// The façade's side of a client: `sink.r(code, a, b, c, d, x, y)` per record.
    pub type Sink;

    #[wasm_bindgen(method, js_name = r)]
    fn record(this: &Sink, code: u32, a: &str, b: &str, c: &str, d: &str, x: f64, y: f64);
}

/// `v[key]`, undefined if that throws. Plain property reads go through this one `Reflect`
/// import rather than a typed web-sys getter per property: every distinct import costs glue in
/// the JS file and a shim in the module.
#[inline(never)]
pub(crate) fn get(v: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(v, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Live DOM listeners and timers of every client in the
/// module; the façade adds its own page listeners for `liveListeners()`.
#[wasm_bindgen]
pub fn live() -> u32 {
    listener::live_listeners()
}

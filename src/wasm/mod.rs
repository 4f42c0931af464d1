//! The browser glue: runs the sans-IO core with real transports, one timer and the page's
//! lifecycle events, and exposes the typed JS API (`RealtimeClient`, `Room`, `Presence`, `Typing`).
//!
//! Ownership is the whole design: a [`driver::Driver`] owns the core, its transports, its one timer
//! and its page listeners; dropping any of them removes what it added. No closure is leaked with `forget`.

mod api;
mod codec;
mod driver;
mod emitter;
mod error;
mod lifecycle;
pub mod listener;
mod options;
mod transports;
mod types;

pub use api::{live_listeners, Presence, RealtimeClient, Room, Typing};

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// `globalThis.window`: one import, where `web_sys::window()` probes four globals and an
    /// `instanceof Window`. Absent (a worker) reads as `None`, as with `web_sys::window()`.
    #[wasm_bindgen(thread_local_v2, js_namespace = globalThis, js_name = window)]
    static WINDOW: Option<web_sys::Window>;
}

/// `v[key]`, undefined if that throws. Plain property reads and writes go through these two (one
/// `Reflect` import each) rather than a typed web-sys getter or setter per property: every
/// distinct import costs glue in the JS file and a shim in the module.
#[inline(never)]
pub(crate) fn get(v: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(v, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `o[key] = value`; a failure (a frozen object) is ignored.
#[inline(never)]
pub(crate) fn set(o: &JsValue, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(o, &JsValue::from_str(key), value);
}

/// A new plain object.
pub(crate) fn new_object() -> JsValue {
    js_sys::Object::new().into()
}

/// `o[key] = value` for a string value. This and [`set_num`] make and drop the value inside, so a
/// caller building an object is one call per field.
#[inline(never)]
pub(crate) fn set_str(o: &JsValue, key: &str, value: &str) {
    set(o, key, &JsValue::from_str(value));
}

/// `o[key] = value` for a number.
#[inline(never)]
pub(crate) fn set_num(o: &JsValue, key: &str, value: f64) {
    set(o, key, &JsValue::from_f64(value));
}

/// The page's window, `None` outside a page.
pub(crate) fn window() -> Option<web_sys::Window> {
    WINDOW.with(Clone::clone)
}

/// The wasm allocator: lol_alloc's free list is a few hundred bytes of code where the default
/// (dlmalloc) is about 8 KB. The spin lock is uncontended (wasm32 here is single-threaded) and
/// keeps the crate free of `unsafe`.
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());

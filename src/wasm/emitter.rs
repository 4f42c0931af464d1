//! The listener registry behind every `on(event, listener)`: a small JS class
//! (`js/rtlink_error.js`), so the unsubscribe function handed to the app is a plain JS closure the
//! garbage collector owns. Emitting happens after the driver's borrow is released, because a
//! listener may call back into the client.

use js_sys::Function;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/rtlink_error.js")]
extern "C" {
    pub(crate) type Listeners;

    #[wasm_bindgen(constructor)]
    pub(crate) fn new() -> Listeners;

    /// Registers `listener`; returns the unsubscribe function.
    #[wasm_bindgen(method)]
    pub(crate) fn add(this: &Listeners, scope: &str, event: &str, listener: &Function) -> Function;

    #[wasm_bindgen(method)]
    pub(crate) fn emit(this: &Listeners, scope: &str, event: &str, value: &JsValue);

    #[wasm_bindgen(method)]
    pub(crate) fn clear(this: &Listeners);

    #[wasm_bindgen(method, getter)]
    pub(crate) fn size(this: &Listeners) -> u32;
}

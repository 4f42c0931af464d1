//! `RtlinkError`: the one JS error type (a class extending `Error` with a stable `code`).

use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/rtlink_error.js")]
extern "C" {
    #[wasm_bindgen(js_name = RtlinkError)]
    type JsRtlinkError;

    #[wasm_bindgen(constructor, js_class = "RtlinkError")]
    fn new(code: &str, message: &str) -> JsRtlinkError;
}

/// A JS `RtlinkError` with `code` and `message`.
pub(crate) fn rtlink_error(code: &str, message: &str) -> JsValue {
    JsRtlinkError::new(code, message).into()
}

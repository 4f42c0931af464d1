//! The wasm boundary: the sans-IO core behind four plain exports and one import, for the
//! hand-written JS façade (`js/rtlink.js`), which owns the public API, the app's listeners, the
//! transports (WebSocket, EventSource, `fetch`) and the one timer.
//!
//! The module is pure compute: no wasm-bindgen, web-sys or js-sys. Measured when the transports
//! moved to JS (README, "Size and speed"): wasm-bindgen's JS loader alone was 2.95 KB gzip, its
//! shims in the module 3.1 KB, the Rust transports 3.8 KB and their closures most of the
//! "runtime" area; the same transports in JS cost about 1.5 KB gzip.
//!
//! The boundary, both ways (js/rtlink.js has the same tables):
//! - In: [`rt_new`] makes a driver (one per client) and returns its handle; [`rt_buf`] sizes the
//!   driver's input buffer, where the façade writes the UTF-8 of the next input's strings, each
//!   followed by a 0xFF byte; [`rt_input`] feeds one operation ([`driver::op`]) with those strings,
//!   two numbers and `now` (`performance.now()`); [`rt_free`] drops the driver.
//! - Out: the import `rt.r(code, a, b, c, d, x, y)`, each string a pointer and a length into
//!   this module's memory, once per record ([`driver::record`]): API events, and what the façade
//!   must do (fetch a ticket, open, send on or close a transport, arm the timer).
//!
//! Re-entrancy: `r` only copies the record into a queue; the façade handles the queue after the
//! export returned, so nothing calls into the module while it runs.
//!
//! This is the crate's only `unsafe` code: the exports and the import are `extern "C"`, and a
//! handle is a `Box<Driver>` turned into a pointer. The façade gets each handle from `rt_new`,
//! passes it back unchanged, never calls in while a call is running, and frees it once.
#![allow(unsafe_code)]

mod driver;
mod panic;

use crate::core::wire::Fields;
use driver::Driver;

#[link(wasm_import_module = "rt")]
extern "C" {
    #[link_name = "r"]
    #[allow(clippy::too_many_arguments)]
    fn record_import(
        code: u32,
        a: *const u8,
        a_len: usize,
        b: *const u8,
        b_len: usize,
        c: *const u8,
        c_len: usize,
        d: *const u8,
        d_len: usize,
        x: f64,
        y: f64,
    );
}

/// Reports one record to the façade (see [`driver::record`]).
#[inline(never)]
fn record(code: u32, a: &str, b: &str, c: &str, d: &str, x: f64, y: f64) {
    // SAFETY: the import only reads the four ranges, which are valid for the call.
    unsafe {
        record_import(
            code,
            a.as_ptr(),
            a.len(),
            b.as_ptr(),
            b.len(),
            c.as_ptr(),
            c.len(),
            d.as_ptr(),
            d.len(),
            x,
            y,
        )
    }
}

/// A new driver; see [`Driver::new`] for the arguments. Returns its handle.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn rt_new(
    ladder: u32,
    start: u32,
    base_ms: f64,
    cap_ms: f64,
    max_attempts: f64,
    grace_ms: f64,
    probe_ms: f64,
    endpoints: u32,
    seed_hi: u32,
    seed_lo: u32,
    now: f64,
) -> *mut Driver {
    let d = Driver::new(
        ladder,
        start,
        base_ms,
        cap_ms,
        max_attempts,
        grace_ms,
        probe_ms,
        endpoints,
        seed_hi,
        seed_lo,
        now,
    );
    alloc::boxed::Box::into_raw(alloc::boxed::Box::new(d))
}

/// Makes the driver's input buffer at least `len` bytes long and returns where it starts; the
/// façade writes the next input's strings there.
///
/// # Safety
/// `d` is a live handle from [`rt_new`] and no other export is running.
#[no_mangle]
pub unsafe extern "C" fn rt_buf(d: *mut Driver, len: usize) -> *mut u8 {
    let buf = &mut (*d).buf;
    // Zeroed only where it grows: the façade sizes it for the worst case of UTF-8 (3 bytes a
    // UTF-16 unit) and `rt_input` reads only what was written.
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf.as_mut_ptr()
}

/// One operation ([`driver::op`]) with the first `len` bytes of the input buffer: its strings,
/// each followed by a 0xFF byte (a byte UTF-8 never uses). Returns the send id for `PUBLISH`
/// (negative: refused), else 0.
///
/// # Safety
/// `d` is a live handle from [`rt_new`] and no other export is running.
#[no_mangle]
pub unsafe extern "C" fn rt_input(
    d: *mut Driver,
    op: u32,
    len: usize,
    n: f64,
    m: f64,
    now: f64,
) -> f64 {
    let d = &mut *d;
    let buf = core::mem::take(&mut d.buf);
    // The façade wrote `len` bytes into the buffer it sized to that with `rt_buf` (or passes 0):
    // `TextEncoder` output (UTF-8) between the separators. (Checking again would add `from_utf8`
    // and its panic paths to the module.)
    let strings = buf
        .get_unchecked(..len)
        .split(|b| *b == 0xff)
        .map(|s| core::str::from_utf8_unchecked(s));
    let result = d.input(op, &mut Fields(strings), n, m, now);
    d.buf = buf;
    result
}

/// Drops the driver.
///
/// # Safety
/// `d` is a live handle from [`rt_new`], not used again, and no other export is running.
#[no_mangle]
pub unsafe extern "C" fn rt_free(d: *mut Driver) {
    drop(alloc::boxed::Box::from_raw(d));
}

//! An event listener that removes itself when dropped, and promise reactions that free
//! themselves once the promise settles.
//!
//! Every DOM listener the glue adds goes through [`Listener`], so dropping a transport or a client
//! removes exactly what it added, and [`live_listeners`] can prove it: no closure is leaked with
//! `forget`, so nothing leaks per reconnect.

use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, Ordering};

use js_sys::Promise;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::EventTarget;

/// Live listeners and timers (all clients). wasm32 here has one thread; the
/// atomic is only a `static` without `unsafe`.
static LIVE: AtomicU32 = AtomicU32::new(0);

/// How many [`Listener`]s and timers exist right now.
pub fn live_listeners() -> u32 {
    LIVE.load(Ordering::Relaxed)
}

/// Bookkeeping for an owned JS callback, so the leak test sees it.
pub(crate) struct LiveGuard;

impl LiveGuard {
    pub(crate) fn new() -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One closure signature for every callback (listeners, promise reactions, the timer): each
/// distinct signature costs its own glue in the module and in the JS file.
pub(crate) type Callback = Closure<dyn FnMut(JsValue)>;

pub(crate) fn callback(f: impl FnMut(JsValue) + 'static) -> Callback {
    Closure::new(f)
}

pub(crate) struct Listener {
    target: EventTarget,
    kind: &'static str,
    callback: Callback,
    _live: LiveGuard,
}

impl Listener {
    pub(crate) fn new(target: &EventTarget, kind: &'static str, f: impl FnMut(JsValue) + 'static) -> Self {
        let callback = callback(f);
        // Adding a listener only fails for a detached/invalid target; then there is nothing to remove.
        let _ = target.add_event_listener_with_callback(kind, callback.as_ref().unchecked_ref());
        Self { target: target.clone(), kind, callback, _live: LiveGuard::new() }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener_with_callback(self.kind, self.callback.as_ref().unchecked_ref());
    }
}

/// Called once with how a promise settled: `Ok(value)` or `Err(reason)`.
pub(crate) type Settled = Box<dyn FnOnce(Result<JsValue, JsValue>)>;

/// Calls `done` once `promise` settles: `Ok` with its value or `Err` with its rejection.
///
/// The two reactions own themselves until then: each holds the slot that holds both, and whichever
/// runs empties it, so they are freed right after the promise settles. Nothing is leaked per
/// request and no reaction can be called after it was freed. Whoever stops caring makes the
/// promise settle early (every fetch carries an `AbortSignal`) and ignores the answer (`Weak`).
/// `done` is boxed so this exists once in the module, not once per caller.
pub(crate) fn on_settle(promise: &Promise, done: Settled) {
    let slot: Rc<RefCell<Option<(Callback, Callback)>>> = Rc::new(RefCell::new(None));
    let done: Rc<Cell<Option<Settled>>> = Rc::new(Cell::new(Some(done)));
    let reaction = |ok: bool| {
        let slot = slot.clone();
        let done = done.clone();
        callback(move |v: JsValue| {
            // Freed when this call returns (wasm-bindgen defers the free of a running closure).
            let _free = slot.try_borrow_mut().ok().and_then(|mut s| s.take());
            if let Some(f) = done.take() {
                f(if ok { Ok(v) } else { Err(v) });
            }
        })
    };
    let (resolve, reject) = (reaction(true), reaction(false));
    let _ = promise.then2(&resolve, &reject);
    if let Ok(mut s) = slot.try_borrow_mut() {
        *s = Some((resolve, reject));
    };
}

/// Calls `f` from a promise reaction (a microtask): how a transport reports an outcome it knows
/// at once, never from inside its own constructor.
pub(crate) fn soon(f: impl FnOnce() + 'static) {
    on_settle(&Promise::resolve(&JsValue::UNDEFINED), Box::new(move |_| f()));
}

//! An event listener that removes itself when dropped.
//!
//! Every DOM listener the glue adds goes through [`Listener`], so dropping a transport or a client
//! removes exactly what it added, and [`live_listeners`] can prove it: no closure is leaked with `forget`,
//! so nothing leaks per reconnect.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Event, EventTarget};

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
}

/// How many [`Listener`]s exist right now (all clients, all transports).
pub fn live_listeners() -> usize {
    LIVE.with(Cell::get)
}

/// Bookkeeping for other owned JS callbacks (timers, promise handlers) so the leak test can see
/// them too.
pub(crate) struct LiveGuard;

impl LiveGuard {
    pub(crate) fn new() -> Self {
        LIVE.with(|n| n.set(n.get() + 1));
        Self
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

pub(crate) struct Listener {
    target: EventTarget,
    kind: &'static str,
    callback: Closure<dyn FnMut(JsValue)>,
    _live: LiveGuard,
}

impl Listener {
    pub(crate) fn new(target: &EventTarget, kind: &'static str, f: impl FnMut(Event) + 'static) -> Self {
        // One closure signature for every callback (listeners and promise reactions): each
        // distinct signature costs its own glue in the wasm module and in the JS file.
        let mut f = f;
        let callback = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| f(e.unchecked_into()));
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

type Reaction = Closure<dyn FnMut(JsValue)>;

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
    let slot: Rc<RefCell<Option<(Reaction, Reaction)>>> = Rc::new(RefCell::new(None));
    let done: Rc<Cell<Option<Settled>>> = Rc::new(Cell::new(Some(done)));
    let reaction = |ok: bool| {
        let slot = slot.clone();
        let done = done.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
            // Freed when this call returns (wasm-bindgen defers the free of a running closure).
            let _free = slot.borrow_mut().take();
            if let Some(f) = done.take() {
                f(if ok { Ok(v) } else { Err(v) });
            }
        })
    };
    let (resolve, reject) = (reaction(true), reaction(false));
    let _ = promise.then2(&resolve, &reject);
    *slot.borrow_mut() = Some((resolve, reject));
}

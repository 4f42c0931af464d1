//! An event listener that removes itself when dropped.
//!
//! Every DOM listener the glue adds goes through [`Listener`], so dropping a transport or a client
//! removes exactly what it added, and [`live_listeners`] can prove it: no closure is leaked with `forget`,
//! so nothing leaks per reconnect.

use std::cell::Cell;

use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
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
    callback: Closure<dyn FnMut(Event)>,
    _live: LiveGuard,
}

impl Listener {
    pub(crate) fn new(target: &EventTarget, kind: &'static str, f: impl FnMut(Event) + 'static) -> Self {
        let callback = Closure::<dyn FnMut(Event)>::new(f);
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

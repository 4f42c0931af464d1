//! The page's lifecycle as core inputs: online/offline, visibility, back/forward cache
//! (`pagehide`/`pageshow`) and freeze/resume where the browser has them. The listeners live as long
//! as the [`PageListeners`] value and are removed when it is dropped (on `close()`).

use wasm_bindgen::JsCast;

use super::get;
use super::listener::Listener;
use crate::core::Input;

fn persisted(e: &web_sys::Event) -> bool {
    get(e, "persisted").as_bool().unwrap_or(false)
}

pub(crate) struct PageListeners {
    _listeners: Vec<Listener>,
}

impl PageListeners {
    /// `feed` receives each lifecycle change as a core input.
    pub(crate) fn install(feed: impl Fn(Input) + Clone + 'static) -> Self {
        let mut listeners = Vec::new();
        let Some(window) = crate::wasm::window() else { return Self { _listeners: listeners } };
        let document = get(&window, "document");
        let w: &web_sys::EventTarget = window.as_ref();
        let mut on = |target: &web_sys::EventTarget, kind: &'static str, input: fn(&web_sys::Event) -> Option<Input>| {
            let feed = feed.clone();
            listeners.push(Listener::new(target, kind, move |e| {
                if let Some(i) = input(&e) {
                    feed(i);
                }
            }));
        };
        on(w, "online", |_| Some(Input::Online));
        on(w, "offline", |_| Some(Input::Offline));
        // A page entering the back/forward cache must not hold a connection; `persisted` tells
        // whether it may come back.
        // Event and document fields are read as plain properties (no typed getter imports).
        on(w, "pagehide", |e| persisted(e).then_some(Input::Frozen));
        on(w, "pageshow", |e| persisted(e).then_some(Input::Resumed));
        if document.is_object() {
            let d: &web_sys::EventTarget = document.unchecked_ref();
            on(d, "visibilitychange", |e| {
                // The listener is on the document, so the target is the document.
                let hidden = get(&get(e, "target"), "hidden").as_bool().unwrap_or(false);
                Some(if hidden { Input::Hidden } else { Input::Visible })
            });
            // Page Lifecycle API (Chromium): frozen tabs run no timers or network.
            on(d, "freeze", |_| Some(Input::Frozen));
            on(d, "resume", |_| Some(Input::Resumed));
        }
        Self { _listeners: listeners }
    }
}

//! The public JS API: `RealtimeClient`, `Room`, `Presence`, `Typing`. Thin: every method turns into
//! one core input or publish, through [`step`]. Types are declared by hand in [`super::types`].

use std::rc::Rc;

use js_sys::{Function, Promise, JSON};
use wasm_bindgen::prelude::*;

use super::driver::{new_shared, step, Shared};
use super::error::rtlink_error;
use super::options;
use super::types;
use crate::core::text::concat;
use crate::core::{Input, SendError};

fn valid_room(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn event_name(allowed: &[&'static str], event: &str) -> Result<&'static str, JsValue> {
    allowed.iter().copied().find(|e| *e == event).ok_or_else(|| {
        let mut msg = concat(&["unknown event \"", event, "\"; expected one of: "]);
        for (i, e) in allowed.iter().enumerate() {
            if i > 0 {
                msg.push_str(", ");
            }
            msg.push_str(e);
        }
        rtlink_error("invalid_argument", &msg)
    })
}

/// The connection to one rtlink server.
#[wasm_bindgen(skip_typescript)]
pub struct RealtimeClient {
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl RealtimeClient {
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<RealtimeClient, JsValue> {
        let options = options::parse(&options)?;
        Ok(Self { shared: new_shared(options) })
    }

    pub fn on(&self, event: &str, listener: Function) -> Result<Function, JsValue> {
        let event = event_name(&["state", "error", "transport"], event)?;
        Ok(self.shared.emitter.add("", event, &listener))
    }

    pub fn connect(&self) {
        step(&self.shared, |d, now| {
            d.install_page_listeners(&self.shared);
            d.core.handle_input(now, Input::Connect);
        });
    }

    pub fn close(&self) {
        step(&self.shared, |d, now| {
            d.core.handle_input(now, Input::Close);
            d.shutdown();
        });
        self.shared.emitter.clear();
    }

    pub fn room(&self, name: &str, options: JsValue) -> Result<Room, JsValue> {
        if !valid_room(name) {
            return Err(rtlink_error(
                "invalid_room",
                &concat(&["room name \"", name, "\" must be 1-128 characters of A-Z a-z 0-9 _ . : -"]),
            ));
        }
        let history = options::room_history(&options)?;
        let input = Input::Subscribe { room: name.to_owned(), history };
        step(&self.shared, |d, now| d.core.handle_input(now, input));
        Ok(Room { shared: self.shared.clone(), name: name.to_owned() })
    }

    #[wasm_bindgen(getter)]
    pub fn state(&self) -> JsValue {
        self.shared.driver.try_borrow().map(|d| d.state.clone()).unwrap_or(JsValue::NULL)
    }
}

/// A room of a client. Handles are cheap; several handles of one room share its state.
#[wasm_bindgen(skip_typescript)]
pub struct Room {
    shared: Rc<Shared>,
    name: String,
}

#[wasm_bindgen]
impl Room {
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    pub fn on(&self, event: &str, listener: Function) -> Result<Function, JsValue> {
        let event = event_name(&["message", "subscribed", "resync", "error"], event)?;
        Ok(self.shared.emitter.add(&self.name, event, &listener))
    }

    pub fn publish(&self, payload: JsValue) -> Promise {
        let text = match JSON::stringify(&payload) {
            Ok(t) if !payload.is_undefined() => String::from(t),
            _ => {
                return Promise::reject(&rtlink_error("invalid_argument", "payload must be JSON-serialisable"));
            }
        };
        let mut settle: Option<(Function, Function)> = None;
        let promise = Promise::new(&mut |resolve, reject| settle = Some((resolve, reject)));
        let Some((resolve, reject)) = settle else { return promise };
        let outcome = step(&self.shared, |d, now| {
            let result = d.core.publish(now, &self.name, text);
            if let Ok(id) = result {
                d.add_pending(id, resolve, reject.clone());
            }
            result
        });
        let error = match outcome {
            Some(Ok(_)) => return promise,
            Some(Err(SendError::QueueFull)) => rtlink_error("queue_full", "the send queue is full; nothing was dropped"),
            Some(Err(SendError::NotSubscribed)) => rtlink_error("not_subscribed", "leave() was called on this room"),
            Some(Err(SendError::TooLarge)) => rtlink_error("too_large", "payload is larger than the server allows"),
            Some(Err(SendError::Closed)) => rtlink_error("closed", "the client is closed"),
            None => rtlink_error("internal", "publish called from inside an rtlink callback"),
        };
        let _ = reject.call1(&JsValue::NULL, &error);
        promise
    }

    pub fn leave(&self) {
        step(&self.shared, |d, now| d.core.handle_input(now, Input::Unsubscribe { room: self.name.clone() }));
    }

    #[wasm_bindgen(getter)]
    pub fn presence(&self) -> Presence {
        Presence { shared: self.shared.clone(), room: self.name.clone() }
    }

    #[wasm_bindgen(getter)]
    pub fn typing(&self) -> Typing {
        Typing { shared: self.shared.clone(), room: self.name.clone() }
    }
}

/// Who is in a room.
#[wasm_bindgen(skip_typescript)]
pub struct Presence {
    shared: Rc<Shared>,
    room: String,
}

#[wasm_bindgen]
impl Presence {
    pub fn set(&self, meta: JsValue) -> Result<(), JsValue> {
        let meta = JSON::stringify(&meta)
            .ok()
            .filter(|_| !meta.is_undefined())
            .ok_or_else(|| rtlink_error("invalid_argument", "presence metadata must be JSON-serialisable"))?;
        let room = self.room.clone();
        step(&self.shared, |d, now| d.core.handle_input(now, Input::SetPresence { room, meta: meta.into() }));
        Ok(())
    }

    pub fn list(&self) -> JsValue {
        let d = self.shared.driver.try_borrow();
        types::members(d.as_ref().ok().and_then(|d| d.presence.get(&self.room)).map_or(&[], |v| v.as_slice()))
    }

    pub fn on(&self, event: &str, listener: Function) -> Result<Function, JsValue> {
        event_name(&["change"], event)?;
        Ok(self.shared.emitter.add(&self.room, "presence", &listener))
    }
}

/// Who is typing in a room, and this user's own typing signal.
#[wasm_bindgen(skip_typescript)]
pub struct Typing {
    shared: Rc<Shared>,
    room: String,
}

#[wasm_bindgen]
impl Typing {
    pub fn keystroke(&self) {
        let room = self.room.clone();
        step(&self.shared, |d, now| d.core.handle_input(now, Input::Keystroke { room }));
    }

    pub fn stop(&self) {
        let room = self.room.clone();
        step(&self.shared, |d, now| d.core.handle_input(now, Input::TypingStop { room }));
    }

    pub fn list(&self) -> JsValue {
        let d = self.shared.driver.try_borrow();
        types::typing_users(d.as_ref().ok().and_then(|d| d.typing.get(&self.room)).map_or(&[], |v| v.as_slice()))
    }

    pub fn on(&self, event: &str, listener: Function) -> Result<Function, JsValue> {
        event_name(&["change"], event)?;
        Ok(self.shared.emitter.add(&self.room, "typing", &listener))
    }
}

/// Live DOM listeners and owned callbacks across all clients (the leak test reads it).
#[wasm_bindgen(js_name = liveListeners, skip_typescript)]
pub fn live_listeners() -> u32 {
    super::listener::live_listeners() as u32
}

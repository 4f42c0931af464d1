//! The driver: one per client. It owns the core, the transports the core asked for, exactly one
//! timer (re-armed from the core's next deadline) and the page listeners, feeds every browser
//! event in with `now`, and drains the core's output after each.
//!
//! Re-entrancy rule: the driver is borrowed only inside [`step`]. App listeners run after the
//! borrow is released (they may call back into the client), `getToken` runs in a microtask, and
//! transports report only from browser callbacks, never synchronously from their own methods.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use gloo_timers::callback::Timeout;
use js_sys::{Function, Promise};
use wasm_bindgen::{JsCast, JsValue};

use super::codec;
use super::get;
use super::emitter::Listeners;
use super::error::rtlink_error;
use super::lifecycle::PageListeners;
use super::listener::{on_settle, LiveGuard};
use super::options::Options;
use super::transports::ticket::TicketFetch;
use super::transports::{EventSink, Kind, OpenFailure, OpenParams, Transport, TransportEvent};
use super::types;
use crate::core::small_map::SmallMap;
use crate::core::text::concat;
use crate::core::{Client, Event, Input, Instant, Member, OpenError, Output, SendId, TransportId, TransportKind, TypingUser};
use rtlink_protocol::CloseCode;

/// What the API objects hold: the driver and the listener registry, kept apart so listeners can
/// be called while nothing is borrowed.
pub(crate) struct Shared {
    pub driver: RefCell<Driver>,
    pub emitter: Listeners,
}

pub(crate) struct Driver {
    pub core: Client,
    url: String,
    get_token: Function,
    remember: bool,
    transports: Vec<(TransportId, Transport)>,
    /// The one timer, with a [`LiveGuard`] so the leak test counts it.
    timer: Option<(Instant, Timeout, LiveGuard)>,
    page: Option<PageListeners>,
    pending: Vec<(SendId, Function, Function)>,
    pub presence: SmallMap<String, Vec<Member>>,
    pub typing: SmallMap<String, Vec<TypingUser>>,
    pub state: JsValue,
    /// Bumped on close so a token answer that arrives afterwards is ignored.
    generation: u32,
    /// Set by `connect()`, cleared by `close()` or a terminal error: a connected client stays
    /// alive like an open WebSocket does, even when the app keeps no reference to it (its
    /// callbacks only hold weak ones). Without it the garbage collector ends a live connection
    /// at a random moment.
    keep_alive: Option<Rc<Shared>>,
}

/// Something to hand to app listeners once the borrow is released: (scope, event, value).
type Emit = (String, &'static str, JsValue);

pub(crate) fn now() -> Instant {
    let ms = crate::wasm::window()
        .map(|w| get(&w, "performance"))
        .filter(|p| p.is_object())
        .map(|p| p.unchecked_into::<web_sys::Performance>().now())
        .unwrap_or(0.0);
    Instant::from_f64_millis(ms)
}

fn storage_key(url: &str) -> String {
    concat(&["rtlink:transport:", url])
}

fn session_storage() -> Option<web_sys::Storage> {
    let s = get(&crate::wasm::window()?.into(), "sessionStorage");
    s.is_object().then(|| s.unchecked_into())
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let crypto = crate::wasm::window().map(|w| get(&w, "crypto")).unwrap_or_default();
    if crypto.is_object() {
        let _ = crypto.unchecked_into::<web_sys::Crypto>().get_random_values_with_u8_array(&mut bytes);
    }
    let seed = u64::from_le_bytes(bytes);
    // Without crypto (never in a real browser), mix in the clock so two clients still differ.
    if seed == 0 { now().as_millis() ^ 0x9e37_79b9_7f4a_7c15 } else { seed }
}

pub(crate) fn new_shared(mut options: Options) -> Rc<Shared> {
    if options.remember_transport {
        let remembered = session_storage()
            .and_then(|s| s.get_item(&storage_key(&options.url)).ok().flatten())
            .and_then(|name| types::transport_from_name(&name));
        options.config.start_transport = remembered;
    }
    let now = now();
    let core = Client::new(options.config, now, random_seed());
    let state = types::state(&crate::core::State::Idle, None, 0, None);
    Rc::new(Shared {
        driver: RefCell::new(Driver {
            core,
            url: options.url,
            get_token: options.get_token,
            remember: options.remember_transport,
            transports: Vec::new(),
            timer: None,
            page: None,
            pending: Vec::new(),
            presence: SmallMap::new(),
            typing: SmallMap::new(),
            state,
            generation: 0,
            keep_alive: None,
        }),
        emitter: Listeners::new(),
    })
}

/// Runs `f` on the driver, drains the core, re-arms the timer, then calls app listeners.
/// `None` only if the driver was already borrowed: a nested call, which the design rules out
/// (see the module docs); the input is dropped with a console error rather than a panic.
pub(crate) fn step<R>(shared: &Rc<Shared>, f: impl FnOnce(&mut Driver, Instant) -> R) -> Option<R> {
    // A thin generic shell around one non-generic body: `step` has a dozen callers, and a generic
    // body would be copied into each of them.
    let mut f = Some(f);
    let mut result = None;
    run_step(shared, &mut |d, now| {
        if let Some(f) = f.take() {
            result = Some(f(d, now));
        }
    });
    result
}

#[inline(never)]
fn run_step(shared: &Rc<Shared>, f: &mut dyn FnMut(&mut Driver, Instant)) {
    let emits = {
        let Ok(mut d) = shared.driver.try_borrow_mut() else {
            web_sys::console::error_1(&"rtlink: re-entrant call ignored".into());
            return;
        };
        let now = now();
        f(&mut d, now);
        d.drain(shared, now)
    };
    for (scope, event, value) in emits {
        shared.emitter.emit(&scope, event, &value);
    }
}

impl Driver {
    fn drain(&mut self, shared: &Rc<Shared>, now: Instant) -> Vec<Emit> {
        let mut emits = Vec::new();
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::RequestToken => self.request_token(shared),
                Output::FetchTicket { id, token, resume, probe } => {
                    let fetch = TicketFetch::start(&self.url, &token, resume.as_deref(), probe, ticket_done(shared, id));
                    self.transports.push((id, Transport::Ticket(fetch)));
                }
                Output::OpenTransport { id, kind, ticket } => {
                    let kind = match kind {
                        TransportKind::WebSocket => Kind::WebSocket,
                        TransportKind::Sse => Kind::Sse,
                        TransportKind::LongPoll => Kind::LongPoll,
                    };
                    // The ticket step of this id is over: its entry is replaced by the transport.
                    self.transports.retain(|(tid, _)| *tid != id);
                    let params = OpenParams { base_url: self.url.clone(), ticket };
                    let t = Transport::open(kind, params, sink(shared, id));
                    self.transports.push((id, t));
                }
                Output::Send { id, frame } => {
                    if let Some((_, t)) = self.transports.iter().find(|(tid, _)| *tid == id) {
                        t.send(codec::encode(&frame));
                    }
                }
                Output::CloseTransport { id, .. } => self.transports.retain(|(tid, _)| *tid != id),
                Output::Event(e) => self.event(e, &mut emits),
            }
        }
        self.arm_timer(shared, now);
        emits
    }

    fn event(&mut self, e: Event, emits: &mut Vec<Emit>) {
        match e {
            Event::StateChanged { state, transport, attempt, retry_in_ms } => {
                self.state = types::state(&state, transport, attempt, retry_in_ms);
                emits.push((String::new(), "state", self.state.clone()));
            }
            Event::Message { room, offset, sender, name, payload } => {
                let value = types::message(&room, offset, &sender, name.as_deref(), &payload);
                emits.push((room, "message", value));
            }
            Event::PublishAcked { send_id, offset } => {
                if let Some(i) = self.pending.iter().position(|p| p.0 == send_id) {
                    let (_, resolve, _) = self.pending.swap_remove(i);
                    let _ = resolve.call1(&JsValue::NULL, &{
                        let o = super::new_object();
                        super::set_num(&o, "offset", offset as f64);
                        o
                    });
                }
            }
            Event::PublishFailed { send_id, code, reason } => {
                if let Some(i) = self.pending.iter().position(|p| p.0 == send_id) {
                    let (_, _, reject) = self.pending.swap_remove(i);
                    let _ = reject.call1(&JsValue::NULL, &rtlink_error(code.as_str(), &reason));
                }
            }
            Event::Subscribed { room } => {
                let value = types::obj_str("room", &room);
                emits.push((room, "subscribed", value));
            }
            Event::SubscribeFailed { room, code, reason } => {
                let value = rtlink_error(code.as_str(), &concat(&["subscribe to \"", &room, "\" refused: ", &reason]));
                emits.push((room, "error", value));
            }
            Event::ResyncNeeded { room } => {
                let value = types::obj_str("room", &room);
                emits.push((room, "resync", value));
            }
            Event::PresenceChanged { room, members } => {
                let value = types::members(&members);
                self.presence.insert(room.clone(), members);
                emits.push((room, "presence", value));
            }
            Event::TypingChanged { room, users } => {
                let value = types::typing_users(&users);
                self.typing.insert(room.clone(), users);
                emits.push((room, "typing", value));
            }
            Event::TransportRemembered(kind) => {
                let name = types::transport_name(kind);
                if self.remember {
                    if let Some(s) = session_storage() {
                        let _ = s.set_item(&storage_key(&self.url), name);
                    }
                }
                emits.push((String::new(), "transport", name.into()));
            }
            Event::Fallback(_) => {}
            Event::Error { reason } => {
                let value = rtlink_error(reason.error_code(), &types::close_reason(&reason));
                emits.push((String::new(), "error", value));
                self.shutdown();
            }
        }
    }

    /// Asks the app for a token in a microtask (app code never runs inside a borrow).
    fn request_token(&mut self, shared: &Rc<Shared>) {
        let weak = Rc::downgrade(shared);
        let get_token = self.get_token.clone();
        let generation = self.generation;
        // Two promise reactions: the first runs `getToken` in a microtask, the second waits for its
        // answer (a string or a promise of one).
        on_settle(&Promise::resolve(&JsValue::UNDEFINED), Box::new(move |_| {
            let finish = move |answer: Result<JsValue, JsValue>| {
                let input = match answer.ok().and_then(|v| v.as_string()) {
                    Some(token) if !token.is_empty() => Input::TokenReady(token),
                    _ => Input::TokenFailed { terminal: false },
                };
                let Some(shared) = weak.upgrade() else { return };
                step(&shared, |d, now| {
                    if d.generation == generation {
                        d.core.handle_input(now, input);
                    }
                });
            };
            match get_token.call0(&JsValue::NULL) {
                Ok(v) => on_settle(&Promise::resolve(&v), Box::new(finish)),
                Err(e) => finish(Err(e)),
            }
        }));
    }

    fn arm_timer(&mut self, shared: &Rc<Shared>, now: Instant) {
        let Some(at) = self.core.poll_timeout() else {
            self.timer = None;
            return;
        };
        if self.timer.as_ref().is_some_and(|(t, _, _)| *t == at) {
            return;
        }
        let delay = at.millis_since(now).min(i32::MAX as u64) as u32;
        let weak = Rc::downgrade(shared);
        let timeout = Timeout::new(delay, move || {
            if let Some(shared) = weak.upgrade() {
                step(&shared, |d, now| {
                    d.timer = None;
                    d.core.handle_timeout(now);
                });
            }
        });
        self.timer = Some((at, timeout, LiveGuard::new()));
    }

    pub(crate) fn install_page_listeners(&mut self, shared: &Rc<Shared>) {
        if matches!(self.core.state(), crate::core::State::Closed { .. }) {
            return;
        }
        self.keep_alive = Some(shared.clone());
        if self.page.is_some() {
            return;
        }
        let weak = Rc::downgrade(shared);
        self.page = Some(PageListeners::install(move |input| {
            if let Some(shared) = weak.upgrade() {
                step(&shared, |d, now| d.core.handle_input(now, input));
            }
        }));
    }

    pub(crate) fn add_pending(&mut self, id: SendId, resolve: Function, reject: Function) {
        self.pending.push((id, resolve, reject));
    }

    /// Drops transports, the timer and the page listeners; rejects what is still pending.
    pub(crate) fn shutdown(&mut self) {
        // Never the last reference here: every step runs with one of its own.
        self.keep_alive = None;
        self.generation = self.generation.wrapping_add(1);
        self.transports.clear();
        self.timer = None;
        self.page = None;
        for (_, _, reject) in self.pending.drain(..) {
            let _ = reject.call1(&JsValue::NULL, &rtlink_error("closed", "the client was closed"));
        }
    }
}

/// Where the ticket step of transport `id` reports: `TicketIssued`, or why not. At this step no
/// answer (or a 5xx) means the server is unreachable, whatever the transport.
fn ticket_done(shared: &Rc<Shared>, id: TransportId) -> Box<dyn FnOnce(Result<String, OpenFailure>)> {
    let weak: Weak<Shared> = Rc::downgrade(shared);
    Box::new(move |result| {
        let Some(shared) = weak.upgrade() else { return };
        let input = match result {
            Ok(ticket) => Input::TicketIssued { id, ticket },
            Err(f) => Input::OpenFailed { id, error: open_error(f, OpenError::Unreachable) },
        };
        step(&shared, |d, now| d.core.handle_input(now, input));
    })
}

/// The core's reading of an HTTP failure; `other` for network errors and statuses that say
/// nothing more.
fn open_error(f: OpenFailure, other: OpenError) -> OpenError {
    match f {
        OpenFailure::Unauthorized => OpenError::Unauthorized,
        OpenFailure::Forbidden => OpenError::Forbidden,
        OpenFailure::SessionUnknown => OpenError::SessionUnknown,
        OpenFailure::Overloaded { retry_after_ms } => OpenError::Overloaded { retry_after_ms },
        OpenFailure::TooLarge | OpenFailure::Network(_) => other,
    }
}

/// The callback a transport reports through, bound to its id.
fn sink(shared: &Rc<Shared>, id: TransportId) -> EventSink {
    let weak: Weak<Shared> = Rc::downgrade(shared);
    Rc::new(move |event: TransportEvent| {
        let Some(shared) = weak.upgrade() else { return };
        let input = match event {
            TransportEvent::Opened => Input::TransportOpened { id },
            TransportEvent::Frame(value) => match codec::decode(value) {
                Ok(frame) => Input::Frame { id, frame },
                Err(codec::DecodeError::UnsupportedVersion) => Input::TransportClosed {
                    id,
                    code: Some(CloseCode::UNSUPPORTED_VERSION),
                    reason: "the server speaks another protocol version".into(),
                },
                Err(codec::DecodeError::Malformed(why)) => Input::TransportClosed {
                    id,
                    code: Some(CloseCode::MALFORMED_FRAME),
                    reason: concat(&["malformed frame from server: ", &why]),
                },
            },
            TransportEvent::Closed { code, reason } => Input::TransportClosed { id, code: code.map(CloseCode), reason },
            TransportEvent::OpenFailed(f) => Input::OpenFailed { id, error: open_error(f, OpenError::Network) },
        };
        step(&shared, |d, now| d.core.handle_input(now, input));
    })
}

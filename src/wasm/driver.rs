//! The driver: one per client. It owns the core, the transports the core asked for and exactly
//! one timer (re-armed from the core's next deadline), feeds every browser event and façade
//! command in with `now`, and reports what the core says to the façade as records.
//!
//! Re-entrancy rule: the driver is borrowed only inside [`step`], and records are reported after
//! the borrow is released (a listener may call back in). Transports report only from browser
//! callbacks, never synchronously from their own methods.

use alloc::boxed::Box;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use wasm_bindgen::prelude::*;

use super::timer::Timeout;
use super::transports::ticket::TicketFetch;
use super::transports::{EventSink, OpenFailure, OpenParams, Transport, TransportEvent};
use super::{performance_now, Sink};
use crate::core::text::{concat, dec};
use crate::core::wire::{self, DecodeError};
use crate::core::{
    BackoffConfig, Client, CloseCode, CloseReason, Config, Event, Input, Instant, OpenError, Output, SendError,
    State, TransportId, TransportKind,
};

/// The façade's commands: `driver.input(op, room, text, n)` (js/rtlink.js has the same table).
pub mod op {
    pub const CONNECT: u32 = 0;
    pub const CLOSE: u32 = 1;
    /// `n`: recent messages to deliver first.
    pub const SUBSCRIBE: u32 = 2;
    pub const UNSUBSCRIBE: u32 = 3;
    /// `text`: the metadata's JSON text.
    pub const SET_PRESENCE: u32 = 4;
    pub const KEYSTROKE: u32 = 5;
    pub const TYPING_STOP: u32 = 6;
    /// `text`: the payload's JSON text. Returns the send id, or minus a [`super::PublishRefused`].
    pub const PUBLISH: u32 = 7;
    /// `text`: the token (empty: `getToken` failed).
    pub const TOKEN: u32 = 8;
    pub const ONLINE: u32 = 9;
    pub const OFFLINE: u32 = 10;
    pub const HIDDEN: u32 = 11;
    pub const VISIBLE: u32 = 12;
    pub const FROZEN: u32 = 13;
    pub const RESUMED: u32 = 14;
}

/// What the façade receives, one `sink.r(code, a, b, c, d, x, y)` per record. The low 4 bits
/// of `code` say what it is; the bits above carry a small number (js/rtlink.js has the same
/// table). Unused strings are empty, unused numbers 0.
pub mod record {
    /// `code >> 4` = state index × 4 + transport (0 none, 1 websocket, 2 sse, 3 long polling);
    /// `x` attempt, `y` retry in ms (−1: none), `a` why it closed.
    pub const STATE: u32 = 0;
    /// `code >> 4` = 1 if the sender's name is known; `a` room, `b` sender, `c` name, `d`
    /// payload (JSON text), `x` offset.
    pub const MESSAGE: u32 = 1;
    /// `x` send id, `y` offset.
    pub const ACKED: u32 = 2;
    /// `x` send id, `a` error code, `b` reason.
    pub const FAILED: u32 = 3;
    /// `a` room.
    pub const SUBSCRIBED: u32 = 4;
    /// `a` room.
    pub const RESYNC: u32 = 5;
    /// The subscription was refused: `a` room, `b` error code, `c` reason.
    pub const REFUSED: u32 = 6;
    /// One member of the list the next `PRESENCE` completes: `a` user, `b` name, `c` metadata
    /// (JSON text, empty: none), `x` connections.
    pub const MEMBER: u32 = 7;
    /// `a` room: its members are the `MEMBER` records since the last list.
    pub const PRESENCE: u32 = 8;
    /// One user of the list the next `TYPING` completes: `a` user, `b` name.
    pub const TYPIST: u32 = 9;
    /// `a` room: its typists are the `TYPIST` records since the last list.
    pub const TYPING: u32 = 10;
    /// `code >> 4` = the transport that worked (1 websocket, 2 sse, 3 long polling).
    pub const TRANSPORT: u32 = 11;
    /// The client stopped for good: `a` error code, `b` message.
    pub const ERROR: u32 = 12;
    /// Call `getToken()` and answer with [`super::op::TOKEN`].
    pub const TOKEN: u32 = 13;
}

/// Why `PUBLISH` refused (returned negated).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum PublishRefused {
    QueueFull = 1,
    NotSubscribed = 2,
    TooLarge = 3,
    Closed = 4,
    /// Called from inside a step (cannot happen through the façade).
    Busy = 5,
}

struct Shared {
    sink: Sink,
    driver: RefCell<Inner>,
}

struct Inner {
    core: Client,
    /// The server base URLs, preferred first, separated by spaces (the core's endpoints).
    url: String,
    transports: Vec<(TransportId, Transport)>,
    /// The one timer and the deadline it is armed for.
    timer: Option<(Instant, Timeout)>,
}

/// One client's connection machinery, owned by the façade's `RealtimeClient`.
#[wasm_bindgen]
pub struct Driver {
    shared: Rc<Shared>,
}

fn now() -> Instant {
    Instant::from_f64_millis(performance_now())
}

fn kind_index(kind: TransportKind) -> u32 {
    match kind {
        TransportKind::WebSocket => 1,
        TransportKind::Sse => 2,
        TransportKind::LongPoll => 3,
    }
}

fn kind_of(index: u32) -> Option<TransportKind> {
    match index {
        1 => Some(TransportKind::WebSocket),
        2 => Some(TransportKind::Sse),
        3 => Some(TransportKind::LongPoll),
        _ => None,
    }
}

/// A millisecond option from the façade; negative means "the default".
fn ms(v: f64) -> Option<u64> {
    (v >= 0.0).then_some(v as u64)
}

#[wasm_bindgen]
impl Driver {
    /// `ladder`: the allowed transports, best first, one base-4 digit each (1 websocket, 2 sse,
    /// 3 long polling; 0: all three). `start`: the rung to start from (0: the top). Negative
    /// numbers keep the default; `url`: one or more base URLs separated by spaces. The façade
    /// validated everything.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: Sink,
        url: String,
        ladder: u32,
        start: u32,
        base_ms: f64,
        cap_ms: f64,
        max_attempts: f64,
        grace_ms: f64,
        probe_ms: f64,
        seed_hi: u32,
        seed_lo: u32,
    ) -> Driver {
        let mut transports = Vec::new();
        let mut rest = ladder;
        while let Some(kind) = kind_of(rest % 4) {
            transports.push(kind);
            rest /= 4;
        }
        let defaults = Config::default();
        let backoff = BackoffConfig {
            base_ms: ms(base_ms).unwrap_or(defaults.backoff.base_ms),
            cap_ms: ms(cap_ms).unwrap_or(defaults.backoff.cap_ms),
            max_attempts: ms(max_attempts).map(|n| n as u32),
            ..defaults.backoff.clone()
        };
        let config = Config {
            transports: if transports.is_empty() { defaults.transports.clone() } else { transports },
            start_transport: kind_of(start),
            backoff,
            heartbeat_grace_ms: ms(grace_ms).unwrap_or(defaults.heartbeat_grace_ms),
            probe_interval_ms: ms(probe_ms).unwrap_or(defaults.probe_interval_ms),
            endpoints: 1 + url.bytes().filter(|&b| b == b' ').count(),
            ..defaults
        };
        let core = Client::new(config, now(), u64::from(seed_hi) << 32 | u64::from(seed_lo));
        let driver = Inner { core, url, transports: Vec::new(), timer: None };
        Driver { shared: Rc::new(Shared { sink, driver: RefCell::new(driver) }) }
    }

    /// One command of the façade (see [`op`]). Returns the send id for `PUBLISH`, else 0.
    pub fn input(&self, op: u32, room: &str, text: &str, n: f64) -> f64 {
        let room = String::from(room);
        let input = match op {
            op::CONNECT => Input::Connect,
            op::CLOSE => Input::Close,
            op::SUBSCRIBE => Input::Subscribe { room, history: n as u32 },
            op::UNSUBSCRIBE => Input::Unsubscribe { room },
            op::SET_PRESENCE => Input::SetPresence { room, meta: text.into() },
            op::KEYSTROKE => Input::Keystroke { room },
            op::TYPING_STOP => Input::TypingStop { room },
            op::PUBLISH => {
                let sent = step(&self.shared, |d, now| d.core.publish(now, &room, text.into()));
                return match sent {
                    Some(Ok(id)) => id.0 as f64,
                    Some(Err(SendError::QueueFull)) => -(PublishRefused::QueueFull as i32 as f64),
                    Some(Err(SendError::NotSubscribed)) => -(PublishRefused::NotSubscribed as i32 as f64),
                    Some(Err(SendError::TooLarge)) => -(PublishRefused::TooLarge as i32 as f64),
                    Some(Err(SendError::Closed)) => -(PublishRefused::Closed as i32 as f64),
                    None => -(PublishRefused::Busy as i32 as f64),
                };
            }
            op::TOKEN if text.is_empty() => Input::TokenFailed { terminal: false },
            op::TOKEN => Input::TokenReady(text.into()),
            op::ONLINE => Input::Online,
            op::OFFLINE => Input::Offline,
            op::HIDDEN => Input::Hidden,
            op::VISIBLE => Input::Visible,
            op::FROZEN => Input::Frozen,
            op::RESUMED => Input::Resumed,
            _ => return 0.0,
        };
        feed(&self.shared, input);
        0.0
    }
}

fn feed(shared: &Rc<Shared>, input: Input) {
    step(shared, |d, now| d.core.handle_input(now, input));
}

/// Runs `f` on the driver, drains the core, re-arms the timer, then reports the records.
/// `None` only if the driver was already borrowed: a nested call, which the design rules out
/// (see the module docs); the input is dropped rather than panicking.
fn step<R>(shared: &Rc<Shared>, f: impl FnOnce(&mut Inner, Instant) -> R) -> Option<R> {
    // A thin generic shell around one non-generic body: `step` has several callers, and a
    // generic body would be copied into each of them.
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
fn run_step(shared: &Rc<Shared>, f: &mut dyn FnMut(&mut Inner, Instant)) {
    let reports = {
        let Ok(mut d) = shared.driver.try_borrow_mut() else { return };
        let now = now();
        f(&mut d, now);
        d.drain(shared, now)
    };
    for out in reports {
        report(&shared.sink, out);
    }
}

impl Inner {
    /// Does what the core asks of the glue; returns what is for the façade.
    fn drain(&mut self, shared: &Rc<Shared>, now: Instant) -> Vec<Output> {
        let mut reports = Vec::new();
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::FetchTicket { id, endpoint, token, resume, probe } => {
                    let fetch = TicketFetch::start(self.endpoint(endpoint), &token, resume.as_deref(), probe, ticket_done(shared, id));
                    self.transports.push((id, Transport::Ticket(fetch)));
                }
                Output::OpenTransport { id, endpoint, kind, ticket } => {
                    // The ticket step of this id is over: its entry is replaced by the transport.
                    self.transports.retain(|(tid, _)| *tid != id);
                    let params = OpenParams { base_url: self.endpoint(endpoint), ticket: &ticket };
                    let t = Transport::open(kind, params, transport_sink(shared, id));
                    self.transports.push((id, t));
                }
                Output::Send { id, frame } => {
                    if let Some((_, t)) = self.transports.iter().find(|(tid, _)| *tid == id) {
                        t.send(wire::encode(&frame));
                    }
                }
                Output::CloseTransport { id, .. } => self.transports.retain(|(tid, _)| *tid != id),
                out => reports.push(out),
            }
        }
        if matches!(self.core.state(), State::Closed { .. }) {
            // Closed for good: whatever is left (transports whose end was reported) goes too.
            self.transports.clear();
        }
        self.arm_timer(shared, now);
        reports
    }

    /// The base URL of endpoint `i` (a byte scan: `str::split` costs a kilobyte of wasm).
    fn endpoint(&self, i: usize) -> &str {
        let (mut start, mut n) = (0, 0);
        for (at, b) in self.url.bytes().enumerate() {
            if b == b' ' {
                if n == i {
                    return self.url.get(start..at).unwrap_or_default();
                }
                n += 1;
                start = at + 1;
            }
        }
        self.url.get(start..).unwrap_or_default()
    }

    fn arm_timer(&mut self, shared: &Rc<Shared>, now: Instant) {
        let Some(at) = self.core.poll_timeout() else {
            self.timer = None;
            return;
        };
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
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
        self.timer = Some((at, timeout));
    }
}

fn state_index(state: &State) -> u32 {
    match state {
        State::Idle => 0,
        State::Connecting { .. } => 1,
        State::Open { .. } => 2,
        State::BackingOff { .. } => 3,
        State::Offline => 4,
        State::Closed { .. } => 5,
    }
}

/// The message of a terminal error and of a closed state's `reason`.
fn close_reason(reason: &CloseReason) -> String {
    match reason {
        CloseReason::ClientClosed => "client closed".into(),
        CloseReason::Server { code, reason } => {
            concat(&["server closed (", &dec(code.0.into()), " ", code.name(), "): ", reason])
        }
        CloseReason::Unauthorized => "unauthorized: the server refused a fresh token".into(),
        CloseReason::Forbidden => "forbidden: this origin or user is not allowed".into(),
        CloseReason::TokenFailed => "getToken failed".into(),
        CloseReason::GaveUp { attempts } => concat(&["gave up after ", &dec((*attempts).into()), " attempts"]),
    }
}

/// Reports one output of the core to the façade as records (see [`record`]).
fn report(sink: &Sink, out: Output) {
    let r = |code: u32, a: &str, b: &str, c: &str, d: &str, x: f64, y: f64| sink.record(code, a, b, c, d, x, y);
    let Output::Event(event) = out else {
        // `RequestToken`: the only other output `drain` hands over.
        return r(record::TOKEN, "", "", "", "", 0.0, 0.0);
    };
    match event {
        Event::StateChanged { state, transport, attempt, retry_in_ms } => {
            let reason = match &state {
                State::Closed { reason } => close_reason(reason),
                _ => String::new(),
            };
            let extra = state_index(&state) * 4 + transport.map_or(0, kind_index);
            let retry = retry_in_ms.map_or(-1.0, |ms| ms as f64);
            r(record::STATE | extra << 4, &reason, "", "", "", attempt.into(), retry);
        }
        Event::Message { room, offset, sender, name, payload } => {
            let code = record::MESSAGE | u32::from(name.is_some()) << 4;
            r(code, &room, &sender, name.as_deref().unwrap_or(""), &payload, offset as f64, 0.0);
        }
        Event::PublishAcked { send_id, offset } => r(record::ACKED, "", "", "", "", send_id.0 as f64, offset as f64),
        Event::PublishFailed { send_id, code, reason } => {
            r(record::FAILED, code.as_str(), &reason, "", "", send_id.0 as f64, 0.0)
        }
        Event::Subscribed { room } => r(record::SUBSCRIBED, &room, "", "", "", 0.0, 0.0),
        Event::ResyncNeeded { room } => r(record::RESYNC, &room, "", "", "", 0.0, 0.0),
        Event::SubscribeFailed { room, code, reason } => r(record::REFUSED, &room, code.as_str(), &reason, "", 0.0, 0.0),
        Event::PresenceChanged { room, members } => {
            for m in &members {
                r(record::MEMBER, &m.user, &m.name, &m.meta, "", m.connections.into(), 0.0);
            }
            r(record::PRESENCE, &room, "", "", "", 0.0, 0.0);
        }
        Event::TypingChanged { room, users } => {
            for u in &users {
                r(record::TYPIST, &u.user, &u.name, "", "", 0.0, 0.0);
            }
            r(record::TYPING, &room, "", "", "", 0.0, 0.0);
        }
        Event::TransportRemembered(kind) => r(record::TRANSPORT | kind_index(kind) << 4, "", "", "", "", 0.0, 0.0),
        Event::Fallback(_) => {}
        Event::Error { reason } => r(record::ERROR, reason.error_code(), &close_reason(&reason), "", "", 0.0, 0.0),
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
        feed(&shared, input);
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
fn transport_sink(shared: &Rc<Shared>, id: TransportId) -> EventSink {
    let weak: Weak<Shared> = Rc::downgrade(shared);
    Rc::new(move |event: TransportEvent| {
        let Some(shared) = weak.upgrade() else { return };
        let input = match event {
            TransportEvent::Opened => Input::TransportOpened { id },
            TransportEvent::Frame(Ok(frame)) => Input::Frame { id, frame },
            TransportEvent::Frame(Err(DecodeError::UnsupportedVersion)) => Input::TransportClosed {
                id,
                code: Some(CloseCode::UNSUPPORTED_VERSION),
                reason: "the server speaks another protocol version".into(),
            },
            TransportEvent::Frame(Err(DecodeError::Malformed(field))) => Input::TransportClosed {
                id,
                code: Some(CloseCode::MALFORMED_FRAME),
                reason: if field.is_empty() {
                    "malformed frame from server".into()
                } else {
                    concat(&["malformed frame from server: missing or invalid field ", field])
                },
            },
            TransportEvent::Closed { code, reason } => Input::TransportClosed { id, code: code.map(CloseCode), reason },
            TransportEvent::OpenFailed(f) => Input::OpenFailed { id, error: open_error(f, OpenError::Network) },
        };
        feed(&shared, input);
    })
}

//! The driver: one per client. It owns the core, feeds it every façade operation with `now`, and
//! reports what the core says as records: API events for the app, and the I/O the façade does for
//! it (the ticket request, a transport to open, a frame to send, a transport to close, the one
//! timer, re-armed from the core's next deadline).

use alloc::string::String;
use alloc::vec::Vec;

use super::record as r;
use crate::core::wire::{self, Fields};
use crate::core::{
    Client, CloseCode, CloseReason, Config, Event, Input, Instant, OpenError, Output, SendError,
    State, TransportId, TransportKind,
};

/// The façade's operations: `rt_input(driver, op, strings, n, m, now)` (js/rtlink.js has the same
/// table). `a`, `b`: the first two strings; `n`, `m`: numbers. Unused ones are empty or 0.
pub mod op {
    pub const CONNECT: u32 = 0;
    pub const CLOSE: u32 = 1;
    /// `a` room, `n`: recent messages to deliver first.
    pub const SUBSCRIBE: u32 = 2;
    pub const UNSUBSCRIBE: u32 = 3;
    /// `a` room, `b`: the metadata's JSON text.
    pub const SET_PRESENCE: u32 = 4;
    pub const KEYSTROKE: u32 = 5;
    pub const TYPING_STOP: u32 = 6;
    /// `a` room, `b`: the payload's JSON text. Returns the send id, or minus a [`PublishRefused`].
    pub const PUBLISH: u32 = 7;
    /// `a`: the token (empty: `getToken` failed).
    pub const TOKEN: u32 = 8;
    pub const ONLINE: u32 = 9;
    pub const OFFLINE: u32 = 10;
    pub const HIDDEN: u32 = 11;
    pub const VISIBLE: u32 = 12;
    pub const FROZEN: u32 = 13;
    pub const RESUMED: u32 = 14;
    /// The timer fired.
    pub const TIMEOUT: u32 = 15;
    /// Transport `n`'s ticket request answered with ticket `a`.
    pub const TICKET: u32 = 16;
    /// Transport `n` is up.
    pub const OPENED: u32 = 17;
    /// Transport `n` received a server frame of kind `m`; the strings are its fields
    /// ([`crate::core::wire::server_frame`]: the façade parsed and checked it, js/wire.js).
    pub const FRAME: u32 = 18;
    /// Transport `n` ended after it opened: close code `m` (0: none), reason `a`.
    pub const CLOSED: u32 = 19;
    /// Transport `n` (its ticket request or its connection) could not open: `FAILED` plus the
    /// reason's index: 0 unauthorized, 1 forbidden, 2 unknown session, 3 overloaded (`m`: retry
    /// after ms, negative: not said), 4 unreachable (ticket step), 5 network (the connection).
    pub const FAILED: u32 = 20;
}

/// What the façade receives, one `r(code, a, b, c, d, x, y)` per record. The low 5 bits of
/// `code` say what it is; the bits above carry a small number (js/rtlink.js has the same table).
/// Unused strings are empty, unused numbers 0.
pub mod record {
    /// `code >> 5` = state index × 4 + transport (0 none, 1 websocket, 2 sse, 3 long polling);
    /// `x` attempt, `y` retry in ms (−1: none). A closed state follows a `REASON`.
    pub const STATE: u32 = 0;
    /// `code >> 5` = 1 if the sender's name is known; `a` room, `b` sender, `c` name, `d`
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
    /// `code >> 5` = the transport that worked (1 websocket, 2 sse, 3 long polling).
    pub const TRANSPORT: u32 = 11;
    /// The client stopped for good: `a` error code; follows the `REASON`.
    pub const ERROR: u32 = 12;
    /// Call `getToken()` and answer with [`super::op::TOKEN`].
    pub const TOKEN: u32 = 13;
    /// Request a ticket for transport `x`: `code >> 5` = endpoint × 2 + 1 if it is a probe; `a`
    /// the bearer token, `b` the session to resume (empty: none). Answer with `TICKET` or `FAILED`.
    pub const FETCH_TICKET: u32 = 14;
    /// Open transport `x` with ticket `a`: `code >> 5` = endpoint × 4 + kind (1 websocket, 2
    /// sse, 3 long polling). It answers with `OPENED`, `FRAME`, `CLOSED` or `FAILED`.
    pub const OPEN: u32 = 15;
    /// Send a client frame on transport `x` (in order; SSE and long polling POST it): `code >> 5`
    /// and `a`, `b`, `c`, `y` are its [`crate::core::wire::ClientRecord`], which js/wire.js
    /// writes as JSON.
    pub const SEND: u32 = 16;
    /// Close transport `x` (WebSocket: with code `y` and reason `a`) and report nothing more of it.
    pub const CLOSE: u32 = 17;
    /// Arm the timer to fire in `x` ms (negative: disarm); it replaces the previous one.
    pub const TIMER: u32 = 18;
    /// Why the client closed, for the closed `STATE` or the `ERROR` that follows: `code >> 5` =
    /// the [`CloseReason`] (0 client closed, 1 server: close code `x`, reason `a`; 2
    /// unauthorized, 3 forbidden, 4 token failed, 5 gave up after `x` attempts).
    pub const REASON: u32 = 19;
}

/// Why `PUBLISH` refused (returned negated).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum PublishRefused {
    QueueFull = 1,
    NotSubscribed = 2,
    TooLarge = 3,
    Closed = 4,
}

/// One client's connection machinery, owned by the façade's `RealtimeClient`.
pub struct Driver {
    core: Client,
    /// Where the façade writes the next input's strings (`rt_buf`, `rt_input`).
    pub(super) buf: Vec<u8>,
    /// The deadline the façade's timer is armed for.
    timer: Option<Instant>,
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

impl Driver {
    /// `ladder`: the allowed transports, best first, one base-4 digit each (1 websocket, 2 sse,
    /// 3 long polling; 0: all three). `start`: the rung to start from (0: the top). Negative
    /// numbers keep the default; `endpoints`: how many base URLs the façade has. The façade
    /// validated everything.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
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
    ) -> Driver {
        // The defaults, changed in place where the façade set an option (no copies of them).
        let mut config = Config::default();
        let mut transports = Vec::new();
        let mut rest = ladder;
        while let Some(kind) = kind_of(rest % 4) {
            transports.push(kind);
            rest /= 4;
        }
        if !transports.is_empty() {
            config.transports = transports;
        }
        config.start_transport = kind_of(start);
        let set = |field: &mut u64, v: f64| {
            if let Some(v) = ms(v) {
                *field = v;
            }
        };
        set(&mut config.backoff.base_ms, base_ms);
        set(&mut config.backoff.cap_ms, cap_ms);
        config.backoff.max_attempts = ms(max_attempts).map(|n| n as u32);
        set(&mut config.heartbeat_grace_ms, grace_ms);
        set(&mut config.probe_interval_ms, probe_ms);
        config.endpoints = endpoints.max(1) as usize;
        let now = Instant::from_f64_millis(now);
        let core = Client::new(config, now, u64::from(seed_hi) << 32 | u64::from(seed_lo));
        Driver {
            core,
            buf: Vec::new(),
            timer: None,
        }
    }

    /// One operation (see [`op`]) with its strings; then does what the core asks and re-arms
    /// the timer.
    pub fn input<'a>(
        &mut self,
        op: u32,
        strings: &mut Fields<impl Iterator<Item = &'a str>>,
        n: f64,
        m: f64,
        now: f64,
    ) -> f64 {
        let now = Instant::from_f64_millis(now);
        let result = self.apply(op, strings, n, m, now);
        self.drain(now);
        result
    }

    fn apply<'a>(
        &mut self,
        op: u32,
        strings: &mut Fields<impl Iterator<Item = &'a str>>,
        n: f64,
        m: f64,
        now: Instant,
    ) -> f64 {
        let id = TransportId(n as u64);
        // A frame's strings are its fields.
        let (a, b) = if op == op::FRAME {
            ("", "")
        } else {
            (strings.field(), strings.field())
        };
        let room = String::from(a);
        let input = match op {
            op::CONNECT => Input::Connect,
            op::CLOSE => Input::Close,
            op::SUBSCRIBE => Input::Subscribe {
                room,
                history: n as u32,
            },
            op::UNSUBSCRIBE => Input::Unsubscribe { room },
            op::SET_PRESENCE => Input::SetPresence {
                room,
                meta: b.into(),
            },
            op::KEYSTROKE => Input::Keystroke { room },
            op::TYPING_STOP => Input::TypingStop { room },
            op::PUBLISH => {
                let refused = match self.core.publish(now, &room, b.into()) {
                    Ok(id) => return id.0 as f64,
                    Err(SendError::QueueFull) => PublishRefused::QueueFull,
                    Err(SendError::NotSubscribed) => PublishRefused::NotSubscribed,
                    Err(SendError::TooLarge) => PublishRefused::TooLarge,
                    Err(SendError::Closed) => PublishRefused::Closed,
                };
                return -(refused as u32 as f64);
            }
            op::TOKEN if a.is_empty() => Input::TokenFailed { terminal: false },
            op::TOKEN => Input::TokenReady(room),
            op::ONLINE => Input::Online,
            op::OFFLINE => Input::Offline,
            op::HIDDEN => Input::Hidden,
            op::VISIBLE => Input::Visible,
            op::FROZEN => Input::Frozen,
            op::RESUMED => Input::Resumed,
            op::TIMEOUT => {
                self.timer = None;
                self.core.handle_timeout(now);
                return 0.0;
            }
            op::TICKET => Input::TicketIssued { id, ticket: room },
            op::OPENED => Input::TransportOpened { id },
            op::FRAME => Input::Frame {
                id,
                frame: wire::server_frame(m as u32, strings),
            },
            op::CLOSED => Input::TransportClosed {
                id,
                code: (m > 0.0).then_some(CloseCode(m as u16)),
                reason: room,
            },
            op::FAILED..=25 => {
                let error = match op - op::FAILED {
                    0 => OpenError::Unauthorized,
                    1 => OpenError::Forbidden,
                    2 => OpenError::SessionUnknown,
                    3 => OpenError::Overloaded {
                        retry_after_ms: ms(m),
                    },
                    4 => OpenError::Unreachable,
                    _ => OpenError::Network,
                };
                Input::OpenFailed { id, error }
            }
            _ => return 0.0,
        };
        self.core.handle_input(now, input);
        0.0
    }

    /// Does what the core asks: I/O records for the façade, events for the app; then re-arms
    /// the timer.
    fn drain(&mut self, now: Instant) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::RequestToken => r(record::TOKEN, "", "", "", "", 0.0, 0.0),
                Output::FetchTicket {
                    id,
                    endpoint,
                    token,
                    resume,
                    probe,
                } => {
                    let extra = endpoint as u32 * 2 + u32::from(probe);
                    r(
                        record::FETCH_TICKET | extra << 5,
                        &token,
                        resume.as_deref().unwrap_or(""),
                        "",
                        "",
                        id.0 as f64,
                        0.0,
                    )
                }
                Output::OpenTransport {
                    id,
                    endpoint,
                    kind,
                    ticket,
                } => {
                    let extra = endpoint as u32 * 4 + kind_index(kind);
                    r(
                        record::OPEN | extra << 5,
                        &ticket,
                        "",
                        "",
                        "",
                        id.0 as f64,
                        0.0,
                    )
                }
                Output::Send { id, frame } => {
                    let f = wire::client_record(&frame);
                    r(
                        record::SEND | f.kind << 5,
                        f.a,
                        f.b,
                        &f.c,
                        "",
                        id.0 as f64,
                        f.y,
                    )
                }
                Output::CloseTransport { id, .. } => r(
                    record::CLOSE,
                    "client closed",
                    "",
                    "",
                    "",
                    id.0 as f64,
                    1000.0,
                ),
                Output::Event(event) => report(event),
            }
        }
        let at = self.core.poll_timeout();
        if at != self.timer {
            self.timer = at;
            let delay = at.map_or(-1.0, |at| at.millis_since(now).min(i32::MAX as u64) as f64);
            r(record::TIMER, "", "", "", "", delay, 0.0);
        }
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

/// Tells the façade why the client closed, for the message of the closed `STATE` or the `ERROR`
/// that follows (the façade builds it: its text in the module was about 0.5 KB gzip).
fn why(reason: &CloseReason) {
    let (kind, text, n) = match reason {
        CloseReason::ClientClosed => (0, "", 0),
        CloseReason::Server { code, reason } => (1, reason.as_str(), code.0.into()),
        CloseReason::Unauthorized => (2, "", 0),
        CloseReason::Forbidden => (3, "", 0),
        CloseReason::TokenFailed => (4, "", 0),
        CloseReason::GaveUp { attempts } => (5, "", *attempts),
    };
    r(record::REASON | kind << 5, text, "", "", "", n.into(), 0.0);
}

/// Reports one event of the core to the façade as records (see [`record`]).
fn report(event: Event) {
    match event {
        Event::StateChanged {
            state,
            transport,
            attempt,
            retry_in_ms,
        } => {
            if let State::Closed { reason } = &state {
                why(reason);
            }
            let extra = state_index(&state) * 4 + transport.map_or(0, kind_index);
            let retry = retry_in_ms.map_or(-1.0, |ms| ms as f64);
            r(
                record::STATE | extra << 5,
                "",
                "",
                "",
                "",
                attempt.into(),
                retry,
            );
        }
        Event::Message {
            room,
            offset,
            sender,
            name,
            payload,
        } => {
            let code = record::MESSAGE | u32::from(name.is_some()) << 5;
            r(
                code,
                &room,
                &sender,
                name.as_deref().unwrap_or(""),
                &payload,
                offset as f64,
                0.0,
            );
        }
        Event::PublishAcked { send_id, offset } => r(
            record::ACKED,
            "",
            "",
            "",
            "",
            send_id.0 as f64,
            offset as f64,
        ),
        Event::PublishFailed {
            send_id,
            code,
            reason,
        } => r(
            record::FAILED,
            wire::error_name(code),
            &reason,
            "",
            "",
            send_id.0 as f64,
            0.0,
        ),
        Event::Subscribed { room } => r(record::SUBSCRIBED, &room, "", "", "", 0.0, 0.0),
        Event::ResyncNeeded { room } => r(record::RESYNC, &room, "", "", "", 0.0, 0.0),
        Event::SubscribeFailed { room, code, reason } => r(
            record::REFUSED,
            &room,
            wire::error_name(code),
            &reason,
            "",
            0.0,
            0.0,
        ),
        Event::PresenceChanged { room, members } => {
            for m in &members {
                r(
                    record::MEMBER,
                    &m.user,
                    &m.name,
                    &m.meta,
                    "",
                    m.connections.into(),
                    0.0,
                );
            }
            r(record::PRESENCE, &room, "", "", "", 0.0, 0.0);
        }
        Event::TypingChanged { room, users } => {
            for u in &users {
                r(record::TYPIST, &u.user, &u.name, "", "", 0.0, 0.0);
            }
            r(record::TYPING, &room, "", "", "", 0.0, 0.0);
        }
        Event::TransportRemembered(kind) => r(
            record::TRANSPORT | kind_index(kind) << 5,
            "",
            "",
            "",
            "",
            0.0,
            0.0,
        ),
        Event::Fallback(_) => {}
        Event::Error { reason } => {
            why(&reason);
            r(record::ERROR, reason.error_code(), "", "", "", 0.0, 0.0)
        }
    }
}

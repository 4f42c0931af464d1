//! The rtlink client connection core: a sans-IO state machine.
//!
//! This module never opens a socket, never reads a clock and never spawns anything. Time comes in
//! as an argument ([`Instant`], milliseconds on the caller's clock) on every call, randomness from
//! the seed given to [`Client::new`]. Everything it wants done comes out of [`Client::poll_output`]
//! as an [`Output`]; everything that happens comes in through [`Client::handle_input`]. That is
//! what lets the whole connection lifecycle — backoff, transport fallback, heartbeats, resume,
//! exactly-once delivery — be tested natively with a virtual clock and a scripted server.
//!
//! # The run loop
//!
//! ```ignore
//! let mut client = Client::new(Config::default(), now(), seed);
//! client.handle_input(now(), Input::Connect);
//! loop {
//!     // 1. Drain everything the core wants done.
//!     while let Some(out) = client.poll_output() {
//!         match out {
//!             Output::RequestToken => { /* call getToken(), later feed Input::TokenReady */ }
//!             Output::FetchTicket { id, endpoint, token, resume, probe } => { /* POST {url[endpoint]}/v1/ticket, later feed Input::TicketIssued */ }
//!             Output::OpenTransport { id, endpoint, kind, ticket } => { /* open it */ }
//!             Output::Send { id, frame } => { /* encode and send on transport `id` */ }
//!             Output::CloseTransport { id, code } => { /* close and drop transport `id` */ }
//!             Output::Event(event) => { /* hand to the app */ }
//!         }
//!     }
//!     // 2. Arm one timer for the next deadline (none: nothing is due until new input).
//!     let deadline = client.poll_timeout();
//!     // 3. Wait for whichever comes first:
//!     match wait(deadline) {
//!         Woke::Timer => client.handle_timeout(now()),
//!         Woke::Input(input) => client.handle_input(now(), input),
//!     }
//!     // and repeat: every call may queue output and move the deadline.
//! }
//! ```
//!
//! App commands are inputs too ([`Input::Subscribe`], …), except [`Client::publish`], which returns
//! the [`SendId`] the later [`Event::PublishAcked`] / [`Event::PublishFailed`] refers to.
//!
//! # What happens, in one place per concern
//!
//! - Connection phases: [`state`]. Attempts, closes and their actions, online/offline:
//!   `connection.rs`. The two-step probe up the ladder: `probe.rs`. What arrives on an open
//!   session: `session.rs`.
//! - Reconnect delays: [`backoff`]. WebSocket → SSE → long polling and back up: [`ladder`].
//!   Which of several server URLs, and failing over: [`endpoints`].
//! - Liveness and throttled background timers: [`heartbeat`].
//! - Publishes until acked: [`send_queue`]. Exactly-once, in-order delivery: [`rooms`].
//! - Presence aggregation: [`presence`]. Typing throttle and expiry: [`typing`].
//!
//! Every state change emits [`Event::StateChanged`]. A closed client ignores all input.

use alloc::{string::String, vec::Vec};

pub mod backoff;
pub mod batch;
pub mod config;
mod connection;
pub mod endpoints;
pub mod event;
pub mod heartbeat;
pub mod ladder;
pub mod presence;
mod probe;
pub mod rng;
pub mod rooms;
pub mod send_queue;
mod session;
pub mod small_map;
pub mod state;
pub mod text;
pub mod time;
mod timer;
pub mod typing;
pub mod wire;

pub use rtlink_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};

pub use config::{BackoffConfig, Config};
pub use event::{
    Event, Input, Member, OpenError, Output, SendError, SendId, TransportId, TransportKind,
    TypingUser,
};
pub use ladder::{Fallback, FallbackReason};
pub use state::{CloseReason, State};
pub use time::Instant;

use backoff::Backoff;
use endpoints::Endpoints;
use heartbeat::Heartbeat;
use ladder::Ladder;
use rng::Rng;
use rooms::Rooms;
use send_queue::SendQueue;
use state::{Phase, Probe};
use timer::{Timer, TimerTable};

/// What the last `welcome` said about the session.
#[derive(Clone, Debug)]
struct Session {
    id: String,
    resume_token: String,
    user_id: String,
    resume_window_ms: u64,
    /// When the session lost its transport (`None` while open).
    lost_at: Option<Instant>,
}

/// One client connection: a session with the server over whichever transport works.
#[derive(Debug)]
pub struct Client {
    cfg: Config,
    rng: Rng,
    now: Instant,
    phase: Phase,
    /// The state the app was last told about.
    shown: State,
    next_transport: u64,
    /// Pending outputs, oldest first (a `Vec`: a `VecDeque` costs ~2 KB of wasm for a queue this short).
    out: Vec<Output>,
    timers: TimerTable,
    backoff: Backoff,
    ladder: Ladder,
    endpoints: Endpoints,
    heartbeat: Heartbeat,
    sends: SendQueue,
    /// Subscribed rooms, each with its presence and typing.
    rooms: Rooms,
    session: Option<Session>,
    /// What the last `welcome` said about publishes (kept across sessions).
    send_limits: send_queue::SendLimits,
    /// When the client last re-authenticated after a 401 or 4009 (another auth failure soon
    /// after is terminal).
    reauth_at: Option<Instant>,
    /// A new-session retry happened since the last `welcome` (a second one backs off).
    new_session_retry: bool,
    online: bool,
    frozen: bool,
    hidden: bool,
}

impl Client {
    /// A client in state `Idle`. `seed` drives all randomness (jitter, publish ids): give every
    /// client a different one (the glue uses `crypto.getRandomValues`).
    pub fn new(cfg: Config, now: Instant, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut id_prefix = String::new();
        text::push_hex16(&mut id_prefix, rng.next_u64());
        Self {
            rng,
            now,
            phase: Phase::Idle,
            shown: State::Idle,
            next_transport: 0,
            out: Vec::new(),
            timers: TimerTable::default(),
            backoff: Backoff::new(cfg.backoff.clone()),
            ladder: Ladder::new(&cfg.transports, cfg.start_transport, cfg.step_down_after),
            endpoints: Endpoints::new(&cfg),
            heartbeat: Heartbeat::new(
                cfg.heartbeat_grace_ms,
                cfg.late_timer_threshold_ms,
                cfg.liveness_probe_window_ms,
            ),
            sends: SendQueue::new(cfg.send_queue_capacity, cfg.ack_timeout_ms, id_prefix),
            rooms: Rooms::default(),
            session: None,
            send_limits: send_queue::SendLimits::default(),
            reauth_at: None,
            new_session_retry: false,
            online: true,
            frozen: false,
            hidden: false,
            cfg,
        }
    }

    /// Feeds one input. Call [`Client::poll_output`] and [`Client::poll_timeout`] afterwards.
    // The three entry points stay out of line: the shipped module is the same (wasm-opt inlines
    // one-caller functions either way), but a size attribution by function name then counts the
    // core's handlers as the core's, not as the glue closure that calls them.
    #[inline(never)]
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        match input {
            Input::Connect => self.connect(),
            Input::Close => self.close_by_app(),
            Input::Subscribe { room, history } => self.subscribe(room, history),
            Input::Unsubscribe { room } => self.unsubscribe(room),
            Input::SetPresence { room, meta } => self.set_presence(room, meta),
            Input::Keystroke { room } => self.keystroke(room),
            Input::TypingStop { room } => self.typing_stop(&room),
            Input::TokenReady(token) => self.on_token_ready(token),
            Input::TokenFailed { terminal } => self.on_token_failed(terminal),
            Input::Online => {
                self.online = true;
                self.resume_if_possible();
            }
            Input::Offline => {
                self.online = false;
                self.suspend();
            }
            Input::Frozen => {
                self.frozen = true;
                self.suspend();
            }
            Input::Resumed => {
                self.frozen = false;
                self.resume_if_possible();
                self.check_liveness(true);
            }
            Input::Hidden => self.hidden = true,
            Input::Visible => {
                self.hidden = false;
                self.check_liveness(false);
            }
            Input::TicketIssued { id, ticket } => self.on_ticket_issued(id, ticket),
            Input::TransportOpened { id } => self.on_transport_opened(id),
            Input::Frame { id, frame } => self.on_frame(id, frame),
            Input::TransportClosed { id, code, reason } => {
                self.on_transport_closed(id, code, reason)
            }
            Input::OpenFailed { id, error } => self.on_open_failed(id, error),
        }
    }

    /// Queues a publish to `room` (which the app must have subscribed to). It is sent now if
    /// open, else on the next `welcome`, and resent after every reconnect until the server
    /// acknowledges it. Ends in exactly one [`Event::PublishAcked`] or [`Event::PublishFailed`].
    #[inline(never)]
    pub fn publish(
        &mut self,
        now: Instant,
        room: &str,
        payload: String,
    ) -> Result<SendId, SendError> {
        self.advance(now);
        self.publish_inner(room, payload)
    }

    /// Handles expired deadlines. Call when the deadline from [`Client::poll_timeout`] passes;
    /// calling it early or repeatedly is harmless.
    #[inline(never)]
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        while let Some(timer) = self.timers.pop_expired(self.now) {
            self.on_timer(timer);
            if self.is_closed() {
                return;
            }
        }
        self.on_heartbeat_timeout();
        self.expire_sends();
        self.expire_typing();
    }

    /// The next thing for the glue to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    /// When [`Client::handle_timeout`] should be called next. `None`: only new input matters.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let heartbeat = if self.is_open() {
            self.heartbeat.next_deadline()
        } else {
            None
        };
        let mut next = Instant::earliest(self.timers.next(), heartbeat);
        next = Instant::earliest(next, self.sends.next_deadline());
        for room in self.rooms.values() {
            next = Instant::earliest(next, room.typing.next_deadline());
        }
        next
    }

    /// The current state (as last reported in [`Event::StateChanged`]).
    pub fn state(&self) -> &State {
        &self.shown
    }

    /// The primary transport, if one is open or opening.
    pub fn primary_transport(&self) -> Option<(TransportId, TransportKind)> {
        match &self.phase {
            Phase::AwaitingWelcome { slot } | Phase::Open { slot, .. } => {
                Some((slot.id, slot.kind))
            }
            _ => None,
        }
    }

    /// The background probe transport, if one is opening (ticket step included).
    pub fn probe_transport(&self) -> Option<(TransportId, TransportKind)> {
        match &self.phase {
            Phase::Open {
                probe: Some(Probe::Opening { slot }),
                ..
            } => Some((slot.id, slot.kind)),
            Phase::Open {
                probe: Some(Probe::AwaitingTicket { id, kind }),
                ..
            } => Some((*id, *kind)),
            _ => None,
        }
    }

    /// The rung the next attempt will use.
    pub fn current_rung(&self) -> TransportKind {
        self.ladder.current()
    }

    /// The endpoint (index into the glue's URLs) of the current or last attempt.
    pub fn endpoint(&self) -> usize {
        self.endpoints.current()
    }

    /// The most recent step down the ladder and why.
    pub fn last_fallback(&self) -> Option<Fallback> {
        self.ladder.last_fallback()
    }

    /// Unacknowledged publishes (queued or in flight).
    pub fn pending_sends(&self) -> usize {
        self.sends.len()
    }

    /// Consecutive failed attempts since the last stable connection.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// The room's current aggregated presence.
    pub fn members(&self, room: &str) -> Vec<Member> {
        self.rooms
            .get(room)
            .map(|r| r.presence.members().to_vec())
            .unwrap_or_default()
    }

    /// The last offset delivered in `room`.
    pub fn last_offset(&self, room: &str) -> Option<u64> {
        self.rooms.last_offset(room)
    }

    /// Whether the page was last reported hidden.
    pub fn is_hidden(&self) -> bool {
        self.hidden
    }

    // --- plumbing shared by connection.rs and session.rs ---

    /// Moves the clock; a `now` earlier than the last one counts as no time passing.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
    }

    fn suspended(&self) -> bool {
        !self.online || self.frozen
    }

    /// Queues an output. One out-of-line body: inlined, the `Vec` growth check and the move of
    /// an `Output` would be repeated at each of the few dozen places that queue one.
    #[inline(never)]
    fn push_out(&mut self, out: Output) {
        self.out.push(out);
    }

    fn emit(&mut self, event: Event) {
        self.push_out(Output::Event(event));
    }

    /// Sends on the primary transport, if a session is open on it.
    fn send(&mut self, frame: ClientFrame) {
        if let Phase::Open { slot, .. } = &self.phase {
            let id = slot.id;
            self.push_out(Output::Send { id, frame });
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    fn mint_transport_id(&mut self) -> TransportId {
        self.next_transport += 1;
        TransportId(self.next_transport)
    }

    /// Enters `phase` and tells the app if what it shows changed.
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        let attempt = self.backoff.failures().saturating_add(1);
        let (state, transport, retry_in_ms) = match &self.phase {
            Phase::Idle => (State::Idle, None, None),
            Phase::AwaitingToken | Phase::AwaitingTicket { .. } => {
                let transport = self.ladder.current();
                (
                    State::Connecting { transport, attempt },
                    Some(transport),
                    None,
                )
            }
            Phase::AwaitingWelcome { slot } => (
                State::Connecting {
                    transport: slot.kind,
                    attempt,
                },
                Some(slot.kind),
                None,
            ),
            Phase::Open { slot, .. } => {
                let session = self
                    .session
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                (
                    State::Open {
                        transport: slot.kind,
                        session,
                    },
                    Some(slot.kind),
                    None,
                )
            }
            Phase::BackingOff { until } => {
                let until = *until;
                (
                    State::BackingOff { until, attempt },
                    None,
                    Some(until.millis_since(self.now)),
                )
            }
            Phase::Offline => (State::Offline, None, None),
            Phase::Closed { reason } => (
                State::Closed {
                    reason: reason.clone(),
                },
                None,
                None,
            ),
        };
        if state != self.shown {
            self.shown = state.clone();
            let attempt = match state {
                State::Connecting { .. } | State::BackingOff { .. } => attempt,
                _ => 0,
            };
            self.emit(Event::StateChanged {
                state,
                transport,
                attempt,
                retry_in_ms,
            });
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Reconnect => {
                if matches!(self.phase, Phase::BackingOff { .. }) {
                    self.start_attempt();
                }
            }
            Timer::FirstFrame => self.on_first_frame_timeout(),
            Timer::ProbeStart => self.start_probe(),
            Timer::ProbeFirstFrame => self.probe_failed(),
            Timer::Stable => {
                if self.is_open() {
                    self.backoff.reset();
                }
            }
        }
    }
}

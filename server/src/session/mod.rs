//! Sessions, independent of the transport that carries them.
//!
//! A session owns an **outbox**: the frames queued for the client, each with a sequence number
//! (`seq`, from 1, per session). Whatever transport is attached reads the outbox: WebSocket and
//! SSE take frames out as they write them; long polling keeps them until the client's cursor
//! says they arrived. The outbox is bounded (frames and bytes); overflow empties it and queues a
//! close 4004 slow_consumer instead.
//!
//! At most one transport is attached. Attaching another supersedes the old one (it is told to
//! close with 4006) and re-queues the undelivered frames behind the new `welcome`. A detached
//! session lives on for the resume window; the [`crate::hub::Hub`] owns those timers.
//!
//! All state sits behind one short-held `parking_lot::Mutex`; nothing awaits while holding it.
//! Changes are announced with a version counter kept under that same lock, beside the wakers of
//! the tasks waiting for the next change ([`Session::changed`]): a waiter checks the version and
//! registers in one critical section, so it never misses a wake-up, and a change nobody waits
//! for costs an increment. (A `tokio::sync::watch` channel did this before at ~750 instructions
//! per change, eight `Notify` mutexes among them: a fifth of the server's user-space cost per
//! fan-out delivery under callgrind; docs/BENCHMARKS.md.)

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use rtlink_protocol::{CloseCode, ServerFrame};
use rustc_hash::FxBuildHasher;
use tokio::sync::{oneshot, Notify};

use crate::auth::Claims;
use crate::broker::{encode_frame, Frame, RoomEvent, RoomEventKind};
use crate::config::TransportKind;
use crate::limits::{ConnGuard, Strikes, TokenBucket};
use crate::metrics::{DropReason, Metrics};
use crate::replay::Replay;
use crate::write_window::WriteWindow;
use crate::ws_wire::{wire_len, DirectSocket};

/// One queued frame.
#[derive(Clone, Debug)]
pub struct OutFrame {
    pub seq: u64,
    pub frame: Frame,
    /// Set on the last frame of a transport: after writing it, close with this code.
    pub close: Option<CloseCode>,
}

/// Bounds of an outbox.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Outbox {
    limits: OutboxLimits,
    next_seq: u64,
    frames: VecDeque<OutFrame>,
    bytes: usize,
    /// A close is queued: later frames are dropped until the next attach.
    closing: bool,
}

impl Outbox {
    fn enqueue(&mut self, frame: Frame, close: Option<CloseCode>) {
        self.next_seq += 1;
        self.bytes += frame.len();
        self.frames.push_back(OutFrame {
            seq: self.next_seq,
            frame,
            close,
        });
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    fn pop_through(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|f| f.seq <= seq) {
            if let Some(f) = self.frames.pop_front() {
                self.bytes = self.bytes.saturating_sub(f.frame.len());
            }
        }
    }
}

/// A subscription of this session to a room.
#[derive(Debug)]
pub struct RoomSub {
    /// Highest message offset queued to the client.
    pub last_offset: u64,
    /// The room epoch `last_offset` counts in: the one the client was told in `subscribed`
    /// (`None` until a replay read it).
    pub epoch: Option<Arc<str>>,
    /// While a history replay runs, live events wait here (bounded by the outbox limit). Boxed:
    /// a subscription is live nearly all its life, and the session's room table holds a slot
    /// of this size for every room (docs/BENCHMARKS.md, idle memory).
    pub replay: Option<Box<Replay>>,
    /// This connection's presence metadata in the room.
    pub meta: Box<str>,
    /// Bumped (wrapping) by every typing change; a TTL timer only fires for its own generation.
    pub typing_gen: u32,
    pub typing_active: bool,
}

/// The transport currently carrying a session.
#[derive(Debug)]
struct Attachment {
    gen: u64,
    kind: TransportKind,
    /// Tells the transport to close at once (superseded, heartbeat timeout).
    force: Option<oneshot::Sender<CloseCode>>,
    last_seen: Instant,
    _guard: ConnGuard,
}

/// A transport opened as a probe of the session: it got its own `welcome` and carries nothing
/// else until the client sends `switch` on it; then it becomes the attachment.
#[derive(Debug)]
struct ProbeAttachment {
    gen: u64,
    kind: TransportKind,
    force: Option<oneshot::Sender<CloseCode>>,
    /// Frames for the probe alone (its `welcome`).
    frames: Vec<OutFrame>,
    opened: Instant,
    guard: ConnGuard,
}

/// The write side of a WebSocket transport of this session, as routing sees it
/// (transport::websocket, crate::ws_wire).
#[derive(Debug)]
struct WsWire {
    /// The transport's generation: direct writes only while it is the attached one.
    gen: u64,
    /// Plain TCP: a frame pushed while the outbox is empty and the writer idle is written to the
    /// socket at once, from the task that pushed it (no wake-up of the writer).
    direct: Option<DirectSocket>,
    /// The writer took frames (or control bytes) and has not come back for more with nothing
    /// left: nothing may be written around it. Cleared by its first empty take.
    busy: bool,
    /// A frame a direct write put on the wire only in part (the socket took no more), and how
    /// many of its bytes (header included) went: the writer finishes it before anything else,
    /// a close frame included. Like frames the writer took, it is no longer in the outbox.
    partial: Option<(Frame, usize)>,
    /// Control frames tungstenite's reader wants sent (pong, the close reply), already framed.
    control: Vec<u8>,
    /// Write coalescing (`--write-window`): direct writes and the writer's batches both count.
    window: WriteWindow,
    /// The reader ended (the peer closed or went away): the writer writes what is queued at
    /// once, window or not, then stops ([`Session::finish_ws`]).
    finishing: bool,
}

/// What the WebSocket writer is to do next ([`Session::take_ws_batch`]).
#[derive(Debug)]
pub enum WsTake {
    /// Its transport is neither attached nor the probe any more.
    Gone,
    /// Something is queued but the connection wrote less than its write window ago: come back
    /// at this instant (nothing was taken).
    Hold(tokio::time::Instant),
    /// Write what was taken (possibly nothing), after the rest of this frame a direct write
    /// left unfinished, if any.
    Write(Option<(Frame, usize)>),
}

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// In the outbox: the transport must be woken.
    Queued,
    /// Written to the socket directly: nothing for the transport to do.
    Written,
    /// Dropped (a close is queued, a duplicate offset, your own typing, or buffered for a running
    /// replay, which takes it itself).
    Dropped,
}

/// What [`SessionState::deliver`] did with a room event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Pushed(Pushed),
    /// A message of another epoch arrived: the subscription must be resynchronised (nothing
    /// was delivered).
    Resync,
}

/// What an attached transport holds.
pub struct Attached {
    pub gen: u64,
    pub force_close: oneshot::Receiver<CloseCode>,
    /// The session's change version this transport has seen ([`Session::changed`]).
    pub seen: u64,
}

/// The tasks waiting for a session's next change. Nearly always one (the transport's writer),
/// kept inline so registering and waking it allocate nothing.
#[derive(Default)]
struct Waiters {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Waiters {
    fn register(&mut self, waker: &Waker) {
        match &mut self.first {
            None => self.first = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !self.more.iter().any(|w| w.will_wake(waker)) {
                    self.more.push(waker.clone());
                }
            }
        }
    }

    fn wake_all(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        for w in self.more {
            w.wake();
        }
    }
}

pub struct SessionState {
    outbox: Outbox,
    attachment: Option<Attachment>,
    /// The generation of the last transport attached.
    attach_gen: u64,
    /// The last generation handed out (to an attachment or a probe).
    last_gen: u64,
    /// Boxed: probes are rare and short, the session's state is kept for every connection.
    probe: Option<Box<ProbeAttachment>>,
    /// Looked up once per delivery: a fast hash (Fx) instead of SipHash, which was half of
    /// `deliver`'s cost. Hash flooding is no concern here: a session holds at most
    /// `--max-rooms` subscriptions.
    pub rooms: HashMap<String, RoomSub, FxBuildHasher>,
    /// The grace period ran out while detached: presence was left and is rejoined on attach.
    pub presence_left: bool,
    /// Publish, presence and typing frames.
    pub bucket: TokenBucket,
    /// Subscribe and unsubscribe (each one fans a presence change out to a whole room, or
    /// reads history); the same size as `bucket`, but a client over it is delayed, not refused.
    pub room_bucket: TokenBucket,
    pub strikes: Strikes,
    pub ended: bool,
    /// Last frame received from the client (WebSocket liveness).
    pub last_inbound: Instant,
    /// The close a long-poll client has not seen yet (its transport ended while no poll waited).
    poll_close: Option<CloseCode>,
    /// Bumped by every poll request; an older held poll sees it and answers empty.
    poll_waiter: u64,
    replay_gen: u64,
    /// Bumped by every change a transport may act on ([`Session::update`]).
    version: u64,
    waiters: Waiters,
    /// A replay waits for the outbox to drain ([`Session::drained`]).
    replay_blocked: bool,
    /// The WebSocket write side, while a WebSocket transport (or probe) runs.
    ws: Option<Box<WsWire>>,
}

/// The claims a session acts with. The user (`sub`) is fixed for the session's life; the rest
/// (display name, rooms, expiry) is replaced when the client resumes with a newer token, so a
/// re-authenticated session runs on the new token's claims.
pub struct SessionClaims {
    /// User id.
    pub sub: String,
    current: Mutex<Claims>,
}

impl SessionClaims {
    pub fn new(claims: Claims) -> Self {
        Self {
            sub: claims.sub.clone(),
            current: Mutex::new(claims),
        }
    }

    /// Display name.
    pub fn name(&self) -> String {
        self.current.lock().name.clone()
    }

    pub fn may_access(&self, room: &str) -> bool {
        self.current.lock().may_access(room)
    }

    pub fn expired(&self) -> bool {
        self.current.lock().expired()
    }

    /// The current claims.
    pub fn get(&self) -> Claims {
        self.current.lock().clone()
    }

    /// Adopts a newer token's claims (same user). Returns false, changing nothing, for
    /// another user's claims.
    pub fn replace(&self, claims: Claims) -> bool {
        if claims.sub != self.sub {
            return false;
        }
        *self.current.lock() = claims;
        true
    }
}

pub struct Session {
    /// Public id; also the presence connection id.
    pub id: String,
    /// The client address the session was opened from (counted under `--max-sessions-per-ip`).
    pub ip: Option<IpAddr>,
    /// Secret that resumes the session and authenticates `/v1/send` and polls.
    pub resume_token: String,
    pub claims: SessionClaims,
    state: Mutex<SessionState>,
    /// Signalled when the transport takes frames out of the outbox (a waiting replay continues).
    drained: Notify,
    /// Serialises the handling of inbound frames (WebSocket reader, concurrent `/v1/send`s).
    pub inbound: tokio::sync::Mutex<()>,
    /// Serialises presence leave-all / rejoin-all so they cannot interleave.
    pub presence_lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the resume token.
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user", &self.claims.sub)
            .finish()
    }
}

impl SessionState {
    /// Queues a frame. On overflow the outbox is emptied and a close 4004 is queued instead.
    ///
    /// With nothing queued and the WebSocket writer idle, the frame is written to a plain-TCP
    /// socket at once instead (order holds: nothing else is pending or being written).
    pub fn push(&mut self, frame: Frame, metrics: &Metrics) -> Pushed {
        self.push_to(frame, metrics, Some(tokio::time::Instant::now()))
    }

    /// [`SessionState::push`], writing directly only with `direct`, the time now (see
    /// [`Session::deliver`]), and only if the connection's write window allows it then.
    fn push_to(
        &mut self,
        frame: Frame,
        metrics: &Metrics,
        direct: Option<tokio::time::Instant>,
    ) -> Pushed {
        let ob = &mut self.outbox;
        if ob.closing {
            return Pushed::Dropped;
        }
        if let Some(now) = direct.filter(|_| ob.frames.is_empty()) {
            let attached = self.attachment.as_ref().map(|a| a.gen);
            if let Some(w) = self.ws.as_deref_mut().filter(|w| {
                !w.busy
                    && w.partial.is_none()
                    && attached == Some(w.gen)
                    && w.window.hold_until(now).is_none()
            }) {
                if let Some(direct) = &w.direct {
                    match direct.try_write_frame(&frame) {
                        Ok(n) if n >= wire_len(&frame) => {
                            w.window.wrote(now);
                            metrics.frames_out(1);
                            return Pushed::Written;
                        }
                        Ok(n) => {
                            // The rest goes out through the writer, before anything else.
                            w.window.wrote(now);
                            w.partial = Some((frame, n));
                            return Pushed::Queued;
                        }
                        // The socket is full (or failed): the writer takes it from here.
                        Err(_) => {}
                    }
                }
            }
        }
        if ob.frames.len() >= ob.limits.max_frames || ob.bytes + frame.len() > ob.limits.max_bytes {
            self.push_overflow(metrics);
            return Pushed::Queued;
        }
        ob.enqueue(frame, None);
        Pushed::Queued
    }

    pub fn push_frame(&mut self, frame: &ServerFrame, metrics: &Metrics) {
        self.push(encode_frame(frame), metrics);
    }

    /// Starts the write side of WebSocket transport `gen` (attached or a probe): control frames
    /// can be queued for it, and with `direct`, frames can be written straight to its socket.
    /// The write side of the attached WebSocket is never replaced by another one's (a probe
    /// beside it then has none: its pongs are dropped). `window`: `--write-window`.
    pub fn set_ws_wire(&mut self, gen: u64, direct: Option<DirectSocket>, window: Duration) {
        let attached = self.attached_gen();
        if self.ws.as_ref().is_some_and(|w| attached == Some(w.gen)) {
            return;
        }
        self.ws = Some(Box::new(WsWire {
            gen,
            direct,
            busy: false,
            partial: None,
            control: Vec::new(),
            window: WriteWindow::new(window),
            finishing: false,
        }));
    }

    /// Forgets the write side of WebSocket transport `gen` (it ended), closing its socket's
    /// last shared handle.
    pub fn clear_ws_wire(&mut self, gen: u64) {
        if self.ws.as_ref().is_some_and(|w| w.gen == gen) {
            self.ws = None;
        }
    }

    /// Queues the transport's last frame; frames pushed after it are dropped.
    pub fn push_close(&mut self, code: CloseCode, reason: &str) {
        if self.outbox.closing || self.attachment.is_none() {
            return;
        }
        self.outbox.closing = true;
        self.outbox.enqueue(close_frame(code, reason), Some(code));
    }

    pub fn attached_kind(&self) -> Option<TransportKind> {
        self.attachment.as_ref().map(|a| a.kind)
    }

    pub fn attached_gen(&self) -> Option<u64> {
        self.attachment.as_ref().map(|a| a.gen)
    }

    pub fn transport_last_seen(&self) -> Option<Instant> {
        self.attachment.as_ref().map(|a| a.last_seen)
    }

    /// True if no transport was attached since generation `gen`.
    pub fn attach_gen_is(&self, gen: u64) -> bool {
        self.attach_gen == gen
    }

    /// A change: bumps the version and hands over the waiters to wake (after unlocking).
    fn changed(&mut self) -> Waiters {
        self.version = self.version.wrapping_add(1);
        std::mem::take(&mut self.waiters)
    }

    /// A replay found the outbox too full and waits for [`Session::drained`]: the next drain
    /// signals it (drains nobody waits for signal nothing).
    pub fn wait_for_drain(&mut self) {
        self.replay_blocked = true;
    }

    pub fn next_replay_gen(&mut self) -> u64 {
        self.replay_gen += 1;
        self.replay_gen
    }

    /// Routes a room event to the client (or into a running replay's buffer).
    ///
    /// Returns true if the subscription must be resynchronised instead: a message of another
    /// epoch arrived (the room's offsets restarted, e.g. Redis lost its data), so the offsets
    /// the client holds mean nothing and the message is not delivered here.
    #[must_use]
    pub fn deliver(
        &mut self,
        ev: &RoomEvent,
        own_user: &str,
        metrics: &Metrics,
        direct: Option<tokio::time::Instant>,
    ) -> Delivery {
        const DROPPED: Delivery = Delivery::Pushed(Pushed::Dropped);
        let Some(sub) = self.rooms.get_mut(&*ev.room) else {
            return DROPPED;
        };
        if let Some(replay) = &mut sub.replay {
            let limits = self.outbox.limits;
            if replay.buffered.len() < limits.max_frames
                && replay.buffered_bytes + ev.frame.len() <= limits.max_bytes
            {
                replay.buffered_bytes += ev.frame.len();
                replay.buffered.push_back(ev.clone());
                return DROPPED;
            }
            // A replay that cannot keep up is a slow consumer too.
            sub.replay = None;
            self.push_overflow(metrics);
            return Delivery::Pushed(Pushed::Queued);
        }
        match &ev.kind {
            RoomEventKind::Message(m) => {
                if sub.epoch.as_ref().is_some_and(|e| other_epoch(e, &m.epoch)) {
                    return Delivery::Resync;
                }
                if m.offset <= sub.last_offset {
                    return DROPPED;
                }
                sub.last_offset = m.offset;
            }
            // Your own typing is not news to you.
            RoomEventKind::Typing { user, .. } if user == own_user => return DROPPED,
            _ => {}
        }
        Delivery::Pushed(self.push_to(ev.frame.clone(), metrics, direct))
    }

    /// True if a replay may queue a frame of `len` bytes now: replays use at most half the
    /// outbox (the rest is for live traffic), and always get one frame into an empty outbox.
    pub fn has_replay_room(&self, len: usize) -> bool {
        let ob = &self.outbox;
        !ob.closing
            && (ob.frames.is_empty()
                || (ob.frames.len() < ob.limits.max_frames / 2
                    && ob.bytes + len <= ob.limits.max_bytes / 2))
    }

    fn push_overflow(&mut self, metrics: &Metrics) {
        metrics.count_drop(DropReason::SlowConsumer);
        self.outbox.clear();
        self.outbox.closing = true;
        self.outbox.enqueue(
            close_frame(CloseCode::SLOW_CONSUMER, "outbound queue overflow"),
            Some(CloseCode::SLOW_CONSUMER),
        );
    }
}

impl Session {
    pub fn new(
        id: String,
        ip: Option<IpAddr>,
        resume_token: String,
        claims: Claims,
        limits: OutboxLimits,
        bucket: TokenBucket,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Self {
            id,
            ip,
            // On a cluster node the token also names this node (`{node_id}.{secret}`).
            resume_token,
            claims: SessionClaims::new(claims),
            state: Mutex::new(SessionState {
                outbox: Outbox {
                    limits,
                    next_seq: 0,
                    frames: VecDeque::new(),
                    bytes: 0,
                    closing: false,
                },
                attachment: None,
                attach_gen: 0,
                last_gen: 0,
                probe: None,
                rooms: HashMap::default(),
                presence_left: false,
                room_bucket: bucket.clone(),
                bucket,
                strikes: Strikes::default(),
                ended: false,
                last_inbound: now,
                poll_close: None,
                poll_waiter: 0,
                version: 0,
                waiters: Waiters::default(),
                replay_blocked: false,
                replay_gen: 0,
                ws: None,
            }),
            drained: Notify::new(),
            inbound: tokio::sync::Mutex::new(()),
            presence_lock: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock()
    }

    /// Runs `f` on the state, then wakes the attached transport.
    pub fn update<R>(&self, f: impl FnOnce(&mut SessionState, &Metrics) -> R) -> R {
        let (r, waiters) = {
            let mut st = self.state.lock();
            let r = f(&mut st, &self.metrics);
            (r, st.changed())
        };
        waiters.wake_all();
        r
    }

    pub fn wake(&self) {
        self.update(|_, _| ());
    }

    /// Routes a room event to this session ([`SessionState::deliver`]), waking the transport
    /// only if a frame was queued for it. True if the subscription must be resynchronised.
    ///
    /// With `direct` (the time now), an idle WebSocket whose write window has passed gets the
    /// frame written at once by the caller. The hub passes None while events wait behind this
    /// one: one task writing to every subscriber one event at a time does a system call per
    /// delivery on one core, while queued frames go out from each subscriber's writer, on
    /// every core, several per `writev`.
    pub fn deliver(&self, ev: &RoomEvent, direct: Option<tokio::time::Instant>) -> bool {
        let (delivery, waiters) = {
            let mut st = self.state.lock();
            let delivery = st.deliver(ev, &self.claims.sub, &self.metrics, direct);
            let waiters = (delivery == Delivery::Pushed(Pushed::Queued)).then(|| st.changed());
            (delivery, waiters)
        };
        if let Some(w) = waiters {
            w.wake_all();
        }
        delivery == Delivery::Resync
    }

    /// Queues already framed WebSocket control bytes for transport `gen` and wakes its writer.
    /// Dropped if `gen` is no longer the write side's transport.
    pub fn queue_ws_control(&self, gen: u64, bytes: &[u8]) {
        self.update(|st, _| {
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                w.control.extend_from_slice(bytes);
            }
        });
    }

    /// For the WebSocket writer of `gen`, at `now`: moves every queued frame into `frames` and
    /// the pending control bytes into `control`, and hands over a frame a direct write left
    /// unfinished (write its rest first). Taking nothing marks the writer idle (direct writes
    /// may go ahead); taking something marks it busy until then, and starts a write window.
    /// Something queued within the window is left where it is: [`WsTake::Hold`].
    pub fn take_ws_batch(
        &self,
        gen: u64,
        now: tokio::time::Instant,
        frames: &mut VecDeque<OutFrame>,
        control: &mut Vec<u8>,
    ) -> WsTake {
        let (partial, replay_blocked) = {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let is_probe = st.probe.as_ref().is_some_and(|p| p.gen == gen);
            if !is_probe && st.attached_gen() != Some(gen) {
                return WsTake::Gone;
            }
            if let Some(w) = st.ws.as_deref().filter(|w| w.gen == gen) {
                let queued = !w.control.is_empty()
                    || w.partial.is_some()
                    || match &st.probe {
                        Some(p) if is_probe => !p.frames.is_empty(),
                        _ => !st.outbox.frames.is_empty(),
                    };
                if let Some(until) = w.window.hold_until(now).filter(|_| queued) {
                    if !w.finishing {
                        return WsTake::Hold(until);
                    }
                }
                if w.finishing && !queued {
                    return WsTake::Gone;
                }
            }
            let blocked = if let Some(probe) = st.probe.as_mut().filter(|_| is_probe) {
                frames.extend(probe.frames.drain(..));
                false
            } else {
                st.outbox.bytes = 0;
                if frames.is_empty() {
                    // The outbox's buffer goes to the writer, which frees it after writing: an
                    // idle session keeps no queue capacity.
                    *frames = std::mem::take(&mut st.outbox.frames);
                } else {
                    frames.extend(st.outbox.frames.drain(..));
                }
                !frames.is_empty() && std::mem::take(&mut st.replay_blocked)
            };
            let mut partial = None;
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                std::mem::swap(control, &mut w.control);
                partial = w.partial.take();
                w.busy = partial.is_some() || !frames.is_empty() || !control.is_empty();
                if w.busy {
                    w.window.wrote(now);
                }
            }
            (partial, blocked)
        };
        if replay_blocked {
            self.drained.notify_waiters();
        }
        WsTake::Write(partial)
    }

    /// The reader of WebSocket transport `gen` ended: its writer is to write what is queued
    /// now (frames its write window holds, the close reply) and then stop
    /// ([`WsTake::Gone`]).
    pub fn finish_ws(&self, gen: u64) {
        self.update(|st, _| {
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                w.finishing = true;
            }
        });
    }

    /// For the WebSocket writer of `gen` about to send a close frame after its transport was
    /// detached: the frame a direct write left unfinished, to finish first.
    pub fn take_ws_unfinished(&self, gen: u64) -> Option<(Frame, usize)> {
        let mut st = self.state.lock();
        st.ws
            .as_deref_mut()
            .filter(|w| w.gen == gen)?
            .partial
            .take()
    }

    /// Starts the write side of WebSocket transport `gen` (see [`SessionState::set_ws_wire`]).
    pub fn set_ws_wire(&self, gen: u64, direct: Option<DirectSocket>, window: Duration) {
        self.state.lock().set_ws_wire(gen, direct, window);
    }

    /// Ends the write side of WebSocket transport `gen` (see [`SessionState::clear_ws_wire`]).
    pub fn clear_ws_wire(&self, gen: u64) {
        self.state.lock().clear_ws_wire(gen);
    }

    /// The change version now: pass it to [`Session::changed`].
    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    /// Resolves once the session changed after version `seen` (at once if it already has),
    /// and moves `seen` to the current version.
    pub async fn changed(&self, seen: &mut u64) {
        std::future::poll_fn(|cx| {
            let mut st = self.state.lock();
            if st.version != *seen {
                *seen = st.version;
                return Poll::Ready(());
            }
            st.waiters.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    pub fn push_frame(&self, frame: &ServerFrame) {
        self.update(|st, m| st.push_frame(frame, m));
    }

    /// Asks the attached transport to close after the frames already queued.
    pub fn close_transport(&self, code: CloseCode, reason: &str) {
        self.update(|st, _| st.push_close(code, reason));
    }

    /// Attaches a transport. The old one, if any, is told to close with 4006. Undelivered
    /// frames are queued again behind `welcome` (which must be the first frame the client sees).
    pub fn attach(&self, kind: TransportKind, guard: ConnGuard, welcome: &ServerFrame) -> Attached {
        let (tx, rx) = oneshot::channel();
        let attached = self.update(|st, metrics| {
            if let Some(old) = st.attachment.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
                if old.kind == TransportKind::Poll {
                    st.poll_close = Some(CloseCode::SUPERSEDED);
                }
            }
            if kind == TransportKind::Poll {
                st.poll_close = None;
            }
            st.last_gen += 1;
            st.attach_gen = st.last_gen;
            let now = Instant::now();
            st.attachment = Some(Attachment {
                gen: st.attach_gen,
                kind,
                force: Some(tx),
                last_seen: now,
                _guard: guard,
            });
            st.last_inbound = now;
            let pending: Vec<OutFrame> = st.outbox.frames.drain(..).collect();
            st.outbox.bytes = 0;
            st.outbox.closing = false;
            st.push_frame(welcome, metrics);
            for f in pending.into_iter().filter(|f| f.close.is_none()) {
                st.push(f.frame, metrics);
            }
            st.attach_gen
        });
        Attached {
            gen: attached,
            force_close: rx,
            // Transports take what is queued before they first wait, so a change between the
            // update above and this read is not missed.
            seen: self.version(),
        }
    }

    /// Opens a probe transport (see [`ProbeAttachment`]): `welcome` goes to it alone, the
    /// session stays on its transport. A previous probe is closed with 4006.
    pub fn open_probe(
        &self,
        kind: TransportKind,
        guard: ConnGuard,
        welcome: &ServerFrame,
    ) -> Attached {
        let (tx, rx) = oneshot::channel();
        let gen = self.update(|st, _| {
            if let Some(old) = st.probe.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
            }
            st.last_gen += 1;
            let frame = encode_frame(welcome);
            st.probe = Some(Box::new(ProbeAttachment {
                gen: st.last_gen,
                kind,
                force: Some(tx),
                frames: vec![OutFrame {
                    seq: 0,
                    frame,
                    close: None,
                }],
                opened: Instant::now(),
                guard,
            }));
            st.last_gen
        });
        Attached {
            gen,
            force_close: rx,
            // Transports take what is queued before they first wait, so a change between the
            // update above and this read is not missed.
            seen: self.version(),
        }
    }

    /// `switch` arrived: the probe becomes the session's transport, the old one is told to close
    /// with 4006, and frames it did not deliver follow on the probe. False without a probe.
    pub fn commit_probe(&self) -> bool {
        self.update(|st, _| {
            let Some(probe) = st.probe.take() else {
                return false;
            };
            if let Some(old) = st.attachment.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
                if old.kind == TransportKind::Poll {
                    st.poll_close = Some(CloseCode::SUPERSEDED);
                }
            }
            st.attach_gen = probe.gen;
            let now = Instant::now();
            st.attachment = Some(Attachment {
                gen: probe.gen,
                kind: probe.kind,
                force: probe.force,
                last_seen: now,
                _guard: probe.guard,
            });
            st.last_inbound = now;
            st.outbox.closing = false;
            st.outbox.frames.retain(|f| f.close.is_none());
            st.outbox.bytes = st.outbox.frames.iter().map(|f| f.frame.len()).sum();
            true
        })
    }

    /// Closes a probe that was not committed within `max_age` (its client is gone or never
    /// got the `welcome`).
    pub fn expire_probe(&self, max_age: std::time::Duration) {
        let mut st = self.state.lock();
        if st
            .probe
            .as_ref()
            .is_some_and(|p| p.opened.elapsed() > max_age)
        {
            if let Some(force) = st.probe.take().and_then(|p| p.force) {
                let _ = force.send(CloseCode::HEARTBEAT_TIMEOUT);
            }
        }
    }

    /// Detaches the transport `gen` if it is still the attached one. True if it was. (A probe
    /// that ends is simply forgotten: the session never moved to it.)
    pub fn detach(&self, gen: u64) -> bool {
        let mut st = self.state.lock();
        if st.probe.as_ref().is_some_and(|p| p.gen == gen) {
            st.probe = None;
            return false;
        }
        if st.attached_gen() != Some(gen) {
            return false;
        }
        if let Some(a) = st.attachment.take() {
            if a.kind == TransportKind::Poll && st.outbox.closing {
                // The poll client learns about its close from its next poll.
                st.poll_close = st.outbox.frames.back().and_then(|f| f.close);
            }
        }
        st.outbox.closing = false;
        st.outbox.frames.retain(|f| f.close.is_none());
        true
    }

    /// Closes the attached transport at once (without waiting for queued frames). Returns the
    /// detached generation.
    pub fn force_close(&self, code: CloseCode) -> Option<u64> {
        let gen = {
            let mut st = self.state.lock();
            if let Some(force) = st.probe.take().and_then(|p| p.force) {
                let _ = force.send(code);
            }
            let a = st.attachment.take()?;
            if let Some(force) = a.force {
                let _ = force.send(code);
            }
            if a.kind == TransportKind::Poll {
                st.poll_close = Some(code);
            }
            st.outbox.closing = false;
            st.outbox.frames.retain(|f| f.close.is_none());
            a.gen
        };
        self.wake();
        Some(gen)
    }

    /// For streaming transports: takes every queued frame, if `gen` is still attached (or is
    /// the probe: then its own frames).
    pub fn take_frames(&self, gen: u64) -> Option<Vec<OutFrame>> {
        let (frames, replay_blocked) = {
            let mut st = self.state.lock();
            if let Some(probe) = st.probe.as_mut().filter(|p| p.gen == gen) {
                return Some(std::mem::take(&mut probe.frames));
            }
            if st.attached_gen() != Some(gen) {
                return None;
            }
            st.outbox.bytes = 0;
            let frames: Vec<OutFrame> = st.outbox.frames.drain(..).collect();
            let blocked = !frames.is_empty() && std::mem::take(&mut st.replay_blocked);
            (frames, blocked)
        };
        if replay_blocked {
            self.drained.notify_waiters();
        }
        Some(frames)
    }

    /// For long polling: forgets frames up to `cursor`, returns copies of the later ones.
    pub fn frames_after(&self, cursor: u64) -> Vec<OutFrame> {
        let (replay_blocked, frames) = {
            let mut st = self.state.lock();
            let before = st.outbox.frames.len();
            st.outbox.pop_through(cursor);
            let frames: Vec<OutFrame> = st.outbox.frames.iter().cloned().collect();
            let popped = before != frames.len();
            (popped && std::mem::take(&mut st.replay_blocked), frames)
        };
        if replay_blocked {
            self.drained.notify_waiters();
        }
        frames
    }

    /// Resolves when the transport next takes frames out of the outbox. `enable()` it before
    /// checking the outbox (under the lock, with [`SessionState::wait_for_drain`] when it is
    /// too full), so a drain in between is not missed.
    pub fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Registers a new poll request; returns its ticket (older held polls then answer empty).
    pub fn begin_poll(&self) -> u64 {
        let id = {
            let mut st = self.state.lock();
            st.poll_waiter += 1;
            if let Some(a) = &mut st.attachment {
                a.last_seen = Instant::now();
            }
            st.poll_waiter
        };
        self.wake();
        id
    }

    pub fn poll_superseded(&self, ticket: u64) -> bool {
        self.state.lock().poll_waiter != ticket
    }

    /// Marks the poll transport as seen (end of a poll request).
    pub fn touch(&self) {
        if let Some(a) = &mut self.state.lock().attachment {
            a.last_seen = Instant::now();
        }
    }

    /// The close a detached long-poll client should be told about, consumed.
    pub fn take_poll_close(&self) -> Option<CloseCode> {
        self.state.lock().poll_close.take()
    }
}

/// True if a message of epoch `message` does not count in `held` (an empty epoch is unknown:
/// an event from an older node).
pub fn other_epoch(held: &str, message: &str) -> bool {
    !held.is_empty() && !message.is_empty() && held != message
}

pub fn close_frame(code: CloseCode, reason: &str) -> Frame {
    encode_frame(&ServerFrame::Close {
        code,
        reason: reason.to_owned(),
    })
}

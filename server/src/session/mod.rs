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

mod attachment;
mod claims;
mod outbox;
mod state;
mod subscription;
mod waiters;
mod ws_write_side;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};
use rtlink_protocol::{CloseCode, ServerFrame};
use tokio::sync::Notify;

pub use attachment::Attached;
pub use claims::SessionClaims;
pub use outbox::{OutFrame, OutboxLimits};
pub use state::{Delivery, Pushed, SessionState};
pub use subscription::{other_epoch, RoomSub};
pub use ws_write_side::WsTake;

use crate::auth::Claims;
use crate::broker::{encode_frame, Frame, RoomEvent};
use crate::limits::{Strikes, TokenBucket};
use crate::metrics::Metrics;
use outbox::Outbox;
use waiters::Waiters;

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

pub fn close_frame(code: CloseCode, reason: &str) -> Frame {
    encode_frame(&ServerFrame::Close {
        code,
        reason: reason.to_owned(),
    })
}

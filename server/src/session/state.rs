//! A session's state behind its lock, and routing frames into its outbox.

use std::collections::HashMap;
use std::time::Instant;

use rtlink_protocol::{CloseCode, ServerFrame};
use rustc_hash::FxBuildHasher;

use super::attachment::{Attachment, ProbeAttachment};
use super::outbox::Outbox;
use super::waiters::Waiters;
use super::ws_write_side::WsWire;
use super::{close_frame, other_epoch, RoomSub};
use crate::broker::{encode_frame, Frame, RoomEvent, RoomEventKind};
use crate::limits::{Strikes, TokenBucket};
use crate::metrics::{DropReason, Metrics};
use crate::ws_wire::wire_len;

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

pub struct SessionState {
    pub(super) outbox: Outbox,
    pub(super) attachment: Option<Attachment>,
    /// The generation of the last transport attached.
    pub(super) attach_gen: u64,
    /// The last generation handed out (to an attachment or a probe).
    pub(super) last_gen: u64,
    /// Boxed: probes are rare and short, the session's state is kept for every connection.
    pub(super) probe: Option<Box<ProbeAttachment>>,
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
    pub(super) poll_close: Option<CloseCode>,
    /// Bumped by every poll request; an older held poll sees it and answers empty.
    pub(super) poll_waiter: u64,
    pub(super) replay_gen: u64,
    /// Bumped by every change a transport may act on ([`Session::update`]).
    pub(super) version: u64,
    pub(super) waiters: Waiters,
    /// A replay waits for the outbox to drain ([`Session::drained`]).
    pub(super) replay_blocked: bool,
    /// The WebSocket write side, while a WebSocket transport (or probe) runs.
    pub(super) ws: Option<Box<WsWire>>,
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

    /// Queues the transport's last frame; frames pushed after it are dropped.
    pub fn push_close(&mut self, code: CloseCode, reason: &str) {
        if self.outbox.closing || self.attachment.is_none() {
            return;
        }
        self.outbox.closing = true;
        self.outbox.enqueue(close_frame(code, reason), Some(code));
    }

    /// A change: bumps the version and hands over the waiters to wake (after unlocking).
    pub(super) fn changed(&mut self) -> Waiters {
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

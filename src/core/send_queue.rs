//! Publishes from the app until the server acknowledges them.
//!
//! Every publish gets a client message id that is unique across reconnects and sessions
//! (`<random prefix from the seed>-<counter>`). The server deduplicates by id for its dedupe
//! window, so the queue resends everything unacknowledged after each `welcome` with the same id;
//! a resend of something already stored is answered with the original ack.
//!
//! Two rules keep that promise at its edges, both applied when a `welcome` tells the limits:
//! - **Size**: a publish whose encoded frame is larger than `max_frame_bytes` fails with
//!   `too_large` instead of being sent (the server would close the transport on it, and a resend
//!   after every reconnect would loop forever).
//! - **Age**: a publish that was transmitted before, and whose first transmission is older than
//!   the dedupe window minus a margin ([`resend_horizon_ms`]), fails with `expired` instead of
//!   being resent: the server may have stored it and forgotten its id, so a resend could store
//!   it twice. A publish never transmitted is always safe to send.
//!
//! The queue is bounded (queued and in-flight together): when full, `publish` returns
//! [`SendError::QueueFull`] instead of silently dropping. Every entry ends in exactly one of
//! acked, nacked, timed out (no ack within `ack_timeout_ms` of its last transmission on an open
//! transport), too large, expired, or failed at close.

use alloc::{string::String, vec::Vec};

use rtlink_protocol::{ClientFrame, ErrorCode};

use super::event::{SendError, SendId};
use super::text::json_str_len;
use super::time::Instant;

#[derive(Clone, Debug)]
struct Pending {
    send_id: SendId,
    msg_id: String,
    room: String,
    payload: String,
    /// Ack deadline; `None` while waiting for a transport (the clock only runs while the
    /// message is actually out on an open transport).
    deadline: Option<Instant>,
    /// When it was first handed to a transport.
    first_sent: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct SendQueue {
    items: Vec<Pending>,
    capacity: usize,
    ack_timeout_ms: u64,
    /// The id prefix and its `-`.
    id_prefix: String,
    next: u64,
}

/// Publishes that left the queue without an ack, each with why.
pub type Failed = Vec<(SendId, ErrorCode)>;

/// What the server announced in its last `welcome` about publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendLimits {
    /// Largest encoded frame; 0: unknown.
    pub max_frame_bytes: u64,
    /// How long the server remembers publish ids; 0: unknown (no publish expires).
    pub dedupe_window_ms: u64,
}

/// How long after its first transmission a publish may still be resent, for a server that
/// remembers ids for `dedupe_window_ms`: the window minus a margin of a quarter of it, at most
/// 10 s (the resend's trip to the server and the server's own sweep run inside the margin).
pub fn resend_horizon_ms(dedupe_window_ms: u64) -> u64 {
    dedupe_window_ms - (dedupe_window_ms / 4).min(10_000)
}

/// The length of `{"t":"publish","room":…,"id":…,"payload":…}` as the wire carries it.
pub fn publish_frame_len(room: &str, msg_id: &str, payload: &str) -> u64 {
    const FIXED: usize = r#"{"t":"publish","room":,"id":,"payload":}"#.len();
    (FIXED + json_str_len(room) + json_str_len(msg_id) + json_str_len(payload)) as u64
}

impl SendQueue {
    /// `id_prefix` should be random per client instance (e.g. 16 hex digits from the seed).
    pub fn new(capacity: usize, ack_timeout_ms: u64, id_prefix: String) -> Self {
        Self {
            items: Vec::new(),
            capacity,
            ack_timeout_ms,
            id_prefix: id_prefix + "-",
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues a publish, unless the queue is full or (with a known limit) its frame is too large.
    pub fn push(
        &mut self,
        room: String,
        payload: String,
        limits: SendLimits,
    ) -> Result<SendId, SendError> {
        if self.items.len() >= self.capacity {
            return Err(SendError::QueueFull);
        }
        let mut msg_id = self.id_prefix.clone();
        super::text::push_dec(&mut msg_id, self.next + 1);
        if limits.max_frame_bytes > 0
            && publish_frame_len(&room, &msg_id, &payload) > limits.max_frame_bytes
        {
            return Err(SendError::TooLarge);
        }
        self.next += 1;
        let send_id = SendId(self.next);
        self.items.push(Pending {
            send_id,
            msg_id,
            room,
            payload,
            deadline: None,
            first_sent: None,
        });
        Ok(send_id)
    }

    /// Marks one entry transmitted at `now` and returns its frame.
    pub fn transmit(&mut self, send_id: SendId, now: Instant) -> Option<ClientFrame> {
        let i = self.items.iter().position(|p| p.send_id == send_id)?;
        self.transmit_at(i, now)
    }

    /// After a `welcome`: removes what must not be sent under `limits` (see the module docs),
    /// with the code it fails with.
    pub fn take_unsendable(&mut self, now: Instant, limits: SendLimits) -> Failed {
        self.remove_where(Sweep::Unsendable { now, limits })
    }

    /// Removes the entries `sweep` fails, in queue order. One body for every way a publish fails
    /// inside the queue: a closure per way would compile `retain` once each, and a `dyn FnMut`
    /// call would have the signature of the formatting functions, which keeps their bodies in
    /// the module (wasm-opt drops those only while nothing can call them indirectly).
    ///
    /// Removed in place, one by one: the queue is short (at most `capacity`), and `Vec::remove`
    /// is compiled for `take` anyway, where moving every entry out and back would compile
    /// `vec::IntoIter` and another `push` for `Pending`.
    fn remove_where(&mut self, sweep: Sweep) -> Failed {
        let mut gone = Vec::new();
        let mut i = 0;
        while let Some(p) = self.items.get(i) {
            match sweep.failure(p) {
                Some(code) => {
                    gone.push((p.send_id, code));
                    self.items.remove(i);
                }
                None => i += 1,
            }
        }
        gone
    }

    /// Transmits entry `i` (in queue order), if there is one: its ack deadline starts now.
    pub fn transmit_at(&mut self, i: usize, now: Instant) -> Option<ClientFrame> {
        let timeout = self.ack_timeout_ms;
        let item = self.items.get_mut(i)?;
        item.deadline = Some(now.plus(timeout));
        item.first_sent.get_or_insert(now);
        Some(frame_of(item))
    }

    /// The transport went away: stop the ack clocks until the resend.
    pub fn pause(&mut self) {
        for item in &mut self.items {
            item.deadline = None;
        }
    }

    /// Removes the entry with this wire id (for an ack or a nack).
    pub fn take(&mut self, msg_id: &str) -> Option<SendId> {
        let at = self.items.iter().position(|p| p.msg_id == msg_id)?;
        Some(self.items.remove(at).send_id)
    }

    /// Removes and returns entries whose ack deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Failed {
        self.remove_where(Sweep::Expired { now })
    }

    /// Moves every deadline that has passed to `until` (see [`super::Client`]'s late-timer rule).
    pub fn defer_overdue(&mut self, now: Instant, until: Instant) {
        for p in &mut self.items {
            if p.deadline.is_some_and(|d| d <= now) {
                p.deadline = Some(until);
            }
        }
    }

    /// Empties the queue (the client closed).
    pub fn drain(&mut self) -> Failed {
        self.remove_where(Sweep::All)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = None;
        for p in &self.items {
            next = Instant::earliest(next, p.deadline);
        }
        next
    }
}

/// Which publishes [`SendQueue::remove_where`] fails, and with which code.
enum Sweep {
    /// Those a `welcome`'s limits rule out (see the module docs).
    Unsendable { now: Instant, limits: SendLimits },
    /// Those whose ack deadline has passed.
    Expired { now: Instant },
    /// All (the client closed).
    All,
}

impl Sweep {
    fn failure(&self, p: &Pending) -> Option<ErrorCode> {
        match *self {
            Sweep::Unsendable { now, limits } => {
                let too_large = limits.max_frame_bytes > 0
                    && publish_frame_len(&p.room, &p.msg_id, &p.payload) > limits.max_frame_bytes;
                let expired = limits.dedupe_window_ms > 0
                    && p.first_sent.is_some_and(|t| {
                        now.millis_since(t) >= resend_horizon_ms(limits.dedupe_window_ms)
                    });
                if too_large {
                    Some(ErrorCode::TooLarge)
                } else if expired {
                    Some(ErrorCode::Expired)
                } else {
                    None
                }
            }
            Sweep::Expired { now } => p
                .deadline
                .is_some_and(|d| d <= now)
                .then_some(ErrorCode::Timeout),
            Sweep::All => Some(ErrorCode::Closed),
        }
    }
}

fn frame_of(item: &Pending) -> ClientFrame {
    ClientFrame::Publish {
        room: item.room.clone(),
        id: item.msg_id.clone(),
        payload: item.payload.clone(),
    }
}

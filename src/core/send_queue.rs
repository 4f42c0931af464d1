//! Publishes from the app until the server acknowledges them.
//!
//! Every publish gets a client message id that is unique across reconnects and sessions
//! (`<random prefix from the seed>-<counter>`). The server deduplicates by id, so the queue simply
//! resends everything unacknowledged after each `welcome` with the same id; a resend of something
//! already stored is answered with the original ack.
//!
//! The queue is bounded (queued and in-flight together): when full, `publish` returns
//! [`SendError::QueueFull`] instead of silently dropping. Every entry ends in exactly one of
//! acked, nacked, timed out (no ack within `ack_timeout_ms` of its last transmission on an open
//! transport) or failed at close.


use rtlink_protocol::ClientFrame;

use super::event::{SendError, SendId};
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
}

#[derive(Clone, Debug)]
pub struct SendQueue {
    items: Vec<Pending>,
    capacity: usize,
    ack_timeout_ms: u64,
    id_prefix: String,
    next: u64,
}

/// A publish that left the queue without an ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub send_id: SendId,
    pub room: String,
}

impl SendQueue {
    /// `id_prefix` should be random per client instance (e.g. 16 hex digits from the seed).
    pub fn new(capacity: usize, ack_timeout_ms: u64, id_prefix: String) -> Self {
        Self { items: Vec::new(), capacity, ack_timeout_ms, id_prefix, next: 0 }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues a publish. Returns its send id and the frame to transmit now if the caller is open.
    pub fn push(&mut self, room: String, payload: String) -> Result<SendId, SendError> {
        if self.items.len() >= self.capacity {
            return Err(SendError::QueueFull);
        }
        self.next += 1;
        let send_id = SendId(self.next);
        let mut msg_id = self.id_prefix.clone();
        msg_id.push('-');
        super::text::push_dec(&mut msg_id, self.next);
        self.items.push(Pending { send_id, msg_id, room, payload, deadline: None });
        Ok(send_id)
    }

    /// Marks one entry transmitted at `now` and returns its frame.
    pub fn transmit(&mut self, send_id: SendId, now: Instant) -> Option<ClientFrame> {
        let timeout = self.ack_timeout_ms;
        let item = self.items.iter_mut().find(|p| p.send_id == send_id)?;
        item.deadline = Some(now.plus(timeout));
        Some(frame_of(item))
    }

    /// After a `welcome`: every unacknowledged publish, oldest first, marked transmitted.
    pub fn transmit_all(&mut self, now: Instant) -> Vec<ClientFrame> {
        let timeout = self.ack_timeout_ms;
        self.items
            .iter_mut()
            .map(|item| {
                item.deadline = Some(now.plus(timeout));
                frame_of(item)
            })
            .collect()
    }

    /// The transport went away: stop the ack clocks until the resend.
    pub fn pause(&mut self) {
        for item in &mut self.items {
            item.deadline = None;
        }
    }

    /// Removes the entry with this wire id (for an ack or a nack).
    pub fn take(&mut self, msg_id: &str) -> Option<Removed> {
        let at = self.items.iter().position(|p| p.msg_id == msg_id)?;
        let item = self.items.remove(at);
        Some(Removed { send_id: item.send_id, room: item.room })
    }

    /// Removes and returns entries whose ack deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Removed> {
        let mut gone = Vec::new();
        self.items.retain(|p| {
            if p.deadline.is_some_and(|d| d <= now) {
                gone.push(Removed { send_id: p.send_id, room: p.room.clone() });
                false
            } else {
                true
            }
        });
        gone
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
    pub fn drain(&mut self) -> Vec<Removed> {
        self.items.drain(..).map(|p| Removed { send_id: p.send_id, room: p.room }).collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.items.iter().filter_map(|p| p.deadline).min()
    }
}

fn frame_of(item: &Pending) -> ClientFrame {
    ClientFrame::Publish { room: item.room.clone(), id: item.msg_id.clone(), payload: item.payload.clone() }
}

//! The outbox: the frames queued for the client, each with its `seq`, bounded in frames and
//! bytes (see the module doc of [`crate::session`]).

use std::collections::VecDeque;

use rtlink_protocol::CloseCode;

use crate::broker::Frame;

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
pub(super) struct Outbox {
    pub(super) limits: OutboxLimits,
    pub(super) next_seq: u64,
    pub(super) frames: VecDeque<OutFrame>,
    pub(super) bytes: usize,
    /// A close is queued: later frames are dropped until the next attach.
    pub(super) closing: bool,
}

impl Outbox {
    pub(super) fn enqueue(&mut self, frame: Frame, close: Option<CloseCode>) {
        self.next_seq += 1;
        self.bytes += frame.len();
        self.frames.push_back(OutFrame {
            seq: self.next_seq,
            frame,
            close,
        });
    }

    pub(super) fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    pub(super) fn pop_through(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|f| f.seq <= seq) {
            if let Some(f) = self.frames.pop_front() {
                self.bytes = self.bytes.saturating_sub(f.frame.len());
            }
        }
    }
}

//! A session's subscriptions to rooms.

use std::sync::Arc;

use crate::replay::Replay;

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

/// True if a message of epoch `message` does not count in `held` (an empty epoch is unknown:
/// an event from an older node).
pub fn other_epoch(held: &str, message: &str) -> bool {
    !held.is_empty() && !message.is_empty() && held != message
}

//! Coalescing of presence changes in large rooms.
//!
//! When N members join one room one after another, sending each join to everyone present is
//! N²/2 frames, each its own WebSocket message, wake-up and client-side recomputation. In a room
//! with at least `--presence-batch-min-members` local subscribers, the hub's dispatcher instead
//! collects the room's presence changes for `--presence-batch` (50 ms by default) and sends one
//! `presence_diff {room, joins, leaves}` frame with each connection's latest state. Smaller rooms
//! get every change at once, as before.
//!
//! Only the dispatcher task touches a [`PresenceBatcher`]: no lock. Changes are kept in arrival
//! order, collapsed per session (the last one wins), so applying a diff gives the same state as
//! applying its changes one by one. Presence may now reach a client up to one interval after a
//! message that followed it; the protocol orders messages among themselves, not against presence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rtlink_protocol::{PresenceConn, PresenceLeft};
use tokio::time::Instant;

use crate::broker::{RoomEvent, RoomEventKind};

/// Largest `presence_diff` frame, roughly (metadata is escaped once more in JSON).
pub const DIFF_BYTES: usize = 16 * 1024;

/// The state of one session after the changes of an interval.
enum Change {
    Present(PresenceConn),
    Left(PresenceLeft),
}

#[derive(Default)]
struct RoomBatch {
    /// session → (position of its last change, change)
    changes: HashMap<String, (u64, Change)>,
    next: u64,
}

pub struct PresenceBatcher {
    interval: Duration,
    min_members: usize,
    rooms: HashMap<Arc<str>, RoomBatch>,
    /// When the oldest pending batch is due.
    due: Option<Instant>,
}

impl PresenceBatcher {
    pub fn new(interval: Duration, min_members: usize) -> Self {
        Self {
            interval,
            min_members,
            rooms: HashMap::new(),
            due: None,
        }
    }

    /// Takes `ev` into a batch if it is a presence change of a large room (or of a room with a
    /// batch pending, so a room's changes stay in order). False: route it now.
    pub fn absorb(&mut self, ev: &RoomEvent, local_members: impl FnOnce() -> usize) -> bool {
        if self.interval.is_zero() {
            return false;
        }
        let (session, change) = match &ev.kind {
            RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
                (c.session.clone(), Change::Present(c.clone()))
            }
            RoomEventKind::PresenceLeave { session, user } => (
                session.clone(),
                Change::Left(PresenceLeft {
                    session: session.clone(),
                    user: user.clone(),
                }),
            ),
            _ => return false,
        };
        if !self.rooms.contains_key(&ev.room) && local_members() < self.min_members {
            return false;
        }
        let batch = self.rooms.entry(ev.room.clone()).or_default();
        batch.next += 1;
        batch.changes.insert(session, (batch.next, change));
        self.due
            .get_or_insert_with(|| Instant::now() + self.interval);
        true
    }

    /// When [`Self::flush`] should run next (`None`: nothing pending).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// `presence_diff` events for every room with pending changes: one per room, or several
    /// when the changes would make a frame over [`DIFF_BYTES`] (large metadata), so a diff never
    /// overflows a subscriber's outbox or the frame limit.
    pub fn flush(&mut self) -> Vec<RoomEvent> {
        self.due = None;
        let mut out = Vec::new();
        for (room, batch) in self.rooms.drain() {
            let mut changes: Vec<(u64, Change)> = batch.changes.into_values().collect();
            changes.sort_unstable_by_key(|(at, _)| *at);
            let (mut joins, mut leaves, mut bytes) = (Vec::new(), Vec::new(), 0usize);
            for (_, c) in changes {
                let size = match &c {
                    Change::Present(p) => {
                        p.session.len() + p.user.len() + p.name.len() + p.meta.len()
                    }
                    Change::Left(l) => l.session.len() + l.user.len(),
                } + 48;
                if bytes + size > DIFF_BYTES && bytes > 0 {
                    let (j, l) = (std::mem::take(&mut joins), std::mem::take(&mut leaves));
                    out.push(RoomEvent::new(
                        &room,
                        RoomEventKind::PresenceDiff {
                            joins: j,
                            leaves: l,
                        },
                    ));
                    bytes = 0;
                }
                bytes += size;
                match c {
                    Change::Present(conn) => joins.push(conn),
                    Change::Left(left) => leaves.push(left),
                }
            }
            out.push(RoomEvent::new(
                &room,
                RoomEventKind::PresenceDiff { joins, leaves },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(s: &str, meta: &str) -> PresenceConn {
        PresenceConn {
            session: s.into(),
            user: format!("u-{s}"),
            name: s.into(),
            meta: meta.into(),
        }
    }

    #[test]
    fn small_rooms_are_not_batched_and_zero_interval_is_off() {
        let ev = RoomEvent::new("r", RoomEventKind::PresenceJoin(conn("a", "")));
        let mut b = PresenceBatcher::new(Duration::from_millis(50), 10);
        assert!(!b.absorb(&ev, || 9));
        assert!(b.due().is_none());
        let mut off = PresenceBatcher::new(Duration::ZERO, 0);
        assert!(!off.absorb(&ev, || 1000));
    }

    #[tokio::test]
    async fn collapses_per_session_in_order() {
        let mut b = PresenceBatcher::new(Duration::from_millis(50), 2);
        let events = [
            RoomEventKind::PresenceJoin(conn("a", "")),
            RoomEventKind::PresenceJoin(conn("b", "")),
            RoomEventKind::PresenceUpdate(conn("a", "{\"x\":1}")),
            RoomEventKind::PresenceLeave {
                session: "b".into(),
                user: "u-b".into(),
            },
            RoomEventKind::PresenceJoin(conn("c", "")),
            RoomEventKind::Typing {
                user: "u".into(),
                name: "n".into(),
                active: true,
            },
        ];
        let absorbed: Vec<bool> = events
            .into_iter()
            .map(|k| b.absorb(&RoomEvent::new("r", k), || 5))
            .collect();
        assert_eq!(absorbed, [true, true, true, true, true, false]);
        assert!(b.due().is_some());
        let out = b.flush();
        assert!(b.due().is_none());
        assert_eq!(out.len(), 1);
        let RoomEventKind::PresenceDiff { joins, leaves } = &out[0].kind else {
            panic!("not a diff: {:?}", out[0].kind);
        };
        let joined: Vec<(&str, &str)> = joins
            .iter()
            .map(|c| (c.session.as_str(), c.meta.as_str()))
            .collect();
        assert_eq!(joined, [("a", "{\"x\":1}"), ("c", "")]);
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].session, "b");
        assert!(out[0]
            .frame
            .as_str()
            .starts_with("{\"t\":\"presence_diff\""));
    }

    #[tokio::test]
    async fn large_metadata_is_cut_into_several_diffs() {
        let mut b = PresenceBatcher::new(Duration::from_millis(50), 0);
        let meta = "x".repeat(1000);
        for i in 0..100 {
            let kind = RoomEventKind::PresenceUpdate(conn(&format!("s{i}"), &meta));
            assert!(b.absorb(&RoomEvent::new("r", kind), || 100));
        }
        let out = b.flush();
        assert!(out.len() >= 6, "{} diffs", out.len());
        assert!(out.iter().all(|e| e.frame.len() < 2 * DIFF_BYTES));
        let total: usize = out
            .iter()
            .map(|e| match &e.kind {
                RoomEventKind::PresenceDiff { joins, .. } => joins.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 100);
    }
}

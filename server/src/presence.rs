//! Presence authority for this node's sessions: per connection (session), per room.
//!
//! The table itself lives behind the broker. This file decides *when* a session is present:
//! from its first subscribe until it unsubscribes, closes, or stays without transport for the
//! presence grace period. A session that reattaches after the grace period rejoins with its
//! last metadata; one that reattaches within it never left (no flap).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rtlink_protocol::ErrorCode;
use rustc_hash::FxBuildHasher;

use crate::broker::PresenceEntry;

use crate::hub::Hub;
use crate::rooms::Flow;
use crate::session::Session;

impl Hub {
    /// `presence {room, meta}` from the client.
    pub(crate) async fn set_presence(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: String,
        meta: String,
    ) -> Flow {
        let max = self.config.max_presence_meta_bytes;
        if meta.len() > max {
            self.metrics
                .count_drop(crate::metrics::DropReason::TooLarge);
            let reason = format!("presence metadata is at most {max} bytes");
            self.nack(session, room, ErrorCode::TooLarge, &reason);
            return Ok(());
        }
        if !self.admit_room_op(session, &room, &room)? {
            return Ok(());
        }
        if !self.config.presence_on(&room) {
            self.nack(
                session,
                room,
                ErrorCode::Forbidden,
                "presence is off in this room",
            );
            return Ok(());
        }
        session.update(|st, _| {
            if let Some(sub) = st.rooms.get_mut(&room) {
                sub.meta = meta.as_str().into();
            }
        });
        let conn = self.presence_conn(session, meta);
        let result = match self.broker.presence_update(&room, conn.clone()).await {
            Ok(true) => Ok(()),
            Ok(false) => self.broker.presence_join(&room, conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "presence update failed");
            self.nack(session, room, ErrorCode::Internal, "presence unavailable");
        }
        Ok(())
    }

    /// Removes the session from the presence of every room it is in. With `grace_expired`, the
    /// session stays subscribed and rejoins when a transport attaches again; this only happens
    /// if it is still detached.
    pub(crate) async fn leave_presence_all(
        self: &Arc<Self>,
        session: &Arc<Session>,
        grace_expired: bool,
    ) {
        let _serial = session.presence_lock.lock().await;
        let rooms: Vec<(String, bool)> = {
            let mut st = session.lock();
            if grace_expired {
                if st.attached_kind().is_some() {
                    return;
                }
                st.presence_left = true;
            }
            st.rooms
                .iter_mut()
                .map(|(room, sub)| {
                    let was_typing = std::mem::take(&mut sub.typing_active);
                    sub.typing_gen = sub.typing_gen.wrapping_add(1);
                    (room.clone(), was_typing)
                })
                .collect()
        };
        for (room, was_typing) in rooms {
            if was_typing {
                let _ = self
                    .broker
                    .typing(&room, &session.claims.sub, &session.claims.name(), false)
                    .await;
            }
            if let Err(e) = self.broker.presence_leave(&room, &session.id).await {
                tracing::warn!(error = %e, "presence leave failed");
            }
        }
    }

    /// Puts a resumed session back into the presence of its rooms (after the grace ran out).
    pub(crate) async fn rejoin_presence(self: &Arc<Self>, session: &Arc<Session>) {
        let _serial = session.presence_lock.lock().await;
        let rooms: Vec<(String, String)> = session
            .lock()
            .rooms
            .iter()
            .map(|(r, sub)| (r.clone(), sub.meta.to_string()))
            .collect();
        for (room, meta) in rooms {
            if !self.config.presence_on(&room) {
                continue;
            }
            let conn = self.presence_conn(session, meta);
            if let Err(e) = self.broker.presence_join(&room, conn).await {
                tracing::warn!(error = %e, "presence rejoin failed");
            }
        }
    }
}

/// Rooms of at most this many connections keep them in a vector.
const SMALL_ROOM: usize = 8;

/// The connections present in one room, in the order they last changed (joined or updated),
/// oldest first: the in-process broker's table, and the Redis broker's per-node mirror.
///
/// That order is the presence events' order, so a joiner that applies a snapshot sees every
/// user as the members who applied the events do: a client shows a user with several
/// connections by the latest one (`src/core/presence.rs`), and a snapshot in any other order
/// made a joiner show another tab's metadata than everybody else (docs/PROTOCOL.md,
/// `presence_snapshot`).
///
/// Most rooms are small (a room per user, per document, per conversation): up to
/// [`SMALL_ROOM`] connections sit in a vector sized to fit, in change order (a change moves its
/// connection to the end: at most eight pointers shifted). A larger presence moves to
/// [`Ordered`] (O(log N) per change, no scan), and back below half that. (A `BTreeMap` of
/// connections kept a whole eleven-slot leaf of 1.3 KB for a room of one; the vector keeps one
/// pointer: docs/BENCHMARKS.md, idle memory.) Entries are shared ([`PresenceEntry`]), and the
/// order is the one snapshots are sent in, so a snapshot of a room of N is N reference counts
/// taken under the broker's lock: no copy, no sort.
#[derive(Debug)]
pub enum PresenceTable {
    Small(Vec<Arc<PresenceEntry>>),
    /// Boxed: an idle room's table stays one vector's size.
    Large(Box<Ordered>),
}

/// A large room's connections: by change number (the order) and by session (the lookup).
#[derive(Debug, Default)]
pub struct Ordered {
    /// Change number → connection, oldest change first.
    by_change: BTreeMap<u64, Arc<PresenceEntry>>,
    /// Session → the change number of its connection.
    by_session: HashMap<BySession, u64, FxBuildHasher>,
    /// The next change's number (counts this table's changes; only the order matters).
    next: u64,
}

impl Ordered {
    fn of(entries: impl IntoIterator<Item = Arc<PresenceEntry>>) -> Self {
        let mut table = Self::default();
        for entry in entries {
            table.set(entry);
        }
        table
    }

    /// Sets the connection as the latest change; returns the one it replaced.
    fn set(&mut self, entry: Arc<PresenceEntry>) -> Option<Arc<PresenceEntry>> {
        let old = self.remove(&entry.conn.session);
        self.next += 1;
        self.by_change.insert(self.next, entry.clone());
        self.by_session.insert(BySession(entry), self.next);
        old
    }

    fn remove(&mut self, session: &str) -> Option<Arc<PresenceEntry>> {
        let at = self.by_session.remove(session)?;
        self.by_change.remove(&at)
    }

    fn get(&self, session: &str) -> Option<&Arc<PresenceEntry>> {
        self.by_session.get_key_value(session).map(|(k, _)| &k.0)
    }
}

/// A [`PresenceEntry`] found (hashed, compared) by its session id.
#[derive(Debug)]
pub struct BySession(Arc<PresenceEntry>);

impl Borrow<str> for BySession {
    fn borrow(&self) -> &str {
        &self.0.conn.session
    }
}

impl PartialEq for BySession {
    fn eq(&self, other: &Self) -> bool {
        self.0.conn.session == other.0.conn.session
    }
}

impl Eq for BySession {}

impl Hash for BySession {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups by `&str` (through `Borrow`) must find it.
        self.0.conn.session.as_str().hash(state);
    }
}

impl Default for PresenceTable {
    fn default() -> Self {
        Self::Small(Vec::new())
    }
}

impl PresenceTable {
    pub fn len(&self) -> usize {
        match self {
            Self::Small(v) => v.len(),
            Self::Large(t) => t.by_change.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the connection as the room's latest change, or replaces the one of the same
    /// session (returned) and moves it to the end: an update is a change too.
    pub fn insert(&mut self, entry: Arc<PresenceEntry>) -> Option<Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => {
                let session = entry.conn.session.as_str();
                if let Some(at) = v.iter().position(|e| e.conn.session == session) {
                    let old = v.remove(at);
                    v.push(entry);
                    return Some(old);
                }
                if v.len() < SMALL_ROOM {
                    v.reserve_exact(1);
                    v.push(entry);
                } else {
                    let all = std::mem::take(v).into_iter().chain([entry]);
                    *self = Self::Large(Box::new(Ordered::of(all)));
                }
                None
            }
            Self::Large(t) => t.set(entry),
        }
    }

    pub fn get(&self, session: &str) -> Option<&Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => v.iter().find(|e| e.conn.session == session),
            Self::Large(t) => t.get(session),
        }
    }

    pub fn remove(&mut self, session: &str) -> Option<Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => {
                let at = v.iter().position(|e| e.conn.session == session)?;
                let entry = v.remove(at);
                v.shrink_to_fit();
                Some(entry)
            }
            Self::Large(t) => {
                let entry = t.remove(session)?;
                if t.by_change.len() <= SMALL_ROOM / 2 {
                    let small: Vec<_> = std::mem::take(&mut t.by_change).into_values().collect();
                    *self = Self::Small(small);
                }
                Some(entry)
            }
        }
    }

    /// Every connection, oldest change first (shared, not copied).
    pub fn snapshot(&self) -> Vec<Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => v.clone(),
            Self::Large(t) => t.by_change.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rtlink_protocol::PresenceConn;

    use super::*;

    fn conn(session: &str, meta: &str) -> Arc<PresenceEntry> {
        PresenceEntry::new(PresenceConn {
            session: session.into(),
            user: format!("u-{session}"),
            name: session.into(),
            meta: meta.into(),
        })
    }

    /// Joins, updates and leaves across the small/large boundary (both ways) agree with a plain
    /// list in change order (a change moves its session to the end) at every step, snapshots
    /// included (as taken: no sort).
    #[test]
    fn the_table_keeps_change_order_across_its_two_forms() {
        let mut table = PresenceTable::default();
        let mut model: Vec<(String, String)> = Vec::new();
        let forget = |model: &mut Vec<(String, String)>, session: &str| {
            let at = model.iter().position(|(s, _)| s == session)?;
            Some(model.remove(at).1)
        };
        // A deterministic walk: sessions 0..14, joining, updating and leaving in a scrambled
        // order, about seven present: the table changes form back and forth.
        let mut x = 7u32;
        let (mut large, mut was_large, mut switches) = (0, false, 0);
        for step in 0..4000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let session = format!("s{}", (x >> 16) % 14);
            let meta = step.to_string();
            if (x >> 8).is_multiple_of(2) {
                let removed = table.remove(&session).map(|e| e.conn.meta.clone());
                assert_eq!(removed, forget(&mut model, &session), "step {step}");
            } else {
                let replaced = table
                    .insert(conn(&session, &meta))
                    .map(|e| e.conn.meta.clone());
                assert_eq!(replaced, forget(&mut model, &session), "step {step}");
                model.push((session, meta));
            }
            let is_large = matches!(table, PresenceTable::Large(_));
            switches += usize::from(is_large != was_large);
            (large, was_large) = (large + usize::from(is_large), is_large);
            assert_eq!(table.len(), model.len());
            let got: Vec<(String, String)> = table
                .snapshot()
                .iter()
                .map(|e| (e.conn.session.clone(), e.conn.meta.clone()))
                .collect();
            assert_eq!(got, model, "step {step}");
            for s in ["s3", "s17"] {
                assert_eq!(
                    table.get(s).map(|e| e.conn.meta.clone()),
                    model.iter().find(|(m, _)| m == s).map(|(_, v)| v.clone()),
                    "step {step}"
                );
            }
        }
        assert!(large > 400 && large < 3600, "both forms walked: {large}");
        assert!(switches > 20, "{switches} changes of form");
    }

    /// The order is the changes', not the sessions': an update of the oldest connection makes
    /// it the last one listed, in either form.
    #[test]
    fn an_update_moves_the_connection_to_the_end() {
        for n in [3, 3 * SMALL_ROOM] {
            let mut table = PresenceTable::default();
            for i in 0..n {
                table.insert(conn(&format!("s{i:02}"), ""));
            }
            table.insert(conn("s00", "later"));
            let snap = table.snapshot();
            assert_eq!(snap.len(), n);
            assert_eq!(snap[0].conn.session, "s01");
            assert_eq!(
                (
                    snap[n - 1].conn.session.as_str(),
                    snap[n - 1].conn.meta.as_str()
                ),
                ("s00", "later")
            );
        }
    }

    /// A snapshot shares the table's entries (and their JSON): taking one copies no connection.
    #[test]
    fn snapshots_share_the_entries() {
        let mut table = PresenceTable::default();
        for i in 0..3 * SMALL_ROOM {
            table.insert(conn(&format!("s{i:02}"), "{}"));
        }
        let held = Arc::strong_count(&table.snapshot()[0]) - 1;
        let (a, b) = (table.snapshot(), table.snapshot());
        assert_eq!(a.len(), 3 * SMALL_ROOM);
        assert!(a.iter().zip(&b).all(|(x, y)| Arc::ptr_eq(x, y)));
        assert!(a.iter().all(|e| Arc::strong_count(e) == held + 2));
        assert_eq!(
            a[0].json(),
            r#"{"session":"s00","user":"u-s00","name":"s00","meta":"{}"}"#
        );
    }

    #[test]
    fn a_room_of_one_keeps_one_slot() {
        let mut table = PresenceTable::default();
        table.insert(conn("a", ""));
        let PresenceTable::Small(v) = &table else {
            panic!("not small")
        };
        assert_eq!(v.capacity(), 1);
        for i in 0..=SMALL_ROOM {
            table.insert(conn(&format!("b{i}"), ""));
        }
        assert!(matches!(table, PresenceTable::Large(_)));
        for i in 0..=SMALL_ROOM {
            table.remove(&format!("b{i}"));
        }
        assert!(matches!(table, PresenceTable::Small(_)));
        assert_eq!(table.len(), 1);
    }
}

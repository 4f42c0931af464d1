//! Presence authority for this node's sessions: per connection (session), per room.
//!
//! The table itself lives behind the broker. This file decides *when* a session is present:
//! from its first subscribe until it unsubscribes, closes, or stays without transport for the
//! presence grace period. A session that reattaches after the grace period rejoins with its
//! last metadata; one that reattaches within it never left (no flap).

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

use rtlink_protocol::ErrorCode;

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

/// The connections present in one room, by session, kept in session order (the in-process
/// broker's table).
///
/// Most rooms are small (a room per user, per document, per conversation): up to
/// [`SMALL_ROOM`] connections sit in a sorted vector sized to fit; a larger presence moves to a
/// B-tree set, and back below half that. (A `BTreeMap` of connections kept a whole eleven-slot
/// leaf of 1.3 KB for a room of one; the vector keeps one pointer: docs/BENCHMARKS.md, idle
/// memory. The set's leaves hold pointers, not connections.) Entries are shared
/// ([`PresenceEntry`]), and the order is the one snapshots are sent in, so a snapshot of a room
/// of N is N reference counts taken under the broker's lock: no copy, no sort.
#[derive(Debug)]
pub enum PresenceTable {
    Small(Vec<Arc<PresenceEntry>>),
    Large(BTreeSet<BySession>),
}

/// A [`PresenceEntry`] ordered (and found) by its session id.
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

impl PartialOrd for BySession {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BySession {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.conn.session.cmp(&other.0.conn.session)
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
            Self::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the connection, or replaces the one of the same session (returned).
    pub fn insert(&mut self, entry: Arc<PresenceEntry>) -> Option<Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => {
                let session = entry.conn.session.as_str();
                match v.binary_search_by(|e| e.conn.session.as_str().cmp(session)) {
                    Ok(at) => return Some(std::mem::replace(&mut v[at], entry)),
                    Err(at) if v.len() < SMALL_ROOM => {
                        v.reserve_exact(1);
                        v.insert(at, entry);
                    }
                    Err(_) => {
                        let set = v.drain(..).chain([entry]).map(BySession).collect();
                        *self = Self::Large(set);
                    }
                }
                None
            }
            Self::Large(m) => m.replace(BySession(entry)).map(|old| old.0),
        }
    }

    pub fn get(&self, session: &str) -> Option<&Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => v.iter().find(|e| e.conn.session == session),
            Self::Large(m) => m.get(session).map(|e| &e.0),
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
            Self::Large(m) => {
                let entry = m.take(session)?.0;
                if m.len() <= SMALL_ROOM / 2 {
                    let small: Vec<_> = std::mem::take(m).into_iter().map(|e| e.0).collect();
                    *self = Self::Small(small);
                }
                Some(entry)
            }
        }
    }

    /// Every connection, sorted by session (shared, not copied).
    pub fn snapshot(&self) -> Vec<Arc<PresenceEntry>> {
        match self {
            Self::Small(v) => v.clone(),
            Self::Large(m) => m.iter().map(|e| e.0.clone()).collect(),
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
    /// sorted map at every step, snapshots included (in session order, as taken: no sort).
    #[test]
    fn the_table_agrees_with_a_sorted_map_across_its_two_forms() {
        let mut table = PresenceTable::default();
        let mut model: std::collections::BTreeMap<String, String> = Default::default();
        // A deterministic walk: sessions 0..20, joining, updating and leaving in a scrambled order.
        let mut x = 7u32;
        for step in 0..2000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let session = format!("s{}", (x >> 16) % 20);
            let meta = step.to_string();
            if (x >> 8).is_multiple_of(3) {
                let removed = table.remove(&session).map(|e| e.conn.meta.clone());
                assert_eq!(removed, model.remove(&session), "step {step}");
            } else {
                let replaced = table
                    .insert(conn(&session, &meta))
                    .map(|e| e.conn.meta.clone());
                assert_eq!(replaced, model.insert(session.clone(), meta), "step {step}");
            }
            assert_eq!(table.len(), model.len());
            let got: Vec<(String, String)> = table
                .snapshot()
                .iter()
                .map(|e| (e.conn.session.clone(), e.conn.meta.clone()))
                .collect();
            let want: Vec<(String, String)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(got, want, "step {step}");
            for s in ["s3", "s17"] {
                assert_eq!(
                    table.get(s).map(|e| e.conn.meta.clone()),
                    model.get(s).cloned(),
                    "step {step}"
                );
            }
        }
    }

    /// A snapshot shares the table's entries (and their JSON): taking one copies no connection.
    #[test]
    fn snapshots_share_the_entries() {
        let mut table = PresenceTable::default();
        for i in 0..3 * SMALL_ROOM {
            table.insert(conn(&format!("s{i:02}"), "{}"));
        }
        let (a, b) = (table.snapshot(), table.snapshot());
        assert_eq!(a.len(), 3 * SMALL_ROOM);
        assert!(a.iter().zip(&b).all(|(x, y)| Arc::ptr_eq(x, y)));
        assert!(a.iter().all(|e| Arc::strong_count(e) == 3));
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

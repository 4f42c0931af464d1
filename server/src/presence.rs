//! Presence authority for this node's sessions: per connection (session), per room.
//!
//! The table itself lives behind the broker. This file decides *when* a session is present:
//! from its first subscribe until it unsubscribes, closes, or stays without transport for the
//! presence grace period. A session that reattaches after the grace period rejoins with its
//! last metadata; one that reattaches within it never left (no flap).

use std::collections::HashMap;
use std::sync::Arc;

use rtlink_protocol::{ErrorCode, PresenceConn};
use rustc_hash::FxBuildHasher;

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

/// The connections present in one room, by session (the in-process broker's table).
///
/// Most rooms are small (a room per user, per document, per conversation): up to
/// [`SMALL_ROOM`] connections sit in a vector sized to fit and searched linearly; a larger
/// presence moves to a hash table, and back below half that. A `BTreeMap` kept a whole
/// eleven-slot leaf (1.3 KB) for a room of one, a hash table four slots (500 B); the vector
/// keeps one (docs/BENCHMARKS.md, idle memory). Session ids are the server's own random
/// tokens, so the fast hash (Fx) cannot be flooded.
#[derive(Debug)]
pub enum PresenceTable {
    Small(Vec<PresenceConn>),
    Large(HashMap<String, PresenceConn, FxBuildHasher>),
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

    /// Adds the connection, or replaces the one of the same session. True if it replaced one.
    pub fn insert(&mut self, conn: PresenceConn) -> bool {
        match self {
            Self::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|c| c.session == conn.session) {
                    *slot = conn;
                    return true;
                }
                if v.len() < SMALL_ROOM {
                    v.reserve_exact(1);
                    v.push(conn);
                    return false;
                }
                let mut map: HashMap<String, PresenceConn, FxBuildHasher> =
                    HashMap::with_capacity_and_hasher(SMALL_ROOM * 2, FxBuildHasher);
                for c in v.drain(..).chain(std::iter::once(conn)) {
                    map.insert(c.session.clone(), c);
                }
                *self = Self::Large(map);
                false
            }
            Self::Large(m) => m.insert(conn.session.clone(), conn).is_some(),
        }
    }

    pub fn get_mut(&mut self, session: &str) -> Option<&mut PresenceConn> {
        match self {
            Self::Small(v) => v.iter_mut().find(|c| c.session == session),
            Self::Large(m) => m.get_mut(session),
        }
    }

    pub fn remove(&mut self, session: &str) -> Option<PresenceConn> {
        match self {
            Self::Small(v) => {
                let at = v.iter().position(|c| c.session == session)?;
                let conn = v.swap_remove(at);
                v.shrink_to_fit();
                Some(conn)
            }
            Self::Large(m) => {
                let conn = m.remove(session)?;
                if m.len() <= SMALL_ROOM / 2 {
                    let mut small = Vec::with_capacity(m.len());
                    small.extend(m.drain().map(|(_, c)| c));
                    *self = Self::Small(small);
                }
                Some(conn)
            }
        }
    }

    /// Copies of every connection, in no particular order.
    pub fn to_vec(&self) -> Vec<PresenceConn> {
        match self {
            Self::Small(v) => v.clone(),
            Self::Large(m) => m.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(session: &str, meta: &str) -> PresenceConn {
        PresenceConn {
            session: session.into(),
            user: format!("u-{session}"),
            name: session.into(),
            meta: meta.into(),
        }
    }

    /// Joins, updates and leaves across the small/large boundary (both ways) agree with a plain
    /// map at every step.
    #[test]
    fn the_table_agrees_with_a_map_across_its_two_forms() {
        let mut table = PresenceTable::default();
        let mut model: std::collections::BTreeMap<String, String> = Default::default();
        // A deterministic walk: sessions 0..20, joining, updating and leaving in a scrambled order.
        let mut x = 7u32;
        for step in 0..2000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let session = format!("s{}", (x >> 16) % 20);
            let meta = step.to_string();
            if (x >> 8).is_multiple_of(3) {
                let removed = table.remove(&session).map(|c| c.meta);
                assert_eq!(removed, model.remove(&session), "step {step}");
            } else {
                let replaced = table.insert(conn(&session, &meta));
                assert_eq!(
                    replaced,
                    model.insert(session.clone(), meta).is_some(),
                    "step {step}"
                );
            }
            assert_eq!(table.len(), model.len());
            let mut got: Vec<(String, String)> = table
                .to_vec()
                .into_iter()
                .map(|c| (c.session, c.meta))
                .collect();
            got.sort();
            let want: Vec<(String, String)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(got, want, "step {step}");
        }
        if let Some(c) = table.get_mut("s3") {
            c.meta = "x".into();
        }
        assert_eq!(
            table.get_mut("s3").map(|c| c.meta.clone()),
            model.get("s3").map(|_| "x".to_owned())
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

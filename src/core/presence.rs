//! Presence: the server reports connections, the app wants users.
//!
//! Each room keeps the server's per-connection view (session → conn), replaced by a snapshot and
//! patched by join/update/leave. The app sees it aggregated by user: one [`Member`] per user with
//! the number of connections and the metadata most recently set by any of them. A user with two
//! tabs is one member with `connections: 2`; closing one tab is an update, not a leave.

use alloc::vec::Vec;

use super::small_map::SmallMap;

use rtlink_protocol::{PresenceConn, PresenceLeft};

use super::event::Member;

/// One room's presence (kept in the room's entry, see `rooms.rs`).
#[derive(Clone, Debug, Default)]
pub struct RoomPresence {
    /// session → (connection, sequence number of its last change).
    conns: SmallMap<(PresenceConn, u64)>,
    /// What the app was last told.
    members: Vec<Member>,
    /// Orders changes, to pick a user's latest metadata across connections.
    seq: u64,
}

impl RoomPresence {
    /// Every presence frame in one body: forget everything first (`reset`, a snapshot), then
    /// the connections that left, then those that joined or changed. Returns the member list
    /// if it changed. A coalesced `presence_diff` is one recomputation, not one per change, so a
    /// large room's join wave costs the app one event per batch.
    pub fn apply(
        &mut self,
        reset: bool,
        joins: Vec<PresenceConn>,
        leaves: &[PresenceLeft],
    ) -> Option<Vec<Member>> {
        if reset {
            self.conns.clear();
        }
        for left in leaves {
            self.conns.remove(&left.session);
        }
        for conn in joins {
            self.seq += 1;
            self.conns.insert(conn.session.clone(), (conn, self.seq));
        }
        recompute(self)
    }

    /// The members, sorted by user, as the app was last told.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `user` still has a connection here.
    pub fn is_present(&self, user: &str) -> bool {
        self.conns.values().any(|(c, _)| c.user == user)
    }
}

fn recompute(r: &mut RoomPresence) -> Option<Vec<Member>> {
    // Members sorted by user, and beside each the sequence number of the connection whose name
    // and metadata it shows (two vectors: no map instantiation for this one use).
    let mut members: Vec<Member> = Vec::new();
    let mut latest: Vec<u64> = Vec::new();
    for (conn, seq) in r.conns.values() {
        let seq = *seq;
        match members.binary_search_by(|m| m.user.as_str().cmp(&conn.user)) {
            Ok(i) => {
                let (Some(m), Some(at)) = (members.get_mut(i), latest.get_mut(i)) else {
                    continue;
                };
                m.connections += 1;
                if seq > *at {
                    m.name = conn.name.clone();
                    m.meta = conn.meta.clone();
                    *at = seq;
                }
            }
            Err(i) => {
                let member = Member {
                    user: conn.user.clone(),
                    name: conn.name.clone(),
                    meta: conn.meta.clone(),
                    connections: 1,
                };
                members.insert(i, member);
                // Always at `i` (the two grow together); the clamp leaves out a bounds-check
                // panic, whose message would bring formatting code into the module.
                latest.insert(i.min(latest.len()), seq);
            }
        }
    }
    if members == r.members {
        return None;
    }
    r.members = members.clone();
    Some(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn conn(session: &str, user: &str, meta: &str) -> PresenceConn {
        PresenceConn {
            session: session.into(),
            user: user.into(),
            name: user.to_uppercase(),
            meta: meta.into(),
        }
    }

    fn left(session: &str) -> PresenceLeft {
        PresenceLeft {
            session: session.into(),
            user: String::new(),
        }
    }

    #[test]
    fn a_diff_is_the_same_as_its_changes_one_by_one() {
        let start = vec![
            conn("s1", "ana", ""),
            conn("s2", "bob", ""),
            conn("s3", "bob", ""),
        ];
        let mut one_by_one = RoomPresence::default();
        let mut batched = RoomPresence::default();
        one_by_one.apply(true, start.clone(), &[]);
        batched.apply(true, start, &[]);
        one_by_one.apply(false, Vec::new(), &[left("s2")]);
        one_by_one.apply(false, vec![conn("s4", "cy", "")], &[]);
        one_by_one.apply(false, vec![conn("s1", "ana", "{\"away\":true}")], &[]);
        one_by_one.apply(false, Vec::new(), &[left("s9")]);
        let members = batched.apply(
            false,
            vec![conn("s4", "cy", ""), conn("s1", "ana", "{\"away\":true}")],
            &[left("s2"), left("s9")],
        );
        assert_eq!(members.as_deref(), Some(one_by_one.members()));
        assert_eq!(
            batched
                .members()
                .iter()
                .map(|m| (m.user.as_str(), m.connections))
                .collect::<Vec<_>>(),
            [("ana", 1), ("bob", 1), ("cy", 1)]
        );
        assert!(!batched.is_present("dan"));
        assert!(batched.is_present("bob"));
        // An empty diff changes nothing.
        assert_eq!(batched.apply(false, Vec::new(), &[]), None);
    }
}

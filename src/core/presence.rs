//! Presence: the server reports connections, the app wants users.
//!
//! Each room keeps the server's per-connection view (session → conn), replaced by a snapshot and
//! patched by join/update/leave. The app sees it aggregated by user: one [`Member`] per user with
//! the number of connections and the metadata most recently set by any of them. A user with two
//! tabs is one member with `connections: 2`; closing one tab is an update, not a leave.

use alloc::vec::Vec;

use rtlink_protocol::{PresenceConn, PresenceLeft};

use super::event::Member;

/// One room's presence (kept in the room's entry, see `rooms.rs`).
#[derive(Clone, Debug, Default)]
pub struct RoomPresence {
    /// The server's connections, one per session, in the order they last changed (oldest
    /// first): a user's member shows the name and metadata of their last one. (A list, not a map
    /// by session: the order is the information, and a room's list is searched once per change.)
    conns: Vec<PresenceConn>,
    /// What the app was last told.
    members: Vec<Member>,
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
            self.forget(&left.session);
        }
        for conn in joins {
            // A change moves the connection to the end: it is now the latest.
            self.forget(&conn.session);
            self.conns.push(conn);
        }
        recompute(self)
    }

    fn forget(&mut self, session: &str) {
        if let Some(i) = self.conns.iter().position(|c| c.session == session) {
            self.conns.remove(i);
        }
    }

    /// The members, sorted by user, as the app was last told.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `user` still has a connection here.
    pub fn is_present(&self, user: &str) -> bool {
        self.conns.iter().any(|c| c.user == user)
    }
}

fn recompute(r: &mut RoomPresence) -> Option<Vec<Member>> {
    // Members sorted by user. Connections come oldest change first, so the last one of a user
    // sets the name and metadata shown.
    let mut members: Vec<Member> = Vec::new();
    for conn in &r.conns {
        match members.binary_search_by(|m| m.user.as_str().cmp(&conn.user)) {
            Ok(i) => {
                if let Some(m) = members.get_mut(i) {
                    m.connections += 1;
                    m.name = conn.name.clone();
                    m.meta = conn.meta.clone();
                }
            }
            Err(i) => members.insert(
                i,
                Member {
                    user: conn.user.clone(),
                    name: conn.name.clone(),
                    meta: conn.meta.clone(),
                    connections: 1,
                },
            ),
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

    #[test]
    fn a_user_shows_the_metadata_of_their_latest_change() {
        let mut p = RoomPresence::default();
        let meta = |p: &RoomPresence| p.members()[0].meta.clone();
        p.apply(
            true,
            vec![conn("s2", "ana", "b"), conn("s1", "ana", "a")],
            &[],
        );
        assert_eq!((meta(&p), p.members()[0].connections), ("a".into(), 2));
        // An update moves a connection to the end, whatever its session sorts as.
        p.apply(false, vec![conn("s2", "ana", "b2")], &[]);
        assert_eq!(meta(&p), "b2");
        p.apply(false, vec![conn("s1", "ana", "a")], &[]);
        assert_eq!(meta(&p), "a");
        // The latest one leaving shows the one before.
        p.apply(false, Vec::new(), &[left("s1")]);
        assert_eq!((meta(&p), p.members()[0].connections), ("b2".into(), 1));
    }
}

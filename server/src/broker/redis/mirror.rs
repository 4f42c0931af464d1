//! This node's copy of a watched room's presence, kept current from the room's Pub/Sub events,
//! so a joiner's snapshot is a reference count per member taken under a lock (as with the
//! in-process broker) instead of an `HGETALL` of the whole room and a sort, per join.
//!
//! The copy ([`Mirror::conns`]) always follows the presence events the reader sends to the hub,
//! in the order it sends them. It is *exact* — the room's presence at least as of the point of
//! the event stream the reader has reached — once it was filled from Redis:
//!
//! - A fill starts (under the lock the reader follows events under), then reads the presence
//!   hash. Until the reply is in, every change the reader sends is also kept aside; the reply
//!   with those changes applied on top is the copy. That is exact: the changes published after
//!   the read (which the reply lacks) reached the reader after the fill started, so they are
//!   among those kept, in order; the ones kept that were published before the read are already
//!   in the reply, and applying a run of changes again over a later state of the same room
//!   leaves that state (a join or update sets the connection, a leave removes it: the last
//!   change of each session wins either way). The order too: the reply is in the order of the
//!   changes (sorted by the change numbers stored with the entries), and the changes applied
//!   again each move their connection to the end, which is where the last ones of them already
//!   are, in that order. The same argument is why the hub may apply live events over a
//!   snapshot that already holds some of them.
//! - A fill only starts while the reader receives the room's events in order
//!   ([`Mirror::following`]): after the room's `SUBSCRIBE` was confirmed (a read before it could
//!   miss changes published before the subscription took effect, for good), and not between a
//!   lost Pub/Sub connection and the gap fill that re-installs the copy (`subscriber.rs`).
//! - The copy stops being exact ([`FillState::Stale`]) when it may have missed changes: the
//!   Pub/Sub connection was lost (until the gap is filled), the room's offsets restarted under
//!   a new epoch, or this node's liveness key was gone (both: Redis lost its data, which
//!   removes presence without events). The next snapshot reads Redis and fills the copy again.
//!
//! Snapshots served from an exact copy hold every change whose event was sent before them, and
//! the events sent after them hold every change they miss: the contract of
//! [`crate::broker::Broker::presence_snapshot`]. A snapshot read from Redis (no exact copy) is
//! newer than the stream position, which the contract allows too.

use std::sync::Arc;

use rtlink_protocol::PresenceConn;

use crate::broker::{PresenceEntry, RoomEventKind};

/// A room's presence by session id, in the order of the connections' last changes (the order
/// snapshots are sent in): the in-process broker's table, so both brokers list a room the same
/// way, and a node watching many small rooms keeps each in a small vector.
pub(super) type Conns = crate::presence::PresenceTable;

/// Whether a [`Mirror`] can answer snapshots.
#[derive(Debug, Default)]
pub(super) enum FillState {
    /// Never filled, or it may have missed changes: snapshots read Redis (and fill it).
    #[default]
    Stale,
    /// Fill number `fill` is reading the hash; the changes sent meanwhile wait here.
    Filling { fill: u64, kept: Vec<Change> },
    /// The room's presence as of the reader's position in the event stream (or later).
    Exact,
}

/// One watched room's presence as this node knows it.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// The presence as the events sent so far describe it (and, when exact, as it is).
    pub conns: Conns,
    pub state: FillState,
    /// The reader receives the room's events in order: a fill may start.
    following: bool,
}

/// The connections of a presence read, in the order given (read in change order:
/// `StoredConn::in_change_order`).
pub(super) fn conns_of(read: Vec<PresenceConn>) -> Conns {
    let mut conns = Conns::default();
    for c in read {
        conns.insert(PresenceEntry::new(c));
    }
    conns
}

/// A presence snapshot as a table, in its order (its entries shared).
pub(super) fn conns_in_order(snapshot: &[Arc<PresenceEntry>]) -> Conns {
    let mut conns = Conns::default();
    for e in snapshot {
        conns.insert(e.clone());
    }
    conns
}

/// What a presence event does to a room's presence (prepared, JSON encoded, before the lock).
#[derive(Clone, Debug)]
pub(super) enum Change {
    /// A join or an update: the connection as it is now.
    Set(Arc<PresenceEntry>),
    /// A leave.
    Remove(String),
}

impl Change {
    /// The change an event makes, if it is a presence event.
    pub fn of(kind: &RoomEventKind) -> Option<Self> {
        match kind {
            RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
                Some(Self::Set(PresenceEntry::new(c.clone())))
            }
            RoomEventKind::PresenceLeave { session, .. } => Some(Self::Remove(session.clone())),
            RoomEventKind::Message(_)
            | RoomEventKind::Typing { .. }
            | RoomEventKind::PresenceDiff { .. } => None,
        }
    }

    fn apply(&self, conns: &mut Conns) {
        match self {
            Self::Set(entry) => {
                conns.insert(entry.clone());
            }
            Self::Remove(session) => {
                conns.remove(session);
            }
        }
    }
}

impl Mirror {
    /// A presence change whose event the reader is sending to the hub.
    pub fn follow(&mut self, change: Change) {
        change.apply(&mut self.conns);
        if let FillState::Filling { kept, .. } = &mut self.state {
            kept.push(change);
        }
    }

    /// The snapshot, if the copy is exact: in change order, shared entries.
    pub fn snapshot(&self) -> Option<Vec<Arc<PresenceEntry>>> {
        matches!(self.state, FillState::Exact).then(|| self.conns.snapshot())
    }

    /// Starts fill number `fill` unless one is under way or the copy is exact; returns whether
    /// it did (the caller then reads the hash and hands the reply to [`Self::read`]).
    pub fn begin_fill(&mut self, fill: u64) -> bool {
        if !self.following || !matches!(self.state, FillState::Stale) {
            return false;
        }
        self.state = FillState::Filling {
            fill,
            kept: Vec::new(),
        };
        true
    }

    /// The reply of fill number `fill` (ignored if that fill was superseded).
    pub fn read(&mut self, fill: u64, mut read: Conns) {
        match &mut self.state {
            FillState::Filling { fill: f, kept } if *f == fill => {
                for change in kept.iter() {
                    change.apply(&mut read);
                }
                self.install(read);
            }
            _ => {}
        }
    }

    /// Fill number `fill` failed: the next snapshot tries again.
    pub fn fill_failed(&mut self, fill: u64) {
        if matches!(&self.state, FillState::Filling { fill: f, .. } if *f == fill) {
            self.state = FillState::Stale;
        }
    }

    /// The copy may have missed changes.
    pub fn invalidate(&mut self) {
        self.state = FillState::Stale;
    }

    /// The reader receives the room's events in order from now on (its `SUBSCRIBE` was
    /// confirmed, or a gap fill re-installed the copy after a reconnect).
    pub fn following(&mut self) {
        self.following = true;
    }

    /// The Pub/Sub connection was lost: not exact, and no fill until the gap fill.
    pub fn stream_lost(&mut self) {
        self.following = false;
        self.state = FillState::Stale;
    }

    /// `conns` is the presence at the reader's position (or later).
    pub fn install(&mut self, conns: Conns) {
        self.conns = conns;
        self.state = FillState::Exact;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(session: &str, meta: &str) -> PresenceConn {
        PresenceConn {
            session: session.into(),
            user: "u".into(),
            name: "n".into(),
            meta: meta.into(),
        }
    }

    fn join(session: &str, meta: &str) -> Change {
        Change::of(&RoomEventKind::PresenceJoin(conn(session, meta))).expect("a change")
    }

    fn leave(session: &str) -> Change {
        Change::of(&RoomEventKind::PresenceLeave {
            session: session.into(),
            user: "u".into(),
        })
        .expect("a change")
    }

    fn sessions(m: &Mirror) -> Option<Vec<String>> {
        m.snapshot().map(|s| {
            s.iter()
                .map(|e| format!("{}{}", e.conn.session, e.conn.meta))
                .collect()
        })
    }

    #[test]
    fn only_presence_events_are_changes() {
        let typing = RoomEventKind::Typing {
            user: "u".into(),
            name: "n".into(),
            active: true,
        };
        assert!(Change::of(&typing).is_none());
    }

    /// The reply lacks what was published after the read (`c` joined, `a` left, `b` changed)
    /// and holds some of what was published before it (`x` joined and left, `b` joined).
    #[test]
    fn no_fill_while_the_events_are_not_followed() {
        let mut m = Mirror::default();
        assert!(!m.begin_fill(1), "not subscribed yet");
        m.following();
        assert!(m.begin_fill(2));
        m.read(2, conns_of(vec![conn("a", "")]));
        assert!(m.snapshot().is_some());
        m.stream_lost();
        assert!(m.snapshot().is_none());
        assert!(!m.begin_fill(3), "until the gap fill re-installs the copy");
        m.install(conns_of(vec![conn("b", "")]));
        m.following();
        assert_eq!(sessions(&m), Some(vec!["b".into()]));
    }

    #[test]
    fn a_read_gets_the_changes_sent_while_it_was_under_way() {
        let mut m = Mirror::default();
        m.following();
        assert!(m.begin_fill(1));
        assert!(!m.begin_fill(2), "one fill at a time");
        m.follow(join("x", ""));
        m.follow(join("b", ""));
        m.follow(leave("x"));
        // The read happens here.
        m.follow(leave("a"));
        m.follow(join("c", ""));
        m.follow(Change::of(&RoomEventKind::PresenceUpdate(conn("b", "2"))).expect("a change"));
        assert_eq!(sessions(&m), None, "not exact before the reply");
        m.read(1, conns_of(vec![conn("a", ""), conn("b", "")]));
        // In the order of the last changes: `c` joined, then `b` changed.
        assert_eq!(sessions(&m), Some(vec!["c".into(), "b2".into()]));
        m.follow(leave("b"));
        m.follow(join("d", "1"));
        assert_eq!(sessions(&m), Some(vec!["c".into(), "d1".into()]));
    }

    #[test]
    fn a_superseded_or_failed_fill_changes_nothing() {
        let mut m = Mirror::default();
        m.following();
        assert!(m.begin_fill(1));
        m.fill_failed(2);
        m.fill_failed(1);
        assert!(matches!(m.state, FillState::Stale));
        m.read(1, conns_of(vec![conn("a", "")]));
        assert_eq!(sessions(&m), None);
        assert!(m.begin_fill(2));
        m.read(2, conns_of(vec![conn("a", "")]));
        assert_eq!(sessions(&m), Some(vec!["a".into()]));
        assert!(!m.begin_fill(3), "exact: nothing to fill");
        m.invalidate();
        assert_eq!(sessions(&m), None);
        // Events still follow (the copy is the baseline of a presence diff after an outage).
        m.follow(join("b", ""));
        assert_eq!(m.conns.len(), 2);
    }
}

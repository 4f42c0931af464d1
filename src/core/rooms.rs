//! Subscribed rooms and the one rule that makes delivery exactly-once and in order: remember the
//! last delivered offset per room, deliver only `last + 1`.
//!
//! - On `subscribed{head}` with no offset yet, `last = head`: the app sees messages published
//!   after it subscribed.
//! - `offset <= last`: a duplicate (replay after a reconnect or transport switch), dropped.
//! - `offset == last + 1`: delivered, `last = offset`.
//! - `offset > last + 1`: a gap. The message is dropped and `subscribe{since: last}` asks the
//!   server to replay from the gap. At most one subscribe is outstanding per room: while one is
//!   in flight its replay will cover the gap, so further gaps are just dropped.
//! - `subscribed{recovered: false}` after a `since` (history no longer reaches back), or a head
//!   below `last` in another epoch (the room's offsets restarted): resync needed, continue from
//!   the head. A head below `last` in the epoch `last` counts in is no reset: what follows up
//!   to `last` is dropped as duplicates.
//!
//! After every `welcome` each room is re-subscribed with `since = last`, which is also how a
//! resumed session catches up on whatever the dropped transport did not deliver.
//!
//! A room's presence and typing live in its entry too (their rules are in `presence.rs` and
//! `typing.rs`): both exist only for subscribed rooms, so one map means one lookup per frame and
//! one removal on unsubscribe, and its code is compiled once instead of once per map.

use alloc::{borrow::ToOwned, string::String};

use super::presence::RoomPresence;
use super::small_map::SmallMap;
use super::typing::RoomTyping;

use rtlink_protocol::ClientFrame;

/// A subscribed room.
#[derive(Clone, Debug, Default)]
pub struct Room {
    last: Option<u64>,
    /// A `subscribed` has arrived since the app subscribed (the app was told).
    live: bool,
    /// A subscribe is in flight; the inner value is the `since` it carried.
    outstanding: Option<Option<u64>>,
    /// Own presence metadata for this room.
    meta: Option<String>,
    /// `meta` was sent on the current session.
    meta_announced: bool,
    /// The room epoch `last` belongs to (from `subscribed`); sent back with `since` so a server
    /// whose offsets restarted (in-memory history lost) can tell.
    epoch: Option<String>,
    /// Recent messages to replay when joining (only asked while nothing was delivered yet).
    history: u32,
    /// Who is here.
    pub presence: RoomPresence,
    /// Who else is typing here, and own typing.
    pub typing: RoomTyping,
}

/// What to do with an incoming room message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Deliver,
    Duplicate,
    /// Drop it and send the room's subscribe (`since = last`, see
    /// [`Rooms::subscribe_frame`]) to repair the gap.
    Gap,
    /// Not deliverable now (unknown room, head not known yet, a repair already in flight).
    Drop,
}

/// What a `subscribed` frame meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// First `subscribed` since the app subscribed.
    pub first: bool,
    /// Messages were lost for good: the app must resync the room.
    pub resync: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Rooms {
    map: SmallMap<Room>,
}

impl Rooms {
    pub fn contains(&self, room: &str) -> bool {
        self.map.contains_key(room)
    }

    /// Adds a room the app subscribed to; false if already there.
    pub fn add(&mut self, room: &str, history: u32) -> bool {
        if self.map.contains_key(room) {
            return false;
        }
        self.map.insert(
            room.to_owned(),
            Room {
                history,
                ..Room::default()
            },
        );
        true
    }

    pub fn remove(&mut self, room: &str) -> bool {
        self.map.remove(room)
    }

    pub fn get(&self, room: &str) -> Option<&Room> {
        self.map.get(room)
    }

    pub fn get_mut(&mut self, room: &str) -> Option<&mut Room> {
        self.map.get_mut(room)
    }

    /// The `i`-th room in name order, for walks that queue output per room.
    pub fn entry_at_mut(&mut self, i: usize) -> Option<(&String, &mut Room)> {
        self.map.entry_at_mut(i)
    }

    pub fn values(&self) -> impl Iterator<Item = &Room> {
        self.map.values()
    }

    pub fn last_offset(&self, room: &str) -> Option<u64> {
        self.map.get(room).and_then(|r| r.last)
    }

    /// The subscribe frame for `room` (with `since = last` and the epoch `last` counts in),
    /// marking it outstanding. Also the repair of a gap (`last` is then where the gap starts).
    pub fn subscribe_frame(&mut self, room: &str) -> Option<ClientFrame> {
        let r = self.map.get_mut(room)?;
        r.outstanding = Some(r.last);
        Some(subscribe(room, r))
    }

    /// After a `welcome`, for the `i`-th room in name order (`None` past the last): its
    /// subscribe, followed by own presence when the session is new (`resumed == false`) or the
    /// metadata changed while disconnected. Walked by index, so no list of frames is built.
    pub fn resync_at(
        &mut self,
        i: usize,
        resumed: bool,
    ) -> Option<(ClientFrame, Option<ClientFrame>)> {
        let (name, r) = self.map.entry_at_mut(i)?;
        r.outstanding = Some(r.last);
        let frame = subscribe(name, r);
        let mut presence = None;
        if let Some(meta) = &r.meta {
            if !resumed || !r.meta_announced {
                presence = Some(ClientFrame::Presence {
                    room: name.clone(),
                    meta: meta.clone(),
                });
                r.meta_announced = true;
            }
        }
        Some((frame, presence))
    }

    /// The transport dropped: nothing is in flight any more, and own typing is forgotten (the
    /// server times it out).
    pub fn on_transport_lost(&mut self) {
        for r in self.map.values_mut() {
            r.outstanding = None;
            r.typing.reset_own();
        }
    }

    /// Stores own metadata. Returns the frame to send if `open`, `None` for unknown rooms.
    pub fn set_meta(&mut self, room: String, meta: String, open: bool) -> Option<ClientFrame> {
        let r = self.map.get_mut(&room)?;
        r.meta = Some(meta.clone());
        r.meta_announced = open;
        open.then_some(ClientFrame::Presence { room, meta })
    }

    /// A subscribe is in flight for the room, so a nack with this room as id refuses it: the
    /// first join, or a re-subscribe after a resume whose newer token no longer allows the room.
    pub fn subscribe_pending(&self, room: &str) -> bool {
        self.map.get(room).is_some_and(|r| r.outstanding.is_some())
    }

    /// A `subscribed` arrived. With `recovered: false` delivery continues after `head` (the
    /// server chose that point: the newest offset after trimming, or just before the oldest
    /// retained message of a new epoch).
    pub fn on_subscribed(
        &mut self,
        room: &str,
        head: u64,
        recovered: bool,
        epoch: String,
    ) -> Option<Subscribed> {
        let r = self.map.get_mut(room)?;
        // Offsets number the messages of one epoch: in the epoch `last` already counts in, a
        // head below it only means the server replays from further back, and those offsets are
        // dropped as duplicates. (The server resyncs a subscription unasked when the room's
        // offsets restart, and then also answers a subscribe the client sent before it heard
        // of the new epoch, with the same `head`: a second reset would deliver everything
        // since the first one again.)
        let same_epoch = r
            .epoch
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e == epoch);
        r.epoch = Some(epoch);
        let since = r.outstanding.take().flatten();
        let resync = match r.last {
            Some(last) if head < last => !same_epoch,
            Some(_) => since.is_some() && !recovered,
            None => false,
        };
        if resync || r.last.is_none() {
            r.last = Some(head);
        }
        let first = !r.live;
        r.live = true;
        Some(Subscribed { first, resync })
    }

    pub fn on_message(&mut self, room: &str, offset: u64) -> Delivery {
        let Some(r) = self.map.get_mut(room) else {
            return Delivery::Drop;
        };
        let Some(last) = r.last else {
            return Delivery::Drop;
        };
        if offset <= last {
            Delivery::Duplicate
        } else if Some(offset) == last.checked_add(1) {
            r.last = Some(offset);
            Delivery::Deliver
        } else if r.outstanding.is_some() {
            Delivery::Drop
        } else {
            r.outstanding = Some(Some(last));
            Delivery::Gap
        }
    }
}

fn subscribe(name: &str, r: &Room) -> ClientFrame {
    let epoch = r.last.and(r.epoch.clone());
    // Once anything was delivered, `since` resumes; history is only for the first join.
    let history = (r.last.is_none() && r.history > 0).then_some(r.history);
    ClientFrame::Subscribe {
        room: name.to_owned(),
        since: r.last,
        epoch,
        history,
    }
}

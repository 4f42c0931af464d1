//! Names of every Redis key and channel the broker touches, in one place.
//!
//! Each kind of key has its own fixed segment right after the prefix (`head:`, `hist:`, …), so
//! no room name (which may contain `:`) can make two kinds collide. A single-instance Redis (or
//! a primary with replicas) is assumed: scripts touch keys of several rooms, which Redis
//! Cluster would refuse.

/// The key and channel names under one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Pub/Sub channel of a room: every event of the room, in order.
    pub(super) fn channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The room name of a channel from [`Keys::channel`], if it is one.
    pub(super) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":room:")
    }

    /// String counter: the room's newest offset. Expires (with the epoch) a while after the
    /// room's history, so offsets are never reused within an epoch.
    pub(super) fn head(&self, room: &str) -> String {
        format!("{}:head:{room}", self.prefix)
    }

    /// The room's epoch: which incarnation of its offsets `head` counts (see `HistoryPage`).
    pub(super) fn epoch(&self, room: &str) -> String {
        format!("{}:epoch:{room}", self.prefix)
    }

    /// Stream of the room's retained messages, entry id `{offset}-0`.
    pub(super) fn history(&self, room: &str) -> String {
        format!("{}:hist:{room}", self.prefix)
    }

    /// Prefix of history keys, for scripts that walk every room.
    pub(super) fn history_prefix(&self) -> String {
        format!("{}:hist:", self.prefix)
    }

    /// Hash session -> JSON of the connection and its owning node.
    pub(super) fn presence(&self, room: &str) -> String {
        format!("{}:pres:{room}", self.prefix)
    }

    /// String counter: the cluster's presence changes (every join and update script takes the
    /// next number and stores it in the entry), so a read of a room's hash, which has no
    /// order, can be sorted into the order the changes (and their events) happened. One for
    /// every room: no key per room to create, expire and clean up, and a room's numbers only
    /// need to grow.
    pub(super) fn presence_seq(&self) -> String {
        format!("{}:pres-seq", self.prefix)
    }

    /// Prefix of presence keys, for scripts that walk every room.
    pub(super) fn presence_prefix(&self) -> String {
        format!("{}:pres:", self.prefix)
    }

    /// Set of rooms that have (or recently had) history.
    pub(super) fn history_rooms(&self) -> String {
        format!("{}:idx:hist-rooms", self.prefix)
    }

    /// Set of rooms that have presence entries.
    pub(super) fn presence_rooms(&self) -> String {
        format!("{}:idx:pres-rooms", self.prefix)
    }

    /// String counter: the bytes the history byte budget counts, over every room of the
    /// cluster (stream entries plus the eviction log's own records), see `budget.rs`.
    pub(super) fn budget_bytes(&self) -> String {
        format!("{}:hist-budget:bytes", self.prefix)
    }

    /// Hash room -> bytes of that room's stream entries counted in [`Keys::budget_bytes`]; lets
    /// the count be corrected when a room's stream expires as a whole.
    pub(super) fn budget_rooms(&self) -> String {
        format!("{}:hist-budget:rooms", self.prefix)
    }

    /// Stream of every stored message in publish order across rooms (room, offset, stamp,
    /// bytes): the eviction order of the byte budget.
    pub(super) fn budget_log(&self) -> String {
        format!("{}:hist-budget:log", self.prefix)
    }

    /// Which node runs the background trim of the byte budget (one per cluster), with a TTL.
    pub(super) fn budget_lease(&self) -> String {
        format!("{}:hist-budget:lease", self.prefix)
    }

    /// Hash of the cluster's numbers for `/metrics` (`rooms`, `members`, `messages`), written by
    /// the node that holds [`Keys::stats_lease`] at the end of each pass.
    pub(super) fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// Which node walks the indexes for the stats (one per cluster), with a TTL.
    pub(super) fn stats_lease(&self) -> String {
        format!("{}:stats:lease", self.prefix)
    }

    /// Set of node ids that have announced themselves (alive or not).
    pub(super) fn nodes(&self) -> String {
        format!("{}:idx:nodes", self.prefix)
    }

    /// Liveness key of a node, refreshed with a TTL while the node runs.
    pub(super) fn node(&self, id: &str) -> String {
        format!("{}{id}", self.node_prefix())
    }

    pub(super) fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// Pub/Sub channel on which a node receives requests forwarded by other nodes (and the
    /// replies to its own), see `crate::cluster::redis`. A channel, not a key: it cannot clash
    /// with the liveness key of the same name prefix.
    pub(super) fn node_inbox(&self, id: &str) -> String {
        format!("{}{id}:inbox", self.node_prefix())
    }

    /// A live ticket: hash of its payload (`p`) and its owner's ticket set key (`o`).
    pub(super) fn ticket(&self, ticket: &str) -> String {
        format!("{}:ticket:{ticket}", self.prefix)
    }

    /// Sorted set of a user's live tickets, scored by expiry (ms, Redis's clock): the per-user
    /// cap. The user's length goes first, as for dedupe keys.
    pub(super) fn user_tickets(&self, user: &str) -> String {
        format!("{}:tickets-of:{}:{user}", self.prefix, user.len())
    }

    /// Remembered publish id. The user's length goes first so `("a:b", "c")` and `("a", "b:c")`
    /// are different keys.
    pub(super) fn dedupe(&self, user: &str, id: &str) -> String {
        format!("{}:dedupe:{}:{user}:{id}", self.prefix, user.len())
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn channel_round_trips_and_dedupe_keys_do_not_collide() {
        let k = Keys::new("p");
        assert_eq!(k.room_of_channel(&k.channel("chat:a")), Some("chat:a"));
        assert_eq!(k.room_of_channel("other:room:x"), None);
        assert_ne!(k.dedupe("a:b", "c"), k.dedupe("a", "b:c"));
    }
}

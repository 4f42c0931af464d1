//! The broker: the seam between one server node and the state shared by every node.
//!
//! Everything that must be the same on every node of a cluster goes through [`Broker`]: offset
//! assignment and history of each room, fan-out of room events (messages, presence diffs,
//! typing), the presence table and publish-id deduplication. Everything that belongs to one
//! connection stays on its node: sessions, outboxes, transports, rate limits, timers (presence
//! grace, typing TTL, resume window).
//!
//! [`local::LocalBroker`] is the in-process implementation (one node, the default). A Redis
//! implementation (`redis.rs`, Pub/Sub for fan-out, Streams + `INCR` for offsets and history,
//! presence hashes with per-node liveness keys, typing over Pub/Sub) implements the same trait;
//! nothing else in the server changes.
//!
//! # Contract
//!
//! - **Offsets**: [`Broker::publish`] gives each stored message the next offset of its room,
//!   contiguous from 1, never reused (also not after the history has been trimmed).
//! - **Fan-out**: every event of a room this node [`watch`](Broker::watch)es is sent, in the
//!   order the broker assigned it, on the channel from [`Broker::events`]. Messages of one room
//!   arrive in offset order. The channel is a `tokio::sync::broadcast`: a receiver that falls
//!   behind sees `RecvError::Lagged`, and the hub resynchronises (history replay and presence
//!   snapshots), so an implementation may drop events under pressure but must never reorder
//!   them. Events of rooms nobody on this node watches may be sent or not (the hub ignores them).
//! - **Epochs**: every stored message carries the epoch of its room's offsets
//!   ([`StoredMessage::epoch`], the one [`HistoryPage::epoch`] reports). When a room's offsets
//!   restart (a backend lost its data), its messages carry a new epoch, on the live fan-out as in
//!   history, so a subscriber holding offsets of the old epoch notices instead of dropping the
//!   new messages as duplicates.
//! - **History**: [`Broker::history`] returns the stored messages with offset `> since`, oldest
//!   first, and the room's head (newest offset, 0 for an empty room). `complete` is false when
//!   messages after `since` existed but were trimmed (count or age bound), i.e. the caller
//!   cannot replay without a gap. Both brokers also evict history, oldest message first
//!   across all rooms, beyond the byte budget (`--history-max-bytes`; for Redis, of the whole
//!   cluster); an evicted message is "trimmed" like any other.
//! - **Race-free subscribe**: the hub registers for live events *before* reading history, then
//!   forwards live messages with an offset above the last replayed one. So `history` must
//!   include every message whose event was sent before the call returned.
//! - **Presence** is per connection (session id), keyed by room. `presence_join` on an already
//!   present session is an update. `presence_leave` of an absent session is a no-op and sends no
//!   event. Each effective change sends exactly one event to the room.
//! - **Race-free presence snapshot**: like history, a [`Broker::presence_snapshot`] taken
//!   after the caller registered for live events holds every change whose event was sent on
//!   the channel before the call returned; a change it misses is sent after. It may also hold
//!   changes whose events are still to come (a snapshot read from Redis is newer than the
//!   event stream): the hub applies those events again, which changes nothing (a join or
//!   update sets the connection and moves it to the end, where the last changes already are,
//!   in the same order; a leave of an absent one is ignored).
//! - **Snapshot order**: the connections in the order of their last change (join, update or
//!   rejoin), oldest first: the order their events were sent in, so a joiner that applies a
//!   snapshot ends with the list the members built from the events (clients show a user with
//!   several connections by the latest one). The same on both brokers and every node: the
//!   Redis broker stores a change number with each entry, taken in the script that publishes
//!   the change, and sorts reads of a room's hash by it.
//! - **Typing** is never stored: [`Broker::typing`] only fans out.
//! - **Tickets** ([`tickets`]) are stored where every node can redeem them: a ticket stored by
//!   [`Broker::issue_ticket`] on one node is returned by [`Broker::redeem_ticket`] on any node,
//!   once (two concurrent redeems: one gets it), and never after its time to live.
//! - **Dedupe**: [`Broker::publish`] with a [`DedupeKey`] that was seen within the dedupe window
//!   stores nothing, sends nothing and returns [`PublishOutcome::Duplicate`] with the original
//!   room and offset. Two concurrent publishes with the same key store at most one message.
//! - **Encoding**: room events carry the encoded server frame ([`RoomEvent::frame`]); the hub
//!   shares those bytes with every subscriber. An implementation that receives events from
//!   elsewhere (Redis) encodes each event once on arrival, with [`RoomEvent::new`].
//! - Methods never panic on any input; room names arrive validated ([`crate::rooms::valid_room`]).

pub mod local;
pub mod redis;
pub mod tickets;

use std::sync::Arc;

use async_trait::async_trait;
use rtlink_protocol::codec::encode_server;
use rtlink_protocol::{PresenceConn, ServerFrame};
use tokio::sync::broadcast;

/// An encoded server frame: UTF-8 JSON, cheap to clone (reference counted), sent as-is as a
/// WebSocket text message, an SSE `data:` line or an element of a long-poll batch.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Encodes a server frame once.
pub fn encode_frame(frame: &ServerFrame) -> Frame {
    // serde_json always produces UTF-8; the fallback is never taken.
    Frame::from(String::from_utf8(encode_server(frame)).unwrap_or_default())
}

/// A message stored in a room. Shared (`Arc`) between history, the event channel and every
/// subscriber's outbox; its frame is encoded once.
#[derive(Debug)]
pub struct StoredMessage {
    pub room: String,
    pub offset: u64,
    /// User id of the publisher.
    pub sender: String,
    /// Display name of the publisher.
    pub name: Option<String>,
    /// Opaque payload, never parsed.
    pub payload: String,
    /// Milliseconds since the Unix epoch when the broker stored it (for the age bound).
    pub stored_at_ms: u64,
    /// The room epoch `offset` counts in (see [`HistoryPage::epoch`]); empty if unknown (an
    /// event from an older node).
    pub epoch: Arc<str>,
    /// The encoded `message` server frame.
    pub frame: Frame,
}

impl StoredMessage {
    pub fn new(
        room: String,
        offset: u64,
        sender: String,
        name: Option<String>,
        payload: String,
        stored_at_ms: u64,
        epoch: Arc<str>,
    ) -> Self {
        let frame = encode_frame(&ServerFrame::Message {
            room: room.clone(),
            offset,
            sender: sender.clone(),
            name: name.clone(),
            payload: payload.clone(),
        });
        Self {
            room,
            offset,
            sender,
            name,
            payload,
            stored_at_ms,
            epoch,
            frame,
        }
    }

    /// Heap and inline bytes this message holds (payload twice: as text and inside its frame),
    /// what the history byte budget counts.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.room.len()
            + self.sender.len()
            + self.name.as_ref().map_or(0, String::len)
            + self.payload.len()
            + self.epoch.len()
            + self.frame.len()
    }
}

/// One connection in a room's presence as a broker hands it out: the connection and its JSON,
/// encoded once when it joined or changed, shared (`Arc`) by the room's table and every snapshot
/// taken of it. A joiner's snapshot then costs a reference count per member, and its pages are
/// the members' JSON copied side by side (`crate::replay`), not N fresh copies encoded again.
#[derive(Debug, PartialEq, Eq)]
pub struct PresenceEntry {
    pub conn: PresenceConn,
    json: Box<str>,
}

impl PresenceEntry {
    pub fn new(conn: PresenceConn) -> Arc<Self> {
        // Four strings always serialise; the fallback is never taken.
        let json = serde_json::to_string(&conn).unwrap_or_default().into();
        Arc::new(Self { conn, json })
    }

    /// The connection as JSON (an element of `conns`/`joins` in presence frames).
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// What happened in a room.
#[derive(Clone, Debug)]
pub enum RoomEventKind {
    Message(Arc<StoredMessage>),
    PresenceJoin(PresenceConn),
    PresenceUpdate(PresenceConn),
    PresenceLeave {
        session: String,
        user: String,
    },
    Typing {
        user: String,
        name: String,
        active: bool,
    },
    /// Coalesced presence changes of a large room. Built by the hub's dispatcher
    /// ([`crate::presence_batch`]), never sent by a broker.
    PresenceDiff {
        joins: Vec<PresenceConn>,
        leaves: Vec<rtlink_protocol::PresenceLeft>,
    },
}

/// One event of a room, with its frame encoded once for every subscriber.
#[derive(Clone, Debug)]
pub struct RoomEvent {
    pub room: Arc<str>,
    pub kind: RoomEventKind,
    /// The encoded server frame to deliver to subscribers.
    pub frame: Frame,
}

impl RoomEvent {
    /// Builds an event and encodes its frame (once).
    pub fn new(room: &str, kind: RoomEventKind) -> Self {
        let frame = match &kind {
            RoomEventKind::Message(m) => m.frame.clone(),
            RoomEventKind::PresenceJoin(conn) => encode_frame(&ServerFrame::PresenceJoin {
                room: room.to_owned(),
                conn: conn.clone(),
            }),
            RoomEventKind::PresenceUpdate(conn) => encode_frame(&ServerFrame::PresenceUpdate {
                room: room.to_owned(),
                conn: conn.clone(),
            }),
            RoomEventKind::PresenceLeave { session, user } => {
                encode_frame(&ServerFrame::PresenceLeave {
                    room: room.to_owned(),
                    session: session.clone(),
                    user: user.clone(),
                })
            }
            RoomEventKind::PresenceDiff { joins, leaves } => {
                encode_frame(&ServerFrame::PresenceDiff {
                    room: room.to_owned(),
                    joins: joins.clone(),
                    leaves: leaves.clone(),
                })
            }
            RoomEventKind::Typing { user, name, active } => encode_frame(&ServerFrame::Typing {
                room: room.to_owned(),
                user: user.clone(),
                name: name.clone(),
                active: *active,
            }),
        };
        Self {
            room: Arc::from(room),
            kind,
            frame,
        }
    }
}

/// Identifies a publish for deduplication: the same user resending the same client id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub user: String,
    pub id: String,
}

/// A publish request.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    pub room: String,
    pub sender: String,
    pub name: Option<String>,
    pub payload: String,
    /// `None` disables deduplication for this publish.
    pub dedupe: Option<DedupeKey>,
}

/// The answer to a publish.
#[derive(Clone, Debug)]
pub enum PublishOutcome {
    /// Stored and fanned out.
    Stored(Arc<StoredMessage>),
    /// A resend of a publish already stored within the dedupe window: nothing was stored; ack
    /// with this original position.
    Duplicate { room: String, offset: u64 },
}

impl PublishOutcome {
    pub fn offset(&self) -> u64 {
        match self {
            Self::Stored(m) => m.offset,
            Self::Duplicate { offset, .. } => *offset,
        }
    }
}

/// A slice of a room's history.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// Messages with offset `> since`, oldest first, at most `limit`.
    pub messages: Vec<Arc<StoredMessage>>,
    /// The room's newest offset (0 when nothing was ever published).
    pub head: u64,
    /// False when messages after `since` were trimmed from history: replay would have a gap.
    pub complete: bool,
    /// The incarnation of the room's offsets. It changes when offsets restart from 1 (history
    /// lost: an in-memory broker restarted, an idle room was swept, Redis data was flushed), so a
    /// client's `since` from another epoch is recognised as meaningless. Shared: every
    /// subscription keeps the epoch its offsets count in, and the in-process broker hands out
    /// the room's own copy.
    pub epoch: Arc<str>,
}

/// A broker failure (a backend that is down, a timeout). Callers never panic on it, and none
/// closes a transport for it (the reference server never sends 4011 internal_error itself, as
/// docs/PROTOCOL.md says): a client's publish, presence update or replay is answered `nack
/// internal`, a ticket request or transport open `503 overloaded`, a server API call `503`,
/// and what has no one to answer (watching a room, presence joins and leaves) is logged.
#[derive(Debug)]
pub struct BrokerError(pub String);

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broker: {}", self.0)
    }
}

impl std::error::Error for BrokerError {}

pub type BrokerResult<T> = Result<T, BrokerError>;

/// Point-in-time numbers for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct BrokerStats {
    /// Rooms with state held by the broker (history or presence).
    pub rooms: u64,
    /// Presence entries across all rooms.
    pub presence_members: u64,
    /// Messages held in history across all rooms.
    pub history_messages: u64,
    /// Bytes those messages hold, as the history byte budget counts them (Redis: the whole
    /// cluster's count, which also includes the eviction log's records).
    pub history_bytes: u64,
}

/// The shared state of a cluster, as seen from one node. See the module docs for the contract.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A new receiver of events for every room this node watches. Called once by the hub at
    /// start-up; after a lag the hub keeps using the same receiver (and resyncs).
    fn events(&self) -> broadcast::Receiver<RoomEvent>;

    /// This node has local subscribers in `room` from now on (Redis: `SUBSCRIBE`). Called by the
    /// hub when the first local session subscribes, before reading history; the local sessions
    /// that subscribe while it is in flight wait for it too. Idempotent.
    async fn watch(&self, room: &str) -> BrokerResult<()>;

    /// No local subscriber is left in `room` (Redis: `UNSUBSCRIBE`). Idempotent.
    async fn unwatch(&self, room: &str) -> BrokerResult<()>;

    /// Stores a message with the room's next offset and fans it out, or recognises a resend.
    async fn publish(&self, req: PublishRequest) -> BrokerResult<PublishOutcome>;

    /// Messages after `since` (at most `limit`), the head, and whether nothing was trimmed.
    async fn history(&self, room: &str, since: u64, limit: usize) -> BrokerResult<HistoryPage>;

    /// Adds (or updates) a connection in a room's presence; sends `PresenceJoin` for a new
    /// connection, `PresenceUpdate` for a known one.
    async fn presence_join(&self, room: &str, conn: PresenceConn) -> BrokerResult<()>;

    /// Changes the metadata of a present connection; sends `PresenceUpdate`. Returns false (and
    /// sends nothing) if the connection is not present.
    async fn presence_update(&self, room: &str, conn: PresenceConn) -> BrokerResult<bool>;

    /// Removes a connection from a room's presence; sends `PresenceLeave` if it was present.
    async fn presence_leave(&self, room: &str, session: &str) -> BrokerResult<()>;

    /// Every connection present in a room, in the order of their last change (oldest first)
    /// whichever broker and node answers; race-free with the event channel (see the module
    /// docs). The local
    /// broker shares its table's entries; the Redis broker answers from its mirror of a
    /// watched room (filled once from Redis, kept current from the room's events), and reads
    /// Redis for a room it does not watch or while the mirror is being (re)filled.
    async fn presence_snapshot(&self, room: &str) -> BrokerResult<Vec<Arc<PresenceEntry>>>;

    /// Fans out a typing event (never stored).
    async fn typing(&self, room: &str, user: &str, name: &str, active: bool) -> BrokerResult<()>;

    /// Stores a ticket for its time to live, unless the user already holds as many live
    /// tickets as the grant allows (or, in memory, the table is full).
    async fn issue_ticket(
        &self,
        grant: tickets::TicketGrant,
    ) -> BrokerResult<Result<(), tickets::TicketRefusal>>;

    /// Removes a ticket and returns its payload, if it exists and has not expired. A ticket is
    /// returned once, whichever node asks.
    async fn redeem_ticket(&self, ticket: &str) -> BrokerResult<Option<String>>;

    /// Numbers for `/metrics`; cheap, may be approximate.
    fn stats(&self) -> BrokerStats;
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! The Redis broker: the shared state of a cluster of server nodes kept in one Redis.
//!
//! - **Offsets and history**: a counter per room (`INCR`) and a stream per room whose entry ids
//!   are the offsets (`{offset}-0`), bounded by count (`MAXLEN`) and by age (trimmed on publish
//!   and read, stamped with Redis's clock). One Lua script per publish assigns the offset,
//!   appends, trims, remembers the dedupe key and `PUBLISH`es the event, so offsets, stream
//!   order and Pub/Sub order are the same order even with many nodes publishing at once.
//! - **History byte budget**: a counter of the bytes every room's history holds, kept by the
//!   same scripts that add and remove entries, and a cluster-wide log of messages in publish
//!   order; over `--history-max-bytes` the oldest message of any room is evicted first, as in
//!   the in-process broker (`budget.rs`).
//! - **Fan-out**: one Pub/Sub channel per room. [`Broker::watch`] subscribes this node's
//!   Pub/Sub connection and a reader task turns each channel message into a [`RoomEvent`]
//!   (encoded once) on the node's broadcast channel (`subscriber.rs`).
//! - **Presence**: a hash per room, session -> connection, owning node and the number of its
//!   last change (a cluster-wide counter the join and update scripts take, so a read of the
//!   hash sorts into the order the room's events went out in). Each node refreshes
//!   a liveness key with a TTL; every node's reaper removes (and announces the leave of) the
//!   entries of nodes whose key expired, so the users of a crashed node leave after about one
//!   TTL (`upkeep.rs`). Each node mirrors the presence of the rooms it watches, filled once
//!   from the hash and kept current from the room's events, and answers snapshots from it
//!   (`mirror.rs`): a join costs a reference count per member, not a read of the whole room.
//! - **Typing** is a bare `PUBLISH`.
//! - **Tickets**: a hash per ticket with a time to live, and per user a sorted set of live
//!   tickets scored by expiry (the per-user cap); issue and redeem are one script each, so a
//!   ticket is redeemed once even when two nodes try at the same moment.
//!
//! Losing the Pub/Sub connection: the reader reconnects, re-subscribes every watched room,
//! replays from history the messages it missed (skipping those it already sent) and sends the
//! presence changes it missed as a diff against its mirror of each watched room's presence.
//! What it cannot recover is messages trimmed from history during the outage and typing.

mod budget;
mod keys;
mod mirror;
mod scripts;
mod subscriber;
mod upkeep;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use rtlink_protocol::PresenceConn;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use self::keys::Keys;
use self::scripts::Scripts;
use self::subscriber::Subscriptions;
use self::wire::{int, message_tail, stored_from_entry, text, StoredConn, Wire};
use super::local::LocalBrokerConfig;
use super::tickets::{TicketGrant, TicketRefusal};
use super::{
    Broker, BrokerError, BrokerResult, BrokerStats, HistoryPage, PresenceEntry, PublishOutcome,
    PublishRequest, RoomEvent, StoredMessage,
};

/// Settings of the Redis broker. The history and dedupe bounds mean what they mean for the
/// local broker; [`RedisOptions::from_local`] copies them.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prefix of every key and channel; nodes of one cluster share it, tests use a unique one.
    pub key_prefix: String,
    /// Messages kept per room.
    pub history_max_messages: usize,
    /// Messages older than this are trimmed.
    pub history_max_age: Duration,
    /// Bytes of history kept across every room of the cluster (see `budget.rs` for what an
    /// entry counts); beyond it the oldest message of any room is evicted first.
    pub history_max_bytes: usize,
    /// How often the holder of the trim lease evicts what publishes left over the budget and
    /// forgets the eviction log's records of messages that aged out.
    pub budget_interval: Duration,
    /// How long a publish id is remembered.
    pub dedupe_window: Duration,
    /// Lifetime of a node's liveness key, refreshed every third of it. The presence of a node
    /// that stops refreshing is removed by the other nodes after about this long.
    pub node_ttl: Duration,
    /// How often the cached numbers of [`Broker::stats`] are refreshed. Each refresh reads
    /// the cluster's numbers (O(1)); the node holding the stats lease also advances its walk of
    /// the room indexes by a bounded number of rooms.
    pub stats_interval: Duration,
    /// Presence rooms the reaper of dead nodes' presence looks at per upkeep tick, at most: a
    /// walk over more rooms goes on over the next ticks.
    pub reap_rooms_per_tick: usize,
    /// How long a room's head and epoch keys live after its last publish or read (at least the
    /// history age plus an hour: a room idle that long starts a new epoch).
    pub room_key_ttl: Duration,
    /// Capacity of the event channel; a slower receiver lags and resyncs.
    pub event_capacity: usize,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on any one Redis command; past it the call fails with a [`BrokerError`].
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self::from_local(&LocalBrokerConfig::default())
    }
}

impl RedisOptions {
    /// The same history, dedupe and channel bounds as a local broker configured with `cfg`.
    pub fn from_local(cfg: &LocalBrokerConfig) -> Self {
        Self {
            key_prefix: String::from("rtlink"),
            history_max_messages: cfg.history_max_messages,
            history_max_age: cfg.history_max_age,
            history_max_bytes: cfg.history_max_bytes,
            budget_interval: Duration::from_secs(1),
            dedupe_window: cfg.dedupe_window,
            node_ttl: Duration::from_secs(10),
            stats_interval: Duration::from_secs(5),
            reap_rooms_per_tick: upkeep::REAP_ROOMS_PER_TICK,
            room_key_ttl: cfg.history_max_age + ROOM_KEY_GRACE,
            event_capacity: cfg.event_capacity,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// Cached numbers for `/metrics`, refreshed by the upkeep task.
#[derive(Default)]
struct StatsCache {
    rooms: AtomicU64,
    presence_members: AtomicU64,
    history_messages: AtomicU64,
    history_bytes: AtomicU64,
}

/// Everything the broker and its background tasks share.
struct Shared {
    opts: RedisOptions,
    keys: Keys,
    /// Random id of this node: names its liveness key and tags its presence entries.
    node_id: String,
    client: redis::Client,
    /// Commands and scripts (multiplexed, reconnects by itself).
    conn: ConnectionManager,
    scripts: Scripts,
    tx: broadcast::Sender<RoomEvent>,
    subs: Subscriptions,
    /// Presence entries this node owns (room -> session -> conn), re-announced if the cluster
    /// took this node for dead (its liveness key expired) and reaped them.
    owned: Mutex<HashMap<String, BTreeMap<String, PresenceConn>>>,
    stats: StatsCache,
}

/// The Redis implementation of [`Broker`]. Dropping it stops its background tasks and closes
/// its connections without cleaning up: to the other nodes that looks like a crash, and they
/// reap its presence after the node TTL.
pub struct RedisBroker {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn redis_err(e: RedisError) -> BrokerError {
    BrokerError(format!("redis: {e}"))
}

fn timed_out(what: &str) -> BrokerError {
    BrokerError(format!("redis: {what} timed out"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How much longer than the history a room's head and epoch keys live.
pub const ROOM_KEY_GRACE: Duration = Duration::from_secs(3600);

/// A `since` past every real offset; Lua numbers are doubles, exact up to 2^53.
const MAX_OFFSET: u64 = 1 << 53;

impl RedisBroker {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`), announces this node and starts
    /// the Pub/Sub reader and the upkeep task (liveness, reaper, stats). Fails if Redis cannot
    /// be reached within the connect timeout.
    pub async fn connect(url: &str, opts: RedisOptions) -> BrokerResult<Arc<Self>> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(opts.connect_timeout)
            .set_response_timeout(opts.response_timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let conn = tokio::time::timeout(
            opts.connect_timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(redis_err)?;
        let pubsub = tokio::time::timeout(opts.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(redis_err)?;
        let (sink, stream) = pubsub.split();
        let (tx, _) = broadcast::channel(opts.event_capacity.max(16));
        let shared = Arc::new(Shared {
            keys: Keys::new(&opts.key_prefix),
            node_id: format!("{:016x}", rand::random::<u64>()),
            client,
            conn,
            scripts: Scripts::new(),
            tx,
            subs: Subscriptions::new(sink),
            owned: Mutex::new(HashMap::new()),
            stats: StatsCache::default(),
            opts,
        });
        // Alive before any presence entry names this node.
        shared.heartbeat().await?;
        let tasks = vec![
            tokio::spawn(subscriber::run(shared.clone(), stream)),
            tokio::spawn(upkeep::run(shared.clone())),
            tokio::spawn(budget::run(shared.clone())),
        ];
        tracing::info!(node = %shared.node_id, "redis broker connected");
        Ok(Arc::new(Self { shared, tasks }))
    }

    /// This node's id (tags its presence entries and names its liveness key).
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// What the cluster layer (`crate::cluster::redis`) shares with this broker: the node id,
    /// the Redis client and connection, and the names of the per-node keys and channels.
    pub fn cluster_link(&self) -> ClusterLink {
        let s = &self.shared;
        ClusterLink {
            node_id: s.node_id.clone(),
            client: s.client.clone(),
            conn: s.conn(),
            keys: s.keys.clone(),
            response_timeout: s.opts.response_timeout,
            connect_timeout: s.opts.connect_timeout,
        }
    }
}

/// Handles for the cluster layer, from [`RedisBroker::cluster_link`].
#[derive(Clone)]
pub struct ClusterLink {
    pub node_id: String,
    pub client: redis::Client,
    /// Commands (multiplexed, shared with the broker).
    pub conn: ConnectionManager,
    keys: Keys,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ClusterLink {
    /// Liveness key of `node`: it exists while the node runs.
    pub fn liveness_key(&self, node: &str) -> String {
        self.keys.node(node)
    }

    /// Set of the node ids that have announced themselves (alive or not).
    pub fn nodes_key(&self) -> String {
        self.keys.nodes()
    }

    /// Pub/Sub channel where `node` receives forwarded requests and replies.
    pub fn inbox(&self, node: &str) -> String {
        self.keys.node_inbox(node)
    }
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Never shorter than the history plus its grace (whatever the options say), so a room's
    /// head outlives its stream and offsets are never reused within an epoch.
    fn room_key_ttl(&self) -> Duration {
        self.opts
            .room_key_ttl
            .max(self.opts.history_max_age + Duration::from_secs(1))
    }

    async fn history_page(
        &self,
        room: &str,
        since: u64,
        limit: usize,
    ) -> BrokerResult<HistoryPage> {
        let reply: Value = self
            .scripts
            .history
            .key(self.keys.head(room))
            .key(self.keys.history(room))
            .key(self.keys.epoch(room))
            .key(self.keys.budget_bytes())
            .key(self.keys.budget_rooms())
            .arg(since.min(MAX_OFFSET))
            .arg(limit.min(u32::MAX as usize))
            .arg(millis(self.opts.history_max_age))
            .arg(crate::auth::random_token(8))
            .arg(millis(self.room_key_ttl()))
            .arg(room)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let bad = || BrokerError(String::from("redis: unexpected history reply"));
        let Value::Array(parts) = reply else {
            return Err(bad());
        };
        let [head, complete, Value::Array(entries), epoch] = parts.as_slice() else {
            return Err(bad());
        };
        let epoch: String = redis::from_redis_value(epoch).map_err(|_| bad())?;
        let epoch = self.room_epoch(room, epoch);
        let messages = entries
            .iter()
            .filter_map(|e| stored_from_entry(room, e, &epoch))
            .map(Arc::new)
            .collect();
        Ok(HistoryPage {
            messages,
            head: int(head).ok_or_else(bad)?,
            complete: int(complete) == Some(1),
            epoch,
        })
    }

    /// A room's presence read from Redis, in the order of its last changes (for a room this
    /// node does not watch, or whose mirror is not exact and already being filled).
    async fn read_presence(&self, room: &str) -> BrokerResult<Vec<Arc<PresenceEntry>>> {
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.presence(room))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(StoredConn::in_change_order(entries)
            .into_iter()
            .map(PresenceEntry::new)
            .collect())
    }

    /// Runs the join script: stores the entry and publishes a join (new) or update (known).
    async fn presence_join(&self, room: &str, conn: &PresenceConn) -> BrokerResult<()> {
        let entry = serde_json::to_string(&StoredConn::new(conn, &self.node_id))
            .map_err(|e| BrokerError(format!("encode presence: {e}")))?;
        let _: i64 = self
            .scripts
            .presence_join
            .key(self.keys.presence(room))
            .key(self.keys.presence_rooms())
            .key(self.keys.presence_seq())
            .arg(&conn.session)
            .arg(entry)
            .arg(room)
            .arg(self.keys.channel(room))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    fn own(&self, room: &str, conn: PresenceConn) {
        self.owned
            .lock()
            .entry(room.to_owned())
            .or_default()
            .insert(conn.session.clone(), conn);
    }

    fn disown(&self, room: &str, session: &str) {
        let mut owned = self.owned.lock();
        if let Some(conns) = owned.get_mut(room) {
            conns.remove(session);
            if conns.is_empty() {
                owned.remove(room);
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.shared.tx.subscribe()
    }

    async fn watch(&self, room: &str) -> BrokerResult<()> {
        self.shared.watch(room).await
    }

    async fn unwatch(&self, room: &str) -> BrokerResult<()> {
        self.shared.unwatch(room).await
    }

    async fn publish(&self, req: PublishRequest) -> BrokerResult<PublishOutcome> {
        let s = &self.shared;
        let mut call = s.scripts.publish.prepare_invoke();
        call.key(s.keys.head(&req.room))
            .key(s.keys.history(&req.room))
            .key(s.keys.history_rooms())
            .key(s.keys.epoch(&req.room))
            .key(s.keys.budget_bytes())
            .key(s.keys.budget_rooms())
            .key(s.keys.budget_log());
        if let Some(d) = &req.dedupe {
            call.key(s.keys.dedupe(&d.user, &d.id));
        }
        call.arg(&req.room)
            .arg(s.keys.channel(&req.room))
            .arg(s.opts.history_max_messages)
            .arg(millis(s.opts.history_max_age))
            .arg(millis(s.opts.dedupe_window))
            .arg(&req.sender)
            .arg(&req.payload)
            .arg(message_tail(&req.sender, req.name.as_deref(), &req.payload))
            .arg(crate::auth::random_token(8))
            .arg(millis(s.room_key_ttl()))
            .arg(s.opts.history_max_bytes)
            .arg(budget::EVICT_PER_PUBLISH)
            .arg(s.keys.history_prefix());
        if let Some(name) = &req.name {
            call.arg(name);
        }
        let reply: Value = call.invoke_async(&mut s.conn()).await.map_err(redis_err)?;
        let bad = || BrokerError(String::from("redis: unexpected publish reply"));
        let Value::Array(parts) = reply else {
            return Err(bad());
        };
        match parts.as_slice() {
            [flag, offset, at, epoch] if int(flag) == Some(1) => {
                let msg = StoredMessage::new(
                    req.room,
                    int(offset).ok_or_else(bad)?,
                    req.sender,
                    req.name,
                    req.payload,
                    int(at).unwrap_or(0),
                    Arc::from(text(epoch).ok_or_else(bad)?),
                );
                Ok(PublishOutcome::Stored(Arc::new(msg)))
            }
            [flag, seen] if int(flag) == Some(0) => {
                let seen = text(seen).ok_or_else(bad)?;
                let (room, offset) = seen.rsplit_once(' ').ok_or_else(bad)?;
                let offset = offset.parse().map_err(|_| bad())?;
                Ok(PublishOutcome::Duplicate {
                    room: room.to_owned(),
                    offset,
                })
            }
            _ => Err(bad()),
        }
    }

    async fn history(&self, room: &str, since: u64, limit: usize) -> BrokerResult<HistoryPage> {
        self.shared.history_page(room, since, limit).await
    }

    async fn presence_join(&self, room: &str, conn: PresenceConn) -> BrokerResult<()> {
        self.shared.presence_join(room, &conn).await?;
        self.shared.own(room, conn);
        Ok(())
    }

    async fn presence_update(&self, room: &str, conn: PresenceConn) -> BrokerResult<bool> {
        let s = &self.shared;
        let entry = serde_json::to_string(&StoredConn::new(&conn, &s.node_id))
            .map_err(|e| BrokerError(format!("encode presence: {e}")))?;
        let updated: i64 = s
            .scripts
            .presence_update
            .key(s.keys.presence(room))
            .key(s.keys.presence_seq())
            .arg(&conn.session)
            .arg(entry)
            .arg(s.keys.channel(room))
            .invoke_async(&mut s.conn())
            .await
            .map_err(redis_err)?;
        if updated == 1 {
            s.own(room, conn);
        }
        Ok(updated == 1)
    }

    async fn presence_leave(&self, room: &str, session: &str) -> BrokerResult<()> {
        let s = &self.shared;
        let _: i64 = s
            .scripts
            .presence_leave
            .key(s.keys.presence(room))
            .key(s.keys.presence_rooms())
            .arg(session)
            .arg(room)
            .arg(s.keys.channel(room))
            .invoke_async(&mut s.conn())
            .await
            .map_err(redis_err)?;
        s.disown(room, session);
        Ok(())
    }

    async fn presence_snapshot(&self, room: &str) -> BrokerResult<Vec<Arc<PresenceEntry>>> {
        self.shared.presence_snapshot(room).await
    }

    async fn typing(&self, room: &str, user: &str, name: &str, active: bool) -> BrokerResult<()> {
        let s = &self.shared;
        let event = Wire::Typing {
            u: user.to_owned(),
            n: name.to_owned(),
            a: active,
        };
        let json = serde_json::to_string(&event)
            .map_err(|e| BrokerError(format!("encode typing: {e}")))?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(s.keys.channel(room))
            .arg(json)
            .query_async(&mut s.conn())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn issue_ticket(&self, grant: TicketGrant) -> BrokerResult<Result<(), TicketRefusal>> {
        let s = &self.shared;
        let stored: i64 = s
            .scripts
            .issue_ticket
            .key(s.keys.ticket(&grant.ticket))
            .key(s.keys.user_tickets(&grant.user))
            .arg(&grant.ticket)
            .arg(&grant.payload)
            .arg(millis(grant.ttl))
            .arg(grant.per_user_cap)
            .invoke_async(&mut s.conn())
            .await
            .map_err(redis_err)?;
        Ok(if stored == 1 {
            Ok(())
        } else {
            Err(TicketRefusal::TooManyForUser)
        })
    }

    async fn redeem_ticket(&self, ticket: &str) -> BrokerResult<Option<String>> {
        let s = &self.shared;
        s.scripts
            .redeem_ticket
            .key(s.keys.ticket(ticket))
            .arg(ticket)
            .invoke_async(&mut s.conn())
            .await
            .map_err(redis_err)
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.shared.stats;
        BrokerStats {
            rooms: c.rooms.load(Ordering::Relaxed),
            presence_members: c.presence_members.load(Ordering::Relaxed),
            history_messages: c.history_messages.load(Ordering::Relaxed),
            history_bytes: c.history_bytes.load(Ordering::Relaxed),
        }
    }
}

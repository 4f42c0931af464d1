//! The in-process broker: one node, state in memory behind one mutex.
//!
//! Events are sent on the broadcast channel while the state lock is held, so their order on the
//! channel is the order of the state changes (offsets of a room arrive ascending). The lock is a
//! `parking_lot::Mutex` held for short, non-async sections only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rtlink_protocol::PresenceConn;
use tokio::sync::broadcast;

use super::tickets::{LocalTickets, TicketGrant, TicketRefusal};
use super::{
    now_ms, Broker, BrokerResult, BrokerStats, DedupeKey, HistoryPage, PresenceEntry,
    PublishOutcome, PublishRequest, RoomEvent, RoomEventKind, StoredMessage,
};
use crate::presence::PresenceTable;

/// Bounds of the in-process broker.
#[derive(Clone, Debug)]
pub struct LocalBrokerConfig {
    /// Messages kept per room.
    pub history_max_messages: usize,
    /// Messages older than this are trimmed.
    pub history_max_age: Duration,
    /// Bytes of history kept across all rooms ([`StoredMessage::memory_bytes`]); beyond it the
    /// oldest message of any room is evicted first.
    pub history_max_bytes: usize,
    /// How long a publish id is remembered.
    pub dedupe_window: Duration,
    /// Upper bound on remembered publish ids (oldest forgotten first).
    pub dedupe_max_entries: usize,
    /// Capacity of the event channel; a slower receiver lags and resyncs.
    pub event_capacity: usize,
}

impl Default for LocalBrokerConfig {
    fn default() -> Self {
        Self {
            history_max_messages: 1000,
            history_max_age: Duration::from_secs(600),
            history_max_bytes: 256 * 1024 * 1024,
            dedupe_window: Duration::from_secs(120),
            dedupe_max_entries: 100_000,
            event_capacity: 16_384,
        }
    }
}

#[derive(Default)]
struct Room {
    /// This incarnation of the room's offsets: an idle room that is swept, or a restarted
    /// process, starts again from offset 1 under a new epoch, so clients can tell.
    epoch: Arc<str>,
    head: u64,
    history: VecDeque<Arc<StoredMessage>>,
    /// Session → connection, in the order of their last change (small rooms in a vector: see
    /// [`PresenceTable`]); a snapshot shares the entries.
    presence: PresenceTable,
    last_active_ms: u64,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    watched: HashSet<String>,
    dedupe: HashMap<DedupeKey, (String, u64)>,
    /// (remembered at, key), oldest first: the eviction order of `dedupe`.
    dedupe_order: VecDeque<(u64, DedupeKey)>,
    /// Messages and bytes of every room's history (what `history_max_bytes` bounds).
    totals: Totals,
    /// Every stored message in publish order, across rooms: the eviction order of the byte
    /// budget. Entries of messages trimmed otherwise are skipped when they come up (and
    /// compacted away when they outnumber the live ones).
    history_order: VecDeque<Weak<StoredMessage>>,
    presence_members: u64,
    /// Random per process; with `rooms_created`, makes every room epoch unique.
    epoch_prefix: String,
    rooms_created: u64,
}

/// What the history of every room holds together.
#[derive(Default)]
struct Totals {
    messages: u64,
    bytes: usize,
}

impl Totals {
    fn add(&mut self, m: &StoredMessage) {
        self.messages += 1;
        self.bytes += m.memory_bytes();
    }

    fn forget(&mut self, m: &StoredMessage) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(m.memory_bytes());
    }
}

/// The room, created (with a fresh epoch) if absent. A free function over the fields it needs,
/// so callers keep borrowing the rest of `State`.
fn room_entry<'a>(
    rooms: &'a mut HashMap<String, Room>,
    created: &mut u64,
    epoch_prefix: &str,
    name: &str,
) -> &'a mut Room {
    rooms.entry(name.to_owned()).or_insert_with(|| {
        *created += 1;
        Room {
            epoch: Arc::from(format!("{epoch_prefix}.{created}")),
            ..Room::default()
        }
    })
}

pub struct LocalBroker {
    cfg: LocalBrokerConfig,
    state: Mutex<State>,
    /// Kept apart from `state`: ticket traffic never waits behind room traffic.
    tickets: Mutex<LocalTickets>,
    tx: broadcast::Sender<RoomEvent>,
}

impl LocalBroker {
    pub fn new(cfg: LocalBrokerConfig) -> Self {
        let (tx, _) = broadcast::channel(cfg.event_capacity.max(16));
        Self {
            cfg,
            state: Mutex::new(State {
                epoch_prefix: crate::auth::random_token(6),
                ..State::default()
            }),
            tickets: Mutex::new(LocalTickets::default()),
            tx,
        }
    }

    fn emit(&self, room: &str, kind: RoomEventKind) {
        // No receiver is not an error: nobody on this node listens.
        let _ = self.tx.send(RoomEvent::new(room, kind));
    }

    fn trim(cfg: &LocalBrokerConfig, totals: &mut Totals, room: &mut Room, now: u64) {
        let max_age = cfg.history_max_age.as_millis() as u64;
        while let Some(front) = room.history.front() {
            let too_many = room.history.len() > cfg.history_max_messages;
            let too_old = now.saturating_sub(front.stored_at_ms) > max_age;
            if !(too_many || too_old) {
                break;
            }
            if let Some(m) = room.history.pop_front() {
                totals.forget(&m);
            }
        }
    }

    /// Evicts the oldest messages across rooms until the history fits its byte budget.
    fn enforce_byte_budget(cfg: &LocalBrokerConfig, state: &mut State) {
        while state.totals.bytes > cfg.history_max_bytes {
            let Some(weak) = state.history_order.pop_front() else {
                break;
            };
            // Still in its room's history only if it is that room's oldest message: messages
            // of a room are stored in publish order, the order of `history_order`.
            let Some(m) = weak.upgrade() else { continue };
            let Some(room) = state.rooms.get_mut(&m.room) else {
                continue;
            };
            if room.history.front().is_some_and(|f| Arc::ptr_eq(f, &m)) {
                room.history.pop_front();
                state.totals.forget(&m);
            }
        }
        if state.history_order.len() > 2 * state.totals.messages as usize + 1024 {
            state.history_order.retain(|w| w.strong_count() > 0);
        }
    }

    fn forget_old_ids(&self, state: &mut State, now: u64) {
        let window = self.cfg.dedupe_window.as_millis() as u64;
        while let Some((at, _)) = state.dedupe_order.front() {
            let expired = now.saturating_sub(*at) > window;
            if !(expired || state.dedupe_order.len() > self.cfg.dedupe_max_entries) {
                break;
            }
            if let Some((_, key)) = state.dedupe_order.pop_front() {
                state.dedupe.remove(&key);
            }
        }
    }

    /// Drops rooms that hold nothing any more and that nobody watches, and expired tickets.
    /// Called from the
    /// server's periodic sweep. A dropped room's offsets restart at 1; a client that resumes
    /// with a `since` above the new head is told `recovered: false`.
    pub fn sweep(&self) {
        let now = now_ms();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let max_age = self.cfg.history_max_age.as_millis() as u64;
        for room in state.rooms.values_mut() {
            Self::trim(&self.cfg, &mut state.totals, room, now);
        }
        Self::enforce_byte_budget(&self.cfg, state);
        let watched = &state.watched;
        state.rooms.retain(|name, room| {
            watched.contains(name)
                || !room.history.is_empty()
                || !room.presence.is_empty()
                || now.saturating_sub(room.last_active_ms) <= max_age
        });
        self.forget_old_ids(state, now);
        drop(guard);
        self.tickets.lock().sweep(std::time::Instant::now());
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.tx.subscribe()
    }

    async fn watch(&self, room: &str) -> BrokerResult<()> {
        self.state.lock().watched.insert(room.to_owned());
        Ok(())
    }

    async fn unwatch(&self, room: &str) -> BrokerResult<()> {
        self.state.lock().watched.remove(room);
        Ok(())
    }

    async fn publish(&self, req: PublishRequest) -> BrokerResult<PublishOutcome> {
        let now = now_ms();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Some(key) = &req.dedupe {
            self.forget_old_ids(state, now);
            if let Some((room, offset)) = state.dedupe.get(key) {
                return Ok(PublishOutcome::Duplicate {
                    room: room.clone(),
                    offset: *offset,
                });
            }
        }
        let room = room_entry(
            &mut state.rooms,
            &mut state.rooms_created,
            &state.epoch_prefix,
            &req.room,
        );
        room.head += 1;
        room.last_active_ms = now;
        let msg = Arc::new(StoredMessage::new(
            req.room.clone(),
            room.head,
            req.sender,
            req.name,
            req.payload,
            now,
            room.epoch.clone(),
        ));
        room.history.push_back(msg.clone());
        state.totals.add(&msg);
        state.history_order.push_back(Arc::downgrade(&msg));
        Self::trim(&self.cfg, &mut state.totals, room, now);
        Self::enforce_byte_budget(&self.cfg, state);
        if let Some(key) = req.dedupe {
            state
                .dedupe
                .insert(key.clone(), (req.room.clone(), msg.offset));
            state.dedupe_order.push_back((now, key));
            self.forget_old_ids(state, now);
        }
        self.emit(&req.room, RoomEventKind::Message(msg.clone()));
        Ok(PublishOutcome::Stored(msg))
    }

    async fn history(&self, room: &str, since: u64, limit: usize) -> BrokerResult<HistoryPage> {
        let now = now_ms();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        // Reading creates the room, so its epoch is fixed from the first subscriber on.
        let r = room_entry(
            &mut state.rooms,
            &mut state.rooms_created,
            &state.epoch_prefix,
            room,
        );
        Self::trim(&self.cfg, &mut state.totals, r, now);
        let oldest_kept = r.history.front().map_or(r.head + 1, |m| m.offset);
        let complete = since.saturating_add(1) >= oldest_kept && since <= r.head;
        // Offsets in history are contiguous: index of `since + 1` is `since + 1 - oldest_kept`.
        let skip = since.saturating_add(1).saturating_sub(oldest_kept) as usize;
        let messages = r.history.iter().skip(skip).take(limit).cloned().collect();
        Ok(HistoryPage {
            messages,
            head: r.head,
            complete,
            epoch: r.epoch.clone(),
        })
    }

    async fn presence_join(&self, room: &str, conn: PresenceConn) -> BrokerResult<()> {
        // Encoded before the lock is taken.
        let entry = PresenceEntry::new(conn.clone());
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let r = room_entry(
            &mut state.rooms,
            &mut state.rooms_created,
            &state.epoch_prefix,
            room,
        );
        r.last_active_ms = now_ms();
        let existed = r.presence.insert(entry).is_some();
        if existed {
            self.emit(room, RoomEventKind::PresenceUpdate(conn));
        } else {
            state.presence_members += 1;
            self.emit(room, RoomEventKind::PresenceJoin(conn));
        }
        Ok(())
    }

    async fn presence_update(&self, room: &str, conn: PresenceConn) -> BrokerResult<bool> {
        let entry = PresenceEntry::new(conn.clone());
        let mut guard = self.state.lock();
        let Some(r) = guard.rooms.get_mut(room) else {
            return Ok(false);
        };
        if r.presence.get(&conn.session).is_none() {
            return Ok(false);
        }
        r.presence.insert(entry);
        self.emit(room, RoomEventKind::PresenceUpdate(conn));
        Ok(true)
    }

    async fn presence_leave(&self, room: &str, session: &str) -> BrokerResult<()> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(r) = state.rooms.get_mut(room) else {
            return Ok(());
        };
        if let Some(entry) = r.presence.remove(session) {
            r.last_active_ms = now_ms();
            state.presence_members = state.presence_members.saturating_sub(1);
            self.emit(
                room,
                RoomEventKind::PresenceLeave {
                    session: entry.conn.session.clone(),
                    user: entry.conn.user.clone(),
                },
            );
        }
        Ok(())
    }

    async fn presence_snapshot(&self, room: &str) -> BrokerResult<Vec<Arc<PresenceEntry>>> {
        // Already in change order (the order the room's events were sent in, as the Redis
        // broker answers): a reference count per member under the lock, no copy and no sort.
        let guard = self.state.lock();
        Ok(guard
            .rooms
            .get(room)
            .map(|r| r.presence.snapshot())
            .unwrap_or_default())
    }

    async fn typing(&self, room: &str, user: &str, name: &str, active: bool) -> BrokerResult<()> {
        // Under the lock so typing is ordered with the room's other events.
        let _guard = self.state.lock();
        self.emit(
            room,
            RoomEventKind::Typing {
                user: user.to_owned(),
                name: name.to_owned(),
                active,
            },
        );
        Ok(())
    }

    async fn issue_ticket(&self, grant: TicketGrant) -> BrokerResult<Result<(), TicketRefusal>> {
        Ok(self.tickets.lock().issue(grant, std::time::Instant::now()))
    }

    async fn redeem_ticket(&self, ticket: &str) -> BrokerResult<Option<String>> {
        Ok(self
            .tickets
            .lock()
            .redeem(ticket, std::time::Instant::now()))
    }

    fn stats(&self) -> BrokerStats {
        let guard = self.state.lock();
        BrokerStats {
            rooms: guard.rooms.len() as u64,
            presence_members: guard.presence_members,
            history_messages: guard.totals.messages,
            history_bytes: guard.totals.bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(room: &str, id: Option<&str>) -> PublishRequest {
        PublishRequest {
            room: room.into(),
            sender: "u".into(),
            name: None,
            payload: "p".into(),
            dedupe: id.map(|id| DedupeKey {
                user: "u".into(),
                id: id.into(),
            }),
        }
    }

    #[tokio::test]
    async fn offsets_are_contiguous_and_history_is_bounded() {
        let b = LocalBroker::new(LocalBrokerConfig {
            history_max_messages: 3,
            ..Default::default()
        });
        for i in 1..=5u64 {
            assert_eq!(
                b.publish(req("r", None)).await.map(|o| o.offset()).ok(),
                Some(i)
            );
        }
        let page = b.history("r", 0, 100).await.ok().unwrap_or_default();
        assert_eq!(page.head, 5);
        assert!(!page.complete);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let page = b.history("r", 3, 100).await.ok().unwrap_or_default();
        assert!(page.complete);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let page = b.history("r", 5, 100).await.ok().unwrap_or_default();
        assert!(page.complete && page.messages.is_empty());
        let page = b.history("r", 9, 100).await.ok().unwrap_or_default();
        assert!(
            !page.complete,
            "a since beyond the head cannot be recovered"
        );
    }

    #[tokio::test]
    async fn the_byte_budget_evicts_the_oldest_message_across_rooms() {
        let big = |room: &str| PublishRequest {
            payload: "x".repeat(1000),
            ..req(room, None)
        };
        let one = StoredMessage::new(
            "a".into(),
            1,
            "u".into(),
            None,
            "x".repeat(1000),
            0,
            Arc::from(""),
        )
        .memory_bytes();
        let b = LocalBroker::new(LocalBrokerConfig {
            // Room for three messages (their epochs are a few bytes longer than the empty one).
            history_max_bytes: 3 * one + 100,
            ..Default::default()
        });
        b.publish(big("a")).await.ok();
        b.publish(big("b")).await.ok();
        b.publish(big("a")).await.ok();
        assert_eq!(b.stats().history_messages, 3);
        // A fourth evicts the oldest of all: room a's first.
        b.publish(big("b")).await.ok();
        let stats = b.stats();
        assert_eq!(stats.history_messages, 3);
        assert!(stats.history_bytes <= (3 * one + 100) as u64);
        let a = b.history("a", 0, 100).await.ok().unwrap_or_default();
        assert!(!a.complete, "a replay from 0 has a gap");
        assert_eq!(
            a.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![2]
        );
        let bb = b.history("b", 0, 100).await.ok().unwrap_or_default();
        assert!(bb.complete);
        assert_eq!(bb.messages.len(), 2);
        // Messages trimmed by the count bound leave stale entries that are skipped, not
        // double-counted.
        for _ in 0..2000 {
            b.publish(req("c", None)).await.ok();
        }
        let stats = b.stats();
        assert!(stats.history_bytes <= (3 * one + 100) as u64);
        assert_eq!(b.state.lock().totals.bytes as u64, stats.history_bytes);
        assert!(b.state.lock().history_order.len() <= 2 * stats.history_messages as usize + 1024);
    }

    /// Every subscription keeps the epoch its offsets count in: the room's own copy, shared.
    #[tokio::test]
    async fn history_pages_and_messages_share_the_rooms_epoch() {
        let b = LocalBroker::new(LocalBrokerConfig::default());
        let first = b.history("r", 0, 10).await.ok().unwrap_or_default();
        let stored = b.publish(req("r", None)).await.ok();
        let second = b.history("r", 0, 10).await.ok().unwrap_or_default();
        assert!(!first.epoch.is_empty());
        assert!(Arc::ptr_eq(&first.epoch, &second.epoch));
        let Some(PublishOutcome::Stored(m)) = stored else {
            panic!("not stored");
        };
        assert!(Arc::ptr_eq(&first.epoch, &m.epoch));
        let other = b.history("o", 0, 10).await.ok().unwrap_or_default();
        assert_ne!(first.epoch, other.epoch);
    }

    #[tokio::test]
    async fn dedupe_returns_the_original_offset() {
        let b = LocalBroker::new(LocalBrokerConfig::default());
        let mut rx = b.events();
        let first = b
            .publish(req("r", Some("m1")))
            .await
            .map(|o| o.offset())
            .ok();
        let again = b.publish(req("r", Some("m1"))).await.ok();
        assert!(matches!(
            again,
            Some(PublishOutcome::Duplicate { offset: 1, .. })
        ));
        assert_eq!(first, Some(1));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "a duplicate is not fanned out");
    }

    #[tokio::test]
    async fn dedupe_memory_is_bounded() {
        let b = LocalBroker::new(LocalBrokerConfig {
            dedupe_max_entries: 10,
            ..Default::default()
        });
        for i in 0..100 {
            let _ = b.publish(req("r", Some(&format!("m{i}")))).await;
        }
        assert!(b.state.lock().dedupe.len() <= 10);
    }

    /// Two tabs of one user: the older one changes last. Members saw that change last, so a
    /// joiner's snapshot lists it last too (clients show a user by their latest connection),
    /// whatever the session ids sort as.
    #[tokio::test]
    async fn a_snapshot_lists_connections_in_the_order_they_last_changed() {
        let b = LocalBroker::new(LocalBrokerConfig::default());
        let tab = |session: &str, meta: &str| PresenceConn {
            session: session.into(),
            user: "ana".into(),
            name: "Ana".into(),
            meta: meta.into(),
        };
        let order = |snap: Vec<Arc<PresenceEntry>>| -> Vec<(String, String)> {
            snap.iter()
                .map(|e| (e.conn.session.clone(), e.conn.meta.clone()))
                .collect()
        };
        for others in [0, 20] {
            let room = format!("r{others}");
            let _ = b.presence_join(&room, tab("s-a", "")).await;
            let _ = b.presence_join(&room, tab("s-z", "")).await;
            let _ = b.presence_update(&room, tab("s-z", "typing")).await;
            // Enough others to take the large form.
            for i in 0..others {
                let _ = b.presence_join(&room, tab(&format!("o{i:02}"), "")).await;
            }
            let _ = b.presence_update(&room, tab("s-a", "away")).await;
            let snap = order(b.presence_snapshot(&room).await.unwrap_or_default());
            assert_eq!(snap.len(), 2 + others);
            assert_eq!(snap[0], ("s-z".into(), "typing".into()));
            assert_eq!(snap.last(), Some(&("s-a".into(), "away".into())));
            // A rejoin (a resumed session) is a change too.
            let _ = b.presence_join(&room, tab("s-z", "typing")).await;
            let snap = order(b.presence_snapshot(&room).await.unwrap_or_default());
            assert_eq!(snap.last(), Some(&("s-z".into(), "typing".into())));
        }
    }

    #[tokio::test]
    async fn presence_join_leave_events() {
        let b = LocalBroker::new(LocalBrokerConfig::default());
        let mut rx = b.events();
        let conn = PresenceConn {
            session: "s".into(),
            user: "u".into(),
            name: "n".into(),
            meta: String::new(),
        };
        let _ = b.presence_join("r", conn.clone()).await;
        let _ = b.presence_join("r", conn).await;
        let _ = b.presence_leave("r", "s").await;
        let _ = b.presence_leave("r", "s").await;
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert!(matches!(
            kinds.as_slice(),
            [
                RoomEventKind::PresenceJoin(_),
                RoomEventKind::PresenceUpdate(_),
                RoomEventKind::PresenceLeave { .. }
            ]
        ));
        assert_eq!(b.stats().presence_members, 0);
    }
}

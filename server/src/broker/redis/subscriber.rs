//! The Pub/Sub side: which rooms this node watches, the reader task that turns channel
//! messages into room events, and recovery after the Pub/Sub connection drops.
//!
//! Race-free subscribe: [`Shared::watch`] returns only after Redis confirmed the `SUBSCRIBE`.
//! Every publish script that runs after that reaches this node's reader, and every one that
//! ran before is already in the stream the hub reads next, so nothing falls between the two.
//!
//! Presence: the reader keeps a [`Mirror`] of each watched room's presence, which answers
//! snapshots once it is exact (`mirror.rs`).
//!
//! Epochs: if Redis loses its data (a restart without persistence, a failover to a lagging
//! replica), a room's offsets restart from 1 under a new epoch. The reader follows the epoch of
//! each watched room, so messages of the new epoch are not mistaken for replays of offsets it
//! already sent; they reach the hub with their epoch, and the hub resynchronises the local
//! subscribers that still count in the old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Msg;
use rtlink_protocol::PresenceConn;

use super::mirror::{conns_in_order, conns_of, Change, Conns, Mirror};
use super::wire::{StoredConn, Wire};
use super::{redis_err, timed_out, Shared};
use crate::broker::{BrokerError, BrokerResult, PresenceEntry, RoomEvent, RoomEventKind};

/// Messages fetched per history call while filling a gap after a reconnect.
const RESYNC_PAGE: usize = 500;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What the reader knows about a watched room, to recover after a reconnect.
#[derive(Default)]
struct Watch {
    /// Highest offset sent on the event channel; a message at or below it is a replay.
    forwarded: u64,
    /// The room epoch `forwarded` and `seeded` count in, once known.
    epoch: Option<Arc<str>>,
    /// The room's head right after it was subscribed: the hub read history up to at least
    /// this, so a gap fill never needs to start lower.
    seeded: u64,
    /// The room's presence as the events sent so far describe it; answers snapshots once it
    /// is exact.
    presence: Mirror,
    /// Set after a gap fill: the presence snapshot it diffed against was taken atomically with
    /// publishing this marker, so live presence events before the marker are already in the
    /// diff and are dropped until the marker comes by.
    pending_marker: Option<String>,
}

pub(super) struct Subscriptions {
    /// The command half of the Pub/Sub connection, `None` while reconnecting. Held across
    /// `SUBSCRIBE`/`UNSUBSCRIBE`, so watch, unwatch and re-subscribing never interleave.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    watched: parking_lot::Mutex<HashMap<String, Watch>>,
    /// Numbers the presence mirrors' fills (a reply is only taken by the fill that asked).
    fills: AtomicU64,
}

impl Subscriptions {
    pub(super) fn new(sink: PubSubSink) -> Self {
        Self {
            sink: tokio::sync::Mutex::new(Some(sink)),
            watched: parking_lot::Mutex::new(HashMap::new()),
            fills: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(super) async fn watch(&self, room: &str) -> BrokerResult<()> {
        let mut guard = self.subs.sink.lock().await;
        if self.subs.watched.lock().contains_key(room) {
            return Ok(());
        }
        let Some(sink) = guard.as_mut() else {
            return Err(BrokerError(String::from("redis: pub/sub is reconnecting")));
        };
        // Registered before SUBSCRIBE so the reader tracks the room's first events.
        self.subs
            .watched
            .lock()
            .insert(room.to_owned(), Watch::default());
        let subscribed = tokio::time::timeout(
            self.opts.response_timeout,
            sink.subscribe(self.keys.channel(room)),
        )
        .await
        .map_err(|_| timed_out("subscribe"))
        .and_then(|r| r.map_err(redis_err));
        if let Err(e) = subscribed {
            self.subs.watched.lock().remove(room);
            return Err(e);
        }
        if let Some(w) = self.subs.watched.lock().get_mut(room) {
            w.presence.following();
        }
        drop(guard);
        // Only needed to recover after a Pub/Sub outage, so a failure here is not the caller's.
        if let Err(e) = self.seed(room).await {
            tracing::warn!(room, error = %e, "redis broker: could not seed a watched room");
        }
        Ok(())
    }

    /// Records the head and epoch of a newly watched room: the hub reads history next, so that
    /// is where a later gap fill starts. (The presence mirror is filled by the first snapshot,
    /// which the hub reads next too.)
    async fn seed(&self, room: &str) -> BrokerResult<()> {
        let page = self.history_page(room, 0, 0).await?;
        let mut watched = self.subs.watched.lock();
        if let Some(w) = watched.get_mut(room) {
            w.seeded = page.head;
            // A message that arrived meanwhile already told the epoch.
            w.epoch.get_or_insert_with(|| page.epoch.clone());
        }
        Ok(())
    }

    /// A watched room's presence from its mirror if that is exact; otherwise read from Redis
    /// (and, if no fill is under way, the read fills the mirror). In the order of the
    /// connections' last changes either way.
    ///
    /// With 5,000 members joining one room, that is a handful of reads of the room (the joins
    /// that came before the first fill's reply), not 5,000.
    pub(super) async fn presence_snapshot(
        &self,
        room: &str,
    ) -> BrokerResult<Vec<Arc<PresenceEntry>>> {
        let fill = self.subs.fills.fetch_add(1, Ordering::Relaxed);
        let filling = {
            let mut watched = self.subs.watched.lock();
            match watched.get_mut(room) {
                Some(w) => {
                    if let Some(snapshot) = w.presence.snapshot() {
                        return Ok(snapshot);
                    }
                    w.presence.begin_fill(fill)
                }
                None => false,
            }
        };
        let read = self.read_presence(room).await;
        if filling {
            if let Some(w) = self.subs.watched.lock().get_mut(room) {
                match &read {
                    Ok(read) => w.presence.read(fill, conns_in_order(read)),
                    Err(_) => w.presence.fill_failed(fill),
                }
            }
        }
        read
    }

    /// The mirrors may have missed changes (Redis lost its data): snapshots read Redis until
    /// each is filled again.
    pub(super) fn invalidate_mirrors(&self) {
        for w in self.subs.watched.lock().values_mut() {
            w.presence.invalidate();
        }
    }

    /// The Pub/Sub connection is lost: snapshots read Redis, and no mirror is filled until the
    /// gap fill after the reconnect re-installs it.
    fn mirrors_lost_stream(&self) {
        for w in self.subs.watched.lock().values_mut() {
            w.presence.stream_lost();
        }
    }

    pub(super) async fn unwatch(&self, room: &str) -> BrokerResult<()> {
        let mut guard = self.subs.sink.lock().await;
        if self.subs.watched.lock().remove(room).is_none() {
            return Ok(());
        }
        // While reconnecting there is nothing to undo: only watched rooms are re-subscribed.
        let Some(sink) = guard.as_mut() else {
            return Ok(());
        };
        tokio::time::timeout(
            self.opts.response_timeout,
            sink.unsubscribe(self.keys.channel(room)),
        )
        .await
        .map_err(|_| timed_out("unsubscribe"))?
        .map_err(redis_err)
    }

    /// One message from the Pub/Sub connection.
    fn deliver(&self, msg: &Msg) {
        let Some(room) = self.keys.room_of_channel(msg.get_channel_name()) else {
            return;
        };
        let wire = match serde_json::from_slice::<Wire>(msg.get_payload_bytes()) {
            Ok(wire) => wire,
            Err(e) => return tracing::warn!(room, error = %e, "redis broker: undecodable event"),
        };
        if let Wire::Marker { k } = &wire {
            if let Some(w) = self.subs.watched.lock().get_mut(room) {
                if w.pending_marker.as_ref() == Some(k) {
                    w.pending_marker = None;
                }
            }
            return;
        }
        if let Some(kind) = wire.into_kind(room, |e| self.room_epoch(room, e)) {
            self.emit(room, kind, true);
        }
    }

    /// The room's epoch as this node shares it (every message and subscription of a watched
    /// room holds the same `Arc`), or a new one if it is not the watched room's.
    pub(super) fn room_epoch(&self, room: &str, epoch: String) -> Arc<str> {
        let watched = self.subs.watched.lock();
        match watched.get(room).and_then(|w| w.epoch.as_ref()) {
            Some(known) if **known == *epoch => known.clone(),
            _ => Arc::from(epoch),
        }
    }

    /// Sends an event to the hub (encoding its frame, once) and keeps the room's recovery
    /// state and presence mirror. Drops what a gap fill already covered: a message at or below
    /// the last offset sent, a `live` presence event from before the fill's marker.
    ///
    /// The mirror is changed and the event sent under one lock, the one snapshots are taken
    /// under: a snapshot from the mirror holds exactly the presence events sent before it.
    fn emit(&self, room: &str, kind: RoomEventKind, live: bool) {
        let change = Change::of(&kind);
        let event = RoomEvent::new(room, kind);
        let mut watched = self.subs.watched.lock();
        if let Some(w) = watched.get_mut(room) {
            let presence = !matches!(
                event.kind,
                RoomEventKind::Message(_) | RoomEventKind::Typing { .. }
            );
            if live && presence && w.pending_marker.is_some() {
                return;
            }
            if let RoomEventKind::Message(m) = &event.kind {
                w.follow_epoch(room, &m.epoch);
            }
            match &event.kind {
                RoomEventKind::Message(m) if m.offset <= w.forwarded => return,
                RoomEventKind::Message(m) => w.forwarded = m.offset,
                _ => {}
            }
            if let Some(change) = change {
                w.presence.follow(change);
            }
        }
        // No receiver is not an error: nobody on this node listens.
        let _ = self.tx.send(event);
    }

    /// Is the Pub/Sub connection still answering?
    async fn subscriber_alive(&self) -> bool {
        let sink = self.subs.sink.lock().await.clone();
        let Some(mut sink) = sink else { return false };
        matches!(
            tokio::time::timeout(self.opts.response_timeout, sink.ping::<redis::Value>()).await,
            Ok(Ok(_))
        )
    }

    /// Opens a new Pub/Sub connection, subscribes every watched room and sends what was missed.
    async fn reconnect(&self) -> BrokerResult<PubSubStream> {
        let pubsub =
            tokio::time::timeout(self.opts.connect_timeout, self.client.get_async_pubsub())
                .await
                .map_err(|_| timed_out("pub/sub connect"))?
                .map_err(redis_err)?;
        let (mut sink, stream) = pubsub.split();
        {
            let mut guard = self.subs.sink.lock().await;
            let channels: Vec<String> = self
                .subs
                .watched
                .lock()
                .keys()
                .map(|r| self.keys.channel(r))
                .collect();
            if !channels.is_empty() {
                tokio::time::timeout(self.opts.response_timeout, sink.subscribe(channels))
                    .await
                    .map_err(|_| timed_out("subscribe"))?
                    .map_err(redis_err)?;
            }
            *guard = Some(sink);
        }
        if let Err(e) = self.resync().await {
            *self.subs.sink.lock().await = None;
            return Err(e);
        }
        Ok(stream)
    }

    /// Sends, for every watched room, the messages stored since the last one sent and the
    /// presence changes between the mirror and the current hash. Runs on the reader task, so
    /// live events (queued meanwhile) come after and replays among them are dropped by offset.
    async fn resync(&self) -> BrokerResult<()> {
        let rooms: Vec<(String, u64, Option<Arc<str>>)> = self
            .subs
            .watched
            .lock()
            .iter()
            .map(|(room, w)| (room.clone(), w.forwarded.max(w.seeded), w.epoch.clone()))
            .collect();
        let (mut messages, mut presence) = (0usize, 0usize);
        for (room, mut since, epoch) in rooms {
            let mut first = true;
            loop {
                let page = self.history_page(&room, since, RESYNC_PAGE).await?;
                // Redis lost the room's offsets during the outage: send the new epoch from
                // its start (the messages carry it; the hub resyncs its subscribers).
                let restarted = epoch
                    .as_deref()
                    .is_some_and(|e| !e.is_empty() && e != &*page.epoch);
                if std::mem::take(&mut first) && restarted && since > 0 {
                    since = 0;
                    continue;
                }
                if !page.complete {
                    tracing::warn!(room, since, "redis broker: messages trimmed during a pub/sub outage are lost to live subscribers");
                }
                let Some(last) = page.messages.last().map(|m| m.offset) else {
                    break;
                };
                messages += page.messages.len();
                for m in page.messages {
                    self.emit(&room, RoomEventKind::Message(m), false);
                }
                since = last;
                if since >= page.head {
                    break;
                }
            }
            let marker = format!("{}-{:x}", self.node_id, rand::random::<u64>());
            let now = conns_of(self.marked_snapshot(&room, &marker).await?);
            let changes = {
                let mut watched = self.subs.watched.lock();
                let Some(w) = watched.get_mut(&room) else {
                    continue;
                };
                w.pending_marker = Some(marker);
                let changes = presence_diff(&w.presence.conns, &now);
                // Live presence events before the marker are dropped: from here on the mirror
                // follows exactly what the hub is sent.
                w.presence.install(now);
                w.presence.following();
                changes
            };
            presence += changes.len();
            for kind in changes {
                self.emit(&room, kind, false);
            }
        }
        tracing::info!(
            messages,
            presence,
            "redis broker: recovered events missed during a pub/sub outage"
        );
        Ok(())
    }
}

impl Shared {
    /// The room's presence, read atomically with publishing `marker` on its channel.
    async fn marked_snapshot(&self, room: &str, marker: &str) -> BrokerResult<Vec<PresenceConn>> {
        let json = serde_json::to_string(&Wire::Marker {
            k: marker.to_owned(),
        })
        .map_err(|e| BrokerError(format!("encode marker: {e}")))?;
        let entries: Vec<(String, String)> = self
            .scripts
            .presence_marked_snapshot
            .key(self.keys.presence(room))
            .arg(self.keys.channel(room))
            .arg(json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(StoredConn::in_change_order(entries))
    }
}

impl Watch {
    /// A message of `epoch` arrived: if the room's offsets restarted under a new epoch, what
    /// was sent counts in the old one and no longer filters replays.
    fn follow_epoch(&mut self, room: &str, epoch: &Arc<str>) {
        if epoch.is_empty() {
            return;
        }
        match &self.epoch {
            Some(known) if known == epoch => {}
            Some(_) => {
                tracing::warn!(room, "redis broker: the room's offsets restarted under a new epoch (Redis lost its data)");
                self.epoch = Some(epoch.clone());
                self.forwarded = 0;
                self.seeded = 0;
                // Its presence may be gone without events too.
                self.presence.invalidate();
            }
            None => self.epoch = Some(epoch.clone()),
        }
    }
}

/// The events that turn presence `before` into `now`, order included: applied one by one (a
/// join or update moves its connection to the end), they leave a client that had `before`
/// with `now`, in `now`'s order. The connections at the start of `now` that did not change and
/// are still in `before`'s order need no event; every one after the first that changed (or
/// moved) is sent again, in `now`'s order, even if unchanged (it changed to the same value, or
/// something before it did).
fn presence_diff(before: &Conns, now: &Conns) -> Vec<RoomEventKind> {
    let was = before.snapshot();
    let rank: HashMap<&str, usize> = was
        .iter()
        .enumerate()
        .map(|(i, e)| (e.conn.session.as_str(), i))
        .collect();
    let mut changes = Vec::new();
    // The rank in `before` of the last connection that needs no event, while there are such.
    let mut kept = Some(None);
    for entry in now.snapshot() {
        let old = before.get(&entry.conn.session);
        if let Some(last) = kept {
            let at = rank.get(entry.conn.session.as_str()).copied();
            if old.is_some_and(|o| o.conn == entry.conn) && at > last {
                kept = Some(at);
                continue;
            }
            kept = None;
        }
        changes.push(match old {
            None => RoomEventKind::PresenceJoin(entry.conn.clone()),
            Some(_) => RoomEventKind::PresenceUpdate(entry.conn.clone()),
        });
    }
    for old in was {
        if now.get(&old.conn.session).is_none() {
            changes.push(RoomEventKind::PresenceLeave {
                session: old.conn.session.clone(),
                user: old.conn.user.clone(),
            });
        }
    }
    changes
}

/// The reader task: delivers Pub/Sub messages until the connection is lost, then reconnects
/// with backoff. Stops when the broker is dropped (the task is aborted).
pub(super) async fn run(shared: Arc<Shared>, mut stream: PubSubStream) {
    loop {
        pump(&shared, &mut stream).await;
        *shared.subs.sink.lock().await = None;
        // Changes published from now until the gap is filled are not seen.
        shared.mirrors_lost_stream();
        tracing::warn!("redis broker: pub/sub connection lost, reconnecting");
        let mut backoff = RECONNECT_MIN;
        stream = loop {
            match shared.reconnect().await {
                Ok(stream) => break stream,
                Err(e) => {
                    // A resync that failed half way may have marked mirrors exact that the
                    // next connection's events will not follow.
                    shared.mirrors_lost_stream();
                    tracing::warn!(error = %e, "redis broker: pub/sub reconnect failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        tracing::info!("redis broker: pub/sub reconnected");
    }
}

/// Delivers messages until the stream ends or the connection stops answering pings (a peer
/// that vanished without closing the socket).
async fn pump(shared: &Shared, stream: &mut PubSubStream) {
    let mut ping = tokio::time::interval(shared.opts.node_ttl.max(Duration::from_millis(100)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => shared.deliver(&msg),
                None => return,
            },
            _ = ping.tick() => {
                if !shared.subscriber_alive().await {
                    return;
                }
            }
        }
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

    #[test]
    fn presence_diff_joins_updates_and_leaves() {
        let before = conns_of(vec![
            conn("same", ""),
            conn("changed", "1"),
            conn("gone", ""),
        ]);
        let changes = presence_diff(
            &before,
            &conns_of(vec![
                conn("same", ""),
                conn("changed", "2"),
                conn("new", ""),
            ]),
        );
        let mut summary: Vec<String> = changes
            .iter()
            .map(|k| match k {
                RoomEventKind::PresenceJoin(c) => format!("join {}", c.session),
                RoomEventKind::PresenceUpdate(c) => format!("update {} {}", c.session, c.meta),
                RoomEventKind::PresenceLeave { session, .. } => format!("leave {session}"),
                other => format!("{other:?}"),
            })
            .collect();
        summary.sort();
        assert_eq!(summary, ["join new", "leave gone", "update changed 2"]);
    }

    /// What a client makes of the diff (applies it in order, a join or update moving its
    /// connection to the end) is `now`, in `now`'s order, for pairs of presences that differ in
    /// every way: members gone, new, changed, changed to the same value, in another order.
    #[test]
    fn presence_diff_leaves_a_client_in_the_new_order() {
        let mut x = 11u32;
        let mut rnd = |n: u32| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) % n
        };
        let mut quiet = 0;
        for case in 0..500 {
            // `before`, then a run of changes on top of it: `now`.
            let mut before: Vec<PresenceConn> = Vec::new();
            for i in 0..rnd(12) {
                before.push(conn(&format!("s{i}"), &rnd(3).to_string()));
            }
            let mut now = before.clone();
            for _ in 0..rnd(6) {
                let s = format!("s{}", rnd(14));
                now.retain(|c| c.session != s);
                if rnd(4) != 0 {
                    now.push(conn(&s, &rnd(3).to_string()));
                }
            }
            let changes = presence_diff(&conns_of(before.clone()), &conns_of(now.clone()));
            quiet += usize::from(changes.is_empty());
            let mut client = before.clone();
            for change in changes {
                match change {
                    RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
                        client.retain(|o| o.session != c.session);
                        client.push(c);
                    }
                    RoomEventKind::PresenceLeave { session, .. } => {
                        client.retain(|o| o.session != session)
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(client, now, "case {case}: {before:?}");
        }
        assert!(quiet > 10 && quiet < 400, "{quiet} cases without changes");
    }
}

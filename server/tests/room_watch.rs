//! A room's second local subscriber waits for the first one's `Broker::watch` before it reads
//! the room's history. With Redis a room's live events reach a node only once its `SUBSCRIBE`
//! is confirmed; a subscriber that read the history before that could miss a message published
//! in between: not in what it read, never routed live. The broker here holds `watch` until the
//! test releases it and, like Redis, drops the events of rooms the node does not watch yet.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use parking_lot::Mutex;
use rtlink_protocol::{PresenceConn, ServerFrame};
use rtlink_server::broker::local::{LocalBroker, LocalBrokerConfig};
use rtlink_server::broker::tickets::{TicketGrant, TicketRefusal};
use rtlink_server::broker::{
    Broker, BrokerResult, BrokerStats, HistoryPage, PresenceEntry, PublishOutcome, PublishRequest,
    RoomEvent,
};
use tokio::sync::{broadcast, Semaphore};

/// The in-process broker, with Redis's watch semantics and a gate on `watch`.
struct GatedWatch {
    inner: Arc<LocalBroker>,
    watched: Arc<Mutex<HashSet<String>>>,
    /// One permit per `watch` allowed to return.
    gate: Semaphore,
    events: broadcast::Sender<RoomEvent>,
}

impl GatedWatch {
    fn new() -> Arc<Self> {
        let inner = Arc::new(LocalBroker::new(LocalBrokerConfig::default()));
        let watched: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (events, _) = broadcast::channel(1024);
        // Forward only the events of watched rooms, as Redis Pub/Sub would.
        let mut rx = inner.events();
        let (tx, filter) = (events.clone(), watched.clone());
        tokio::spawn(async move {
            while let Ok(event) = rx.recv().await {
                if filter.lock().contains(&*event.room) {
                    let _ = tx.send(event);
                }
            }
        });
        Arc::new(Self {
            inner,
            watched,
            gate: Semaphore::new(0),
            events,
        })
    }
}

#[async_trait]
impl Broker for GatedWatch {
    fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    async fn watch(&self, room: &str) -> BrokerResult<()> {
        self.gate.acquire().await.unwrap().forget();
        self.watched.lock().insert(room.to_owned());
        self.inner.watch(room).await
    }

    async fn unwatch(&self, room: &str) -> BrokerResult<()> {
        self.watched.lock().remove(room);
        self.inner.unwatch(room).await
    }

    async fn publish(&self, req: PublishRequest) -> BrokerResult<PublishOutcome> {
        self.inner.publish(req).await
    }

    async fn history(&self, room: &str, since: u64, limit: usize) -> BrokerResult<HistoryPage> {
        self.inner.history(room, since, limit).await
    }

    async fn presence_join(&self, room: &str, conn: PresenceConn) -> BrokerResult<()> {
        self.inner.presence_join(room, conn).await
    }

    async fn presence_update(&self, room: &str, conn: PresenceConn) -> BrokerResult<bool> {
        self.inner.presence_update(room, conn).await
    }

    async fn presence_leave(&self, room: &str, session: &str) -> BrokerResult<()> {
        self.inner.presence_leave(room, session).await
    }

    async fn presence_snapshot(&self, room: &str) -> BrokerResult<Vec<Arc<PresenceEntry>>> {
        self.inner.presence_snapshot(room).await
    }

    async fn typing(&self, room: &str, user: &str, name: &str, active: bool) -> BrokerResult<()> {
        self.inner.typing(room, user, name, active).await
    }

    async fn issue_ticket(&self, grant: TicketGrant) -> BrokerResult<Result<(), TicketRefusal>> {
        self.inner.issue_ticket(grant).await
    }

    async fn redeem_ticket(&self, ticket: &str) -> BrokerResult<Option<String>> {
        self.inner.redeem_ticket(ticket).await
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }
}

/// A publish from the broker's side (another node's client).
async fn publish(broker: &GatedWatch, payload: &str) {
    let req = PublishRequest {
        room: "room".into(),
        sender: "carl".into(),
        name: None,
        payload: payload.into(),
        dedupe: None,
    };
    broker.publish(req).await.unwrap();
}

#[tokio::test]
async fn a_second_subscriber_waits_for_the_rooms_watch_and_misses_nothing() {
    let broker = GatedWatch::new();
    let state = rtlink_server::AppState::with_broker(fast_config(), broker.clone()).unwrap();
    let s = start_state(state).await;
    let mut ana = s.ws("ana").await;
    let mut bob = s.ws("bob").await;
    let subscribe = rtlink_protocol::ClientFrame::Subscribe {
        room: "room".into(),
        since: None,
        epoch: None,
        history: None,
    };
    // Ana's subscribe starts the watch, held at the gate; Bob's comes while it is in flight.
    ana.send(&subscribe).await;
    bob.send(&subscribe).await;
    // Time for Bob's subscribe to be handled: a server that does not wait for the watch reads
    // the room's head (0) now and answers `subscribed`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stored at offset 1, but not routed live: the room is not watched yet.
    publish(&broker, "before the watch").await;
    broker.gate.add_permits(1);
    let mut heads = Vec::new();
    for ws in [&mut ana, &mut bob] {
        match ws
            .recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
            .await
        {
            ServerFrame::Subscribed { head, .. } => heads.push(head),
            _ => unreachable!(),
        }
    }
    publish(&broker, "after the watch").await;
    // Each subscriber's first message follows the head its `subscribed` named: nothing fell
    // between the head it was told and the live events it got.
    for (ws, head) in [&mut ana, &mut bob].into_iter().zip(heads) {
        let ServerFrame::Message { offset, .. } = ws
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(offset, head + 1, "head {head}, then offset {offset}");
    }
}

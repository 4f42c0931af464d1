//! The Redis broker against a real `redis-server` (started per test on a free loopback port):
//! two broker instances on one server play two nodes of a cluster.

#[path = "../support/redis.rs"]
mod redis_server;

mod history;
mod presence_mirror;
mod presence_order;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis_server::{free_port, RedisServer};
use rtlink_protocol::PresenceConn;
use rtlink_server::broker::redis::{RedisBroker, RedisOptions};
use rtlink_server::broker::{
    Broker, DedupeKey, PresenceEntry, PublishOutcome, PublishRequest, RoomEvent, RoomEventKind,
};
use tokio::sync::broadcast;

/// Every test is bounded: a hang is a failure, not a stuck CI run.
/// `RUST_LOG=rtlink_server=debug cargo test … -- --nocapture` shows the broker's logs.
async fn bounded<F: Future<Output = ()>>(test: F) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(40), test)
        .await
        .expect("test timed out");
}

fn opts() -> RedisOptions {
    RedisOptions {
        key_prefix: format!("t{:x}", rand::random::<u32>()),
        node_ttl: Duration::from_secs(1),
        stats_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

/// Two nodes sharing one prefix.
async fn two_nodes(server: &RedisServer, o: RedisOptions) -> (Arc<RedisBroker>, Arc<RedisBroker>) {
    let a = RedisBroker::connect(&server.url(), o.clone())
        .await
        .expect("node a");
    let b = RedisBroker::connect(&server.url(), o)
        .await
        .expect("node b");
    (a, b)
}

fn req(room: &str, sender: &str, payload: &str, id: Option<&str>) -> PublishRequest {
    PublishRequest {
        room: room.into(),
        sender: sender.into(),
        name: Some(format!("{sender} name")),
        payload: payload.into(),
        dedupe: id.map(|id| DedupeKey {
            user: sender.into(),
            id: id.into(),
        }),
    }
}

/// The connections of a snapshot.
fn conns(snapshot: Vec<Arc<PresenceEntry>>) -> Vec<PresenceConn> {
    snapshot.iter().map(|e| e.conn.clone()).collect()
}

fn conn(session: &str, user: &str, meta: &str) -> PresenceConn {
    PresenceConn {
        session: session.into(),
        user: user.into(),
        name: user.into(),
        meta: meta.into(),
    }
}

/// The next event of `room`, waiting at most `within`.
async fn next_in(
    rx: &mut broadcast::Receiver<RoomEvent>,
    room: &str,
    within: Duration,
) -> Option<RoomEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if &*ev.room == room => return Some(ev),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => return None,
        }
    }
}

async fn next(rx: &mut broadcast::Receiver<RoomEvent>, room: &str) -> RoomEvent {
    next_in(rx, room, Duration::from_secs(5))
        .await
        .expect("an event within 5 s")
}

/// Offsets of the next `n` message events of `room`.
async fn message_offsets(
    rx: &mut broadcast::Receiver<RoomEvent>,
    room: &str,
    n: usize,
) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < n {
        if let RoomEventKind::Message(m) = next(rx, room).await.kind {
            offsets.push(m.offset);
        }
    }
    offsets
}

fn is_strictly_increasing(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn concurrent_publishes_from_two_nodes_fan_out_in_offset_order() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let (mut rx_a, mut rx_b) = (a.events(), b.events());
        a.watch("chat:1").await.expect("watch a");
        b.watch("chat:1").await.expect("watch b");
        a.watch("chat:1").await.expect("watch is idempotent");

        let mut tasks = Vec::new();
        for i in 0..200 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                node.publish(req("chat:1", "u", &format!("m{i}"), None))
                    .await
                    .map(|o| o.offset())
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.push(t.await.expect("join").expect("publish"));
        }
        acked.sort_unstable();
        assert_eq!(
            acked,
            (1..=200).collect::<Vec<_>>(),
            "offsets contiguous from 1, no reuse"
        );

        for rx in [&mut rx_a, &mut rx_b] {
            let seen = message_offsets(rx, "chat:1", 200).await;
            assert!(is_strictly_increasing(&seen), "fan-out in offset order");
            assert_eq!(seen, (1..=200).collect::<Vec<_>>());
        }
        let page = b.history("chat:1", 0, 1000).await.expect("history");
        assert_eq!(page.head, 200);
        assert!(page.complete);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            (1..=200).collect::<Vec<_>>()
        );
    })
    .await;
}

#[tokio::test]
async fn event_frames_match_the_local_encoding() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        let stored = match a
            .publish(req("r", "ana", "{\"x\":\"é\\n\"}", None))
            .await
            .expect("publish")
        {
            PublishOutcome::Stored(m) => m,
            other => panic!("expected stored, got {other:?}"),
        };
        let ev = next(&mut rx, "r").await;
        let RoomEventKind::Message(m) = &ev.kind else {
            panic!("expected a message, got {:?}", ev.kind)
        };
        assert_eq!(
            (m.offset, m.sender.as_str(), m.name.as_deref()),
            (1, "ana", Some("ana name"))
        );
        assert_eq!(m.payload, stored.payload);
        assert_eq!(
            ev.frame, stored.frame,
            "the frame a remote node builds is the publisher's"
        );
        let mut unnamed = req("r", "bob", "p", None);
        unnamed.name = None;
        a.publish(unnamed).await.expect("publish");
        let ev = next(&mut rx, "r").await;
        let RoomEventKind::Message(m) = &ev.kind else {
            panic!("expected a message")
        };
        assert_eq!(m.name, None);
        let page = a.history("r", 1, 10).await.expect("history");
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].name, None);
        assert_eq!(page.messages[0].frame, m.frame);
    })
    .await;
}

#[tokio::test]
async fn dedupe_works_across_nodes() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        let first = a
            .publish(req("r", "u", "p", Some("m1")))
            .await
            .expect("publish");
        assert!(matches!(first, PublishOutcome::Stored(ref m) if m.offset == 1));
        let again = b
            .publish(req("r", "u", "p", Some("m1")))
            .await
            .expect("publish");
        assert!(
            matches!(again, PublishOutcome::Duplicate { ref room, offset: 1 } if room == "r"),
            "got {again:?}"
        );
        let other_room = a
            .publish(req("s", "u", "p", Some("m1")))
            .await
            .expect("publish");
        assert!(
            matches!(other_room, PublishOutcome::Duplicate { ref room, offset: 1 } if room == "r"),
            "ids are per user, not per room"
        );
        let other_user = b
            .publish(req("r", "v", "p", Some("m1")))
            .await
            .expect("publish");
        assert!(matches!(other_user, PublishOutcome::Stored(ref m) if m.offset == 2));

        // Twenty concurrent resends of one id from both nodes store one message.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                node.publish(req("r", "w", "p", Some("same"))).await
            }));
        }
        let mut stored = 0;
        let mut offsets = HashSet::new();
        for t in tasks {
            let outcome = t.await.expect("join").expect("publish");
            stored += usize::from(matches!(outcome, PublishOutcome::Stored(_)));
            offsets.insert(outcome.offset());
        }
        assert_eq!(
            (stored, offsets.len()),
            (1, 1),
            "one store, every resend acked with its offset"
        );
        assert_eq!(message_offsets(&mut rx, "r", 3).await, vec![1, 2, 3]);
        b.typing("r", "x", "x", true).await.expect("typing");
        assert!(
            matches!(next(&mut rx, "r").await.kind, RoomEventKind::Typing { .. }),
            "no duplicate was fanned out"
        );
    })
    .await;
}

#[tokio::test]
async fn presence_is_shared_across_nodes() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("s1", "ana", "")).await.expect("join");
        b.presence_join("r", conn("s2", "bob", "{}")).await.expect("join");
        let snap = conns(b.presence_snapshot("r").await.expect("snapshot"));
        assert_eq!(snap, vec![conn("s1", "ana", ""), conn("s2", "bob", "{}")]);
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::PresenceJoin(c) if c.session == "s1"));
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::PresenceJoin(c) if c.session == "s2"));

        a.presence_join("r", conn("s1", "ana", "{\"away\":true}")).await.expect("rejoin");
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::PresenceUpdate(c) if c.meta == "{\"away\":true}"), "a join of a present session is an update");
        assert!(a.presence_update("r", conn("s1", "ana", "1")).await.expect("update"));
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::PresenceUpdate(c) if c.meta == "1"));
        assert!(!a.presence_update("r", conn("zz", "ana", "1")).await.expect("update"), "absent session");
        a.presence_leave("r", "s1").await.expect("leave");
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::PresenceLeave { session, user } if session == "s1" && user == "ana"));
        b.presence_leave("r", "s1").await.expect("leave of an absent session is a no-op");
        a.typing("r", "ana", "ana", false).await.expect("typing");
        assert!(matches!(next(&mut rx, "r").await.kind, RoomEventKind::Typing { .. }), "no event for the no-op leave");
        assert_eq!(conns(a.presence_snapshot("r").await.expect("snapshot")), vec![conn("s2", "bob", "{}")]);
        assert!(a.presence_snapshot("empty").await.expect("snapshot").is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_dead_nodes_presence_is_reaped_by_the_others() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("a1", "ana", ""))
            .await
            .expect("join");
        a.presence_join("other", conn("a2", "ana", ""))
            .await
            .expect("join");
        b.presence_join("r", conn("b1", "bob", ""))
            .await
            .expect("join");
        for _ in 0..2 {
            assert!(matches!(
                next(&mut rx, "r").await.kind,
                RoomEventKind::PresenceJoin(_)
            ));
        }
        // A crash: no leave, no cleanup; its liveness key just stops being refreshed.
        drop(a);
        let started = std::time::Instant::now();
        let ev = next_in(&mut rx, "r", Duration::from_secs(4))
            .await
            .expect("a leave after about the TTL");
        assert!(
            matches!(ev.kind, RoomEventKind::PresenceLeave { ref session, .. } if session == "a1"),
            "got {:?}",
            ev.kind
        );
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "not before the TTL ran out"
        );
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            vec![conn("b1", "bob", "")]
        );
        assert!(b
            .presence_snapshot("other")
            .await
            .expect("snapshot")
            .is_empty());
        let extra = next_in(&mut rx, "r", Duration::from_millis(1500))
            .await
            .map(|e| e.kind);
        assert!(
            extra.is_none(),
            "one leave, and b's own entry stays; got {extra:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn typing_crosses_nodes_and_is_not_stored() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.typing("r", "ana", "Ana", true).await.expect("typing");
        let ev = next(&mut rx, "r").await;
        assert!(matches!(ev.kind, RoomEventKind::Typing { ref user, ref name, active: true } if user == "ana" && name == "Ana"));
        let page = b.history("r", 0, 10).await.expect("history");
        assert_eq!((page.head, page.messages.len()), (0, 0));
        b.unwatch("r").await.expect("unwatch");
        b.unwatch("r").await.expect("unwatch is idempotent");
        a.typing("r", "ana", "Ana", false).await.expect("typing");
        assert!(next_in(&mut rx, "r", Duration::from_millis(300)).await.is_none(), "unwatched rooms are not delivered");
    })
    .await;
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_panic() {
    bounded(async {
        let url = format!("redis://127.0.0.1:{}/", free_port());
        assert!(RedisBroker::connect(&url, opts()).await.is_err());
        assert!(RedisBroker::connect("not a url", opts()).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_redis_outage_fails_calls_then_recovers() {
    bounded(async {
        let mut server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        server.stop();
        assert!(a.publish(req("r", "u", "p", None)).await.is_err());
        assert!(a.history("r", 0, 10).await.is_err());
        assert!(a.presence_join("r", conn("s", "u", "")).await.is_err());
        server.restart();
        // The data is gone (no persistence) but both nodes reconnect and b re-subscribes.
        let mut delivered = false;
        for _ in 0..50 {
            if a.publish(req("r", "u", "p", None)).await.is_ok() {
                if let Some(ev) = next_in(&mut rx, "r", Duration::from_millis(300)).await {
                    delivered = matches!(ev.kind, RoomEventKind::Message(_));
                    break;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(delivered, "fan-out works again after redis came back");
    })
    .await;
}

#[tokio::test]
async fn a_dropped_pubsub_connection_loses_no_message() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("s1", "ana", ""))
            .await
            .expect("join");
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        let publisher = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    a.publish(req("r", "u", &format!("p{i}"), None))
                        .await
                        .expect("publish");
                    if i == 40 {
                        a.presence_join("r", conn("s2", "ana", ""))
                            .await
                            .expect("join");
                        a.presence_leave("r", "s1").await.expect("leave");
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        // Drop every Pub/Sub connection mid-burst (the command connections stay).
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut admin)
                .await
                .expect("client kill");
        }
        publisher.await.expect("publisher");
        let mut offsets = Vec::new();
        let mut present: HashSet<String> = HashSet::new();
        while offsets.len() < 100 || present != HashSet::from([String::from("s2")]) {
            match next_in(&mut rx, "r", Duration::from_secs(5))
                .await
                .expect("events until caught up")
                .kind
            {
                RoomEventKind::Message(m) => offsets.push(m.offset),
                RoomEventKind::PresenceJoin(c) => {
                    present.insert(c.session);
                }
                RoomEventKind::PresenceLeave { session, .. } => {
                    present.remove(&session);
                }
                _ => {}
            }
        }
        assert_eq!(
            offsets,
            (1..=100).collect::<Vec<_>>(),
            "gap filled from history, no duplicate"
        );
    })
    .await;
}

#[tokio::test]
async fn stats_count_rooms_members_and_messages() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        for room in ["r1", "r2"] {
            a.publish(req(room, "u", "p", None)).await.expect("publish");
        }
        b.presence_join("r3", conn("s", "u", ""))
            .await
            .expect("join");
        let mut stats = b.stats();
        for _ in 0..40 {
            stats = b.stats();
            if stats.rooms == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            (stats.rooms, stats.presence_members, stats.history_messages),
            (3, 1, 2)
        );
    })
    .await;
}

// Helpers of the presence tests (presence_mirror, presence_order).

/// Times Redis has run `command` (also from inside scripts), from `INFO commandstats`.
async fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sessions of a snapshot, in its order.
fn sessions(snapshot: &[Arc<PresenceEntry>]) -> Vec<String> {
    snapshot.iter().map(|e| e.conn.session.clone()).collect()
}

/// What a joiner's hub does: its receiver was registered before the snapshot; it starts from
/// the snapshot and applies every presence event it receives, until none came for half a
/// second. Returns the view, by session.
async fn converge(
    mut view: std::collections::BTreeMap<String, PresenceConn>,
    rx: &mut broadcast::Receiver<RoomEvent>,
    room: &str,
) -> std::collections::BTreeMap<String, PresenceConn> {
    loop {
        let Some(ev) = next_in(rx, room, Duration::from_millis(500)).await else {
            break;
        };
        match ev.kind {
            RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
                view.insert(c.session.clone(), c);
            }
            RoomEventKind::PresenceLeave { session, .. } => {
                view.remove(&session);
            }
            _ => {}
        }
    }
    view
}

fn view_of(snapshot: &[Arc<PresenceEntry>]) -> std::collections::BTreeMap<String, PresenceConn> {
    snapshot
        .iter()
        .map(|e| (e.conn.session.clone(), e.conn.clone()))
        .collect()
}

/// Makes sure `node`'s mirror of `room` is exact and up to date: a snapshot (the first one
/// fills the mirror), then an event published after it, seen on `rx`.
async fn settle_mirror(node: &RedisBroker, rx: &mut broadcast::Receiver<RoomEvent>, room: &str) {
    node.presence_snapshot(room).await.expect("snapshot");
    node.typing(room, "settle", "settle", false)
        .await
        .expect("typing");
    loop {
        if matches!(next(rx, room).await.kind, RoomEventKind::Typing { ref user, .. } if user == "settle")
        {
            return;
        }
    }
}

//! The Redis broker against a real `redis-server` (started per test on a free loopback port):
//! two broker instances on one server play two nodes of a cluster.

mod support {
    pub mod redis;
}

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rtlink_protocol::PresenceConn;
use rtlink_server::broker::redis::{RedisBroker, RedisOptions};
use rtlink_server::broker::{
    Broker, DedupeKey, PresenceEntry, PublishOutcome, PublishRequest, RoomEvent, RoomEventKind,
};
use support::redis::{free_port, RedisServer};
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
async fn history_since_limit_complete_and_count_trimming() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(
            &server,
            RedisOptions {
                history_max_messages: 3,
                ..opts()
            },
        )
        .await;
        let empty = a.history("r", 0, 10).await.expect("history");
        assert_eq!(
            (empty.head, empty.complete, empty.messages.len()),
            (0, true, 0)
        );
        for i in 1..=5u64 {
            let node = if i % 2 == 0 { &a } else { &b };
            assert_eq!(
                node.publish(req("r", "u", &format!("p{i}"), None))
                    .await
                    .expect("publish")
                    .offset(),
                i
            );
        }
        let offsets = |p: &rtlink_server::broker::HistoryPage| {
            p.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
        };
        let page = a.history("r", 0, 100).await.expect("history");
        assert_eq!(
            (page.head, page.complete),
            (5, false),
            "1 and 2 were trimmed"
        );
        assert_eq!(offsets(&page), vec![3, 4, 5]);
        assert_eq!(page.messages[0].payload, "p3");
        let page = b.history("r", 2, 100).await.expect("history");
        assert!(page.complete);
        assert_eq!(offsets(&page), vec![3, 4, 5]);
        let page = b.history("r", 3, 1).await.expect("history");
        assert!(page.complete);
        assert_eq!(offsets(&page), vec![4], "limit");
        let page = a.history("r", 5, 100).await.expect("history");
        assert!(page.complete && page.messages.is_empty());
        let page = a.history("r", 9, 100).await.expect("history");
        assert!(
            !page.complete,
            "a since beyond the head cannot be recovered"
        );
        let page = a.history("r", u64::MAX, 100).await.expect("history");
        assert!(!page.complete && page.messages.is_empty());
        let page = a.history("r", 0, 0).await.expect("history");
        assert!(page.messages.is_empty() && page.head == 5);
    })
    .await;
}

#[tokio::test]
async fn history_is_trimmed_by_age() {
    bounded(async {
        let server = RedisServer::start();
        let o = RedisOptions {
            history_max_age: Duration::from_millis(400),
            ..opts()
        };
        let (a, b) = two_nodes(&server, o).await;
        a.publish(req("r", "u", "old1", None))
            .await
            .expect("publish");
        b.publish(req("r", "u", "old2", None))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(600)).await;
        a.publish(req("r", "u", "new", None))
            .await
            .expect("publish");
        let page = b.history("r", 0, 100).await.expect("history");
        assert_eq!(page.head, 3);
        assert!(!page.complete);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3]
        );
        assert!(b.history("r", 2, 100).await.expect("history").complete);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let page = a.history("r", 2, 100).await.expect("history");
        assert_eq!(
            (page.head, page.complete, page.messages.len()),
            (3, false, 0),
            "everything aged out"
        );
        assert!(a.history("r", 3, 100).await.expect("history").complete);
        assert_eq!(
            a.publish(req("r", "u", "next", None))
                .await
                .expect("publish")
                .offset(),
            4,
            "offsets are never reused"
        );
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

/// A raw connection to the test's Redis, and an integer key (0 when absent).
async fn redis_int(server: &RedisServer, cmd: &str, key: &str) -> u64 {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let v: Option<u64> = redis::cmd(cmd)
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect(cmd);
    v.unwrap_or(0)
}

/// The cluster's history byte count is exact: what count trimming removes is uncounted, the
/// budget evicts the oldest message of any room first (a replay from before it is incomplete),
/// and once everything has aged out (or a stream vanished without a script) the count, the
/// eviction log and the per-room tally are back to nothing: no drift.
#[tokio::test]
async fn history_byte_budget_counts_exactly_evicts_oldest_first_and_never_drifts() {
    bounded(async {
        let server = RedisServer::start();
        let o = RedisOptions {
            history_max_messages: 10,
            history_max_age: Duration::from_millis(1500),
            history_max_bytes: 10_000,
            budget_interval: Duration::from_millis(100),
            ..opts()
        };
        let prefix = o.key_prefix.clone();
        let (bytes_key, log_key, rooms_key) = (
            format!("{prefix}:hist-budget:bytes"),
            format!("{prefix}:hist-budget:log"),
            format!("{prefix}:hist-budget:rooms"),
        );
        let (a, b) = two_nodes(&server, o).await;
        // What the budget counts: an entry's field names and values plus 64, a log record 64
        // plus its room name. The stamp has 13 digits until the year 2286.
        let entry = |sender: &str, payload: &str| {
            64 + 2 + sender.len() + payload.len() + 13 + 2 + format!("{sender} name").len()
        };
        let record = |room: &str| 64 + room.len();
        let p = "y".repeat(500);
        for _ in 0..12 {
            a.publish(req("count", "u", &p, None))
                .await
                .expect("publish");
        }
        let expected = 10 * entry("u", &p) + 12 * record("count");
        assert_eq!(
            redis_int(&server, "GET", &bytes_key).await,
            expected as u64,
            "count trim"
        );

        // Over the budget, the oldest messages of any room go first.
        for i in 0..20 {
            let node = if i % 2 == 0 { &a } else { &b };
            let room = format!("r{}", i % 4);
            node.publish(req(&room, "u", &p, None))
                .await
                .expect("publish");
            let counted = redis_int(&server, "GET", &bytes_key).await;
            assert!(counted <= 10_000, "counted {counted}");
        }
        let old = a.history("count", 0, 100).await.expect("history");
        assert!(
            old.messages.is_empty() && !old.complete,
            "the oldest room was evicted first: {:?}",
            (
                old.head,
                old.complete,
                old.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
            )
        );
        let newest = b.history("r3", 0, 100).await.expect("history");
        assert_eq!(newest.head, 5);
        assert!(!newest.messages.is_empty());
        assert!(
            b.history("r3", newest.messages[0].offset - 1, 100)
                .await
                .expect("history")
                .complete
        );
        // Reported to /metrics by every node, within a trim interval or so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.stats().history_bytes == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reported to /metrics"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A stream that vanishes without a script (as on expiry) is uncounted too.
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}:hist:r3"))
            .query_async(&mut conn)
            .await
            .expect("DEL");
        a.publish(req("r3", "u", "after", None))
            .await
            .expect("publish");

        // Everything ages out; the trim pops the log; the count returns to zero.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let counted = redis_int(&server, "GET", &bytes_key).await;
            let log = redis_int(&server, "XLEN", &log_key).await;
            let rooms = redis_int(&server, "HLEN", &rooms_key).await;
            if (counted, log, rooms) == (0, 0, 0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after everything aged out: counted {counted}, {log} log records, {rooms} rooms"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lease: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:hist-budget:lease"))
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert!(lease.is_some(), "one node holds the trim lease");
    })
    .await;
}

/// The reaper's walk is bounded per tick: presence rooms of a node that died while no other
/// node ran are cleaned over several ticks, resting in between (never all at once), every one
/// of them in the end, and the dead node is forgotten only when the walk is over.
#[tokio::test]
async fn the_reaper_walks_many_rooms_over_several_ticks() {
    bounded(async {
        const ROOMS: usize = 1_000;
        let server = RedisServer::start();
        // A tick every second, 200 rooms per tick: five ticks.
        let o = RedisOptions {
            node_ttl: Duration::from_secs(3),
            reap_rooms_per_tick: 200,
            ..opts()
        };
        let prefix = o.key_prefix.clone();
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let index = format!("{prefix}:idx:pres-rooms");
        let mut pipe = redis::pipe();
        for i in 0..ROOMS {
            let entry =
                format!(r#"{{"session":"s{i}","user":"u","name":"U","meta":"","node":"gone"}}"#);
            pipe.cmd("HSET")
                .arg(format!("{prefix}:pres:room{i}"))
                .arg(format!("s{i}"))
                .arg(entry)
                .ignore();
            pipe.cmd("SADD")
                .arg(&index)
                .arg(format!("room{i}"))
                .ignore();
        }
        pipe.cmd("SADD")
            .arg(format!("{prefix}:idx:nodes"))
            .arg("gone")
            .ignore();
        let () = pipe.query_async(&mut conn).await.expect("seed");

        let _node = RedisBroker::connect(&server.url(), o).await.expect("node");
        // (count of rooms left, how long it stayed so)
        let mut seen: Vec<(usize, Duration)> = Vec::new();
        let mut since = tokio::time::Instant::now();
        let deadline = since + Duration::from_secs(30);
        loop {
            let left: usize = redis::cmd("SCARD")
                .arg(&index)
                .query_async(&mut conn)
                .await
                .expect("SCARD");
            let now = tokio::time::Instant::now();
            match seen.last_mut() {
                Some((n, held)) if *n == left => *held = now - since,
                _ => {
                    seen.push((left, Duration::ZERO));
                    since = now;
                }
            }
            let forgotten = !redis::cmd("SISMEMBER")
                .arg(format!("{prefix}:idx:nodes"))
                .arg("gone")
                .query_async::<bool>(&mut conn)
                .await
                .expect("SISMEMBER");
            if left == 0 && forgotten {
                break;
            }
            assert!(
                !forgotten,
                "the dead node was forgotten with {left} rooms left"
            );
            assert!(now < deadline, "rooms left: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The walk rested between ticks at least twice with rooms left.
        let rests = seen
            .iter()
            .filter(|(n, held)| *n > 0 && *n < ROOMS && *held >= Duration::from_millis(300))
            .count();
        assert!(rests >= 2, "rooms left over time: {seen:?}");
    })
    .await;
}

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

/// The point of the mirror: once a node watches a room, its snapshots do not read the room
/// from Redis (5,000 joins used to be 5,000 reads of up to 5,000 entries); each one is still
/// exactly the presence the events sent before it describe, members of other nodes included.
#[tokio::test]
async fn snapshots_of_a_watched_room_come_from_the_mirror() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        for i in 0..20 {
            a.presence_join("r", conn(&format!("a{i:02}"), "ana", ""))
                .await
                .expect("join");
        }
        settle_mirror(&b, &mut rx, "r").await;
        let reads = command_calls(&server, "hgetall").await;
        assert!(reads > 0, "commandstats counts the fill's read");
        let mut expected: std::collections::BTreeMap<String, PresenceConn> = (0..20)
            .map(|i| {
                let c = conn(&format!("a{i:02}"), "ana", "");
                (c.session.clone(), c)
            })
            .collect();
        // Sessions in the order of their last change: the order every snapshot lists them in.
        let mut order: Vec<String> = expected.keys().cloned().collect();
        for i in 0..60 {
            // Joins on both nodes, metadata changes and leaves, each seen on b's channel
            // before b's next snapshot, which must then hold it.
            let (node, session) = if i % 2 == 0 {
                (&a, format!("a{i:02}x"))
            } else {
                (&b, format!("b{i:02}"))
            };
            let change = match i % 3 {
                0 => {
                    node.presence_join("r", conn(&session, "u", ""))
                        .await
                        .expect("join");
                    expected.insert(session.clone(), conn(&session, "u", ""));
                    session
                }
                1 => {
                    let s = expected
                        .keys()
                        .nth((i * 7) % expected.len())
                        .cloned()
                        .expect("someone");
                    let changed = conn(&s, &expected[&s].user, &format!("{i}"));
                    assert!(a
                        .presence_update("r", changed.clone())
                        .await
                        .expect("update"));
                    expected.insert(s.clone(), changed);
                    s
                }
                _ => {
                    let s = expected
                        .keys()
                        .nth(i % expected.len())
                        .cloned()
                        .expect("someone");
                    a.presence_leave("r", &s).await.expect("leave");
                    b.presence_leave("r", &s).await.expect("leave");
                    expected.remove(&s);
                    s
                }
            };
            loop {
                let ev = next(&mut rx, "r").await;
                let session = match &ev.kind {
                    RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
                        c.session.clone()
                    }
                    RoomEventKind::PresenceLeave { session, .. } => session.clone(),
                    _ => continue,
                };
                if session == change {
                    break;
                }
            }
            order.retain(|s| *s != change);
            if expected.contains_key(&change) {
                order.push(change.clone());
            }
            let snap = b.presence_snapshot("r").await.expect("snapshot");
            assert_eq!(view_of(&snap), expected, "after change {i} ({change})");
            assert_eq!(sessions(&snap), order, "in change order after change {i}");
        }
        assert_eq!(
            command_calls(&server, "hgetall").await,
            reads,
            "no snapshot read the room from Redis"
        );
        // A node that does not watch the room reads it (and agrees, order included).
        assert_eq!(
            sessions(&a.presence_snapshot("r").await.expect("snapshot")),
            sessions(&b.presence_snapshot("r").await.expect("snapshot"))
        );
        assert!(command_calls(&server, "hgetall").await > reads);
    })
    .await;
}

/// Joiners on node B, while members join and leave on node A (and B) all the time: whenever a
/// joiner's snapshot was taken — while the mirror was being filled, right after, long after —
/// the snapshot plus the events after it add up to the room's presence, no member missing
/// (joined just before or just after), none left over (left during the snapshot). Then two
/// nodes' snapshots are the same list, in the same order as the in-process broker's.
#[tokio::test]
async fn joiners_on_another_node_converge_while_members_come_and_go() {
    bounded(async {
        let server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let c = RedisBroker::connect(&server.url(), o)
            .await
            .expect("node c");
        for i in 0..30 {
            a.presence_join("r", conn(&format!("early{i:02}"), "ana", ""))
                .await
                .expect("join");
        }
        let churn = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let s = format!("m{i:03}");
                    a.presence_join("r", conn(&s, "u", "")).await.expect("join");
                    if i % 3 == 0 {
                        a.presence_update("r", conn(&s, "u", "x"))
                            .await
                            .expect("update");
                    }
                    if i % 4 == 0 {
                        // Leaves of members that joined a while ago, and of early ones.
                        let old = format!("m{:03}", i / 2);
                        a.presence_leave("r", &old).await.expect("leave");
                        a.presence_leave("r", &format!("early{:02}", i % 30))
                            .await
                            .expect("leave");
                    }
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        // Snapshots at different moments of the churn: the first right as b starts watching
        // (it fills the mirror), the others from the mirror.
        let mut joiners = Vec::new();
        b.watch("r").await.expect("watch");
        for _ in 0..6 {
            let rx = b.events();
            let snap = b.presence_snapshot("r").await.expect("snapshot");
            joiners.push((view_of(&snap), rx));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        churn.await.expect("churn");
        let truth = view_of(&c.presence_snapshot("r").await.expect("read"));
        assert!(truth.len() > 100, "{} present", truth.len());
        for (i, (view, mut rx)) in joiners.into_iter().enumerate() {
            let view = converge(view, &mut rx, "r").await;
            assert_eq!(view.len(), truth.len(), "joiner {i}");
            assert!(view == truth, "joiner {i} ended with another presence");
        }
        // c starts watching late; both mirrors are exact, filled at different times.
        let mut rx_b = b.events();
        let mut rx_c = c.events();
        c.watch("r").await.expect("watch");
        settle_mirror(&c, &mut rx_c, "r").await;
        settle_mirror(&b, &mut rx_b, "r").await;
        let from_b = b.presence_snapshot("r").await.expect("snapshot");
        let from_c = c.presence_snapshot("r").await.expect("snapshot");
        assert_eq!(conns(from_b.clone()), conns(from_c));
        // And the same as a node that reads the room from Redis.
        assert_eq!(
            conns(from_b.clone()),
            conns(a.presence_snapshot("r").await.expect("read"))
        );
        // The in-process broker, given the same connections in the same order, lists them in
        // that order.
        let local = rtlink_server::broker::local::LocalBroker::new(Default::default());
        for e in from_b.iter() {
            local
                .presence_join("r", e.conn.clone())
                .await
                .expect("join");
        }
        assert_eq!(
            conns(local.presence_snapshot("r").await.expect("snapshot")),
            conns(from_b)
        );
    })
    .await;
}

/// Redis restarted empty: the presence it held is gone without a single leave event, and the
/// users of a node that crashed just before are nobody's to re-announce. A mirror that kept
/// them would show them forever; the node reads Redis again and re-fills.
#[tokio::test]
async fn a_mirror_forgets_what_redis_lost_when_it_restarted_empty() {
    bounded(async {
        let mut server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let crashed = RedisBroker::connect(&server.url(), o).await.expect("node");
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("a1", "ana", ""))
            .await
            .expect("join");
        b.presence_join("r", conn("b1", "bob", ""))
            .await
            .expect("join");
        crashed
            .presence_join("r", conn("c1", "cy", ""))
            .await
            .expect("join");
        settle_mirror(&b, &mut rx, "r").await;
        assert_eq!(
            sessions(&b.presence_snapshot("r").await.expect("snapshot")),
            ["a1", "b1", "c1"]
        );
        drop(crashed);
        server.restart();
        // a and b re-announce their own users once they see their liveness keys gone (in
        // whichever order they notice: sorted here).
        let want = vec![String::from("a1"), String::from("b1")];
        let sorted = |mut s: Vec<String>| {
            s.sort();
            s
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut last = Vec::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(s) = b.presence_snapshot("r").await {
                last = sorted(sessions(&s));
                if last == want {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, want);
        // And it stays so once the mirror is exact again (no ghost coming back from it).
        settle_mirror(&b, &mut rx, "r").await;
        assert_eq!(
            sorted(sessions(&b.presence_snapshot("r").await.expect("snapshot"))),
            want
        );
    })
    .await;
}

/// The same loss without a dropped connection (`FLUSHALL`: no Pub/Sub outage tells the node):
/// the node notices its liveness key is gone and stops trusting its mirrors.
#[tokio::test]
async fn a_mirror_forgets_what_a_flush_removed() {
    bounded(async {
        let server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let crashed = RedisBroker::connect(&server.url(), o).await.expect("node");
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("a1", "ana", ""))
            .await
            .expect("join");
        crashed
            .presence_join("r", conn("c1", "cy", ""))
            .await
            .expect("join");
        settle_mirror(&b, &mut rx, "r").await;
        drop(crashed);
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut admin)
            .await
            .expect("FLUSHALL");
        let want = vec![String::from("a1")];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut last = Vec::new();
        while tokio::time::Instant::now() < deadline {
            last = sessions(&b.presence_snapshot("r").await.expect("snapshot"));
            if last == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, want, "c1 is gone with the data, a1 was re-announced");
        settle_mirror(&b, &mut rx, "r").await;
        assert_eq!(
            sessions(&b.presence_snapshot("r").await.expect("snapshot")),
            want
        );
    })
    .await;
}

/// A crashed node's users are reaped by the others; a mirror follows the leaves.
#[tokio::test]
async fn a_mirror_follows_the_reaper() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.presence_join("r", conn("a1", "ana", "")).await.expect("join");
        b.presence_join("r", conn("b1", "bob", "")).await.expect("join");
        settle_mirror(&b, &mut rx, "r").await;
        let reads = command_calls(&server, "hgetall").await;
        drop(a);
        loop {
            let ev = next_in(&mut rx, "r", Duration::from_secs(5)).await.expect("the leave");
            if matches!(ev.kind, RoomEventKind::PresenceLeave { ref session, .. } if session == "a1") {
                break;
            }
        }
        let snap = b.presence_snapshot("r").await.expect("snapshot");
        assert_eq!(sessions(&snap), ["b1"]);
        // The reaper read the room (HGETALL in its script); the snapshot did not.
        let after = command_calls(&server, "hgetall").await;
        let again = b.presence_snapshot("r").await.expect("snapshot");
        assert_eq!(sessions(&again), ["b1"]);
        assert_eq!(command_calls(&server, "hgetall").await, after);
        assert!(after > reads);
    })
    .await;
}

/// Every subscription of a watched room keeps the epoch its offsets count in: the node's one
/// copy, shared by history pages and live messages (as the in-process broker shares its own).
#[tokio::test]
async fn history_pages_and_messages_share_the_rooms_epoch() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        a.publish(req("r", "u", "p", None)).await.expect("publish");
        let RoomEventKind::Message(m) = next(&mut rx, "r").await.kind else {
            panic!("a message");
        };
        let first = b.history("r", 0, 10).await.expect("history");
        let second = b.history("r", 0, 10).await.expect("history");
        assert!(!first.epoch.is_empty());
        assert!(Arc::ptr_eq(&first.epoch, &second.epoch));
        assert!(Arc::ptr_eq(&first.epoch, &m.epoch));
        assert!(Arc::ptr_eq(&first.epoch, &first.messages[0].epoch));
        // A room the node does not watch gets its own.
        let other = b.history("other", 0, 10).await.expect("history");
        assert_ne!(first.epoch, other.epoch);
    })
    .await;
}

/// Mirrors filled while members join and leave (changes published just before the fill's
/// read, and after it but before its reply is in): once the churn is over, every mirror is the
/// room's presence as Redis holds it, and answers without reading Redis. Forty rooms, so some
/// fills do have changes published while their read was under way.
#[tokio::test]
async fn mirrors_filled_during_churn_match_redis() {
    bounded(async {
        const ROOMS: usize = 40;
        let server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let c = RedisBroker::connect(&server.url(), o)
            .await
            .expect("node c");
        let mut rx = b.events();
        let mut churn = Vec::new();
        for r in 0..ROOMS {
            let a = a.clone();
            churn.push(tokio::spawn(async move {
                let room = format!("r{r}");
                for i in 0..60 {
                    a.presence_join(&room, conn(&format!("s{i:02}"), "u", ""))
                        .await
                        .expect("join");
                    if i % 3 == 2 {
                        a.presence_leave(&room, &format!("s{:02}", i - 1))
                            .await
                            .expect("leave");
                    }
                }
            }));
        }
        for r in 0..ROOMS {
            let room = format!("r{r}");
            b.watch(&room).await.expect("watch");
            b.presence_snapshot(&room).await.expect("snapshot");
        }
        for task in churn {
            task.await.expect("churn");
        }
        let mut truth = Vec::new();
        for r in 0..ROOMS {
            let room = format!("r{r}");
            truth.push(sessions(&c.presence_snapshot(&room).await.expect("read")));
        }
        for r in 0..ROOMS {
            // Every room's events so far reached b.
            b.typing(&format!("r{r}"), "settle", "settle", false)
                .await
                .expect("typing");
        }
        let mut settled = 0;
        while settled < ROOMS {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("events")
                .expect("channel");
            if matches!(ev.kind, RoomEventKind::Typing { ref user, .. } if user == "settle") {
                settled += 1;
            }
        }
        let reads = command_calls(&server, "hgetall").await;
        for (r, want) in truth.iter().enumerate() {
            let room = format!("r{r}");
            assert_eq!(
                &sessions(&b.presence_snapshot(&room).await.expect("snapshot")),
                want,
                "{room}"
            );
        }
        assert_eq!(
            command_calls(&server, "hgetall").await,
            reads,
            "answered by the mirrors"
        );
    })
    .await;
}

/// What a member's client does with the events it gets after its snapshot: a join or update
/// moves the connection to the end (the latest change), a leave removes it.
fn apply_in_order(view: &mut Vec<PresenceConn>, kind: &RoomEventKind) -> Option<String> {
    match kind {
        RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
            view.retain(|o| o.session != c.session);
            view.push(c.clone());
            Some(c.session.clone())
        }
        RoomEventKind::PresenceLeave { session, .. } => {
            view.retain(|o| o.session != *session);
            Some(session.clone())
        }
        _ => None,
    }
}

/// Two tabs of one user with different metadata, the older one changed last. A member that
/// followed the events shows the user by that change (clients show a user's latest
/// connection); a joiner applies a snapshot, so every node's snapshot must list the
/// connections in the order they last changed: from a mirror that followed the events, from a
/// mirror filled from the hash later, and from a plain read of the hash. An entry written by a
/// node of an older version (no change number) sorts first.
#[tokio::test]
async fn snapshots_list_connections_in_the_order_they_last_changed() {
    bounded(async {
        let server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let c = RedisBroker::connect(&server.url(), o.clone())
            .await
            .expect("node c");
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        settle_mirror(&b, &mut rx, "r").await;
        let mut member = conns(b.presence_snapshot("r").await.expect("snapshot"));
        assert!(member.is_empty());
        a.presence_join("r", conn("s-a", "ana", ""))
            .await
            .expect("join");
        b.presence_join("r", conn("s-m", "bob", ""))
            .await
            .expect("join");
        a.presence_join("r", conn("s-z", "ana", ""))
            .await
            .expect("join");
        assert!(a
            .presence_update("r", conn("s-z", "ana", "typing"))
            .await
            .expect("update"));
        assert!(a
            .presence_update("r", conn("s-a", "ana", "away"))
            .await
            .expect("update"));
        loop {
            let ev = next(&mut rx, "r").await;
            apply_in_order(&mut member, &ev.kind);
            if matches!(&ev.kind, RoomEventKind::PresenceUpdate(c) if c.meta == "away") {
                break;
            }
        }
        let want = vec![
            conn("s-m", "bob", ""),
            conn("s-z", "ana", "typing"),
            conn("s-a", "ana", "away"),
        ];
        assert_eq!(member, want, "the events' order");
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            want,
            "b's mirror, which followed the events"
        );
        let mut rx_c = c.events();
        c.watch("r").await.expect("watch");
        assert_eq!(
            conns(c.presence_snapshot("r").await.expect("snapshot")),
            want,
            "c, filled from the hash"
        );
        settle_mirror(&c, &mut rx_c, "r").await;
        assert_eq!(
            conns(c.presence_snapshot("r").await.expect("snapshot")),
            want,
            "c's mirror"
        );
        assert_eq!(
            conns(a.presence_snapshot("r").await.expect("read")),
            want,
            "a, which reads the hash"
        );
        // A rejoin (a resumed session) is a change too.
        a.presence_join("r", conn("s-z", "ana", "typing"))
            .await
            .expect("rejoin");
        loop {
            let ev = next(&mut rx, "r").await;
            if apply_in_order(&mut member, &ev.kind).as_deref() == Some("s-z") {
                break;
            }
        }
        let want = vec![
            conn("s-m", "bob", ""),
            conn("s-a", "ana", "away"),
            conn("s-z", "ana", "typing"),
        ];
        assert_eq!(member, want);
        assert_eq!(conns(a.presence_snapshot("r").await.expect("read")), want);
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            want
        );
        // A rolling deploy: an entry from a node without change numbers sorts first.
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let old = r#"{"session":"s-old","user":"cy","name":"cy","meta":"","node":"n"}"#;
        let _: i64 = redis::cmd("HSET")
            .arg(format!("{}:pres:r", o.key_prefix))
            .arg("s-old")
            .arg(old)
            .query_async(&mut admin)
            .await
            .expect("HSET");
        let read = conns(a.presence_snapshot("r").await.expect("read"));
        assert_eq!(read.len(), 4);
        assert_eq!(read[0].session, "s-old");
        assert_eq!(read[1..], want[..]);
    })
    .await;
}

/// A member's view keeps the order of the changes across a Pub/Sub outage during which the
/// older of two tabs changed (recovered as a diff against the mirror, or live).
#[tokio::test]
async fn change_order_survives_a_pubsub_outage() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        for s in ["s-a", "s-b", "s-z"] {
            a.presence_join("r", conn(s, "ana", ""))
                .await
                .expect("join");
        }
        settle_mirror(&b, &mut rx, "r").await;
        let mut member = conns(b.presence_snapshot("r").await.expect("snapshot"));
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .expect("client kill");
        assert!(a
            .presence_update("r", conn("s-a", "ana", "away"))
            .await
            .expect("update"));
        assert!(a
            .presence_update("r", conn("s-b", "ana", "")) // the same value: still a change
            .await
            .expect("update"));
        a.presence_join("r", conn("s-n", "ana", "new"))
            .await
            .expect("join");
        let truth = conns(a.presence_snapshot("r").await.expect("read"));
        assert_eq!(
            truth.iter().map(|c| c.session.as_str()).collect::<Vec<_>>(),
            ["s-z", "s-a", "s-b", "s-n"]
        );
        while let Some(ev) = next_in(&mut rx, "r", Duration::from_secs(2)).await {
            apply_in_order(&mut member, &ev.kind);
            if member == truth {
                break;
            }
        }
        assert_eq!(member, truth, "the member's view");
        settle_mirror(&b, &mut rx, "r").await;
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            truth,
            "b's mirror after the outage"
        );
    })
    .await;
}

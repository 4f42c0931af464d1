//! Room history in Redis: pages since an offset, trimming by count, age and bytes, the
//! reaper that keeps the byte budget exact over many rooms, and the epoch pages share.

use super::*;

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

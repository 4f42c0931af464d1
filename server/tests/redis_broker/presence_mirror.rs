//! The Redis broker's presence mirror (`server/src/broker/redis/mirror.rs`): snapshots of a
//! watched room answered from memory, kept exact across churn, outages, restarts and flushes.

use super::*;

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

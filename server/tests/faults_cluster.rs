//! Fault scenarios of a cluster: two or three real `rtlink-server` nodes sharing one real
//! `redis-server`, behind the fault proxy as a round-robin load balancer with no stickiness,
//! and Redis itself as the fault (killed, restarted empty, slow). Clients are the real client
//! core driven natively by `faultkit`. Every scenario prints `FAULT-FIGURES` lines for
//! RELIABILITY.md; test names start with `fault_` (`make test-faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultkit::rtlink::core::TransportKind::{self, LongPoll, Sse, WebSocket};
use faultkit::scenario::{self, bounded, wait_delivered};
use faultkit::{
    ClientOptions, FaultProxy, Faults, Figures, Mode, ProxyBuilder, Publisher, Redis, Stack,
    TestClient,
};

const ROOM: &str = "cluster";
const ALL: &[TransportKind] = &[WebSocket, Sse, LongPoll];
const WAIT: Duration = Duration::from_secs(30);

/// A client pinned to `ladder`, opening a new TCP connection for every request, so every
/// request of it may land on another node.
fn roaming(url: &str, user: &str, ladder: &[TransportKind]) -> TestClient {
    let config = faultkit::rtlink::core::Config {
        transports: ladder.to_vec(),
        ..scenario::fast_client()
    };
    TestClient::connect(
        ClientOptions::new(url, user)
            .config(config)
            .fresh_connections(),
    )
}

async fn subscribed(clients: &[&TestClient]) {
    scenario::subscribe_all(clients, ROOM, WAIT).await.unwrap();
}

/// Defect #8.1. Three nodes share Redis behind a round-robin balancer and every request opens
/// a new connection: the ticket comes from one node, the WebSocket/SSE/poll open lands on the
/// next, upstream POSTs and held polls on any. Every client opens on its best transport and
/// gets every message exactly once; a ticket still works once only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_round_robin_three_nodes_without_stickiness() {
    bounded(async {
        let stack = Stack::cluster(3, scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        let url = stack.url();
        let subscribers = [
            roaming(&url, "auto", ALL),
            roaming(&url, "sse", &[Sse]),
            roaming(&url, "poll", &[LongPoll]),
        ];
        let publisher = Arc::new(roaming(&url, "publisher", &[LongPoll]));
        let all: Vec<&TestClient> = subscribers.iter().chain([&*publisher]).collect();
        for c in &all {
            c.wait_open(WAIT).await.unwrap();
        }
        subscribed(&all).await;
        let publisher = Publisher::start(publisher, ROOM, Duration::from_millis(50), "m");
        tokio::time::sleep(Duration::from_secs(4)).await;
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        assert!(acked.len() >= 40, "only {} acks", acked.len());
        for c in &subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
        }
        let counters = stack.proxy.counters();
        for c in &subscribers {
            let f = Figures::of("round robin over 3 nodes", c, ROOM, &acked).print();
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.fallbacks, 0, "{f}");
        }
        println!(
            "FAULT-FIGURES round robin over 3 nodes | proxy | connections per node {:?}, {} requests",
            counters.per_upstream, counters.requests
        );
        assert_eq!(subscribers[0].snapshot().open_on, Some(WebSocket));
        assert!(counters.per_upstream.iter().all(|n| *n >= 5), "{counters:?}");
        assert_eq!(publisher.failed(), 0);
    })
    .await;
}

/// A ticket issued by node A is redeemable on node B exactly once, and never after it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_ticket_from_one_node_works_once_on_another() {
    bounded(async {
        let stack = Stack::cluster(
            2,
            scenario::fast_node(faultkit::rtlink_server_bin!()).args(["--ticket-ttl", "3s"]),
        )
        .await
        .unwrap();
        let (a, b) = (stack.nodes[0].url(), stack.nodes[1].url());
        let http = reqwest::Client::new();
        let token = faultkit::token::sign(faultkit::token::TEST_SECRET, "u", "U", &["*"], 600);
        let ticket = || async {
            let resp = http
                .post(format!("{a}/v1/ticket"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body: serde_json::Value = resp.json().await.unwrap();
            body["ticket"].as_str().unwrap().to_owned()
        };
        let poll_open = |base: String, t: String| {
            let http = http.clone();
            async move {
                http.get(format!("{base}/v1/poll?v=1&ticket={t}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let t = ticket().await;
        assert_eq!(
            poll_open(b.clone(), t.clone()).await,
            200,
            "A's ticket on B"
        );
        assert_eq!(poll_open(b.clone(), t.clone()).await, 401, "reused on B");
        assert_eq!(poll_open(a.clone(), t.clone()).await, 401, "reused on A");
        let expired = ticket().await;
        tokio::time::sleep(Duration::from_millis(3300)).await;
        assert_eq!(poll_open(b.clone(), expired).await, 401, "expired");
        // Two nodes redeeming one ticket at the same moment: exactly one admits.
        for _ in 0..5 {
            let t = ticket().await;
            let (x, y) = tokio::join!(poll_open(a.clone(), t.clone()), poll_open(b.clone(), t));
            let mut got = [x, y];
            got.sort();
            assert_eq!(got, [200, 401], "concurrent redeems");
        }
        // The per-user cap holds across nodes: tickets issued on A count on B.
        let issue_on = |base: String| {
            let (http, token) = (http.clone(), token.clone());
            async move {
                http.post(format!("{base}/v1/ticket"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let started = Instant::now();
        for i in 0..64 {
            let base = if i % 2 == 0 { a.clone() } else { b.clone() };
            assert_eq!(issue_on(base).await, 200, "ticket {i} of the cap");
        }
        assert_eq!(issue_on(b.clone()).await, 429, "the cap holds on B");
        assert_eq!(issue_on(a.clone()).await, 429, "and on A");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "too slow to test the cap"
        );
        tokio::time::sleep(Duration::from_millis(3300)).await;
        assert_eq!(
            issue_on(b.clone()).await,
            200,
            "expired tickets free their slots"
        );
        let ws = tokio_tungstenite::connect_async(format!(
            "{}/v1/ws?ticket={}",
            b.replace("http", "ws"),
            ticket().await
        ))
        .await;
        assert!(ws.is_ok(), "A's ticket opens a WebSocket on B: {ws:?}");
    })
    .await;
}

/// A publisher on node A and subscribers on both nodes of a two-node cluster, connected to the
/// nodes directly (the fault is Redis, not the path to the nodes).
struct RedisCast {
    stack: Stack,
    publisher: Publisher,
    subscribers: Vec<TestClient>,
}

impl RedisCast {
    async fn start(stack: Stack, every: Duration) -> RedisCast {
        let publisher = Arc::new(scenario::client(
            &stack.nodes[0].url(),
            "publisher",
            &[WebSocket],
        ));
        let subscribers = vec![
            scenario::client(&stack.nodes[0].url(), "ws-on-A", &[WebSocket]),
            scenario::client(&stack.nodes[1].url(), "ws-on-B", &[WebSocket]),
            scenario::client(&stack.nodes[1].url(), "sse-on-B", &[Sse]),
            scenario::client(&stack.nodes[1].url(), "poll-on-B", &[LongPoll]),
        ];
        let all: Vec<&TestClient> = subscribers.iter().chain([&*publisher]).collect();
        subscribed(&all).await;
        let publisher = Publisher::start(publisher, ROOM, every, "m");
        RedisCast {
            stack,
            publisher,
            subscribers,
        }
    }

    fn redis(&mut self) -> &mut Redis {
        self.stack.redis.as_mut().unwrap()
    }
}

/// Redis (with an fsync'ed append-only file) is SIGKILLed for 3 s and comes back with its
/// data: publishes during the outage fail explicitly (nack), everything acked reaches every
/// subscriber on both nodes exactly once, in order, with no resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_killed_and_restarted_with_its_data() {
    bounded(async {
        let redis = Redis::start_durable().await.unwrap();
        let stack = Stack::cluster_on(redis, 2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let mut cast = RedisCast::start(stack, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        cast.redis().kill().await;
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        cast.redis().restart().await.unwrap();
        let back_at = Instant::now();
        let publisher = &cast.publisher;
        let acked_before = publisher.client.observed(|o| o.acked.len());
        publisher
            .client
            .wait(WAIT, "publishing again", |o| o.acked.len() >= acked_before + 10)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        for c in &cast.subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
        }
        let failed = publisher.failed();
        for c in &cast.subscribers {
            let f = Figures::of("Redis SIGKILL 3 s, restarted with its data", c, ROOM, &acked)
                .print();
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.resyncs, 0, "{f}");
        }
        println!(
            "FAULT-FIGURES Redis SIGKILL 3 s, restarted with its data | publisher | {} acked, {failed} failed explicitly, outage {} ms",
            acked.len(),
            (back_at - killed_at).as_millis()
        );
    })
    .await;
}

/// A node dies (SIGKILL) under its clients. They reach it through a balancer with a backup
/// (the survivor), and the survivor serves the publisher. Every client on every transport
/// notices at once (its connection closes), opens a new session on the survivor (the dead
/// node's sessions died with it) and re-subscribes from its offsets: nothing lost, duplicated
/// or reordered, and no step down the ladder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_node_killed_clients_move_to_the_survivor() {
    bounded(async {
        let mut stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let (a, b) = (stack.nodes[0].addr(), stack.nodes[1].addr());
        let balancer = ProxyBuilder::new(Mode::Http, vec![a, b])
            .failover()
            .start()
            .await
            .unwrap();
        let clients = [
            ("auto", ALL),
            ("sse", &[Sse][..]),
            ("poll", &[LongPoll][..]),
        ];
        let subscribers: Vec<TestClient> = clients
            .iter()
            .map(|(name, ladder)| roaming(&balancer.url(), name, ladder))
            .collect();
        let publisher = Arc::new(scenario::client(
            &stack.nodes[1].url(),
            "publisher",
            &[WebSocket],
        ));
        let all: Vec<&TestClient> = subscribers.iter().chain([&*publisher]).collect();
        subscribed(&all).await;
        let (killed_at, acked) =
            scenario::kill_node_while_publishing(&mut stack, 0, publisher, ROOM, WAIT)
                .await
                .unwrap();
        for c in &subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
        }
        for c in &subscribers {
            let f = scenario::failover_figures(
                "node SIGKILLed, clients move to the survivor",
                c,
                ROOM,
                &acked,
                killed_at,
            );
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.fallbacks, 0, "{f}");
            assert!(
                f.detection
                    .is_some_and(|d| d <= scenario::DETECTION_DEADLINE),
                "{f}"
            );
            assert!(f.recovery.is_some(), "{f}");
        }
        assert_eq!(subscribers[0].snapshot().open_on, Some(WebSocket));
    })
    .await;
}

/// A node drains (SIGTERM) under its clients, which reach it through a balancer with the
/// other node as backup. Each client is told to come back at a random time in the drain
/// window; while the draining node still answers, its tickets say `503` (overloaded, not a
/// blocked transport); once it is gone, the balancer passes them to the survivor. Reconnects
/// spread over the window, nobody steps down the ladder, nothing is lost, duplicated or
/// reordered, and the drained node exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_node_drained_clients_spread_to_the_survivor() {
    bounded(async {
        let mut stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let (a, b) = (stack.nodes[0].addr(), stack.nodes[1].addr());
        let balancer = ProxyBuilder::new(Mode::Http, vec![a, b])
            .failover()
            .start()
            .await
            .unwrap();
        let mut subscribers: Vec<TestClient> = (0..8)
            .map(|i| roaming(&balancer.url(), &format!("ws{i}"), ALL))
            .collect();
        subscribers.push(roaming(&balancer.url(), "sse", &[Sse]));
        subscribers.push(roaming(&balancer.url(), "poll", &[LongPoll]));
        let publisher = Arc::new(scenario::client(
            &stack.nodes[1].url(),
            "publisher",
            &[WebSocket],
        ));
        let all: Vec<&TestClient> = subscribers.iter().chain([&*publisher]).collect();
        subscribed(&all).await;
        let publisher = Publisher::start(publisher, ROOM, Duration::from_millis(50), "m");
        assert!(faultkit::wait_until(WAIT, || publisher.sent() >= 20).await);
        let drained_at = Instant::now();
        assert!(stack.nodes[0].terminate());
        for c in &subscribers {
            c.wait(WAIT, "moved", |o| {
                o.is_open() && o.last_open().is_some_and(|(t, _)| t >= drained_at)
            })
            .await
            .unwrap();
        }
        let exit = stack.nodes[0].wait_exit(WAIT).await;
        assert!(faultkit::wait_until(WAIT, || publisher.sent() >= 80).await);
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        let mut moved = Vec::new();
        for c in &subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
            let reopened = c.observed(|o| {
                o.opens
                    .iter()
                    .find(|(t, _)| *t >= drained_at)
                    .map(|(t, _)| *t - drained_at)
            });
            let f = Figures::of("node SIGTERMed (drain window 1 s)", c, ROOM, &acked)
                .recovered_in(reopened)
                .print();
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.fallbacks, 0, "{f}");
            moved.extend(reopened);
        }
        moved.sort();
        let spread = moved[moved.len() - 1] - moved[0];
        println!(
            "FAULT-FIGURES node SIGTERMed (drain window 1 s) | {} clients | reopened on the survivor {} - {} ms after SIGTERM, spread {} ms | drained node exit {exit:?}",
            moved.len(),
            moved[0].as_millis(),
            moved[moved.len() - 1].as_millis(),
            spread.as_millis()
        );
        assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
        assert!(spread >= Duration::from_millis(250), "a storm: {moved:?}");
        for c in &subscribers[..8] {
            assert_eq!(c.snapshot().open_on, Some(WebSocket));
        }
    })
    .await;
}

/// Defect #8.12. Redis restarts empty while two nodes serve a room (a crash between snapshots,
/// a failover to a lagging replica): offsets restart from 1 in a new epoch. Every live
/// subscriber, on both nodes, gets a resync and then every message of the new epoch; none
/// stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_restarted_empty_resyncs_live_subscribers() {
    bounded(async {
        let stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let mut cast = RedisCast::start(stack, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let wiped_at = Instant::now();
        cast.redis().restart_empty().await.unwrap();
        let first_after = cast.publisher.sent();
        let publisher = &cast.publisher;
        // At least 15 publishes of the new epoch acknowledged.
        let sent_after = || publisher.sent().saturating_sub(first_after);
        let ok = faultkit::wait_until(WAIT, || sent_after() >= 15).await;
        assert!(ok, "the publisher stalled");
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        let new_epoch: Vec<String> = acked
            .iter()
            .filter(|p| p[1..].parse::<usize>().unwrap_or(0) > first_after)
            .cloned()
            .collect();
        assert!(
            new_epoch.len() >= 10,
            "only {} acks after the wipe",
            new_epoch.len()
        );
        let mut silent = Vec::new();
        for c in &cast.subscribers {
            if let Err(e) = wait_delivered(c, ROOM, &new_epoch, Duration::from_secs(15)).await {
                silent.push(e);
            }
        }
        for c in &cast.subscribers {
            let resync_after = c.observed(|o| {
                o.resyncs
                    .get(ROOM)
                    .and_then(|r| r.iter().find(|t| **t >= wiped_at).copied())
            });
            let f = Figures::of("Redis restarted empty", c, ROOM, &acked)
                .recovered_in(resync_after.map(|t| t - wiped_at))
                .print();
            assert!(
                f.tally.lost == 0 && f.tally.duplicated == 0 && f.tally.reordered == 0,
                "{f}"
            );
            assert!(f.resyncs >= 1, "no resync: {f}");
        }
        assert!(silent.is_empty(), "silent subscribers: {silent:#?}");
    })
    .await;
}

/// Defect #8.12, the recovery path: a subscriber is cut off (behind the balancer) when Redis
/// restarts empty, and comes back after the new epoch has messages. Its session and tickets
/// went with Redis, so it resumes on whichever node the balancer picks, from offsets of the old
/// epoch: it must be told (`resync`) and get every message of the new epoch exactly once, in
/// order, never treating them as replays of offsets it already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_restarted_empty_while_a_subscriber_was_away() {
    bounded(async {
        let stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let away = roaming(&stack.url(), "away", ALL);
        subscribed(&[&away]).await;
        let mut cast = RedisCast::start(stack, Duration::from_millis(100)).await;
        // Old-epoch offsets up to about 15, so the new epoch's first offsets are "seen" ones.
        let publisher = &cast.publisher;
        assert!(faultkit::wait_until(WAIT, || publisher.sent() >= 15).await);
        cast.stack.proxy.set(Faults::blackhole());
        cast.stack.proxy.reset_connections();
        away.wait(WAIT, "cut off", |o| !o.is_open()).await.unwrap();
        let first_after = cast.publisher.sent();
        cast.redis().restart_empty().await.unwrap();
        let publisher = &cast.publisher;
        let sent_after = || publisher.sent().saturating_sub(first_after);
        assert!(
            faultkit::wait_until(WAIT, || sent_after() >= 20).await,
            "the publisher stalled"
        );
        let back_at = Instant::now();
        cast.stack.proxy.clear();
        away.wait(WAIT, "back", |o| {
            o.is_open() && o.last_open().is_some_and(|(t, _)| t >= back_at)
        })
        .await
        .unwrap();
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        let new_epoch: Vec<String> = acked
            .iter()
            .filter(|p| p[1..].parse::<usize>().unwrap_or(0) > first_after)
            .cloned()
            .collect();
        assert!(
            new_epoch.len() >= 15,
            "only {} acks after the wipe",
            new_epoch.len()
        );
        let caught_up = wait_delivered(&away, ROOM, &new_epoch, WAIT).await;
        let f = Figures::of("Redis restarted empty while away", &away, ROOM, &acked)
            .recovered_in(caught_up.as_ref().ok().map(|_| back_at.elapsed()))
            .print();
        caught_up.unwrap();
        assert!(f.tally.is_clean(), "{f}");
        assert!(f.resyncs >= 1, "no resync: {f}");
        // Of the new epoch, nothing is missing even with the resync.
        let new_tally = away.observed(|o| faultkit::tally(&new_epoch, o.delivered(ROOM), false));
        assert!(new_tally.is_clean(), "new epoch: {new_tally}");
        for c in &cast.subscribers {
            wait_delivered(c, ROOM, &new_epoch, WAIT).await.unwrap();
        }
    })
    .await;
}

/// Every Redis command of both nodes crosses a proxy adding 100 ms ± 50 ms each way: slower,
/// but nothing is lost, duplicated or reordered, and no client drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_slow() {
    bounded(async {
        let redis = Redis::start().await.unwrap();
        let slow = FaultProxy::tcp(redis.addr()).await.unwrap();
        let url = format!("redis://{}/", slow.addr());
        let stack = Stack::cluster_via(
            redis,
            &url,
            2,
            scenario::fast_node(faultkit::rtlink_server_bin!()),
        )
        .await
        .unwrap();
        let cast = RedisCast::start(stack, Duration::from_millis(150)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow.set(Faults::latency(100, 50));
        tokio::time::sleep(Duration::from_secs(5)).await;
        slow.clear();
        let publisher = &cast.publisher;
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        assert!(acked.len() >= 20, "only {} acks", acked.len());
        for c in &cast.subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
        }
        for c in &cast.subscribers {
            let f = Figures::of("Redis +100 ms ± 50 ms per chunk", c, ROOM, &acked).print();
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.drops, 0, "{f}");
        }
        assert_eq!(publisher.failed(), 0);
    })
    .await;
}

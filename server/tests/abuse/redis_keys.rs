//! Redis stays bounded: subscribing to fresh room names leaves no permanent keys (a room's
//! head and epoch expire a while after its history), and the numbers of `/metrics` cost Redis
//! a bounded walk per interval for the whole cluster, not an O(rooms) script on every node.

use std::time::{Duration, Instant};

use rtlink_protocol::ClientFrame;

use crate::process::{eventually, ServerProcess};
use crate::redis_server::RedisServer;
use crate::{bounded, connect_ws, metric, Attacker, Bystander};

const PREFIX: &str = "abuse";
/// Rooms with history already in Redis: more than one stats interval walks (5,000).
const ROOMS: u64 = 12_000;

async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("cmdstat_{command}:calls="))?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut all = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        all.extend(batch);
        if next == 0 {
            return all;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_fresh_room_names_leave_no_permanent_redis_keys_and_stats_stay_bounded() {
    bounded(async {
        let redis_server = RedisServer::start();
        let client = redis::Client::open(redis_server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Rooms published to earlier, as a long-running cluster has them.
        let mut pipe = redis::pipe();
        for i in 0..ROOMS {
            pipe.cmd("XADD")
                .arg(format!("{PREFIX}:hist:old{i}"))
                .arg("1-0")
                .arg("s")
                .arg("u")
                .arg("p")
                .arg("x")
                .arg("t")
                .arg(0)
                .ignore();
            pipe.cmd("SADD")
                .arg(format!("{PREFIX}:idx:hist-rooms"))
                .arg(format!("old{i}"))
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        let args = [
            "--redis",
            &redis_server.url(),
            "--redis-key-prefix",
            PREFIX,
            "--history-max-age",
            "60s",
        ];
        let node_a = ServerProcess::start(&args);
        let node_b = ServerProcess::start(&args);
        let (a, b) = (node_a.client(), node_b.client());
        let mut bystander = Bystander::join(&a, "alice", "chat:lobby").await;

        // The attack: subscribe to 60 fresh room names (and publish in a few).
        let mut attacker = connect_ws(&b, &b.token("mallory")).await;
        for i in 0..60 {
            attacker.subscribe(&format!("chat:fresh{i}"), None).await;
        }
        let attacker = Attacker::spawn(attacker);
        for i in 0..5 {
            attacker.send(ClientFrame::Publish {
                room: format!("chat:fresh{i}"),
                id: format!("p{i}"),
                payload: String::from("hello"),
            });
        }
        attacker
            .wait_for("the last ack", |f| {
                matches!(f, rtlink_protocol::ServerFrame::Ack { id, .. } if id == "p4")
            })
            .await;
        let heads = keys(&mut conn, &format!("{PREFIX}:head:chat:fresh*")).await;
        let epochs = keys(&mut conn, &format!("{PREFIX}:epoch:chat:fresh*")).await;
        assert_eq!(heads.len(), 5, "{heads:?}");
        assert_eq!(epochs.len(), 60, "{epochs:?}");
        // History age (60 s) plus an hour, refreshed on use: never permanent.
        let ttl_max = (60 + 3600) * 1000;
        for key in heads.iter().chain(&epochs) {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
            assert!(ttl > 0 && ttl <= ttl_max, "{key} has PTTL {ttl}");
        }

        // Stats: both nodes learn the cluster's numbers, from one walk.
        let started = Instant::now();
        for client in [&a, &b] {
            eventually("the stats pass to count every room", Duration::from_secs(90), || async {
                metric(client, "rtlink_broker_rooms").await >= ROOMS
            })
            .await;
        }
        let pass = started.elapsed();
        // What Redis does for the stats in a window of two intervals: at most about two
        // bounded steps of 5,000 rooms (the lease holder's), where one O(rooms) script per
        // node per interval would look at every room four times (2 nodes x 2 intervals).
        let before = command_calls(&mut conn, "xlen").await;
        let window = Instant::now();
        let mut last = bystander.peer.frames().len();
        while window.elapsed() < Duration::from_secs(10) {
            // Meanwhile the bystander is served.
            bystander.assert_served().await;
            assert!(bystander.peer.frames().len() > last);
            last = bystander.peer.frames().len();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let walked = command_calls(&mut conn, "xlen").await - before;
        let lease: Option<String> = redis::cmd("GET")
            .arg(format!("{PREFIX}:stats:lease"))
            .query_async(&mut conn)
            .await
            .unwrap();
        eprintln!(
            "redis stats: {ROOMS} rooms counted by both nodes after {pass:?}; the cluster looked at {walked} rooms in 10 s (an O(rooms) script per node every 5 s: {})",
            ROOMS * 4
        );
        assert!(lease.is_some(), "one node holds the stats lease");
        assert!(walked <= 3 * 5_500, "{walked} rooms looked at in 10 s");
        bystander.assert_unaffected(&a).await;
    })
    .await;
}

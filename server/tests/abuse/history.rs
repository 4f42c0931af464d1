//! Memory has a ceiling: the history of every room together is bounded in bytes (the oldest
//! message of any room is evicted first), and one user's publishes are bounded in bytes per
//! second over all their sessions.

use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};

use crate::process::ServerProcess;
use crate::{bounded, connect_ws, metric, Attacker, Bystander, Peer, Server};

const BIG: usize = 64_000;
const BUDGET: u64 = 2_000_000;

fn subscribe(room: &str, since: Option<u64>) -> ClientFrame {
    ClientFrame::Subscribe {
        room: room.into(),
        since,
        epoch: None,
        history: None,
    }
}

/// One user publishes 64 KB payloads into many rooms, ten times the history budget. The
/// history never holds more than the budget; the bystander's room loses its messages older
/// than the flood (oldest first across rooms: a resume from before them is told
/// `recovered: false`, i.e. resync) and keeps every message after it (a resume from there
/// replays them all).
#[tokio::test]
async fn abuse_one_user_cannot_push_history_past_the_byte_budget() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--history-max-bytes",
            &BUDGET.to_string(),
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
            // The global budget is what this test attacks, not the per-user one.
            "--publish-bytes-per-sec",
            "4000000000",
            "--publish-bytes-burst",
            "4000000000",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        for _ in 0..3 {
            bystander.assert_served().await;
        }
        let mut attacker = connect_ws(&client, &client.token("mallory")).await;
        let rooms: Vec<String> = (0..8).map(|i| format!("chat:flood{i}")).collect();
        for room in &rooms {
            attacker.subscribe(room, None).await;
        }
        let attacker = Attacker::spawn(attacker);
        let payload = "x".repeat(BIG);
        let mut peak = 0;
        for batch in 0..10u32 {
            for i in 0..32u32 {
                let n = batch * 32 + i;
                attacker.send(ClientFrame::Publish {
                    room: rooms[(n % 8) as usize].clone(),
                    id: format!("f{n}"),
                    payload: payload.clone(),
                });
            }
            let last = format!("f{}", batch * 32 + 31);
            attacker
                .wait_for("the flood's acks", |f| {
                    matches!(f, ServerFrame::Ack { id, .. } if *id == last)
                })
                .await;
            let bytes = metric(&client, "rtlink_history_bytes").await;
            assert!(bytes <= BUDGET, "history holds {bytes} bytes");
            peak = peak.max(bytes);
        }
        let flooded = 320 * BIG as u64;
        // The budget was reached (the flood is ten times it) and held.
        assert!(peak > BUDGET / 2, "peak {peak}");
        let messages = metric(&client, "rtlink_history_messages").await;
        eprintln!(
            "history budget: {flooded} payload bytes published, history peaked at {peak} bytes ({messages} messages) under a budget of {BUDGET}"
        );
        // After the flood, the bystander's room works as before and keeps what it gets now.
        for _ in 0..3 {
            bystander.assert_served().await;
        }
        bystander.assert_unaffected(&client).await;
        // Offsets 1-3 came before the flood and were evicted; 4 and later came after it.
        assert_resume_after_the_flood(&client).await;
    })
    .await;
}

/// One user with two connections publishes 64 KB payloads as fast as the frame rate allows:
/// past the per-user byte budget (2 MiB burst, 128 KiB/s by default) it is nacked
/// `rate_limited`, then closed 4003 when it keeps going. Another user in the same room
/// publishes the same payloads on a budget of their own.
#[tokio::test]
async fn abuse_one_user_is_held_to_the_publish_byte_budget() {
    bounded(async {
        let server =
            ServerProcess::start(&["--rate-per-sec", "1000", "--rate-burst", "1000"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let payload = "x".repeat(BIG);
        let mut attackers = Vec::new();
        for _ in 0..2 {
            let mut ws = connect_ws(&client, &client.token("mallory")).await;
            // The budget is announced (default 128 KiB/s, 2 MiB burst).
            match &ws.welcome {
                Some(ServerFrame::Welcome { limits, .. }) => assert_eq!(
                    (limits.publish_bytes_per_sec, limits.publish_bytes_burst),
                    (128 * 1024, 2 * 1024 * 1024)
                ),
                other => panic!("{other:?}"),
            }
            ws.subscribe("chat:lobby", None).await;
            attackers.push(Attacker::spawn(ws));
        }
        // Each publish waits for its answer (as fast as the server answers): past the
        // budget every publish is nacked, and ignoring the nacks ends in 4003 (the strikes of
        // the frame rate apply).
        let started = std::time::Instant::now();
        let (mut acked, mut nacked, mut first_nack) = (0usize, 0usize, None);
        for n in 0..200 {
            let open: Vec<&Attacker> = attackers.iter().filter(|a| a.closed().is_none()).collect();
            let Some(attacker) = open.get(n % open.len().max(1)) else {
                break;
            };
            let id = format!("f{n}");
            attacker.send(ClientFrame::Publish {
                room: "chat:lobby".into(),
                id: id.clone(),
                payload: payload.clone(),
            });
            let answered = attacker
                .wait_for_or_close(|f| match f {
                    ServerFrame::Ack { id: i, .. } => *i == id,
                    ServerFrame::Nack { id: i, code, .. } => {
                        *i == id && *code == ErrorCode::RateLimited
                    }
                    _ => false,
                })
                .await;
            if !answered {
                continue;
            }
            if attacker.count(|f| matches!(f, ServerFrame::Ack { id: i, .. } if *i == id)) == 1 {
                acked += 1;
            } else {
                nacked += 1;
                first_nack.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
        for a in &attackers {
            assert_eq!(a.closed(), Some(Some(4003)), "closed for ignoring the nacks");
        }
        let first_nack = first_nack.expect("the budget was never reached");
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = (2.0 * 1024.0 * 1024.0 + 128.0 * 1024.0 * elapsed) / BIG as f64;
        eprintln!("publish budget: {acked} 64-KB publishes acked (the first nack after {first_nack:.2}s), {nacked} nacked, both connections closed 4003 after {elapsed:.2}s; the budget allows {allowed:.1}");
        assert!(acked as f64 <= allowed + 1.0, "{acked} acked");
        assert!(acked >= 32, "the burst is honoured: {acked}");
        assert!(nacked >= 20, "{nacked} nacks before the close");
        // The bystander, another user, publishes the same payloads on its own budget.
        for i in 0..4 {
            let id = format!("big{i}");
            bystander.send(ClientFrame::Publish {
                room: "chat:lobby".into(),
                id: id.clone(),
                payload: payload.clone(),
            });
            bystander
                .wait_for("the bystander's big publish acked", |f| {
                    matches!(f, ServerFrame::Ack { id: i, .. } if *i == id)
                })
                .await;
        }
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// `GET` of an integer key (0 when absent) and `INFO memory`'s `used_memory`.
async fn redis_numbers(conn: &mut redis::aio::MultiplexedConnection, counter: &str) -> (u64, u64) {
    let bytes: Option<u64> = redis::cmd("GET")
        .arg(counter)
        .query_async(conn)
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
        .unwrap();
    (bytes.unwrap_or(0), used)
}

/// The same attack on a cluster: two nodes share one `redis-server`, and one user floods 64 KB
/// payloads through both, ten times the budget. The cluster's count (sampled every few
/// milliseconds straight from Redis) never passes the budget and Redis's memory grows by about
/// the budget only; the bystander on the other node keeps being served, a newcomer joins, and
/// a resume on either node behaves as in-process: before the flood → `recovered: false`,
/// after it → every message replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_one_user_cannot_push_a_clusters_history_past_the_byte_budget() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    bounded(async {
        let redis_server = crate::redis_server::RedisServer::start();
        let url = redis_server.url();
        let budget = BUDGET.to_string();
        let args = [
            "--redis",
            &url,
            "--redis-key-prefix",
            "budget",
            "--history-max-bytes",
            &budget,
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
            "--publish-bytes-per-sec",
            "4000000000",
            "--publish-bytes-burst",
            "4000000000",
        ];
        let node_a = ServerProcess::start(&args);
        let node_b = ServerProcess::start(&args);
        let (a, b) = (node_a.client(), node_b.client());
        let redis = redis::Client::open(url.as_str()).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        let counter = "budget:hist-budget:bytes";

        let mut bystander = Bystander::join(&b, "alice", "chat:lobby").await;
        for _ in 0..3 {
            bystander.assert_served().await;
        }
        let (_, used_before) = redis_numbers(&mut conn, counter).await;
        // Samples the cluster's count and Redis's memory while the flood runs.
        let done = Arc::new(AtomicBool::new(false));
        let (peak_bytes, peak_used) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sampler = tokio::spawn({
            let (done, peak_bytes, peak_used) = (done.clone(), peak_bytes.clone(), peak_used.clone());
            let mut conn = conn.clone();
            async move {
                let mut samples = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let (bytes, used) = redis_numbers(&mut conn, counter).await;
                    peak_bytes.fetch_max(bytes, Ordering::Relaxed);
                    peak_used.fetch_max(used, Ordering::Relaxed);
                    samples += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                samples
            }
        });

        // One user, a connection on each node, four rooms each.
        let mut attackers = Vec::new();
        let mut rooms = Vec::new();
        for (n, node) in [&a, &b].into_iter().enumerate() {
            let mut ws = connect_ws(node, &node.token("mallory")).await;
            let mine: Vec<String> = (0..4).map(|i| format!("chat:flood{n}-{i}")).collect();
            for room in &mine {
                ws.subscribe(room, None).await;
            }
            attackers.push(Attacker::spawn(ws));
            rooms.push(mine);
        }
        let payload = "x".repeat(BIG);
        for batch in 0..10u32 {
            for (n, attacker) in attackers.iter().enumerate() {
                for i in 0..16u32 {
                    attacker.send(ClientFrame::Publish {
                        room: rooms[n][(i % 4) as usize].clone(),
                        id: format!("f{batch}-{i}"),
                        payload: payload.clone(),
                    });
                }
            }
            let last = format!("f{batch}-15");
            for attacker in &attackers {
                attacker
                    .wait_for("the flood's acks", |f| {
                        matches!(f, ServerFrame::Ack { id, .. } if *id == last)
                    })
                    .await;
            }
        }
        done.store(true, Ordering::Relaxed);
        let samples = sampler.await.unwrap();
        let (bytes_after, used_after) = redis_numbers(&mut conn, counter).await;
        let (peak, peak_used) = (peak_bytes.load(Ordering::Relaxed), peak_used.load(Ordering::Relaxed));
        let flooded = 320 * BIG as u64;
        eprintln!(
            "redis history budget: {flooded} payload bytes published through 2 nodes; the cluster's count peaked at {peak} bytes ({samples} samples, {bytes_after} after) under a budget of {BUDGET}; Redis used_memory {used_before} before, peak {peak_used} (+{}), {used_after} after",
            peak_used.saturating_sub(used_before)
        );
        assert!(peak <= BUDGET, "the cluster's history counted {peak} bytes");
        assert!(peak > BUDGET / 2, "the budget was reached: {peak}");
        // What Redis really holds: about the budget (allocator and key overheads are not
        // counted), nowhere near the 20 MB published.
        assert!(
            peak_used.saturating_sub(used_before) < 2 * BUDGET,
            "Redis grew by {} bytes",
            peak_used - used_before
        );
        // Both nodes report the cluster's count.
        for node in [&a, &b] {
            crate::process::eventually("rtlink_history_bytes", crate::WAIT, || async {
                let m = metric(node, "rtlink_history_bytes").await;
                m > BUDGET / 2 && m <= BUDGET
            })
            .await;
        }

        for _ in 0..3 {
            bystander.assert_served().await;
        }
        bystander.assert_unaffected(&b).await;
        // Offsets 1-3 came before the flood and were evicted; 4 and later came after it. A
        // resume on either node sees the same.
        for node in [&a, &b] {
            assert_resume_after_the_flood(node).await;
        }
    })
    .await;
}

/// Offsets 1-3 of `chat:lobby` came before a flood that evicted them, 4 and later after it: a
/// resume from 0 gets `recovered: false`, a resume from 3 gets every message after the flood.
async fn assert_resume_after_the_flood(node: &Server) {
    let resumer = Peer::spawn(connect_ws(node, &node.token("carol")).await);
    resumer.send(subscribe("chat:lobby", Some(0)));
    resumer
        .wait_for("subscribed recovered: false", |f| {
            matches!(
                f,
                ServerFrame::Subscribed {
                    recovered: false,
                    ..
                }
            )
        })
        .await;
    let resumer = Peer::spawn(connect_ws(node, &node.token("carol")).await);
    resumer.send(subscribe("chat:lobby", Some(3)));
    resumer
        .wait_for("subscribed recovered: true", |f| {
            matches!(
                f,
                ServerFrame::Subscribed {
                    recovered: true,
                    ..
                }
            )
        })
        .await;
    let head = resumer
        .frames()
        .iter()
        .find_map(|f| match f {
            ServerFrame::Subscribed { head, .. } => Some(*head),
            _ => None,
        })
        .unwrap();
    assert!(head > 3);
    resumer
        .wait_for(
            "the replay of the room's newest message",
            |f| matches!(f, ServerFrame::Message { offset, .. } if *offset == head),
        )
        .await;
    let replayed =
        resumer.count(|f| matches!(f, ServerFrame::Message { room, .. } if room == "chat:lobby"));
    assert_eq!(replayed as u64, head - 3, "every message after the flood");
}

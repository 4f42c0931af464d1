//! Fault tests of a two-node cluster: real `rtlink-server` processes sharing one real
//! `redis-server`, so a node can be SIGKILLed or SIGTERMed. Every test function is named
//! `fault_*` (`make test-faults` runs them; `test-native` skips them with `--skip fault_`).
//!
//! Every wait is bounded, and every child process is killed when its handle drops (also when
//! the test panics).
#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)] // not every helper is used here
mod support {
    pub mod redis;
}

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{remote, resume_token, resumed, send_upstream, session_id, Poll, Server, Ws};
use faultkit::scenario::bounded;
use rtlink_protocol::{ClientFrame, ServerFrame};
use support::redis::RedisServer;

/// The nodes' liveness TTL: a killed node's users leave after about this long.
const NODE_TTL: Duration = Duration::from_secs(1);
const DRAIN_WINDOW_MS: u64 = 2000;

/// An `rtlink-server` child process. Killed (SIGKILL) on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    /// Starts a node on a free port of 127.0.0.1 and waits (bounded) until it listens.
    fn start(redis: &RedisServer) -> Node {
        let mut child = Command::new(faultkit::rtlink_server_bin!())
            // Nothing from the test's environment (RTLINK_*) leaks in.
            .env_clear()
            .env("RTLINK_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--redis", &redis.url()])
            .args(["--redis-node-ttl", &format!("{}ms", NODE_TTL.as_millis())])
            .args(["--auth-secret", rtlink_server::config::TEST_SECRET])
            .args(["--presence-grace", "300ms", "--poll-hold", "500ms"])
            .args(["--drain-window", &format!("{DRAIN_WINDOW_MS}ms")])
            .args([
                "--drain-grace",
                "1s",
                "--rate-per-sec",
                "1000",
                "--rate-burst",
                "1000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rtlink-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the log for the address, then keeps draining it so the child never blocks.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let mut node = Node {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        node.addr = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("rtlink-server did not log its address");
        node
    }

    /// A test client for this node (signs tokens with the node's secret).
    fn client(&self) -> Server {
        remote(self.addr)
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The address of a JSON log line `rtlink-server listening addr=…`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "rtlink-server listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

fn message_offset(f: &ServerFrame) -> Option<u64> {
    match f {
        ServerFrame::Message { offset, .. } => Some(*offset),
        _ => None,
    }
}

/// Reads until a message with offset `last` arrived; returns every message offset seen.
async fn offsets_until(ws: &mut Ws, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let f = ws.recv().await;
        seen.extend(message_offset(&f));
    }
    seen
}

/// SIGKILL node A: its user leaves presence on B after about the node TTL, A's sessions are
/// unknown to B (404), and a client of A reconnects to B and resumes from Redis Streams with
/// every message published meanwhile exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigkill_node_users_leave_and_clients_resume_elsewhere() {
    bounded(async {
        let redis = RedisServer::start();
        let mut node_a = Node::start(&redis);
        let node_b = Node::start(&redis);
        let (a, b) = (node_a.client(), node_b.client());

        let mut watcher = b.ws("watcher").await;
        watcher.subscribe("room", None).await;
        let mut publisher = b.ws("publisher").await;
        publisher.subscribe("room", None).await;
        let mut victim = a.ws("victim").await;
        let victim_session = session_id(victim.welcome());
        let victim_token = resume_token(victim.welcome());
        victim.subscribe("room", None).await;
        watcher
            .recv_until(|f| matches!(f, ServerFrame::PresenceJoin { conn, .. } if conn.session == victim_session))
            .await;
        // A long-poll session on A, served through B while A lives.
        let (mut poller, _) = Poll::open(&a, &a.ticket("poller").await, None).await;
        let subscribe = ClientFrame::Subscribe {
            room: "room".into(),
            since: None,
            epoch: None, history: None,
        };
        assert_eq!(poller.send(&b, vec![subscribe]).await, 204);
        common::poll_until(&mut poller, &b, |f| matches!(f, ServerFrame::Subscribed { .. })).await;

        for i in 1..=3 {
            publisher.publish("room", &format!("m{i}"), &i.to_string()).await;
        }
        assert_eq!(offsets_until(&mut victim, 3).await, vec![1, 2, 3]);

        node_a.sigkill();
        let killed = Instant::now();
        drop(victim);
        // Published while the victim is away.
        for i in 4..=8 {
            publisher.publish("room", &format!("m{i}"), &i.to_string()).await;
        }
        // The victim's leave comes from B's reaper once A's liveness key expired.
        watcher
            .recv_until(|f| matches!(f, ServerFrame::PresenceLeave { session, .. } if *session == victim_session))
            .await;
        let after = killed.elapsed();
        assert!(
            after >= NODE_TTL / 3 && after <= NODE_TTL * 5,
            "leave {after:?} after the kill (node TTL {NODE_TTL:?})"
        );

        // A is dead: its sessions are unknown everywhere, so clients start new ones.
        assert_eq!(send_upstream(&b, &victim_token, vec![]).await, 404);
        assert_eq!(send_upstream(&b, &poller.token, vec![]).await, 404);
        let resp = common::poll_request(&b, &poller.token, poller.cursor).await;
        assert_eq!(resp.status(), 404);

        // The victim reconnects to B: a new session, re-subscribed from its last offset.
        let mut back = b.ws_resume("victim", Some(&victim_token)).await;
        assert!(!resumed(back.welcome()));
        let subscribed = back.subscribe("room", Some(3)).await;
        assert!(
            matches!(subscribed, ServerFrame::Subscribed { recovered: true, head: 8, .. }),
            "{subscribed:?}"
        );
        publisher.publish("room", "m9", "9").await;
        assert_eq!(offsets_until(&mut back, 9).await, vec![4, 5, 6, 7, 8, 9]);
        println!(
            "FAULT-FIGURES node A SIGKILLed | scripted ws | presence leave on B {} ms after the kill (node TTL {} ms) | A's sessions 404 on B | resumed on B from offset 3: 6/6 delivered, lost 0, duplicated 0, reordered 0",
            after.as_millis(),
            NODE_TTL.as_millis()
        );
    })
    .await;
}

/// SIGTERM node A: each of its clients gets `reconnect_after {0, drain window}` and close 4008,
/// reconnects to B at a random time in the window (as the SDK does), and re-subscribes from its
/// last offset: B sees the reconnects spread over the window, no client loses or repeats a
/// message published during the drain, and A exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sigterm_drain_moves_clients_to_other_node_spread_over_window() {
    bounded(async {
        const CLIENTS: usize = 8;
        const MESSAGES: u64 = 25;
        let redis = RedisServer::start();
        let mut node_a = Node::start(&redis);
        let node_b = Node::start(&redis);
        let (a, b) = (node_a.client(), node_b.client());

        let mut watcher = b.ws("watcher").await;
        watcher.subscribe("room", None).await;
        let mut publisher = b.ws("publisher").await;
        publisher.subscribe("room", None).await;
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut ws = a.ws(&format!("user{i}")).await;
            ws.subscribe("room", None).await;
            clients.push(ws);
        }
        publisher.publish("room", "m1", "1").await;
        for ws in &mut clients {
            assert_eq!(offsets_until(ws, 1).await, vec![1]);
        }

        // Publishing goes on on B through the whole drain window.
        let publishing = tokio::spawn(async move {
            for i in 2..=MESSAGES {
                publisher
                    .publish("room", &format!("m{i}"), &i.to_string())
                    .await;
                tokio::time::sleep(Duration::from_millis(DRAIN_WINDOW_MS / MESSAGES)).await;
            }
            publisher
        });
        node_a.sigterm();
        let drained = tokio::time::Instant::now();
        let b_addr = b.addr;
        let mut moves = Vec::new();
        for (i, mut ws) in clients.into_iter().enumerate() {
            moves.push(tokio::spawn(async move {
                let token = resume_token(ws.welcome());
                let (code, frames) = ws.recv_close().await;
                assert_eq!(code, Some(4008), "client {i}: {frames:?}");
                let window = frames
                    .iter()
                    .find_map(|f| match f {
                        ServerFrame::ReconnectAfter { min_ms, max_ms } => Some((*min_ms, *max_ms)),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("client {i}: no reconnect_after in {frames:?}"));
                assert_eq!(window, (0, DRAIN_WINDOW_MS));
                let mut offsets: Vec<u64> = frames.iter().filter_map(message_offset).collect();
                let last = offsets.last().copied().unwrap_or(1);
                let delay = rand::random_range(window.0..=window.1);
                tokio::time::sleep_until(drained + Duration::from_millis(delay)).await;
                let b = remote(b_addr);
                let mut back = b.ws_resume(&format!("user{i}"), Some(&token)).await;
                let at = drained.elapsed();
                assert!(
                    !resumed(back.welcome()),
                    "A's session is not resumable on B"
                );
                let new_session = session_id(back.welcome());
                back.subscribe("room", Some(last)).await;
                offsets.extend(offsets_until(&mut back, MESSAGES).await);
                (at, offsets, new_session)
            }));
        }
        let mut arrivals = Vec::new();
        let mut new_sessions = std::collections::HashSet::new();
        for (i, m) in moves.into_iter().enumerate() {
            let (at, offsets, session) = m.await.unwrap();
            let expected: Vec<u64> = (2..=MESSAGES).collect();
            assert_eq!(offsets, expected, "client {i} lost or repeated messages");
            arrivals.push(at);
            new_sessions.insert(session);
        }
        publishing.await.unwrap();
        arrivals.sort();
        let spread = arrivals[CLIENTS - 1] - arrivals[0];
        assert!(
            spread >= Duration::from_millis(DRAIN_WINDOW_MS / 4),
            "reconnects not spread over the window: {arrivals:?}"
        );
        assert!(
            arrivals[CLIENTS - 1]
                <= Duration::from_millis(DRAIN_WINDOW_MS) + Duration::from_secs(3)
        );
        // B's presence shows every moved client again, with its new session.
        while !new_sessions.is_empty() {
            if let ServerFrame::PresenceJoin { conn, .. } = watcher.recv().await {
                new_sessions.remove(&conn.session);
            }
        }
        let status = tokio::task::spawn_blocking(move || {
            let status = node_a.wait_exit(Duration::from_secs(15));
            (status, node_a)
        })
        .await
        .unwrap()
        .0;
        assert!(
            status.is_some_and(|s| s.success()),
            "A exits cleanly after its drain: {status:?}"
        );
        println!(
            "FAULT-FIGURES node A SIGTERMed (drain window {DRAIN_WINDOW_MS} ms) | {CLIENTS} scripted ws | reconnects to B {} - {} ms after SIGTERM, spread {} ms | {} messages each: lost 0, duplicated 0, reordered 0 | A exited cleanly",
            arrivals[0].as_millis(),
            arrivals[CLIENTS - 1].as_millis(),
            spread.as_millis(),
            MESSAGES - 1
        );
    })
    .await;
}

/// Publishes until the node takes it (it nacks `internal` while its Redis reconnects); returns
/// the offset.
async fn publish_when_up(ws: &mut Ws, room: &str, id: &str) -> u64 {
    loop {
        ws.send(&ClientFrame::Publish {
            room: room.into(),
            id: id.into(),
            payload: id.into(),
        })
        .await;
        let answer = ws
            .recv_until(|f| matches!(f, ServerFrame::Ack { id: i, .. } | ServerFrame::Nack { id: i, .. } if i == id))
            .await;
        if let ServerFrame::Ack { offset, .. } = answer {
            return offset;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis restarts empty while a subscriber is away: its session is told the room's new epoch
/// once (`subscribed {recovered: false}` and the new epoch's messages, waiting in its outbox).
/// A subscribe it sent before it read that, with its old epoch and offset, is answered from
/// what the session already sent (`recovered: true`, nothing sent twice), not with a second
/// reset of the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_restarted_empty_a_stale_subscribe_resets_the_room_once() {
    bounded(async {
        let mut redis = RedisServer::start();
        let node = Node::start(&redis);
        let c = node.client();
        let mut publisher = c.ws("publisher").await;
        publisher.subscribe("room", None).await;
        let mut away = c.ws("away").await;
        let token = resume_token(away.welcome());
        let first = away.subscribe("room", None).await;
        let ServerFrame::Subscribed { epoch: old, .. } = first else {
            panic!("not subscribed: {first:?}")
        };
        for i in 1..=5 {
            publisher.publish("room", &format!("old{i}"), "x").await;
        }
        assert_eq!(offsets_until(&mut away, 5).await, vec![1, 2, 3, 4, 5]);
        drop(away);

        redis.restart();
        for i in 1..=3 {
            assert_eq!(publish_when_up(&mut publisher, "room", &format!("new{i}")).await, i);
        }
        // The session that is away is resynchronised like the publisher's.
        let mut back = c.ws_resume("away", Some(&token)).await;
        assert!(resumed(back.welcome()));
        let reset = back
            .recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
            .await;
        let ServerFrame::Subscribed {
            recovered: false,
            epoch: new,
            ..
        } = reset
        else {
            panic!("not a reset: {reset:?}")
        };
        assert_ne!(new, old);
        assert_eq!(offsets_until(&mut back, 3).await, vec![1, 2, 3]);

        // What the client sent before it read the reset: its old epoch and offset.
        back.send(&ClientFrame::Subscribe {
            room: "room".into(),
            since: Some(5),
            epoch: Some(old.clone()),
            history: None,
        })
        .await;
        let answer = back
            .recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
            .await;
        assert!(
            matches!(&answer, ServerFrame::Subscribed { recovered: true, head: 3, epoch, .. } if *epoch == new),
            "a second reset: {answer:?}"
        );
        assert_eq!(publish_when_up(&mut publisher, "room", "new4").await, 4);
        assert_eq!(
            offsets_until(&mut back, 4).await,
            vec![4],
            "nothing is sent twice"
        );
    })
    .await;
}

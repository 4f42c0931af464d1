//! Two nodes in one process, each `app()` on its own port, sharing one real `redis-server`:
//! fan-out, presence and typing cross nodes, and any node serves any session (no sticky
//! sessions).
#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)] // not every helper is used here
mod support {
    pub mod redis;
}

use std::future::Future;
use std::time::Duration;

use common::{fast_config, resume_token, resumed, send_upstream, session_id, start_state};
use common::{Poll, Server, Sse, WsEvent};
use rtlink_protocol::{ClientFrame, ServerFrame};
use rtlink_server::AppState;
use support::redis::RedisServer;

/// Every test is bounded: a hang is a failure.
/// `RUST_LOG=rtlink_server=debug cargo test … -- --nocapture` shows the nodes' logs.
async fn bounded<F: Future<Output = ()>>(test: F) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test timed out");
}

/// A node of the cluster on `redis`.
async fn node(redis: &RedisServer) -> Server {
    let mut c = fast_config();
    c.redis = Some(redis.url());
    c.redis_node_ttl = Duration::from_secs(1);
    start_state(AppState::from_config(c).await.unwrap()).await
}

async fn two_nodes(redis: &RedisServer) -> (Server, Server) {
    (node(redis).await, node(redis).await)
}

fn node_id(s: &Server) -> String {
    s.state.cluster.node_id().unwrap().to_owned()
}

fn message_offset(f: &ServerFrame) -> Option<u64> {
    match f {
        ServerFrame::Message { offset, .. } => Some(*offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fan_out_across_nodes() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        assert_ne!(node_id(&a), node_id(&b));
        let mut on_a = a.ws("ana").await;
        let mut on_b = b.ws("bob").await;
        on_a.subscribe("chat", None).await;
        on_b.subscribe("chat", None).await;

        let offset = on_a.publish("chat", "p1", "from a").await;
        let got = on_b
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await;
        assert!(
            matches!(&got, ServerFrame::Message { payload, sender, offset: o, .. }
                if payload == "from a" && sender == "ana" && *o == offset),
            "{got:?}"
        );
        let offset2 = on_b.publish("chat", "p2", "from b").await;
        assert_eq!(offset2, offset + 1, "one offset sequence for the room");
        let got = on_a
            .recv_until(
                |f| matches!(f, ServerFrame::Message { payload, .. } if payload == "from b"),
            )
            .await;
        assert_eq!(message_offset(&got), Some(offset2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        let mut on_a = a.ws("ana").await;
        on_a.subscribe("room", None).await;
        let mut on_b = b.ws("bob").await;
        let bob_session = session_id(on_b.welcome());
        on_b.subscribe("room", None).await;
        // Bob's snapshot (from Redis) already holds Ana.
        let snapshot = on_b
            .recv_until(|f| matches!(f, ServerFrame::PresenceSnapshot { .. }))
            .await;
        assert!(
            matches!(&snapshot, ServerFrame::PresenceSnapshot { conns, .. }
                if conns.iter().any(|c| c.user == "ana")),
            "{snapshot:?}"
        );
        // (Ana may first see her own join come back from Redis.)
        let join = on_a
            .recv_until(|f| matches!(f, ServerFrame::PresenceJoin { conn, .. } if conn.user == "bob"))
            .await;
        assert!(
            matches!(&join, ServerFrame::PresenceJoin { conn, .. } if conn.session == bob_session && conn.user == "bob"),
            "{join:?}"
        );
        // A close ends the session: the leave goes out at once, not after the grace.
        on_b.send(&ClientFrame::Close {
            code: rtlink_protocol::CloseCode::NORMAL,
            reason: "bye".into(),
        })
        .await;
        let leave = on_a
            .recv_until(|f| matches!(f, ServerFrame::PresenceLeave { .. }))
            .await;
        assert!(
            matches!(&leave, ServerFrame::PresenceLeave { session, user, .. } if *session == bob_session && user == "bob"),
            "{leave:?}"
        );
    })
    .await;
}

/// Snapshots on both nodes list a user's tabs in the order they last changed, as the events
/// told the members (`common::joiners_see_the_tab_that_changed_last`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_on_either_node_see_the_tab_that_changed_last() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        common::joiners_see_the_tab_that_changed_last(&a, &b).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        let mut on_a = a.ws("ana").await;
        let mut on_b = b.ws("bob").await;
        on_a.subscribe("room", None).await;
        on_b.subscribe("room", None).await;
        on_b.send(&ClientFrame::Typing {
            room: "room".into(),
            active: true,
        })
        .await;
        let typing = on_a
            .recv_until(|f| matches!(f, ServerFrame::Typing { .. }))
            .await;
        assert!(
            matches!(&typing, ServerFrame::Typing { user, active: true, .. } if user == "bob"),
            "{typing:?}"
        );
        on_b.send(&ClientFrame::Typing {
            room: "room".into(),
            active: false,
        })
        .await;
        let typing = on_a
            .recv_until(|f| matches!(f, ServerFrame::Typing { .. }))
            .await;
        assert!(
            matches!(&typing, ServerFrame::Typing { active: false, .. }),
            "{typing:?}"
        );
    })
    .await;
}

/// An SSE stream on A whose upstream POSTs land on B: B forwards them to A, which applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_one_node_with_posts_to_the_other() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        let ticket = a.ticket("ana").await;
        let mut sse = Sse::open(&a, &format!("ticket={ticket}&v=1"))
            .await
            .unwrap();
        let welcome = sse.next().await.unwrap();
        let token = resume_token(&welcome);
        assert!(
            token.starts_with(&format!("{}.", node_id(&a))),
            "the token names its node"
        );
        let mut watcher = b.ws("bob").await;
        watcher.subscribe("room", None).await;

        let subscribe = ClientFrame::Subscribe {
            room: "room".into(),
            since: None,
            epoch: None, history: None,
        };
        assert_eq!(send_upstream(&b, &token, vec![subscribe]).await, 204);
        sse.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
            .await;
        let publish = ClientFrame::Publish {
            room: "room".into(),
            id: "m1".into(),
            payload: "via b".into(),
        };
        assert_eq!(send_upstream(&b, &token, vec![publish.clone()]).await, 204);
        let ack = sse
            .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Nack { .. }))
            .await;
        let ServerFrame::Ack { id, offset, .. } = ack else {
            panic!("publish refused: {ack:?}")
        };
        assert_eq!(id, "m1");
        let got = watcher
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await;
        assert!(
            matches!(&got, ServerFrame::Message { payload, offset: o, .. } if payload == "via b" && *o == offset),
            "{got:?}"
        );
        // A resend through A (the owner) is deduplicated like any other: same ack, no message.
        assert_eq!(send_upstream(&a, &token, vec![publish]).await, 204);
        let again = sse
            .recv_until(|f| matches!(f, ServerFrame::Ack { .. }))
            .await;
        assert!(matches!(again, ServerFrame::Ack { offset: o, .. } if o == offset));

        // The owner validates forwarded batches exactly like local ones.
        let forged = format!("{}.not-a-session", node_id(&a));
        assert_eq!(send_upstream(&b, &forged, vec![]).await, 404);
        assert_eq!(send_upstream(&b, "no-node-in-this-token", vec![]).await, 404);
        let resp = b
            .http
            .post(b.url("/v1/send"))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    })
    .await;
}

/// Successive long polls alternate between A and B; a publisher on B keeps publishing. Every
/// message arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_alternating_between_nodes_lose_nothing() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        let ticket = a.ticket("ana").await;
        let (mut poll, first) = Poll::open(&a, &ticket, None).await;
        assert!(matches!(first[0], ServerFrame::Welcome { .. }));
        let subscribe = ClientFrame::Subscribe {
            room: "room".into(),
            since: None,
            epoch: None,
            history: None,
        };
        assert_eq!(poll.send(&b, vec![subscribe]).await, 204);
        let seen = common::poll_until(&mut poll, &b, |f| {
            matches!(f, ServerFrame::Subscribed { .. })
        })
        .await;
        let mut offsets: Vec<u64> = seen.iter().filter_map(message_offset).collect();

        const N: u64 = 30;
        let mut publisher = b.ws("bob").await;
        publisher.subscribe("room", None).await;
        let publishing = tokio::spawn(async move {
            for i in 1..=N {
                publisher
                    .publish("room", &format!("m{i}"), &format!("{i}"))
                    .await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
        let nodes = [&a, &b];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut turn = 0usize;
        while offsets.last() != Some(&N) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only got {offsets:?}"
            );
            let frames = poll.poll(nodes[turn % 2]).await;
            turn += 1;
            offsets.extend(frames.iter().filter_map(message_offset));
        }
        publishing.await.unwrap();
        assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
        assert!(turn >= 2, "both nodes served polls");
        // A poll for an unknown session of A, asked on B, is A's 404.
        let resp = common::poll_request(&b, &format!("{}.nope", node_id(&a)), 0).await;
        assert_eq!(resp.status(), 404);
    })
    .await;
}

/// A WebSocket that resumes on B a session that lives on A gets a new session; A releases the
/// old one (its transport closes 4006). Re-subscribing from the last offset loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_opens_a_new_session() {
    bounded(async {
        let redis = RedisServer::start();
        let (a, b) = two_nodes(&redis).await;
        let mut publisher = b.ws("bob").await;
        publisher.subscribe("room", None).await;
        let mut old = a.ws("ana").await;
        old.subscribe("room", None).await;
        let last = publisher.publish("room", "m1", "1").await;
        let got = old
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await;
        assert_eq!(message_offset(&got), Some(last));
        publisher.publish("room", "m2", "2").await;
        publisher.publish("room", "m3", "3").await;

        let token = resume_token(old.welcome());
        let mut moved = b.ws_resume("ana", Some(&token)).await;
        assert!(
            !resumed(moved.welcome()),
            "a session of A is not resumable on B"
        );
        let (code, _) = old.recv_close().await;
        assert_eq!(code, Some(4006), "A released the old session");

        moved.subscribe("room", Some(last)).await;
        let mut replayed = Vec::new();
        while replayed.len() < 2 {
            match moved.next_event().await {
                WsEvent::Frame(f) => replayed.extend(message_offset(&f)),
                WsEvent::Closed(c) => panic!("closed {c:?}"),
            }
        }
        assert_eq!(replayed, vec![last + 1, last + 2]);
    })
    .await;
}

/// One member of a room in [`a_room_joined_in_two_waves_converges_for_every_member`]: subscribes,
/// then keeps its presence view (session -> meta) the way `docs/PROTOCOL.md` says to, setting
/// its own metadata once subscribed, or closing at once if it is one of the leavers.
fn room_member(
    mut ws: common::Ws,
    i: usize,
    leaves: bool,
    views: std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        ws.send(&ClientFrame::Subscribe {
            room: "big".into(),
            since: None,
            epoch: None,
            history: None,
        })
        .await;
        loop {
            let frame =
                match tokio::time::timeout(Duration::from_millis(4500), ws.next_event()).await {
                    Ok(WsEvent::Frame(f)) => f,
                    Ok(WsEvent::Closed(_)) | Err(_) => return,
                };
            {
                let mut views = views.lock().unwrap();
                let view = &mut views[i];
                match &frame {
                    ServerFrame::PresenceSnapshot { conns, .. } => {
                        view.clear();
                        view.extend(conns.iter().map(|c| (c.session.clone(), c.meta.clone())));
                    }
                    ServerFrame::PresenceJoin { conn, .. }
                    | ServerFrame::PresenceUpdate { conn, .. } => {
                        view.insert(conn.session.clone(), conn.meta.clone());
                    }
                    ServerFrame::PresenceLeave { session, .. } => {
                        view.remove(session);
                    }
                    ServerFrame::PresenceDiff { joins, leaves, .. } => {
                        for l in leaves {
                            view.remove(&l.session);
                        }
                        view.extend(joins.iter().map(|c| (c.session.clone(), c.meta.clone())));
                    }
                    _ => {}
                }
            }
            if matches!(frame, ServerFrame::Subscribed { .. }) {
                if leaves {
                    ws.send(&ClientFrame::Close {
                        code: rtlink_protocol::CloseCode::NORMAL,
                        reason: "bye".into(),
                    })
                    .await;
                    return;
                }
                ws.send(&ClientFrame::Presence {
                    room: "big".into(),
                    meta: format!("{{\"n\":{i}}}"),
                })
                .await;
            }
        }
    })
}

/// A room over Redis, end to end, in two waves on two nodes: 30 members subscribe at once (10
/// of them leave again, the others set their metadata), then 30 more subscribe at once. Every
/// member that stays ends with the room's presence, metadata included, whichever node it is
/// on: the second wave's snapshots come from each node's mirror of the room, which followed
/// the first wave's joins, updates and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_in_two_waves_converges_for_every_member() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    const WAVE: usize = 30;
    const LEAVING: usize = 10;
    bounded(async {
        let redis = RedisServer::start();
        let node = |r: &RedisServer| {
            let mut c = fast_config();
            c.redis = Some(r.url());
            c.redis_node_ttl = Duration::from_secs(1);
            // Coalesced diffs from 8 local members on (the default is 64).
            c.presence_batch_min_members = 8;
            async move { start_state(AppState::from_config(c).await.unwrap()).await }
        };
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut members = Vec::new();
        for i in 0..2 * WAVE {
            let server = if i.is_multiple_of(2) { &a } else { &b };
            let ws = server.ws(&format!("user{i}")).await;
            members.push((session_id(ws.welcome()), ws));
        }
        // What every member that stays must end with: session -> meta.
        let sessions: Vec<String> = members.iter().map(|(s, _)| s.clone()).collect();
        let expected = |upto: usize| -> BTreeMap<String, String> {
            (LEAVING..upto)
                .map(|i| (sessions[i].clone(), format!("{{\"n\":{i}}}")))
                .collect()
        };
        let views: Arc<Mutex<Vec<BTreeMap<String, String>>>> =
            Arc::new(Mutex::new(vec![BTreeMap::new(); 2 * WAVE]));
        let wait_converged = |upto: usize| {
            let (views, want) = (views.clone(), expected(upto));
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let snapshot = views.lock().unwrap().clone();
                    let wrong: Vec<usize> =
                        (LEAVING..upto).filter(|i| snapshot[*i] != want).collect();
                    if wrong.is_empty() {
                        return;
                    }
                    if tokio::time::Instant::now() > deadline {
                        let i = wrong[0];
                        let seen: BTreeSet<&String> = snapshot[i].keys().collect();
                        let should: BTreeSet<&String> = want.keys().collect();
                        panic!(
                            "{} members of {upto} never agreed; member {i} (node {}): missing \
                             {:?}, extra {:?}, other metadata {:?}",
                            wrong.len(),
                            if i.is_multiple_of(2) { "a" } else { "b" },
                            should.difference(&seen).collect::<Vec<_>>(),
                            seen.difference(&should).collect::<Vec<_>>(),
                            snapshot[i]
                                .iter()
                                .filter(|(s, m)| want.get(*s).is_some_and(|w| w != *m))
                                .collect::<Vec<_>>()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut members = members.into_iter().map(|(_, ws)| ws);
        let mut tasks = Vec::new();
        for i in 0..WAVE {
            let ws = members.next().unwrap();
            tasks.push(room_member(ws, i, i < LEAVING, views.clone()));
        }
        wait_converged(WAVE).await;
        for i in WAVE..2 * WAVE {
            let ws = members.next().unwrap();
            tasks.push(room_member(ws, i, false, views.clone()));
        }
        wait_converged(2 * WAVE).await;
        for t in tasks {
            t.abort();
        }
    })
    .await;
}

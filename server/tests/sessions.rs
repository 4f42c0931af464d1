//! Sessions across reconnects: resume with replay, publish dedupe, supersede, presence grace
//! and aggregation, typing TTL, drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rtlink_protocol::{ClientFrame, ServerFrame};

/// A joiner's snapshot lists a user's tabs in the order they last changed, as the events told
/// the members (`common::joiners_see_the_tab_that_changed_last`), on the embedded broker.
#[tokio::test]
async fn joiners_see_the_tab_that_changed_last() {
    let s = start(fast_config()).await;
    common::joiners_see_the_tab_that_changed_last(&s, &s).await;
}

fn offsets(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect()
}

/// Collects frames until `pred` matches or `wait` passes without one.
async fn frames_for(ws: &mut Ws, wait: Duration) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    while let Ok(ev) = tokio::time::timeout(wait, ws.next_event()).await {
        match ev {
            WsEvent::Frame(ServerFrame::Ping) => {}
            WsEvent::Frame(f) => out.push(f),
            WsEvent::Closed(_) => break,
        }
    }
    out
}

#[tokio::test]
async fn resume_after_disconnect_replays_without_loss_or_duplicate() {
    let s = start(fast_config()).await;
    let mut a = s.ws("alice").await;
    let token = resume_token(a.welcome());
    a.subscribe("room", None).await;
    let mut b = s.ws("bob").await;
    b.subscribe("room", None).await;
    for i in 1..=3 {
        b.publish("room", &format!("b{i}"), "before").await;
    }
    let got = a
        .recv_until(|f| matches!(f, ServerFrame::Message { offset: 3, .. }))
        .await;
    assert!(matches!(got, ServerFrame::Message { .. }));
    drop(a); // the connection drops
    for i in 4..=6 {
        b.publish("room", &format!("b{i}"), "while away").await;
    }
    let mut a = s.ws_resume("alice", Some(&token)).await;
    assert!(resumed(a.welcome()));
    a.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: Some(3),
        epoch: None,
        history: None,
    })
    .await;
    b.publish("room", "b7", "live").await;
    let frames = frames_for(&mut a, Duration::from_millis(300)).await;
    let subscribed = frames
        .iter()
        .position(|f| matches!(f, ServerFrame::Subscribed { .. }))
        .unwrap();
    assert!(matches!(
        frames[subscribed],
        ServerFrame::Subscribed {
            recovered: true,
            ..
        }
    ));
    // Frames re-queued from the old transport may precede the replay; the client drops
    // offsets it has. From `subscribed` on: exactly 4..=7, in order.
    assert_eq!(offsets(&frames[subscribed..]), vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn since_older_than_history_is_not_recovered() {
    let mut config = fast_config();
    config.history_max_messages = 2;
    let s = start(config).await;
    let mut a = s.ws("alice").await;
    a.subscribe("room", None).await;
    for i in 1..=5 {
        a.publish("room", &format!("m{i}"), "x").await;
    }
    let mut b = s.ws("bob").await;
    let sub = b.subscribe("room", Some(1)).await;
    assert!(matches!(
        sub,
        ServerFrame::Subscribed { head: 5, recovered: false, ref epoch, .. } if !epoch.is_empty()
    ));
    let mut c = s.ws("carol").await;
    c.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: Some(3),
        epoch: None,
        history: None,
    })
    .await;
    let frames = frames_for(&mut c, Duration::from_millis(200)).await;
    assert!(frames.iter().any(|f| matches!(
        f,
        ServerFrame::Subscribed {
            head: 5,
            recovered: true,
            ..
        }
    )));
    assert_eq!(offsets(&frames), vec![4, 5]);
}

/// A client whose offsets belong to an earlier incarnation of the room (an in-memory server
/// restarted, so offsets began again at 1) must not skip the new messages as duplicates: it is
/// told `recovered: false`, continues after the offset before the oldest retained message,
/// and gets all of them.
#[tokio::test]
async fn since_from_another_epoch_replays_the_current_epoch() {
    let s = start(fast_config()).await;
    let mut a = s.ws("alice").await;
    let ServerFrame::Subscribed { epoch, .. } = a.subscribe("room", None).await else {
        panic!("expected subscribed")
    };
    for i in 1..=3 {
        a.publish("room", &format!("m{i}"), "x").await;
    }
    // Same epoch: the usual resume.
    let mut b = s.ws("bob").await;
    b.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: Some(2),
        epoch: Some(epoch.clone()),
        history: None,
    })
    .await;
    let frames = frames_for(&mut b, Duration::from_millis(200)).await;
    assert!(frames.iter().any(|f| matches!(
        f,
        ServerFrame::Subscribed {
            head: 3,
            recovered: true,
            ..
        }
    )));
    assert_eq!(offsets(&frames), vec![3]);
    // Offsets 1..=3 of an older epoch, where the client had seen up to 7.
    let mut c = s.ws("carol").await;
    c.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: Some(7),
        epoch: Some("an-older-epoch".into()),
        history: None,
    })
    .await;
    let frames = frames_for(&mut c, Duration::from_millis(200)).await;
    let sub = frames
        .iter()
        .find(|f| matches!(f, ServerFrame::Subscribed { .. }))
        .unwrap();
    assert_eq!(
        sub,
        &ServerFrame::Subscribed {
            room: "room".into(),
            head: 0,
            recovered: false,
            epoch
        }
    );
    assert_eq!(offsets(&frames), vec![1, 2, 3]);
}

#[tokio::test]
async fn publish_resent_after_reconnect_is_applied_once() {
    let s = start(fast_config()).await;
    let mut watcher = s.ws("watcher").await;
    watcher.subscribe("room", None).await;
    let mut a = s.ws("alice").await;
    let token = resume_token(a.welcome());
    a.subscribe("room", None).await;
    let first = a.publish("room", "dup-1", "once").await;
    drop(a);
    let mut a = s.ws_resume("alice", Some(&token)).await;
    a.subscribe("room", Some(first)).await;
    assert_eq!(a.publish("room", "dup-1", "once").await, first);
    // Even from a brand-new session of the same user (dedupe is per user).
    let mut a2 = s.ws("alice").await;
    a2.subscribe("room", None).await;
    assert_eq!(a2.publish("room", "dup-1", "once").await, first);
    let next = a2.publish("room", "dup-2", "twice").await;
    assert_eq!(next, first + 1);
    let frames = frames_for(&mut watcher, Duration::from_millis(200)).await;
    assert_eq!(offsets(&frames), vec![first, next]);
}

#[tokio::test]
async fn attaching_another_transport_supersedes_the_old_one_with_4006() {
    let s = start(fast_config()).await;
    let mut ws = s.ws("alice").await;
    let token = resume_token(ws.welcome());
    ws.subscribe("room", None).await;
    let ticket = s.ticket_resuming("alice", &token, false).await;
    let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    let welcome = sse.next().await.unwrap();
    assert!(resumed(&welcome));
    assert_eq!(session_id(&welcome), session_id(ws.welcome()));
    assert_eq!(ws.recv_close().await.0, Some(4006));
    // The session moved: its subscription carries on over SSE.
    let mut b = s.ws("bob").await;
    b.subscribe("room", None).await;
    b.publish("room", "x", "to sse").await;
    sse.recv_until(|f| matches!(f, ServerFrame::Message { offset: 1, .. }))
        .await;
    // And down to long polling; the SSE stream gets a close 4006 event.
    let ticket = s.ticket_resuming("alice", &token, false).await;
    let (mut poll, frames) = Poll::open(&s, &ticket, Some(&token)).await;
    assert!(resumed(&frames[0]));
    let closed = sse
        .recv_until(|f| matches!(f, ServerFrame::Close { .. }))
        .await;
    assert!(matches!(closed, ServerFrame::Close { code, .. } if code.0 == 4006));
    b.publish("room", "y", "to poll").await;
    poll_until(&mut poll, &s, |f| {
        matches!(f, ServerFrame::Message { offset: 2, .. })
    })
    .await;
    // A resume token of someone else does not resume.
    let other = s.ws_resume("mallory", Some(&token)).await;
    assert!(!resumed(other.welcome()));
}

fn leaves(frames: &[ServerFrame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::PresenceLeave { .. }))
        .count()
}

#[tokio::test]
async fn presence_grace_hides_quick_resumes_and_leaves_after_it() {
    let s = start(fast_config()).await; // grace 300 ms
    let mut b = s.ws("bob").await;
    b.subscribe("room", None).await;
    let mut a = s.ws("alice").await;
    let token = resume_token(a.welcome());
    a.subscribe("room", None).await;
    b.recv_until(|f| matches!(f, ServerFrame::PresenceJoin { conn, .. } if conn.user == "alice"))
        .await;
    // Drop and resume within the grace: no leave, no second join.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut a = s.ws_resume("alice", Some(&token)).await;
    assert!(resumed(a.welcome()));
    a.subscribe("room", Some(0)).await;
    let frames = frames_for(&mut b, Duration::from_millis(500)).await;
    assert_eq!(leaves(&frames), 0, "{frames:?}");
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::PresenceJoin { .. })),
        "{frames:?}"
    );
    // Drop for good: the leave comes after the grace period.
    drop(a);
    let early = frames_for(&mut b, Duration::from_millis(150)).await;
    assert_eq!(leaves(&early), 0);
    let leave = b
        .recv_until(|f| matches!(f, ServerFrame::PresenceLeave { .. }))
        .await;
    assert!(matches!(leave, ServerFrame::PresenceLeave { user, .. } if user == "alice"));
    // Resuming after the grace (within the resume window) joins again.
    let mut a = s.ws_resume("alice", Some(&token)).await;
    assert!(resumed(a.welcome()));
    a.subscribe("room", Some(0)).await;
    b.recv_until(|f| matches!(f, ServerFrame::PresenceJoin { .. }))
        .await;
    // Unsubscribe leaves at once.
    a.send(&ClientFrame::Unsubscribe {
        room: "room".into(),
    })
    .await;
    a.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { .. }))
        .await;
    b.recv_until(|f| matches!(f, ServerFrame::PresenceLeave { .. }))
        .await;
}

#[tokio::test]
async fn two_tabs_of_one_user_are_two_connections() {
    let s = start(fast_config()).await;
    let mut tab1 = s.ws("ana").await;
    tab1.subscribe("room", None).await;
    let mut tab2 = s.ws("ana").await;
    tab2.subscribe("room", None).await;
    let snap = tab2
        .recv_until(|f| matches!(f, ServerFrame::PresenceSnapshot { .. }))
        .await;
    let ServerFrame::PresenceSnapshot { conns, .. } = snap else {
        unreachable!()
    };
    assert_eq!(conns.len(), 2);
    assert!(conns.iter().all(|c| c.user == "ana"));
    assert_ne!(conns[0].session, conns[1].session);
    // Metadata updates are per connection.
    tab1.send(&ClientFrame::Presence {
        room: "room".into(),
        meta: "{\"s\":\"away\"}".into(),
    })
    .await;
    let upd = tab2
        .recv_until(|f| matches!(f, ServerFrame::PresenceUpdate { .. }))
        .await;
    assert!(
        matches!(upd, ServerFrame::PresenceUpdate { conn, .. } if conn.session == session_id(tab1.welcome()) && conn.meta == "{\"s\":\"away\"}")
    );
    // A client `close` ends the session: leave at once (no grace).
    tab1.send(&ClientFrame::Close {
        code: rtlink_protocol::CloseCode::NORMAL,
        reason: String::new(),
    })
    .await;
    let leave = tab2
        .recv_until(|f| matches!(f, ServerFrame::PresenceLeave { .. }))
        .await;
    assert!(
        matches!(leave, ServerFrame::PresenceLeave { session, .. } if session == session_id(tab1.welcome()))
    );
}

#[tokio::test]
async fn typing_expires_after_ttl_without_stop() {
    let s = start(fast_config()).await; // ttl 300 ms
    let mut a = s.ws("alice").await;
    a.subscribe("room", None).await;
    let mut b = s.ws("bob").await;
    b.subscribe("room", None).await;
    a.send(&ClientFrame::Typing {
        room: "room".into(),
        active: true,
    })
    .await;
    let started = tokio::time::Instant::now();
    let on = b
        .recv_until(|f| matches!(f, ServerFrame::Typing { .. }))
        .await;
    assert_eq!(
        on,
        ServerFrame::Typing {
            room: "room".into(),
            user: "alice".into(),
            name: "alice-name".into(),
            active: true
        }
    );
    let off = b
        .recv_until(|f| matches!(f, ServerFrame::Typing { .. }))
        .await;
    assert!(matches!(off, ServerFrame::Typing { active: false, .. }));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // An explicit stop is relayed and no expiry follows.
    a.send(&ClientFrame::Typing {
        room: "room".into(),
        active: true,
    })
    .await;
    a.send(&ClientFrame::Typing {
        room: "room".into(),
        active: false,
    })
    .await;
    let frames = frames_for(&mut b, Duration::from_millis(500)).await;
    let typing: Vec<bool> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Typing { active, .. } => Some(*active),
            _ => None,
        })
        .collect();
    assert_eq!(typing, vec![true, false]);
}

#[tokio::test]
async fn drain_sends_reconnect_after_then_4008_and_healthz_turns_503() {
    let s = start(fast_config()).await; // drain window 1500 ms
    let mut ws = s.ws("alice").await;
    ws.subscribe("room", None).await;
    let ticket = s.ticket("poller").await;
    let (mut poll, _) = Poll::open(&s, &ticket, None).await;
    let early = s.ticket("early").await;
    let drain = {
        let state = s.state.clone();
        tokio::spawn(async move { state.drain().await })
    };
    let (code, frames) = ws.recv_close().await;
    assert_eq!(code, Some(4008));
    assert!(
        frames.contains(&ServerFrame::ReconnectAfter {
            min_ms: 0,
            max_ms: 1500
        }),
        "{frames:?}"
    );
    let frames = poll.poll(&s).await;
    assert!(frames.contains(&ServerFrame::ReconnectAfter {
        min_ms: 0,
        max_ms: 1500
    }));
    assert!(matches!(frames.last(), Some(ServerFrame::Close { code, .. }) if code.0 == 4008));
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        503
    );
    // Draining is announced at the ticket step; an open with a ticket from before is refused too.
    let resp = s
        .http
        .post(s.url("/v1/ticket"))
        .bearer_auth(s.token("late"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={early}")), None)
            .await
            .err(),
        Some(503)
    );
    drain.await.unwrap();
}

#[tokio::test]
async fn demo_drain_resumes_accepting_afterwards() {
    let s = start(fast_config()).await;
    let mut ws = s.ws("alice").await;
    let resp = s.http.post(s.url("/v1/demo/drain")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(ws.recv_close().await.0, Some(4008));
    let deadline = tokio::time::Instant::now() + T;
    while s.http.get(s.url("/healthz")).send().await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _again = s.ws("alice").await;
}

#[tokio::test]
async fn websocket_silent_past_heartbeat_is_closed_4005() {
    let mut config = fast_config();
    config.ping_interval = Duration::from_millis(100);
    config.heartbeat_grace = Duration::from_millis(100);
    let s = start(config).await;
    let mut ws = s.ws("quiet").await;
    let (code, frames) = ws.recv_close().await;
    assert_eq!(code, Some(4005));
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::Ping)),
        "server pings"
    );
    // A client that answers pings stays.
    let mut lively = s.ws("lively").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(50), lively.next_event()).await {
            Ok(WsEvent::Frame(ServerFrame::Ping)) => lively.send(&ClientFrame::Pong).await,
            Ok(WsEvent::Closed(c)) => panic!("closed {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn expired_session_is_not_resumed() {
    let mut config = fast_config();
    config.resume_window = Duration::from_millis(400);
    config.presence_grace = Duration::from_millis(100);
    let s = start(config).await;
    let a = s.ws("alice").await;
    let token = resume_token(a.welcome());
    drop(a);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = s.ws_resume("alice", Some(&token)).await;
    assert!(!resumed(again.welcome()));
    assert_eq!(
        send_upstream(&s, &token, vec![ClientFrame::Ping]).await,
        404
    );
}

#[tokio::test]
async fn a_lagging_hub_resyncs_from_history_without_gap_or_duplicate() {
    use rtlink_server::broker::local::{LocalBroker, LocalBrokerConfig};
    use rtlink_server::broker::{Broker, PublishRequest};
    use std::sync::Arc;

    // A tiny event channel: publishing faster than the hub routes makes it lag.
    let broker = Arc::new(LocalBroker::new(LocalBrokerConfig {
        event_capacity: 16,
        ..Default::default()
    }));
    let s =
        start_state(rtlink_server::AppState::with_broker(fast_config(), broker.clone()).unwrap())
            .await;
    let mut a = s.ws("alice").await;
    a.subscribe("room", None).await;
    // On this single-threaded test runtime nothing else runs until the loop ends.
    for i in 0..200 {
        let req = PublishRequest {
            room: "room".into(),
            sender: "x".into(),
            name: None,
            payload: format!("{i}"),
            dedupe: None,
        };
        broker.publish(req).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        if let ServerFrame::Message { offset, .. } = a.recv().await {
            got.push(offset);
        }
    }
    assert_eq!(got, (1..=200).collect::<Vec<u64>>());
    let extra = frames_for(&mut a, Duration::from_millis(200)).await;
    assert!(
        offsets(&extra).is_empty(),
        "duplicates after resync: {extra:?}"
    );
    let metrics = s.get_text("/metrics").await;
    assert!(
        !metrics.contains("rtlink_broker_lagged_events_total 0"),
        "the hub never lagged"
    );
}

/// A fresh subscriber asking for recent history gets the newest retained messages first (no
/// resync: nothing was lost, it just joined), then live ones.
#[tokio::test]
async fn fresh_subscribe_with_history_replays_the_newest_messages() {
    let s = start(fast_config()).await;
    let mut a = s.ws("alice").await;
    a.subscribe("room", None).await;
    for i in 1..=5 {
        a.publish("room", &format!("m{i}"), "x").await;
    }
    let mut b = s.ws("bob").await;
    b.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: None,
        epoch: None,
        history: Some(2),
    })
    .await;
    a.publish("room", "m6", "live").await;
    let frames = frames_for(&mut b, Duration::from_millis(300)).await;
    assert!(frames.iter().any(|f| matches!(
        f,
        ServerFrame::Subscribed {
            head: 3,
            recovered: true,
            ..
        }
    )));
    assert_eq!(offsets(&frames), vec![4, 5, 6]);
    // More than the room holds: everything, from offset 1.
    let mut c = s.ws("carol").await;
    c.send(&ClientFrame::Subscribe {
        room: "room".into(),
        since: None,
        epoch: None,
        history: Some(500),
    })
    .await;
    let frames = frames_for(&mut c, Duration::from_millis(300)).await;
    assert_eq!(offsets(&frames), vec![1, 2, 3, 4, 5, 6]);
}

//! The server's side of the edges of issue #8 §2 (and the resume-token item of #9), with real
//! clients on 127.0.0.1: probes that cost nothing until `switch`, resumes that adopt the new
//! token's claims, version refusals a browser can see, upstream bodies cut to an announced
//! limit, and resume tokens that never travel in a URL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rtlink_protocol::codec::{decode_poll, encode_upstream};
use rtlink_protocol::envelope::{max_batch_bytes, HttpError, UpstreamBatch};
use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};
use rtlink_server::auth::Claims;

fn is_message(f: &ServerFrame, text: &str) -> bool {
    matches!(f, ServerFrame::Message { payload, .. } if payload == text)
}

/// Frames that arrive on `ws` within `d` (pings skipped).
async fn frames_within(ws: &mut Ws, d: Duration) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(event) = tokio::time::timeout_at(deadline, ws.next_event()).await {
        match event {
            WsEvent::Frame(ServerFrame::Ping) => {}
            WsEvent::Frame(f) => out.push(f),
            WsEvent::Closed(c) => panic!("closed {c:?} after {out:?}"),
        }
    }
    out
}

#[tokio::test]
async fn resume_tokens_never_travel_in_urls() {
    let s = start(fast_config()).await;
    let ws = s.ws("alice").await;
    let token = resume_token(ws.welcome());
    for path in [
        format!(
            "/v1/sse?ticket={}&v=1&resume={token}",
            s.ticket("alice").await
        ),
        format!(
            "/v1/poll?ticket={}&v=1&resume={token}",
            s.ticket("alice").await
        ),
        format!("/v1/poll?session={token}&cursor=0"),
    ] {
        let resp = s.http.get(s.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        assert_eq!(
            resp.json::<HttpError>().await.unwrap().error,
            ErrorCode::BadRequest
        );
    }
    // The ticket names the session instead, for every transport.
    let ticket = s.ticket_resuming("alice", &token, false).await;
    let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    let welcome = sse.next().await.unwrap();
    assert!(resumed(&welcome));
    assert_eq!(session_id(&welcome), session_id(ws.welcome()));
}

#[tokio::test]
async fn a_version_mismatch_on_sse_and_long_polling_is_a_close_4002() {
    let s = start(fast_config()).await;
    let ticket = s.ticket("v").await;
    let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=2"))
        .await
        .ok()
        .unwrap();
    assert!(
        matches!(sse.next().await, Some(ServerFrame::Close { code, .. }) if code.0 == 4002),
        "an EventSource cannot read a status: the refusal is the stream"
    );
    assert_eq!(sse.next().await, None);
    let ticket = s.ticket("v").await;
    let resp = s
        .http
        .get(s.url(&format!("/v1/poll?ticket={ticket}&v=7")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let batch = decode_poll(&resp.bytes().await.unwrap(), usize::MAX).unwrap();
    assert!(
        matches!(&batch.frames[..], [ServerFrame::Close { code, .. }] if code.0 == 4002),
        "{batch:?}"
    );
}

#[tokio::test]
async fn a_probe_gets_its_welcome_but_the_session_moves_only_on_switch() {
    let s = start(fast_config()).await;
    let mut bob = s.ws("bob").await;
    bob.subscribe("room", None).await;
    // Alice on long polling, in the room.
    let (mut poll, frames) = Poll::open(&s, &s.ticket("alice").await, None).await;
    let token = resume_token(&frames[0]);
    let sub = ClientFrame::Subscribe {
        room: "room".into(),
        since: None,
        epoch: None,
        history: None,
    };
    assert_eq!(poll.send(&s, vec![sub]).await, 204);
    poll_until(&mut poll, &s, |f| {
        matches!(f, ServerFrame::Subscribed { .. })
    })
    .await;

    // A probe up to SSE: its own welcome, the same session, and nothing else.
    let ticket = s.ticket_resuming("alice", &token, true).await;
    let mut probe = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    let welcome = probe.next().await.unwrap();
    assert!(resumed(&welcome));
    assert_eq!(resume_token(&welcome), token);
    bob.publish("room", "m1", "while probing").await;
    poll_until(&mut poll, &s, |f| is_message(f, "while probing")).await;

    // The probe is dropped (say a buffering proxy held it): long polling never noticed.
    drop(probe);
    bob.publish("room", "m2", "after the probe").await;
    poll_until(&mut poll, &s, |f| is_message(f, "after the probe")).await;

    // A probe that is committed: `switch` moves the session, the poll is told 4006.
    let ticket = s.ticket_resuming("alice", &token, true).await;
    let mut probe = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    assert!(resumed(&probe.next().await.unwrap()));
    assert_eq!(
        send_upstream(&s, &token, vec![ClientFrame::Switch]).await,
        204
    );
    poll_until(
        &mut poll,
        &s,
        |f| matches!(f, ServerFrame::Close { code, .. } if code.0 == 4006),
    )
    .await;
    bob.publish("room", "m3", "on sse").await;
    probe.recv_until(|f| is_message(f, "on sse")).await;
}

#[tokio::test]
async fn a_websocket_probe_switches_with_switch_on_the_probe() {
    let s = start(fast_config()).await;
    let mut bob = s.ws("bob").await;
    bob.subscribe("room", None).await;
    let ticket = s.ticket("alice").await;
    let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    let token = resume_token(&sse.next().await.unwrap());
    let sub = ClientFrame::Subscribe {
        room: "room".into(),
        since: None,
        epoch: None,
        history: None,
    };
    assert_eq!(send_upstream(&s, &token, vec![sub]).await, 204);
    sse.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
        .await;

    let ticket = s.ticket_resuming("alice", &token, true).await;
    let mut probe = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    probe
        .send(&ClientFrame::Hello {
            v: 1,
            resume: Some(token.clone()),
        })
        .await;
    assert!(resumed(&probe.recv().await));
    bob.publish("room", "m1", "still on sse").await;
    sse.recv_until(|f| is_message(f, "still on sse")).await;
    assert!(
        frames_within(&mut probe, Duration::from_millis(200))
            .await
            .is_empty(),
        "the probe carries nothing yet"
    );

    probe.send(&ClientFrame::Switch).await;
    sse.recv_until(|f| matches!(f, ServerFrame::Close { code, .. } if code.0 == 4006))
        .await;
    bob.publish("room", "m2", "on the websocket").await;
    probe
        .recv_until(|f| is_message(f, "on the websocket"))
        .await;
}

#[tokio::test]
async fn a_probe_of_a_session_this_server_does_not_hold_is_closed_4007() {
    let s = start(fast_config()).await;
    let mut ws = s.ws("alice").await;
    let token = resume_token(ws.welcome());
    for (user, resume) in [("alice", "no-such-session"), ("mallory", token.as_str())] {
        let ticket = s.ticket_resuming(user, resume, true).await;
        let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=1"))
            .await
            .ok()
            .unwrap();
        assert!(
            matches!(sse.next().await, Some(ServerFrame::Close { code, .. }) if code.0 == 4007)
        );
    }
    // Alice's own session noticed nothing.
    ws.send(&ClientFrame::Ping).await;
    assert_eq!(ws.recv().await, ServerFrame::Pong);
}

#[tokio::test]
async fn a_resume_adopts_the_new_tokens_claims() {
    let mut config = fast_config();
    config.ping_interval = Duration::from_millis(100);
    // Expiry is `exp` plus this leeway: none, so the old token runs out within the test.
    config.auth_leeway = Duration::ZERO;
    let s = start(config).await;
    let now = rtlink_server::broker::now_ms() / 1000;
    let token = |name: &str, rooms: &[&str], exp: u64| {
        s.state.auth.sign(&Claims {
            sub: "alice".into(),
            name: name.into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp,
        })
    };
    // A token about to expire, allowing two rooms.
    let old = token("Old name", &["a", "b"], now + 2);
    let mut ws =
        Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={}", s.ticket_with(&old).await))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    let resume = resume_token(&ws.recv().await);
    ws.subscribe("a", None).await;
    ws.subscribe("b", None).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ws.recv_close())
            .await
            .unwrap()
            .0,
        Some(4009)
    );

    // Back with a fresh token that allows only room a, under a new name.
    let new = token("New name", &["a"], now + 3600);
    let mut ws =
        Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={}", s.ticket_with(&new).await))).await;
    ws.send(&ClientFrame::Hello {
        v: 1,
        resume: Some(resume),
    })
    .await;
    let welcome = ws.recv().await;
    assert!(resumed(&welcome));
    assert!(
        matches!(&welcome, ServerFrame::Welcome { user, .. } if user.name == "New name"),
        "{welcome:?}"
    );
    let refused = ws
        .recv_until(|f| matches!(f, ServerFrame::Nack { .. }))
        .await;
    assert!(
        matches!(&refused, ServerFrame::Nack { id, code: ErrorCode::Forbidden, .. } if id == "b"),
        "{refused:?}"
    );
    ws.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { room } if room == "b"))
        .await;

    // Room b is gone, room a carries on, and the new expiry holds: no 4009 on later heartbeats.
    let mut bob = s.ws("bob").await;
    bob.subscribe("a", None).await;
    bob.subscribe("b", None).await;
    bob.publish("b", "1", "not for alice").await;
    bob.publish("a", "2", "for alice").await;
    let seen = frames_within(&mut ws, Duration::from_millis(800)).await;
    assert!(seen.iter().any(|f| is_message(f, "for alice")), "{seen:?}");
    assert!(
        !seen.iter().any(|f| is_message(f, "not for alice")),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|f| matches!(f, ServerFrame::Message { name: Some(n), .. } if n == "bob-name")));
    ws.publish("a", "3", "signed").await;
    bob.recv_until(|f| matches!(f, ServerFrame::Message { name: Some(n), .. } if n == "New name"))
        .await;
}

#[tokio::test]
async fn upstream_bodies_up_to_max_batch_bytes_are_accepted_and_welcome_announces_the_limits() {
    let s = start(fast_config()).await;
    let max_frame = s.state.config.max_frame_bytes;
    let (_poll, frames) = Poll::open(&s, &s.ticket("alice").await, None).await;
    let ServerFrame::Welcome {
        limits,
        resume_token: token,
        ..
    } = &frames[0]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(limits.max_batch_bytes, max_batch_bytes(max_frame) as u64);
    assert_eq!(
        limits.dedupe_window_ms,
        s.state.config.dedupe_window.as_millis() as u64
    );
    let sub = ClientFrame::Subscribe {
        room: "r".into(),
        since: None,
        epoch: None,
        history: None,
    };
    assert_eq!(send_upstream(&s, token, vec![sub]).await, 204);

    // A body longer than one frame may be (many frames) is fine up to the batch limit.
    let publish = |i: usize, n: usize| ClientFrame::Publish {
        room: "r".into(),
        id: i.to_string(),
        payload: "x".repeat(n),
    };
    let frames: Vec<ClientFrame> = (0..3).map(|i| publish(i, max_frame / 3)).collect();
    let body = encode_upstream(&UpstreamBatch {
        session: token.clone(),
        frames: frames.clone(),
    });
    assert!(body.len() > max_frame && body.len() <= max_batch_bytes(max_frame));
    assert_eq!(send_upstream(&s, token, frames).await, 204);
    // One frame over the frame limit is refused even inside a body under the batch limit.
    let status = send_upstream(&s, token, vec![publish(9, max_frame)]).await;
    assert_eq!(status, 413);
}

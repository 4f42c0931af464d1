//! Each transport end to end, and the ticket flow.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rtlink_protocol::envelope::HttpError;
use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};
use rtlink_server::Config;

#[tokio::test]
async fn websocket_subscribe_publish_receive_ack() {
    let s = start(fast_config()).await;
    let mut a = s.ws("alice").await;
    let mut b = s.ws("bob").await;
    assert!(matches!(
        a.subscribe("lobby", None).await,
        ServerFrame::Subscribed {
            head: 0,
            recovered: true,
            ..
        }
    ));
    b.subscribe("lobby", None).await;
    let snapshot = b
        .recv_until(|f| matches!(f, ServerFrame::PresenceSnapshot { .. }))
        .await;
    let ServerFrame::PresenceSnapshot { conns, .. } = snapshot else {
        unreachable!()
    };
    assert_eq!(conns.len(), 2);
    assert_eq!(a.publish("lobby", "m1", "{\"text\":\"hi\"}").await, 1);
    let msg = b
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    assert_eq!(
        msg,
        ServerFrame::Message {
            room: "lobby".into(),
            offset: 1,
            sender: "alice".into(),
            name: Some("alice-name".into()),
            payload: "{\"text\":\"hi\"}".into(),
        }
    );
    // Ping is answered.
    b.send(&ClientFrame::Ping).await;
    assert_eq!(
        b.recv_until(|f| matches!(f, ServerFrame::Pong | ServerFrame::Message { .. }))
            .await,
        ServerFrame::Pong
    );
    // Publishing to a room you are not in is refused.
    b.send(&ClientFrame::Publish {
        room: "other".into(),
        id: "x".into(),
        payload: String::new(),
    })
    .await;
    let nack = b
        .recv_until(|f| matches!(f, ServerFrame::Nack { .. }))
        .await;
    assert!(matches!(
        nack,
        ServerFrame::Nack {
            code: ErrorCode::NotSubscribed,
            ..
        }
    ));
}

#[tokio::test]
async fn room_access_is_checked_against_token_patterns() {
    let s = start(fast_config()).await;
    let token = s.token_for("carol", &["chat:*"], 3600);
    let ticket = s.ticket_with(&token).await;
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    ws.recv().await;
    ws.send(&ClientFrame::Subscribe {
        room: "secret".into(),
        since: None,
        epoch: None,
        history: None,
    })
    .await;
    assert!(matches!(
        ws.recv().await,
        ServerFrame::Nack {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    ws.send(&ClientFrame::Subscribe {
        room: "bad room!".into(),
        since: None,
        epoch: None,
        history: None,
    })
    .await;
    assert!(matches!(
        ws.recv().await,
        ServerFrame::Nack {
            code: ErrorCode::InvalidRoom,
            ..
        }
    ));
    assert!(matches!(
        ws.subscribe("chat:lobby", None).await,
        ServerFrame::Subscribed { .. }
    ));
}

#[tokio::test]
async fn sse_end_to_end_with_upstream_posts_and_keepalives() {
    let mut config = fast_config();
    config.sse_keepalive = Duration::from_millis(100);
    let s = start(config).await;
    let ticket = s.ticket("sam").await;
    let mut sse = Sse::open(&s, &format!("ticket={ticket}&v=1"))
        .await
        .ok()
        .unwrap();
    let welcome = sse.next().await.unwrap();
    let token = resume_token(&welcome);
    assert_eq!(
        send_upstream(
            &s,
            &token,
            vec![ClientFrame::Subscribe {
                room: "r".into(),
                since: None,
                epoch: None,
                history: None
            }]
        )
        .await,
        204
    );
    sse.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
        .await;
    let mut ws = s.ws("wendy").await;
    ws.subscribe("r", None).await;
    let publish = ClientFrame::Publish {
        room: "r".into(),
        id: "p1".into(),
        payload: "x".into(),
    };
    assert_eq!(send_upstream(&s, &token, vec![publish]).await, 204);
    let ack = sse
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. }))
        .await;
    assert_eq!(
        ack,
        ServerFrame::Ack {
            id: "p1".into(),
            room: "r".into(),
            offset: 1
        }
    );
    let got = ws
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    assert!(matches!(got, ServerFrame::Message { offset: 1, .. }));
    ws.publish("r", "w1", "y").await;
    let got = sse
        .recv_until(|f| matches!(f, ServerFrame::Message { offset: 2, .. }))
        .await;
    assert!(matches!(got, ServerFrame::Message { sender, .. } if sender == "wendy"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    ws.publish("r", "w2", "z").await;
    sse.recv_until(|f| matches!(f, ServerFrame::Message { offset: 3, .. }))
        .await;
    assert!(sse.comments >= 1, "no `: ka` keep-alive seen");
    // Unknown session and malformed bodies.
    assert_eq!(
        send_upstream(&s, "nope", vec![ClientFrame::Ping]).await,
        404
    );
    let resp = s
        .http
        .post(s.url("/v1/send"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<HttpError>().await.unwrap().error,
        ErrorCode::BadRequest
    );
    let huge = format!(
        "{{\"session\":\"{token}\",\"frames\":[],\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let resp = s
        .http
        .post(s.url("/v1/send"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn long_polling_end_to_end_with_cursor_resend() {
    let s = start(fast_config()).await;
    let ticket = s.ticket("pat").await;
    let (mut poll, first) = Poll::open(&s, &ticket, None).await;
    assert!(matches!(
        first[0],
        ServerFrame::Welcome { resumed: false, .. }
    ));
    assert_eq!(
        poll.send(
            &s,
            vec![ClientFrame::Subscribe {
                room: "r".into(),
                since: None,
                epoch: None,
                history: None
            }]
        )
        .await,
        204
    );
    poll_until(&mut poll, &s, |f| {
        matches!(f, ServerFrame::Subscribed { .. })
    })
    .await;
    let mut ws = s.ws("wendy").await;
    ws.subscribe("r", None).await;
    ws.publish("r", "w1", "hello").await;
    let before = poll.cursor;
    let frames = poll_until(&mut poll, &s, |f| matches!(f, ServerFrame::Message { .. })).await;
    assert!(frames
        .iter()
        .any(|f| matches!(f, ServerFrame::Message { offset: 1, .. })));
    // A lost response: polling again with the old cursor returns the same frames.
    let after = poll.cursor;
    poll.cursor = before;
    let again = poll.poll(&s).await;
    assert_eq!(poll.cursor, after);
    assert!(again
        .iter()
        .any(|f| matches!(f, ServerFrame::Message { offset: 1, .. })));
    // An empty hold answers with the same cursor.
    let empty = poll.poll(&s).await;
    assert!(empty.iter().all(|f| matches!(f, ServerFrame::Ping)));
    assert_eq!(poll.cursor, after + empty.len() as u64);
    // Publish over /v1/send, ack comes down the poll.
    poll.send(
        &s,
        vec![ClientFrame::Publish {
            room: "r".into(),
            id: "p1".into(),
            payload: "x".into(),
        }],
    )
    .await;
    let frames = poll_until(&mut poll, &s, |f| matches!(f, ServerFrame::Ack { .. })).await;
    assert!(frames.contains(&ServerFrame::Ack {
        id: "p1".into(),
        room: "r".into(),
        offset: 2
    }));
    let resp = poll_request(&s, "unknown", 0).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<HttpError>().await.unwrap().error,
        ErrorCode::UnknownSession
    );
}

async fn assert_401(resp: reqwest::Response) {
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<HttpError>().await.unwrap().error,
        ErrorCode::Unauthorized
    );
}

#[tokio::test]
async fn ticket_flow_refuses_missing_forged_expired_and_reused_tickets_before_upgrade() {
    let mut config = fast_config();
    config.ticket_ttl = Duration::from_millis(200);
    let s = start(config).await;
    // Missing and forged: 401, never 101.
    assert_eq!(
        Ws::try_connect(&s.ws_url("/v1/ws"), None).await.err(),
        Some(401)
    );
    assert_eq!(
        Ws::try_connect(&s.ws_url("/v1/ws?ticket=forged"), None)
            .await
            .err(),
        Some(401)
    );
    // Not an upgrade at all: refused before the ticket is looked at (tickets are consumed last).
    assert_eq!(
        s.http
            .get(s.url("/v1/ws?ticket=forged"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_401(
        s.http
            .get(s.url("/v1/sse?ticket=forged&v=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_401(
        s.http
            .get(s.url("/v1/poll?ticket=forged&v=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Reused: the first use works, the second is 401.
    let ticket = s.ticket("u").await;
    let url = s.ws_url(&format!("/v1/ws?ticket={ticket}"));
    assert!(Ws::try_connect(&url, None).await.is_ok());
    assert_eq!(Ws::try_connect(&url, None).await.err(), Some(401));
    // Expired ticket.
    let ticket = s.ticket("u").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}")), None)
            .await
            .err(),
        Some(401)
    );
    // Bad bearer tokens at /v1/ticket: missing, forged, expired.
    assert_401(s.http.post(s.url("/v1/ticket")).send().await.unwrap()).await;
    assert_401(
        s.http
            .post(s.url("/v1/ticket"))
            .bearer_auth("a.b.c")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let expired = s.token_for("u", &["*"], -10);
    assert_401(
        s.http
            .post(s.url("/v1/ticket"))
            .bearer_auth(expired)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A token signed with another secret.
    let other = start(Config {
        auth_secret: Some("another-secret-of-at-least-32-bytes".into()),
        ..fast_config()
    })
    .await;
    let foreign = other.token("u");
    assert_401(
        s.http
            .post(s.url("/v1/ticket"))
            .bearer_auth(foreign)
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn a_newer_poll_answers_the_held_one_with_an_empty_batch() {
    let mut config = fast_config();
    config.poll_hold = Duration::from_secs(3);
    let s = start(config).await;
    let ticket = s.ticket("p").await;
    let (poll, _) = Poll::open(&s, &ticket, None).await;
    let body = serde_json::to_vec(&rtlink_protocol::envelope::PollRequest {
        session: poll.token.clone(),
        cursor: poll.cursor,
    })
    .unwrap();
    let url = s.url("/v1/poll");
    let get = |http: reqwest::Client, url: String, body: Vec<u8>| async move {
        let started = tokio::time::Instant::now();
        let body = http
            .post(url)
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        (
            rtlink_protocol::codec::decode_poll(&body, usize::MAX).unwrap(),
            started.elapsed(),
        )
    };
    let first = tokio::spawn(get(s.http.clone(), url.clone(), body.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(get(s.http.clone(), url, body));
    let (batch, waited) = first.await.unwrap();
    assert!(batch.frames.is_empty());
    assert_eq!(batch.cursor, poll.cursor);
    assert!(
        waited < Duration::from_secs(2),
        "the older poll was held for {waited:?}"
    );
    // The newer one is the held one now; a publish wakes it.
    let mut ws = s.ws("w").await;
    ws.subscribe("r", None).await;
    poll.send(
        &s,
        vec![ClientFrame::Subscribe {
            room: "r".into(),
            since: None,
            epoch: None,
            history: None,
        }],
    )
    .await;
    let (batch, _) = second.await.unwrap();
    assert!(batch
        .frames
        .iter()
        .any(|f| matches!(f, ServerFrame::Subscribed { .. })));
}

/// The WebSocket write path is ours (server/src/ws_wire.rs): frames of all three header length
/// forms (7-bit, 16-bit, 64-bit) arrive whole, a burst to one subscriber (several frames per
/// `writev`) arrives complete and in order, and a client's WebSocket ping is answered with a
/// pong carrying its payload (tungstenite's reply goes out through the writer).
#[tokio::test]
async fn websocket_frames_of_every_length_arrive_whole_in_order_and_pings_are_answered() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut config = fast_config();
    config.max_frame_bytes = 256 * 1024;
    let s = start(config).await;
    let mut a = s.ws("alice").await;
    let mut b = s.ws("bob").await;
    a.subscribe("wire", None).await;
    b.subscribe("wire", None).await;

    // A JSON string of `n` characters: 7-bit, 16-bit and 64-bit frame lengths once wrapped.
    let payloads: Vec<String> = [1usize, 100, 200, 5_000, 65_600, 150_000]
        .iter()
        .map(|&n| format!("\"{}\"", "x".repeat(n)))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        a.publish("wire", &format!("size-{i}"), p).await;
    }
    // Then a burst, not waiting for acks.
    let burst = 300u64;
    for i in 0..burst {
        a.send(&ClientFrame::Publish {
            room: "wire".into(),
            id: format!("burst-{i}"),
            payload: format!("{i}"),
        })
        .await;
    }
    let mut next = 1u64;
    while next <= payloads.len() as u64 + burst {
        let ServerFrame::Message {
            offset, payload, ..
        } = b
            .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(offset, next, "messages arrive once each, in order");
        let want = match payloads.get(next as usize - 1) {
            Some(p) => p.clone(),
            None => format!("{}", next - 1 - payloads.len() as u64),
        };
        assert_eq!(payload, want);
        next += 1;
    }

    b.inner
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(T, async {
        loop {
            match b.inner.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong timed out");
    assert_eq!(&pong[..], b"are you there");
}

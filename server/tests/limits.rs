//! Abuse limits: frame size, malformed frames, rate limit, connection limits, slow consumers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rtlink_protocol::envelope::HttpError;
use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};

/// A bystander in the same room still publishes and receives after a neighbour was closed.
async fn bystander_still_works(s: &Server, bystander: &mut Ws) {
    let mut fresh = s.ws("fresh").await;
    fresh.subscribe("room", None).await;
    let offset = fresh.publish("room", "after", "still here").await;
    let got = bystander
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    assert!(matches!(got, ServerFrame::Message { offset: o, .. } if o == offset));
}

#[tokio::test]
async fn oversized_frame_closes_4001_and_spares_others() {
    let s = start(fast_config()).await;
    let mut bystander = s.ws("by").await;
    bystander.subscribe("room", None).await;
    let mut bad = s.ws("bad").await;
    bad.subscribe("room", None).await;
    let payload = "x".repeat(70_000);
    bad.send_raw(format!(
        r#"{{"t":"publish","room":"room","id":"1","payload":"{payload}"}}"#
    ))
    .await;
    let (code, _) = bad.recv_close().await;
    assert_eq!(code, Some(4001));
    bystander_still_works(&s, &mut bystander).await;
}

#[tokio::test]
async fn malformed_frame_closes_4000_and_spares_others() {
    let s = start(fast_config()).await;
    let mut bystander = s.ws("by").await;
    bystander.subscribe("room", None).await;
    for junk in [
        "{not json",
        r#"{"t":"explode"}"#,
        r#"{"t":"publish","room":5}"#,
    ] {
        let mut bad = s.ws("bad").await;
        bad.subscribe("room", None).await;
        bad.send_raw(junk.into()).await;
        let (code, _) = bad.recv_close().await;
        assert_eq!(code, Some(4000), "{junk}");
    }
    bystander_still_works(&s, &mut bystander).await;
    // A frame before hello that is not hello is a protocol violation.
    let ticket = s.ticket("x").await;
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Ping).await;
    assert_eq!(ws.recv_close().await.0, Some(4012));
    // A hello of another version.
    let ticket = s.ticket("x").await;
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send_raw(r#"{"t":"hello","v":2}"#.into()).await;
    assert_eq!(ws.recv_close().await.0, Some(4002));
}

#[tokio::test]
async fn rate_limit_nacks_then_closes_4003() {
    let mut config = fast_config();
    config.rate_per_sec = 5;
    config.rate_burst = 5;
    config.rate_strikes = 3;
    let s = start(config).await;
    let mut ws = s.ws("spammer").await;
    ws.subscribe("room", None).await;
    for i in 0..20 {
        ws.send(&ClientFrame::Publish {
            room: "room".into(),
            id: format!("m{i}"),
            payload: "x".into(),
        })
        .await;
    }
    let (code, frames) = ws.recv_close().await;
    let acks = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Ack { .. }))
        .count();
    let nacks = frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                ServerFrame::Nack {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        })
        .count();
    assert_eq!(acks, 5, "{frames:?}");
    assert_eq!(nacks, 3, "{frames:?}");
    assert_eq!(code, Some(4003));
}

async fn assert_overloaded(resp: reqwest::Response, status: u16) {
    assert_eq!(resp.status(), status);
    assert!(resp.headers().get("retry-after").is_some());
    let body = resp.json::<HttpError>().await.unwrap();
    assert_eq!(body.error, ErrorCode::Overloaded);
    assert!(body.retry_after_ms.is_some());
}

#[tokio::test]
async fn connection_limits_answer_429_per_ip_and_503_in_total() {
    let mut config = fast_config();
    config.max_connections_per_ip = 2;
    let s = start(config).await;
    // A ticket fetched before the address was full: the open's own check refuses it.
    let ticket = s.ticket("c").await;
    let _a = s.ws("a").await;
    let _b = s.ws("b").await;
    // Full: the ticket step says so at once.
    let resp = s
        .http
        .post(s.url("/v1/ticket"))
        .bearer_auth(s.token("d"))
        .send()
        .await
        .unwrap();
    assert_overloaded(resp, 429).await;
    assert_eq!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}")), None)
            .await
            .err(),
        Some(429)
    );
    let resp = s
        .http
        .get(s.url(&format!("/v1/sse?ticket={ticket}&v=1")))
        .send()
        .await
        .unwrap();
    assert_overloaded(resp, 429).await;
    // Closing one frees its slot.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}")), None)
            .await
            .is_ok()
    );

    let mut config = fast_config();
    config.max_connections = 1;
    let s = start(config).await;
    let ticket = s.ticket("b").await;
    let _a = s.ws("a").await;
    let resp = s
        .http
        .post(s.url("/v1/ticket"))
        .bearer_auth(s.token("d"))
        .send()
        .await
        .unwrap();
    assert_overloaded(resp, 503).await;
    assert_eq!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}")), None)
            .await
            .err(),
        Some(503)
    );
    let resp = s
        .http
        .get(s.url(&format!("/v1/poll?ticket={ticket}&v=1")))
        .send()
        .await
        .unwrap();
    assert_overloaded(resp, 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4004_with_bounded_queue() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut config = fast_config();
    config.outbox_max_frames = 256;
    config.outbox_max_bytes = 8 * 1024 * 1024;
    let s = start(config).await;
    let mut slow = s.ws("slow").await;
    slow.subscribe("room", None).await;
    let mut publisher = s.ws("publisher").await;
    publisher.subscribe("room", None).await;
    let (mut sink, mut stream) = publisher.inner.split();
    // The publisher reads everything, so it is not the slow one.
    let reader = tokio::spawn(async move {
        let mut acks = 0;
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Text(t) if t.as_str().contains("\"t\":\"ack\"") => acks += 1,
                Message::Close(c) => {
                    eprintln!("publisher closed: {c:?} after {acks} acks");
                    break;
                }
                _ => {}
            }
        }
        acks
    });
    // Far more than the socket buffers of a reader that never reads can hold.
    let payload = "y".repeat(60_000);
    for i in 0..400 {
        let frame = format!(r#"{{"t":"publish","room":"room","id":"m{i}","payload":"{payload}"}}"#);
        sink.send(Message::text(frame)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let metrics = s.get_text("/metrics").await;
        if !metrics.contains("rtlink_drops_total{reason=\"slow_consumer\"} 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Now read: whatever was buffered, then the close 4004.
    let (code, frames) = slow.recv_close().await;
    assert_eq!(code, Some(4004));
    assert!(frames.len() < 400, "the queue was not bounded");
    // The publisher was unaffected: every publish was acknowledged.
    let _ = sink.send(Message::Close(None)).await;
    assert_eq!(reader.await.unwrap(), 400);
}

#[tokio::test]
async fn a_frame_over_the_socket_limit_still_closes_4001() {
    let s = start(fast_config()).await;
    let mut bad = s.ws("bad").await;
    // Over the WebSocket layer's own message limit (4 × max_frame_bytes, at least 1 MiB).
    bad.send_raw("x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(bad.recv_close().await.0, Some(4001));
}

//! The fault proxy on its own, against small upstreams: each fault does what the crate docs
//! say, keep-alive and chunked bodies pass untouched, and the control API works from HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use faultkit::{FaultProxy, Faults, Mode, Opening, ProxyBuilder};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP upstream that says its name, echoes POST bodies and streams a slow SSE response.
async fn upstream(name: &'static str) -> SocketAddr {
    let sse = || async {
        let events = futures_util::stream::iter(0..3).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, std::convert::Infallible>(format!("data: {i}\n\n"))
        });
        ([("content-type", "text/event-stream")], Body::from_stream(events))
    };
    let app = Router::new()
        .route("/name", get(move || async move { name }))
        .route("/v1/ticket", post(|| async { "{\"ticket\":\"t\"}" }))
        .route("/echo", post(|body: String| async move { body }))
        .route("/v1/sse", get(sse));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A TCP upstream that echoes every byte.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn fresh() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

#[tokio::test]
async fn round_robin_per_connection_and_keep_alive_stays_put() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let proxy = FaultProxy::http(vec![a, b]).await.unwrap();
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(fresh().get(format!("{}/name", proxy.url())).send().await.unwrap().text().await.unwrap());
    }
    assert_eq!(names, ["a", "b", "a", "b"]);
    // One pooled connection: every request goes to the node it was routed to.
    let pooled = reqwest::Client::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(pooled.get(format!("{}/name", proxy.url())).send().await.unwrap().text().await.unwrap());
    }
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
    // A chunked request body passes untouched.
    let chunks = futures_util::stream::iter(["hel", "lo"].map(Ok::<_, std::io::Error>));
    let echoed = pooled
        .post(format!("{}/echo", proxy.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(echoed, "hello");
    let c = proxy.counters();
    assert_eq!(c.per_upstream.iter().sum::<u64>(), c.connections);
    assert_eq!(c.requests, 8);
}

#[tokio::test]
async fn reject_answers_openings_with_retry_after_up_to_its_limit() {
    let proxy = FaultProxy::http(vec![upstream("a").await]).await.unwrap();
    let mut faults = Faults::reject(429, 3);
    if let Some(r) = faults.reject.as_mut() {
        r.only = vec![Opening::Ticket];
        r.skip = 1;
        r.limit = Some(1);
    }
    proxy.set(faults);
    let http = fresh();
    assert_eq!(http.post(format!("{}/v1/ticket", proxy.url())).send().await.unwrap().status(), 200, "skipped");
    let refused = http.post(format!("{}/v1/ticket", proxy.url())).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "3");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["retry_after_ms"].as_u64()), (Some("overloaded"), Some(3000)));
    assert_eq!(http.post(format!("{}/v1/ticket", proxy.url())).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/name", proxy.url())).send().await.unwrap().status(), 200, "not an opening");
    assert_eq!(proxy.counters().rejected, 1);
}

#[tokio::test]
async fn refused_websocket_upgrades_get_502() {
    let proxy = FaultProxy::http(vec![upstream("a").await]).await.unwrap();
    proxy.set(Faults::refuse_websocket());
    let url = format!("ws://{}/v1/ws?ticket=t", proxy.addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected a 502, got {other:?}"),
    }
    assert_eq!(proxy.counters().refused_websocket, 1);
}

/// Milliseconds from the request to the first byte of the body, and to its end.
async fn sse_timing(proxy: &FaultProxy) -> (u128, u128, String) {
    let start = Instant::now();
    let resp = fresh().get(format!("{}/v1/sse", proxy.url())).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let (mut first, mut text) = (None, String::new());
    while let Some(chunk) = body.next().await {
        first.get_or_insert_with(|| start.elapsed().as_millis());
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    (first.unwrap_or_default(), start.elapsed().as_millis(), text)
}

#[tokio::test]
async fn buffered_sse_arrives_only_when_the_response_ends() {
    let proxy = FaultProxy::http(vec![upstream("a").await]).await.unwrap();
    let (first, end, text) = sse_timing(&proxy).await;
    assert!(first + 200 < end, "streams without the fault ({first} / {end} ms)");
    proxy.set(Faults::buffer_sse());
    let (first, end, buffered) = sse_timing(&proxy).await;
    assert!(first >= 400 && end - first < 100, "held until the end ({first} / {end} ms)");
    assert_eq!(buffered, text);
    assert_eq!(proxy.counters().buffered_sse_responses, 1);
}

async fn roundtrip(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.write_all(b"ping").await.ok()?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
    Some(start.elapsed())
}

#[tokio::test]
async fn tcp_blackhole_holds_bytes_and_latency_delays_them() {
    let proxy = FaultProxy::tcp(echo().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(roundtrip(&mut s, Duration::from_secs(2)).await.is_some());
    proxy.set(Faults::blackhole());
    assert!(roundtrip(&mut s, Duration::from_millis(300)).await.is_none(), "nothing passes");
    proxy.clear();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"ping", "held bytes flow once it is lifted");
    proxy.set(Faults::latency(100, 0));
    let rtt = roundtrip(&mut s, Duration::from_secs(2)).await.unwrap();
    assert!(rtt >= Duration::from_millis(200), "{rtt:?}: 100 ms each way");
}

#[tokio::test]
async fn reset_and_reset_all_send_rst() {
    let proxy = FaultProxy::tcp(echo().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(roundtrip(&mut s, Duration::from_secs(2)).await.is_some());
    proxy.set(Faults::reset(50, 100));
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap();
    assert_eq!(read.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset));
    proxy.clear();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(roundtrip(&mut s, Duration::from_secs(2)).await.is_some());
    assert_eq!(proxy.reset_connections(), 1);
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap();
    assert_eq!(read.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset));
    assert!(proxy.counters().resets >= 1);
}

#[tokio::test]
async fn control_api_sets_shows_and_clears_faults_with_cors() {
    let proxy = ProxyBuilder::new(Mode::Http, vec![upstream("a").await])
        .control(SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .unwrap();
    let control = format!("http://{}", proxy.control_addr().unwrap());
    let http = reqwest::Client::new();
    let set = http
        .post(format!("{control}/faults"))
        .header("content-type", "text/plain")
        .header("origin", "http://127.0.0.1:9999")
        .body(r#"{"refuse_websocket":true,"latency":{"ms":5}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(set.headers()["access-control-allow-origin"], "*");
    assert_eq!(proxy.faults(), Faults::refuse_websocket().and(Faults::latency(5, 0)));
    let shown: serde_json::Value = http.get(format!("{control}/faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["faults"]["refuse_websocket"], true);
    assert!(shown["counters"]["connections"].is_u64());
    let bad = http.post(format!("{control}/faults")).body(r#"{"blackhol":true}"#).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{control}/faults"))
        .header("origin", "http://127.0.0.1:9999")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(http.delete(format!("{control}/faults")).send().await.unwrap().status(), 200);
    assert_eq!(proxy.faults(), Faults::none());
}

#[tokio::test]
async fn a_refusing_upstream_passes_the_connection_to_the_next() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = FaultProxy::http(vec![dead, upstream("b").await]).await.unwrap();
    for _ in 0..4 {
        let name = fresh().get(format!("{}/name", proxy.url())).send().await.unwrap().text().await.unwrap();
        assert_eq!(name, "b");
    }
    assert_eq!(proxy.counters().upstream_connect_failures, 2);
}

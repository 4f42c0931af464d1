//! The plain HTTP surface: demo tokens, Origin checks and CORS, disabled transports, health,
//! metrics and static files.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rtlink_protocol::envelope::HttpError;
use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};
use rtlink_server::config::TransportKind;
use rtlink_server::Config;

#[tokio::test]
async fn demo_token_flow() {
    let s = start(fast_config()).await;
    let resp = s
        .http
        .post(s.url("/v1/demo-token"))
        .body(r#"{"name":"Ana"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ticket = s.ticket_with(&token).await;
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    assert!(matches!(ws.recv().await, ServerFrame::Welcome { user, .. } if user.name == "Ana"));
    let off = start(Config {
        demo_auth: false,
        ..fast_config()
    })
    .await;
    let resp = off
        .http
        .post(off.url("/v1/demo-token"))
        .body(r#"{"name":"Ana"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn wrong_origin_is_403_and_cors_preflight_echoes_allowed_origin() {
    let mut config = fast_config();
    config.allowed_origins = vec!["http://good.example".into()];
    let s = start(config).await;
    let ticket = s.ticket("u").await;
    let url = s.ws_url(&format!("/v1/ws?ticket={ticket}"));
    assert_eq!(
        Ws::try_connect(&url, Some("http://evil.example"))
            .await
            .err(),
        Some(403)
    );
    // The refused attempt did not burn the ticket.
    assert!(Ws::try_connect(&url, Some("http://good.example"))
        .await
        .is_ok());
    for (method, path) in [
        ("GET", "/v1/sse?v=1"),
        ("GET", "/v1/poll?v=1"),
        ("POST", "/v1/ticket"),
        ("POST", "/v1/send"),
    ] {
        let req = s
            .http
            .request(method.parse().unwrap(), s.url(path))
            .header("origin", "http://evil.example");
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(
            resp.json::<HttpError>().await.unwrap().error,
            ErrorCode::OriginNotAllowed
        );
    }
    let pre = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/v1/ticket"))
        .header("origin", "http://good.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://good.example"
    );
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let pre = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/v1/ticket"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none());

    let mut config = fast_config();
    config.allow_localhost_origins = true;
    let s = start(config).await;
    let ticket = s.ticket("u").await;
    let url = s.ws_url(&format!("/v1/ws?ticket={ticket}"));
    assert_eq!(
        Ws::try_connect(&url, Some("https://example.com"))
            .await
            .err(),
        Some(403)
    );
    assert!(Ws::try_connect(&url, Some("http://localhost:41234"))
        .await
        .is_ok());
}

#[tokio::test]
async fn disabled_transports_answer_404_transport_disabled() {
    let mut config = fast_config();
    config.disabled_transports = vec![TransportKind::WebSocket, TransportKind::Sse];
    let s = start(config).await;
    let ticket = s.ticket("u").await;
    assert_eq!(
        Ws::try_connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}")), None)
            .await
            .err(),
        Some(404)
    );
    let resp = s
        .http
        .get(s.url(&format!("/v1/sse?ticket={ticket}&v=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<HttpError>().await.unwrap().error,
        ErrorCode::TransportDisabled
    );
    // The ticket was not consumed: polling still works with it.
    let (_poll, frames) = Poll::open(&s, &ticket, None).await;
    assert!(matches!(frames[0], ServerFrame::Welcome { .. }));
}

#[tokio::test]
async fn healthz_and_metrics() {
    let s = start(fast_config()).await;
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let _ws = s.ws("m").await;
    let text = s.get_text("/metrics").await;
    assert!(
        text.contains("rtlink_connections{transport=\"websocket\"} 1"),
        "{text}"
    );
    assert!(text.contains("rtlink_sessions 1"));
    assert!(text.contains("rtlink_drops_total{reason=\"slow_consumer\"}"));
}

/// `rtlink_write_coalescing` says whether write windows hold frames now: always with
/// `--write-window-above-cpu 0`, never with `--write-window 0ms` (by default it follows the
/// server's CPU use, which a test cannot pin down).
#[tokio::test]
async fn metrics_say_whether_write_windows_hold() {
    for (window, above_cpu, expect) in [
        (Duration::from_millis(5), 0.0, "rtlink_write_coalescing 1\n"),
        (Duration::ZERO, 0.0, "rtlink_write_coalescing 0\n"),
        (Duration::ZERO, 0.25, "rtlink_write_coalescing 0\n"),
    ] {
        let mut config = fast_config();
        config.write_window = window;
        config.write_window_above_cpu = above_cpu;
        let s = start(config).await;
        let text = s.get_text("/metrics").await;
        assert!(text.contains(expect), "{window:?} {above_cpu}: {text}");
    }
}

#[tokio::test]
async fn static_dir_is_served_at_root() {
    let dir = std::env::temp_dir().join(format!("rtlink-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    let mut config = fast_config();
    config.static_dir = Some(dir.clone());
    let s = start(config).await;
    let body = s.get_text("/").await;
    assert_eq!(body, "<h1>demo</h1>");
    // The API still wins over the fallback.
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let _ = std::fs::remove_dir_all(dir);
}

//! The example backend (`examples/metrics-pusher.py`) against the real server: it must push its
//! batches through the server API, and subscribers (the dashboard) must get them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fast_config, start};
use rtlink_protocol::ServerFrame;
use serde_json::Value;

const KEY: &str = "example-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pusher_feeds_the_dashboard_rooms() {
    let mut c = fast_config();
    c.api_keys = vec![KEY.parse().unwrap()];
    let s = start(c).await;
    let mut dashboard = s.ws("dashboard").await;
    dashboard.subscribe("metrics:server", None).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/metrics-pusher.py");
    let url = s.url("");
    let run = |key: &'static str| {
        let (script, url) = (script.clone(), url.clone());
        tokio::task::spawn_blocking(move || run_bounded(&script, &url, key))
    };
    let out = run(KEY).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("pushed metrics:host@"))
            .count(),
        2,
        "{stdout}"
    );

    // The dashboard got live server numbers, as JSON.
    let got = dashboard
        .recv_until(|f| matches!(f, ServerFrame::Message { .. }))
        .await;
    let ServerFrame::Message { payload, name, .. } = got else {
        unreachable!()
    };
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert!(
        payload["ts"].as_u64().is_some() && payload["sessions"].as_f64().is_some(),
        "{payload}"
    );
    assert_eq!(name.as_deref(), Some("metrics-pusher"));
    let history: Value = s
        .http
        .get(s.url("/v1/rooms/metrics:host/history"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["head"], 2, "{history}");

    // A wrong key: the script says so and fails.
    let out = run("wrong-key-0123456789").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 unauthorized"));
}

/// Runs the script (two pushes), killing it if it is not done within 30 s.
fn run_bounded(script: &Path, url: &str, key: &str) -> Output {
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            "--url",
            url,
            "--api-key",
            key,
            "--count",
            "2",
            "--interval",
            "0.05",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CPython 3.8+) runs the example");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

//! Reconnect storm: N clients connected, then the server is stopped and started again on the
//! same port. Every successful (re)connection is timestamped by the client; the series is
//! bucketed into accepts per 100 ms.
//!
//! - rtlink: SIGTERM drains (`reconnect_after {min_ms, max_ms}` then close 4008); clients follow
//!   the client SDK's rules from docs/PROTOCOL.md: reconnect at a uniformly random time in the
//!   window; a refused or failed attempt backs off with full jitter (`[floor, min(cap, base ·
//!   2^attempt)]`, 100 ms / 500 ms / 30 s); a `429`/`503` with `retry_after_ms` waits a jittered
//!   `[ra, 2·ra]`. Each client keeps its token and resumes with its resume token.
//! - Socket.IO: SIGTERM ends Node at once (there is no drain); clients follow socket.io-client
//!   4.8's defaults exactly (`reconnectionDelay` 1000, `reconnectionDelayMax` 5000,
//!   `randomizationFactor` 0.5: `Backoff.duration()` in `contrib/backo2.js`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{eio_open, rtlink_ws_with_ticket, ticket_with_token, Target, Ws};
use crate::procs::{Paths, Peer, RtlinkOptions, Server};

pub const BUCKET: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct Storm {
    pub peer: Peer,
    pub clients: usize,
    /// Seconds from the stop signal to each client's reconnection, sorted.
    pub reconnected_at: Vec<f64>,
    /// Connection attempts refused or failed (connection refused, 429/503, handshake error).
    pub failed_attempts: u64,
    /// From the stop signal until the new process listened.
    pub restart_s: f64,
    pub failure: Option<String>,
}

impl Storm {
    /// Accepts per 100 ms bucket from the stop signal.
    pub fn buckets(&self) -> Vec<u32> {
        let n = self
            .reconnected_at
            .last()
            .map_or(0, |t| (t / BUCKET.as_secs_f64()) as usize + 1);
        let mut b = vec![0u32; n];
        for t in &self.reconnected_at {
            b[(t / BUCKET.as_secs_f64()) as usize] += 1;
        }
        b
    }

    pub fn peak(&self) -> u32 {
        self.buckets().into_iter().max().unwrap_or(0)
    }

    pub fn all_back_s(&self) -> Option<f64> {
        (self.reconnected_at.len() == self.clients)
            .then(|| self.reconnected_at.last().copied().unwrap_or(0.0))
    }
}

pub async fn run_all(paths: &Paths, clients: usize) -> Vec<Storm> {
    let mut out = Vec::new();
    for peer in [Peer::Rtlink, Peer::SocketIo] {
        eprintln!("storm: {} with {clients} clients", peer.name());
        let s = run(paths, peer, clients).await;
        eprintln!(
            "  peak {} accepts / 100 ms, all back after {}, {} failed attempts{}",
            s.peak(),
            s.all_back_s()
                .map_or_else(|| "never".to_owned(), |t| format!("{t:.1} s")),
            s.failed_attempts,
            s.failure
                .as_deref()
                .map(|f| format!(" FAILED: {f}"))
                .unwrap_or_default()
        );
        out.push(s);
    }
    out
}

struct Shared {
    target: Target,
    t0: Mutex<Option<Instant>>,
    times: Mutex<Vec<f64>>,
    failed: Mutex<u64>,
}

async fn run(paths: &Paths, peer: Peer, clients: usize) -> Storm {
    let mut out = Storm {
        peer,
        clients,
        reconnected_at: Vec::new(),
        failed_attempts: 0,
        restart_s: 0.0,
        failure: None,
    };
    let opts = RtlinkOptions {
        port: crate::procs::free_port().ok(),
        accept_budget: true,
        ..RtlinkOptions::default()
    };
    let mut server = match Server::start(paths, peer, &opts) {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(format!("{e:#}"));
            return out;
        }
    };
    let opts = RtlinkOptions {
        port: Some(server.port),
        ..opts
    };
    let shared = Arc::new(Shared {
        target: Target::new(peer, server.port),
        t0: Mutex::new(None),
        times: Mutex::new(Vec::new()),
        failed: Mutex::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    for i in 0..clients {
        let (shared, stop, gate, ready) = (
            shared.clone(),
            stop_rx.clone(),
            gate.clone(),
            ready_tx.clone(),
        );
        tasks.spawn(async move {
            match peer {
                Peer::Rtlink => rtlink_client(i, shared, gate, ready, stop).await,
                _ => socketio_client(shared, gate, ready, stop).await,
            }
        });
    }
    drop(ready_tx);
    for _ in 0..clients {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                out.failure.get_or_insert(e);
            }
            None => break,
        }
    }
    if out.failure.is_some() {
        let _ = stop_tx.send(true);
        return out;
    }
    crate::fanout::quiesce(&server).await;
    // The storm: stop, then start again on the same port as soon as the old process is gone.
    let t0 = Instant::now();
    *shared.t0.lock() = Some(t0);
    server.terminate();
    server.wait_exit(Duration::from_secs(20));
    drop(server);
    let mut restarted = None;
    for _ in 0..50 {
        match Server::start(paths, peer, &opts) {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            // The port may still be held for a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some(server) = restarted else {
        out.failure = Some("the server did not restart".into());
        let _ = stop_tx.send(true);
        return out;
    };
    out.restart_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(90);
    while shared.times.lock().len() < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    while tokio::time::timeout(Duration::from_secs(5), tasks.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    drop(server);
    let mut times = shared.times.lock().clone();
    times.sort_by(f64::total_cmp);
    out.reconnected_at = times;
    out.failed_attempts = *shared.failed.lock();
    if out.reconnected_at.len() < clients {
        out.failure = Some(format!(
            "{} of {clients} clients back within 90 s",
            out.reconnected_at.len()
        ));
    }
    out
}

impl Shared {
    /// Records a successful connection that happened after the stop signal.
    fn connected(&self) {
        if let Some(t0) = *self.t0.lock() {
            self.times.lock().push(t0.elapsed().as_secs_f64());
        }
    }

    fn failed(&self) {
        if self.t0.lock().is_some() {
            *self.failed.lock() += 1;
        }
    }
}

/// Full jitter in `[floor, min(cap, base · 2^attempt)]` (docs/PROTOCOL.md defaults).
fn rtlink_backoff(attempt: u32) -> Duration {
    let ceiling = (500.0 * 2f64.powi(attempt.min(16) as i32)).min(30_000.0);
    Duration::from_millis(rand::random_range(100.0..=ceiling.max(100.0)) as u64)
}

/// socket.io-client 4.8's `Backoff.duration()` with its defaults.
fn socketio_backoff(attempts: u32) -> Duration {
    let ms = 1000.0 * 2f64.powi(attempts.min(16) as i32);
    let rand: f64 = rand::random();
    let deviation = (rand * 0.5 * ms).floor();
    let ms = if ((rand * 10.0).floor() as u64) & 1 == 0 {
        ms - deviation
    } else {
        ms + deviation
    };
    Duration::from_millis(ms.min(5000.0) as u64)
}

enum Wait {
    /// The server's drain window: reconnect uniformly within it.
    Window(u64, u64),
    Backoff,
}

async fn rtlink_client(
    i: usize,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let target = shared.target.clone();
    let room = format!("storm-{i}");
    // Setup: a token that outlives the restart (the secret is fixed), the first connection.
    let setup = async {
        let _permit = gate.acquire().await;
        let token = demo_token(&target, &format!("c{i}")).await?;
        let ticket = ticket_with_token(&target, &token, None).await?;
        let (ws, _) = rtlink_ws_with_ticket(&target, &ticket, None, Some(&room)).await?;
        anyhow::Ok((token, ws))
    };
    let (token, mut ws) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut resume: Option<String> = None;
    loop {
        // Connected: read until the transport closes.
        let mut wait = Wait::Backoff;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if t.contains("\"t\":\"reconnect_after\"") {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                            wait = Wait::Window(v["min_ms"].as_u64().unwrap_or(0), v["max_ms"].as_u64().unwrap_or(0));
                        } else if t.contains("\"t\":\"welcome\"") {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                            resume = v["resume_token"].as_str().map(str::to_owned);
                        } else if t.len() < 32 && t.contains("\"t\":\"ping\"") {
                            let _ = ws.send(Message::text("{\"t\":\"pong\"}")).await;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        let mut delay = match wait {
            Wait::Window(min, max) => Duration::from_millis(rand::random_range(min..=max.max(min))),
            Wait::Backoff => rtlink_backoff(0),
        };
        let mut attempt = 0u32;
        ws = loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match reconnect_rtlink(&target, &token, resume.as_deref(), &room).await {
                Ok(ws) => break ws,
                Err(Retry::After(ms)) => {
                    shared.failed();
                    delay =
                        Duration::from_millis(rand::random_range(ms..=ms.saturating_mul(2).max(1)));
                }
                Err(Retry::Backoff) => {
                    shared.failed();
                    attempt += 1;
                    delay = rtlink_backoff(attempt);
                }
            }
        };
        shared.connected();
    }
}

enum Retry {
    After(u64),
    Backoff,
}

async fn demo_token(target: &Target, name: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = target
        .http
        .post(format!("http://127.0.0.1:{}/v1/demo-token", target.port))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token"))
}

/// One reconnection attempt: a ticket (a `429`/`503` says when to come back), then the socket.
async fn reconnect_rtlink(
    target: &Target,
    token: &str,
    resume: Option<&str>,
    room: &str,
) -> Result<Ws, Retry> {
    let resp = target
        .http
        .post(format!("http://127.0.0.1:{}/v1/ticket", target.port))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|_| Retry::Backoff)?;
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if status == 429 || status == 503 {
        return Err(Retry::After(v["retry_after_ms"].as_u64().unwrap_or(1000)));
    }
    let ticket = v["ticket"].as_str().ok_or(Retry::Backoff)?;
    rtlink_ws_with_ticket(target, ticket, resume, Some(room))
        .await
        .map(|(ws, _)| ws)
        .map_err(|_| Retry::Backoff)
}

async fn socketio_client(
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let target = shared.target.clone();
    let first = {
        let _permit = gate.acquire().await;
        eio_open(&target, None).await
    };
    let mut ws = match first {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) if t == "2" => {
                        let _ = ws.send(Message::text("3")).await;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        // Manager.onclose → reconnect(): every attempt waits backoff.duration(), attempts++.
        let mut attempts = 0u32;
        ws = loop {
            let delay = socketio_backoff(attempts);
            attempts += 1;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match eio_open(&target, None).await {
                Ok(ws) => break ws,
                Err(_) => shared.failed(),
            }
        };
        shared.connected();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_backoff_matches_its_defaults() {
        for _ in 0..1000 {
            let first = socketio_backoff(0).as_millis();
            assert!((500..=1500).contains(&first), "{first}");
            assert!(socketio_backoff(5).as_millis() <= 5000);
        }
    }

    #[test]
    fn rtlink_backoff_is_full_jitter() {
        for _ in 0..1000 {
            let d = rtlink_backoff(0).as_millis();
            assert!((100..=500).contains(&d));
            assert!(rtlink_backoff(30).as_millis() <= 30_000);
        }
    }
}

//! End to end: the real server in this process on 127.0.0.1:0, N subscribers in one room over
//! real sockets (WebSocket, or SSE with `POST /v1/send` upstream), one WebSocket publisher.
//!
//! The publisher keeps at most `window` messages not yet delivered to every subscriber:
//! window 1 publishes the next message only when all N have the previous one (the latency of
//! one fan-out on an idle server); window 32 keeps the pipeline full (throughput, and the
//! latency under that load). Each delivery's latency is receive time minus the time the
//! publisher handed the `publish` frame to its socket. Subscribers also check that offsets
//! arrive contiguous and in order.
//!
//! Server, subscribers and publisher share one Tokio runtime on the same 2 cores, so the
//! clients' own work (reading, parsing JSON) is inside every number: these are lower bounds
//! for the server alone, useful side by side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rtlink_protocol::codec::decode_server;
use rtlink_protocol::envelope::TicketResponse;
use rtlink_protocol::ServerFrame;
use rtlink_server::auth::Claims;
use rtlink_server::{app, serve, AppState, Config};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::percentile;

mod sse_client;
use sse_client::SseClient;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const ROOM: &str = "bench";
/// Subscribers connecting at once during setup.
const CONNECT_CONCURRENCY: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "WebSocket",
            Self::Sse => "SSE",
        }
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    transport: Transport,
    subscribers: usize,
    window: usize,
    messages: usize,
}

const fn scenario(
    transport: Transport,
    subscribers: usize,
    window: usize,
    messages: usize,
) -> Scenario {
    Scenario {
        transport,
        subscribers,
        window,
        messages,
    }
}

use Transport::{Sse, WebSocket};

const FULL: &[Scenario] = &[
    scenario(WebSocket, 100, 1, 200),
    scenario(WebSocket, 100, 32, 2000),
    scenario(WebSocket, 500, 1, 100),
    scenario(WebSocket, 500, 32, 600),
    scenario(WebSocket, 50, 1, 200),
    scenario(WebSocket, 50, 32, 2000),
    scenario(Sse, 50, 1, 200),
    scenario(Sse, 50, 32, 2000),
];

const QUICK: &[Scenario] = &[
    scenario(WebSocket, 100, 1, 50),
    scenario(WebSocket, 100, 32, 500),
    scenario(WebSocket, 50, 32, 500),
    scenario(Sse, 50, 32, 500),
];

/// The outcome of one scenario.
struct Outcome {
    setup: Duration,
    elapsed: Duration,
    /// Delivery latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
    /// Subscribers that saw a gap, a duplicate or a reordering.
    disordered: usize,
    /// False when the scenario hit its deadline before every delivery arrived.
    complete: bool,
    /// Deliveries counted, including those of subscribers cut off at the deadline.
    delivered: u64,
}

pub async fn run(quick: bool) {
    let scenarios = if quick { QUICK } else { FULL };
    // Per scenario (setup included), and for the whole end-to-end part: past the budget the
    // remaining scenarios are skipped, so a broken server cannot make the bench hang.
    let (deadline, budget) = if quick {
        (Duration::from_secs(3), Duration::from_secs(8))
    } else {
        (Duration::from_secs(10), Duration::from_secs(50))
    };
    let started = Instant::now();
    println!("## End to end: one publisher, N subscribers in one room, loopback\n");
    println!(
        "| transport | N | window | messages | deliveries | setup | run time | deliveries/s | \
         messages/s | p50 | p99 | max | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut throughput = Vec::new();
    for sc in scenarios {
        if started.elapsed() + deadline > budget {
            println!(
                "| {} | {} | {} | {} | skipped: time budget spent |",
                sc.transport.name(),
                sc.subscribers,
                sc.window,
                sc.messages
            );
            continue;
        }
        let out = run_scenario(*sc, deadline).await;
        let deliveries = out.latencies_us.len();
        let secs = out.elapsed.as_secs_f64().max(1e-9);
        let per_sec = deliveries as f64 / secs;
        if sc.window > 1 {
            throughput.push((sc.transport, sc.subscribers, per_sec));
        }
        let mut errors = Vec::new();
        if !out.complete {
            errors.push(format!(
                "INCOMPLETE ({}/{})",
                out.delivered,
                sc.subscribers * sc.messages
            ));
        }
        if out.disordered > 0 {
            errors.push(format!("{} subscribers out of order", out.disordered));
        }
        println!(
            "| {} | {} | {} | {} | {} | {:.2} s | {:.3} s | {:.0} | {:.0} | {} | {} | {} | {} |",
            sc.transport.name(),
            sc.subscribers,
            sc.window,
            sc.messages,
            deliveries,
            out.setup.as_secs_f64(),
            secs,
            per_sec,
            per_sec / sc.subscribers as f64,
            fmt_us(percentile(&out.latencies_us, 50.0)),
            fmt_us(percentile(&out.latencies_us, 99.0)),
            fmt_us(out.latencies_us.last().copied().unwrap_or(0)),
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
        );
    }
    // WebSocket against SSE at the same N, both with a full pipeline.
    for (t, n, sse_rate) in &throughput {
        if *t != Sse {
            continue;
        }
        if let Some((_, _, ws_rate)) = throughput
            .iter()
            .find(|(t2, n2, _)| *t2 == WebSocket && n2 == n)
        {
            println!(
                "\nWebSocket / SSE deliveries per second at N = {n}: **{:.2}×**",
                ws_rate / sse_rate
            );
        }
    }
    println!();
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// State shared by the publisher and the subscribers of one scenario.
struct Shared {
    base: Instant,
    messages: usize,
    /// When each message (index = offset - 1) was handed to the publisher's socket, in
    /// nanoseconds since `base`.
    published_at: Vec<AtomicU64>,
    delivered: AtomicU64,
    progress: Notify,
    ready: AtomicUsize,
    ready_changed: Notify,
    /// When any subscriber last received any frame (ns since `base`): setup is over when the
    /// presence joins of N subscribers (N² frames) have stopped arriving.
    last_frame_ns: AtomicU64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Received {
    next_offset: u64,
    latencies_us: Vec<u64>,
    disordered: bool,
    /// The connection, kept open until the scenario's results are collected so that early
    /// finishers do not make the server do disconnect work mid-run.
    connection: Option<Box<dyn std::any::Any + Send>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Handles one frame's JSON; true once this subscriber has every message.
    fn on_frame(&self, json: &[u8], rx: &mut Received) -> bool {
        let now = self.now_ns();
        self.last_frame_ns.store(now, Ordering::Relaxed);
        if !json.starts_with(br#"{"t":"message""#) {
            return false; // presence, pings, subscribed, ...
        }
        let Ok(ServerFrame::Message { offset, .. }) = decode_server(json, usize::MAX) else {
            rx.disordered = true;
            return false;
        };
        if offset != rx.next_offset {
            rx.disordered = true;
        }
        rx.next_offset = offset + 1;
        if let Some(sent) = offset
            .checked_sub(1)
            .and_then(|i| self.published_at.get(i as usize))
        {
            rx.latencies_us
                .push(now.saturating_sub(sent.load(Ordering::Acquire)) / 1000);
        }
        self.delivered.fetch_add(1, Ordering::AcqRel);
        self.progress.notify_one();
        offset as usize >= self.messages
    }

    fn subscribed(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
        self.ready_changed.notify_one();
    }

    /// Waits until `delivered >= target`; false at the deadline.
    async fn delivered_at_least(&self, target: u64, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.delivered.load(Ordering::Acquire) >= target {
                return true;
            }
            if timeout_at(deadline, self.progress.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Waits until no subscriber has received anything for `quiet`; false at the deadline.
    async fn quiet_for(&self, quiet: Duration, deadline: tokio::time::Instant) -> bool {
        let quiet_ns = quiet.as_nanos() as u64;
        loop {
            let idle = self
                .now_ns()
                .saturating_sub(self.last_frame_ns.load(Ordering::Relaxed));
            if idle >= quiet_ns {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_nanos(quiet_ns - idle)).await;
        }
    }

    async fn ready_at_least(&self, target: usize, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.ready.load(Ordering::Acquire) >= target {
                return true;
            }
            if timeout_at(deadline, self.ready_changed.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// The server under test, with a way to stop it.
struct Server {
    addr: SocketAddr,
    state: AppState,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Server {
        let mut config = Config::for_tests();
        // The bench measures fan-out, not the limits that protect it.
        config.rate_per_sec = 1_000_000;
        config.rate_burst = 1_000_000;
        config.publish_bytes_per_sec = u32::MAX;
        config.publish_bytes_burst = u32::MAX;
        config.max_connections = 100_000;
        config.max_connections_per_ip = 100_000;
        config.ping_interval = Duration::from_secs(300);
        let state = AppState::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app(state.clone()), async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            state,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn ticket(&self, user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let token = self.state.auth.sign(&Claims {
            sub: user.into(),
            name: user.into(),
            rooms: vec!["*".into()],
            exp,
        });
        let resp = self
            .http
            .post(format!("http://{}/v1/ticket", self.addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        resp.json::<TicketResponse>().await.unwrap().ticket
    }
}

async fn run_scenario(sc: Scenario, limit: Duration) -> Outcome {
    let server = Arc::new(Server::start().await);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        messages: sc.messages,
        published_at: (0..sc.messages).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        progress: Notify::new(),
        ready: AtomicUsize::new(0),
        ready_changed: Notify::new(),
        last_frame_ns: AtomicU64::new(0),
    });
    let deadline = tokio::time::Instant::now() + limit;
    let setup_started = Instant::now();

    // Subscribers: connect a few at a time, then read until they have every message.
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut subscribers = JoinSet::new();
    for i in 0..sc.subscribers {
        let (server, shared, gate) = (server.clone(), shared.clone(), gate.clone());
        subscribers.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let user = format!("sub-{i}");
            match sc.transport {
                WebSocket => {
                    let ws = ws_connect(&server, &user).await;
                    drop(permit);
                    shared.subscribed();
                    ws_receive(ws, &shared).await
                }
                Sse => {
                    let sse = SseClient::connect(&server, &user).await;
                    drop(permit);
                    shared.subscribed();
                    sse.receive(&shared).await
                }
            }
        });
    }
    // The publisher's own traffic (acks, its echo, presence) is drained in the background.
    let (mut sink, mut echo) = ws_connect(&server, "publisher").await.split();
    let drain = tokio::spawn(async move { while echo.next().await.is_some() {} });
    let all_ready = shared.ready_at_least(sc.subscribers, deadline).await
        && shared.quiet_for(Duration::from_millis(50), deadline).await;
    let setup = setup_started.elapsed();

    // Frames prepared in advance, so the publisher only hands them to its socket.
    let frames: Vec<String> = (0..sc.messages)
        .map(|k| {
            serde_json::json!({
                "t": "publish",
                "room": ROOM,
                "id": format!("m{k}"),
                "payload": r#"{"kind":"chat","text":"lorem \"ipsum\" dolor sit amet, consectetur adipiscing elit","ts":1}"#,
            })
            .to_string()
        })
        .collect();
    let n = sc.subscribers as u64;
    let started = Instant::now();
    let mut complete = all_ready;
    if all_ready {
        for (k, frame) in frames.into_iter().enumerate() {
            if k >= sc.window {
                let target = (k + 1 - sc.window) as u64 * n;
                if !shared.delivered_at_least(target, deadline).await {
                    complete = false;
                    break;
                }
            }
            shared.published_at[k].store(shared.now_ns(), Ordering::Release);
            sink.send(WsMessage::text(frame)).await.unwrap();
        }
        complete = complete
            && shared
                .delivered_at_least(sc.messages as u64 * n, deadline)
                .await;
    }
    let elapsed = started.elapsed();

    // Collect what arrived; stragglers past the deadline are cut off.
    let mut latencies_us = Vec::with_capacity(sc.messages * sc.subscribers);
    let mut disordered = 0;
    if !complete {
        subscribers.abort_all();
    }
    let mut connections = Vec::with_capacity(sc.subscribers);
    while let Some(joined) = subscribers.join_next().await {
        if let Ok(rx) = joined {
            latencies_us.extend_from_slice(&rx.latencies_us);
            disordered += usize::from(rx.disordered);
            connections.push(rx.connection);
        }
    }
    drop(connections);
    latencies_us.sort_unstable();
    drain.abort();
    Outcome {
        setup,
        elapsed,
        latencies_us,
        disordered,
        complete,
        delivered: shared.delivered.load(Ordering::Acquire),
    }
}

/// A WebSocket session (hello → welcome) subscribed to the room.
async fn ws_connect(server: &Server, user: &str) -> Ws {
    let ticket = server.ticket(user).await;
    let url = format!("ws://{}/v1/ws?ticket={ticket}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMessage::text(r#"{"t":"hello","v":1}"#))
        .await
        .unwrap();
    ws_wait_for(&mut ws, "welcome").await;
    let subscribe = format!(r#"{{"t":"subscribe","room":"{ROOM}"}}"#);
    ws.send(WsMessage::text(subscribe)).await.unwrap();
    ws_wait_for(&mut ws, "subscribed").await;
    ws
}

async fn ws_wait_for(ws: &mut Ws, frame_type: &str) {
    let prefix = format!(r#"{{"t":"{frame_type}""#);
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) if t.as_str().starts_with(&prefix) => return,
            Some(Ok(_)) => continue,
            other => panic!("WebSocket ended while waiting for {frame_type}: {other:?}"),
        }
    }
}

/// Reads until every message arrived.
async fn ws_receive(mut ws: Ws, shared: &Shared) -> Received {
    let mut rx = Received {
        next_offset: 1,
        ..Received::default()
    };
    while let Some(Ok(msg)) = ws.next().await {
        if let WsMessage::Text(t) = msg {
            if shared.on_frame(t.as_bytes(), &mut rx) {
                break;
            }
        }
    }
    rx.connection = Some(Box::new(ws));
    rx
}

//! The load generator's clients: what a subscriber and a publisher say to each server.
//!
//! - rtlink: `POST /v1/demo-token`, `POST /v1/ticket`, then WebSocket (`hello`, `subscribe`,
//!   `publish`, `pong`), or SSE / long polling with `POST /v1/send` upstream (docs/PROTOCOL.md).
//! - Socket.IO: Engine.IO v4 over WebSocket (`0` open, `40` connect, `2`/`3` ping/pong,
//!   `42[...]` events); the server's `join` and `pub` handlers are in `bench/peers`.
//! - raw: bare text messages.
//!
//! Every published payload starts with `#<seq>.<sent µs>#`: a subscriber finds it with one
//! scan whatever the framing, checks `seq` is the next one (no loss, no duplicate, in order)
//! and records the latency. The parsing work is the same small scan for every server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procs::Peer;
use crate::wire::WsConn;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How rtlink subscribers connect (the other peers are WebSocket only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    Poll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "WebSocket",
            Self::Sse => "SSE",
            Self::Poll => "long polling",
        }
    }
}

/// One server to talk to.
#[derive(Clone)]
pub struct Target {
    pub peer: Peer,
    pub port: u16,
    pub http: reqwest::Client,
}

impl Target {
    pub fn new(peer: Peer, port: u16) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self { peer, port, http }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Microseconds since the process started (one clock for publisher and subscribers).
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The payload of message `seq`, `size` bytes long.
pub fn payload(seq: u64, size: usize) -> String {
    let mut p = format!("#{seq}.{}#", now_us());
    while p.len() < size {
        p.push('x');
    }
    p
}

/// What one subscriber saw.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Seen>,
    /// Deliveries across every subscriber of a scenario.
    total: Arc<AtomicU64>,
}

#[derive(Default)]
struct Seen {
    last_seq: u64,
    /// Gaps, duplicates, reorderings.
    errors: u64,
    latencies_us: Vec<u32>,
}

impl Recorder {
    pub fn new(total: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            total,
        })
    }

    fn on_frame(&self, text: &str) {
        let Some((seq, sent)) = crate::readers::marker(text.as_bytes()) else {
            return;
        };
        let lat = now_us().saturating_sub(sent);
        let mut s = self.inner.lock();
        if seq != s.last_seq + 1 {
            s.errors += 1;
        }
        s.last_seq = s.last_seq.max(seq);
        s.latencies_us.push(lat.min(u32::MAX as u64) as u32);
        drop(s);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the latencies recorded so far; returns them with the error count.
    pub fn take(&self) -> (Vec<u32>, u64) {
        let mut s = self.inner.lock();
        (std::mem::take(&mut s.latencies_us), s.errors)
    }
}

/// A stop signal shared by every client task of a scenario.
pub type Stop = watch::Receiver<bool>;

/// Connects a subscriber (joining `room` if given) and returns once it is in; the returned
/// task reads until `stop` or until the connection ends.
pub async fn subscriber(
    target: &Target,
    transport: Transport,
    name: &str,
    room: Option<&str>,
    rec: Arc<Recorder>,
    stop: Stop,
) -> anyhow::Result<JoinHandle<()>> {
    match (target.peer, transport) {
        (Peer::Rtlink, Transport::WebSocket) => {
            let ws = rtlink_ws_open(target, name, room).await?;
            Ok(tokio::spawn(read_ws(ws, target.peer, rec, stop)))
        }
        (Peer::Rtlink, Transport::Sse) => sse::open(target, name, room, rec, stop).await,
        (Peer::Rtlink, Transport::Poll) => poll::open(target, name, room, rec, stop).await,
        (Peer::SocketIo, _) => {
            let ws = eio_open(target, room).await?;
            Ok(tokio::spawn(read_ws(ws, target.peer, rec, stop)))
        }
        (Peer::Raw, _) => {
            let (ws, _) =
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", target.port))
                    .await?;
            Ok(tokio::spawn(read_ws(ws, target.peer, rec, stop)))
        }
    }
}

/// Sets up a WebSocket subscriber with the lean client ([`crate::wire`]), joining `room` if
/// given, for the readers ([`crate::readers`]) to read.
pub async fn ws_subscriber(
    target: &Target,
    name: &str,
    room: Option<&str>,
) -> anyhow::Result<crate::readers::Sub> {
    let port = target.port;
    let ws = match target.peer {
        Peer::Rtlink => {
            let ticket = rtlink_ticket(target, name).await?;
            let mut ws = WsConn::connect(port, &format!("/v1/ws?ticket={ticket}")).await?;
            ws.send_text("{\"t\":\"hello\",\"v\":1}").await?;
            wait_for_text(&mut ws, Peer::Rtlink, "\"t\":\"welcome\"").await?;
            if let Some(room) = room {
                ws.send_text(&format!("{{\"t\":\"subscribe\",\"room\":\"{room}\"}}"))
                    .await?;
                wait_for_text(&mut ws, Peer::Rtlink, "\"t\":\"subscribed\"").await?;
            }
            ws
        }
        Peer::SocketIo => {
            let mut ws = WsConn::connect(port, "/socket.io/?EIO=4&transport=websocket").await?;
            let open = ws.next_text().await?;
            if !open.starts_with('0') {
                bail!("expected an Engine.IO open packet, got {open}");
            }
            ws.send_text("40").await?;
            wait_for_text(&mut ws, Peer::SocketIo, "40").await?;
            if let Some(room) = room {
                ws.send_text(&format!("42[\"join\",\"{room}\"]")).await?;
                wait_for_text(&mut ws, Peer::SocketIo, "42[\"joined\"").await?;
            }
            ws
        }
        Peer::Raw => WsConn::connect(port, "/").await?,
    };
    let (stream, buffered) = ws.into_parts()?;
    Ok(crate::readers::Sub {
        stream,
        buffered,
        peer: target.peer,
    })
}

/// Reads until a message containing `needle` arrives, answering keep-alives (bounded by the
/// connection's read timeout).
async fn wait_for_text(ws: &mut WsConn, peer: Peer, needle: &str) -> anyhow::Result<String> {
    for _ in 0..10_000 {
        let t = ws.next_text().await?;
        if t.contains(needle) {
            return Ok(t);
        }
        if let Some(reply) = keepalive_reply(peer, &t) {
            ws.send_text(reply).await?;
        } else if t.contains("\"t\":\"close\"")
            || t.contains("\"t\":\"nack\"")
            || t.starts_with("44")
        {
            bail!("refused while waiting for {needle}: {t}");
        }
    }
    bail!("no {needle} in 10,000 messages")
}

/// Reads a WebSocket until stopped: records payloads, answers pings.
async fn read_ws(mut ws: Ws, peer: Peer, rec: Arc<Recorder>, mut stop: Stop) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Some(reply) = keepalive_reply(peer, &t) {
                        if ws.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    rec.on_frame(&t);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// The answer a client owes to a server's keep-alive, if `text` is one.
fn keepalive_reply(peer: Peer, text: &str) -> Option<&'static str> {
    match peer {
        Peer::Rtlink if text.len() < 32 && text.contains("\"t\":\"ping\"") => {
            Some("{\"t\":\"pong\"}")
        }
        Peer::SocketIo if text == "2" => Some("3"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// rtlink

/// A token and a ticket for user `name`, waiting out `429`/`503` as a client must.
pub async fn rtlink_ticket(target: &Target, name: &str) -> anyhow::Result<String> {
    let base = target.base();
    let token: serde_json::Value = target
        .http
        .post(format!("{base}/v1/demo-token"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token"))?
        .to_owned();
    ticket_with_token(target, &token, None).await
}

/// A ticket for `token` (with a resume request in the body when given), retrying on overload.
pub async fn ticket_with_token(
    target: &Target,
    token: &str,
    resume: Option<&str>,
) -> anyhow::Result<String> {
    let base = target.base();
    for _ in 0..50 {
        let mut req = target
            .http
            .post(format!("{base}/v1/ticket"))
            .bearer_auth(token);
        if let Some(r) = resume {
            req = req.json(&serde_json::json!({ "resume": r }));
        }
        let resp = req.send().await?;
        let status = resp.status();
        if status.is_success() {
            let v: serde_json::Value = resp.json().await?;
            return v["ticket"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no ticket"));
        }
        if status.as_u16() == 429 || status.as_u16() == 503 {
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            let ms = v["retry_after_ms"].as_u64().unwrap_or(500).min(5_000);
            tokio::time::sleep(Duration::from_millis(
                ms / 2 + rand::random_range(0..=ms / 2),
            ))
            .await;
            continue;
        }
        bail!("ticket: HTTP {status}");
    }
    bail!("ticket: still overloaded after 50 tries")
}

/// Opens an rtlink WebSocket: ticket, `hello`, `welcome`, then `subscribe` and `subscribed`.
pub async fn rtlink_ws_open(target: &Target, name: &str, room: Option<&str>) -> anyhow::Result<Ws> {
    let ticket = rtlink_ticket(target, name).await?;
    Ok(rtlink_ws_with_ticket(target, &ticket, None, room).await?.0)
}

pub async fn rtlink_ws_with_ticket(
    target: &Target,
    ticket: &str,
    resume: Option<&str>,
    room: Option<&str>,
) -> anyhow::Result<(Ws, String)> {
    let url = format!("ws://127.0.0.1:{}/v1/ws?ticket={ticket}", target.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = match resume {
        Some(r) => serde_json::json!({"t": "hello", "v": 1, "resume": r}).to_string(),
        None => "{\"t\":\"hello\",\"v\":1}".to_owned(),
    };
    ws.send(Message::text(hello)).await?;
    let welcome = wait_for(&mut ws, "\"t\":\"welcome\"").await?;
    if let Some(room) = room {
        ws.send(Message::text(format!(
            "{{\"t\":\"subscribe\",\"room\":\"{room}\"}}"
        )))
        .await?;
        wait_for(&mut ws, "\"t\":\"subscribed\"").await?;
    }
    Ok((ws, welcome))
}

/// Reads until a text frame containing `needle` arrives (bounded).
async fn wait_for(ws: &mut Ws, needle: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("waiting for {needle}"))?;
        match m {
            Some(Ok(Message::Text(t))) if t.contains(needle) => return Ok(t.to_string()),
            Some(Ok(Message::Text(t)))
                if t.contains("\"t\":\"close\"") || t.contains("\"t\":\"nack\"") =>
            {
                bail!("refused while waiting for {needle}: {t}")
            }
            Some(Ok(Message::Close(c))) => bail!("closed while waiting for {needle}: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended while waiting for {needle}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket.IO (Engine.IO v4 over WebSocket)

pub async fn eio_open(target: &Target, room: Option<&str>) -> anyhow::Result<Ws> {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        target.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let t = next_text(&mut ws).await?;
        if t.starts_with("40") {
            break;
        }
        if t.starts_with("44") {
            bail!("Socket.IO connect refused: {t}");
        }
    }
    if let Some(room) = room {
        ws.send(Message::text(format!("42[\"join\",\"{room}\"]")))
            .await?;
        loop {
            let t = next_text(&mut ws).await?;
            if t == "2" {
                ws.send(Message::text("3")).await?;
            } else if t.starts_with("42[\"joined\"") {
                break;
            }
        }
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("waiting for a frame")?;
        match m {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher

/// One publishing connection. Payloads queued with [`Publisher::send`] go out in order; what
/// is queued while a write is in progress goes out in the next flush.
pub struct Publisher {
    tx: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(target: &Target, room: &str) -> anyhow::Result<Self> {
        Self::open(target, room, false).await
    }

    /// A publisher whose rtlink payloads are JSON strings (the client SDK parses payloads).
    pub async fn connect_json(target: &Target, room: &str) -> anyhow::Result<Self> {
        Self::open(target, room, true).await
    }

    async fn open(target: &Target, room: &str, json: bool) -> anyhow::Result<Self> {
        let (peer, room_owned) = (target.peer, room.to_owned());
        let ws = match peer {
            Peer::Rtlink => rtlink_ws_open(target, "publisher", Some(room)).await?,
            Peer::SocketIo => eio_open(target, None).await?,
            Peer::Raw => {
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", target.port))
                    .await?
                    .0
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(publish_loop(ws, peer, room_owned, json, rx));
        Ok(Self { tx, task })
    }

    /// Queues the publish of `payload`.
    pub fn send(&self, payload: String) {
        let _ = self.tx.send(payload);
    }

    pub async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(35), self.task).await;
    }
}

async fn publish_loop(
    mut ws: Ws,
    peer: Peer,
    room: String,
    json: bool,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut id = 0u64;
    let frame = |id: u64, p: String| match peer {
        Peer::Rtlink if json => format!(
            "{{\"t\":\"publish\",\"room\":\"{room}\",\"id\":\"p{id}\",\"payload\":\"\\\"{p}\\\"\"}}"
        ),
        Peer::Rtlink => format!(
            "{{\"t\":\"publish\",\"room\":\"{room}\",\"id\":\"p{id}\",\"payload\":\"{p}\"}}"
        ),
        Peer::SocketIo => format!("42[\"pub\",\"{room}\",\"{p}\"]"),
        Peer::Raw => p,
    };
    loop {
        tokio::select! {
            p = rx.recv() => {
                let Some(p) = p else { break };
                id += 1;
                if ws.feed(Message::text(frame(id, p))).await.is_err() {
                    return;
                }
                while let Ok(p) = rx.try_recv() {
                    id += 1;
                    if ws.feed(Message::text(frame(id, p))).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            // Acks, its own copies (rtlink), pings: read and dropped, answering pings.
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Some(reply) = keepalive_reply(peer, &t) {
                        let _ = ws.send(Message::text(reply)).await;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
    // Closing with answers still unread makes the kernel reset the connection, and the server
    // then drops the publishes it had not read yet (never acked). rtlink answers in order, so
    // the last publish's ack or nack means that every publish was handled.
    if peer == Peer::Rtlink && id > 0 {
        let last = format!("\"id\":\"p{id}\"");
        let answered = |t: &str| {
            (t.contains("\"t\":\"ack\"") || t.contains("\"t\":\"nack\"")) && t.contains(&last)
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                if let Some(reply) = keepalive_reply(peer, &t) {
                    let _ = ws.send(Message::text(reply)).await;
                } else if answered(&t) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    // Read up to the server's close, so the socket ends without a reset.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// rtlink over SSE and long polling

/// `POST /v1/send` of one frame for session `resume`.
async fn send_upstream(
    target: &Target,
    resume: &str,
    frame: serde_json::Value,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "session": resume, "frames": [frame] }).to_string();
    let resp = target
        .http
        .post(format!("{}/v1/send", target.base()))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("send: HTTP {}", resp.status());
    }
    Ok(())
}

mod sse {
    use super::*;

    pub async fn open(
        target: &Target,
        name: &str,
        room: Option<&str>,
        rec: Arc<Recorder>,
        mut stop: Stop,
    ) -> anyhow::Result<JoinHandle<()>> {
        let ticket = rtlink_ticket(target, name).await?;
        let resp = target
            .http
            .get(format!("{}/v1/sse?ticket={ticket}&v=1", target.base()))
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?
            .error_for_status()?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut events = std::collections::VecDeque::new();
        // The welcome, then (after subscribing) `subscribed`.
        let mut next_event = async |buf: &mut Vec<u8>,
                                    events: &mut std::collections::VecDeque<String>|
               -> anyhow::Result<String> {
            loop {
                if let Some(e) = events.pop_front() {
                    return Ok(e);
                }
                let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
                    .await
                    .context("SSE: waiting")?
                    .ok_or_else(|| anyhow!("SSE stream ended"))??;
                buf.extend_from_slice(&chunk);
                split_events(buf, events);
            }
        };
        let welcome = next_event(&mut buf, &mut events).await?;
        let v: serde_json::Value = serde_json::from_str(&welcome)?;
        let resume = v["resume_token"]
            .as_str()
            .ok_or_else(|| anyhow!("SSE: no welcome"))?
            .to_owned();
        if let Some(room) = room {
            send_upstream(
                target,
                &resume,
                serde_json::json!({"t": "subscribe", "room": room}),
            )
            .await?;
            loop {
                let e = next_event(&mut buf, &mut events).await?;
                if e.contains("\"t\":\"subscribed\"") {
                    break;
                }
            }
        }
        Ok(tokio::spawn(async move {
            for e in events.drain(..) {
                rec.on_frame(&e);
            }
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    chunk = body.next() => match chunk {
                        Some(Ok(c)) => {
                            buf.extend_from_slice(&c);
                            split_events(&mut buf, &mut events);
                            for e in events.drain(..) {
                                rec.on_frame(&e);
                            }
                        }
                        _ => break,
                    }
                }
            }
        }))
    }

    /// Moves every complete event's `data:` out of `buf`.
    fn split_events(buf: &mut Vec<u8>, out: &mut std::collections::VecDeque<String>) {
        let mut start = 0;
        while let Some(pos) = buf[start..].windows(2).position(|w| w == b"\n\n") {
            let event = &buf[start..start + pos];
            for line in event.split(|b| *b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data: ") {
                    out.push_back(String::from_utf8_lossy(data).into_owned());
                }
            }
            start += pos + 2;
        }
        buf.drain(..start);
    }
}

mod poll {
    use super::*;

    /// Whether this server takes `POST /v1/poll {session, cursor}` (else the older
    /// `GET /v1/poll?session&cursor`).
    static POST_FORM: AtomicU64 = AtomicU64::new(2);

    pub async fn open(
        target: &Target,
        name: &str,
        room: Option<&str>,
        rec: Arc<Recorder>,
        mut stop: Stop,
    ) -> anyhow::Result<JoinHandle<()>> {
        let ticket = rtlink_ticket(target, name).await?;
        let first: serde_json::Value = target
            .http
            .get(format!("{}/v1/poll?ticket={ticket}&v=1", target.base()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let resume = first["frames"][0]["resume_token"]
            .as_str()
            .ok_or_else(|| anyhow!("poll: no welcome"))?
            .to_owned();
        let mut cursor = first["cursor"].as_u64().unwrap_or(0);
        if let Some(room) = room {
            send_upstream(
                target,
                &resume,
                serde_json::json!({"t": "subscribe", "room": room}),
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            'wait: loop {
                if Instant::now() > deadline {
                    bail!("poll: no subscribed");
                }
                let batch = poll_once(target, &resume, cursor).await?;
                cursor = batch["cursor"].as_u64().unwrap_or(cursor);
                if let Some(frames) = batch["frames"].as_array() {
                    for f in frames {
                        if f["t"] == "subscribed" {
                            break 'wait;
                        }
                    }
                }
            }
        }
        let target = target.clone();
        Ok(tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = stop.changed() => break,
                    b = poll_once(&target, &resume, cursor) => b,
                };
                let Ok(batch) = batch else { break };
                cursor = batch["cursor"].as_u64().unwrap_or(cursor);
                if let Some(frames) = batch["frames"].as_array() {
                    for f in frames {
                        match f["t"].as_str() {
                            Some("message") => {
                                if let Some(p) = f["payload"].as_str() {
                                    rec.on_frame(p);
                                }
                            }
                            Some("close") => return,
                            _ => {}
                        }
                    }
                }
            }
        }))
    }

    async fn poll_once(
        target: &Target,
        resume: &str,
        cursor: u64,
    ) -> anyhow::Result<serde_json::Value> {
        let base = target.base();
        if POST_FORM.load(Ordering::Relaxed) != 0 {
            let body = serde_json::json!({ "session": resume, "cursor": cursor }).to_string();
            let resp = target
                .http
                .post(format!("{base}/v1/poll"))
                .header("content-type", "text/plain")
                .body(body)
                .send()
                .await?;
            match resp.status().as_u16() {
                405 | 404 if POST_FORM.load(Ordering::Relaxed) == 2 => {
                    POST_FORM.store(0, Ordering::Relaxed)
                }
                _ => {
                    POST_FORM.store(1, Ordering::Relaxed);
                    return Ok(resp.error_for_status()?.json().await?);
                }
            }
        }
        Ok(target
            .http
            .get(format!("{base}/v1/poll?session={resume}&cursor={cursor}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

//! The fault proxy: a TCP listener on 127.0.0.1 that forwards every connection to the next
//! upstream in turn (round robin, no stickiness) and applies the [`Faults`] in force.
//!
//! In HTTP mode it follows HTTP/1.1 message by message on each connection (keep-alive
//! included): it sees each request head (to refuse openings or WebSocket upgrades), each
//! response head (to pass `101` and then kill, or to hold a `text/event-stream` response until
//! it ends), and otherwise forwards bytes exactly as they came. In TCP mode (for Redis) it only
//! moves bytes, so only `blackhole`, `latency` and `reset` apply.
//!
//! Each direction of a connection is written by its own task from a queue of `(due, bytes)`, so
//! latency delays chunks without serialising them and never reorders them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::faults::{CounterSnapshot, Counters, Faults, Opening, Reject};
use crate::http1::{self, Body, ChunkedEnd, MAX_HEAD};

/// What the proxy understands of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 (and WebSocket after an upgrade): every fault applies.
    Http,
    /// Opaque bytes (e.g. Redis): `blackhole`, `latency` and `reset` apply.
    Tcp,
}

/// State shared by the accept loop, every connection and the control API.
pub(crate) struct Shared {
    mode: Mode,
    upstreams: Vec<SocketAddr>,
    per_upstream: Vec<AtomicU64>,
    next_upstream: AtomicU64,
    /// Primary and backups instead of round robin ([`ProxyBuilder::failover`]).
    failover: bool,
    faults: watch::Sender<Faults>,
    /// Openings still to forward under `reject.skip`, and refusals left under `reject.limit`.
    reject_left: Mutex<(u64, Option<u64>)>,
    pub(crate) counters: Counters,
    /// Open connections, each with the signal that resets it.
    open: Mutex<HashMap<u64, Arc<Notify>>>,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        *self.reject_left.lock() = faults.reject.as_ref().map_or((0, None), |r| (r.skip, r.limit));
        self.faults.send_replace(faults);
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let open = self.open.lock().len() as u64;
        let per = self.per_upstream.iter().map(|c| c.load(Relaxed)).collect();
        self.counters.snapshot(open, per)
    }

    /// Resets every open connection now; returns how many.
    pub(crate) fn reset_all(&self) -> usize {
        let open = self.open.lock();
        for kill in open.values() {
            kill.notify_one();
        }
        open.len()
    }

    pub(crate) fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The refusal for this opening, if one is in force (and its limit not used up).
    fn take_reject(&self, opening: Opening) -> Option<Reject> {
        let reject = self.faults.borrow().reject.clone()?;
        if !reject.applies_to(opening) {
            return None;
        }
        let mut left = self.reject_left.lock();
        let (skip, limit) = &mut *left;
        if *skip > 0 {
            *skip -= 1;
            return None;
        }
        match limit {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(reject)
    }
}

/// A running fault proxy. Dropping it stops accepting and resets every open connection.
pub struct FaultProxy {
    addr: SocketAddr,
    control: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where the proxy listens, what it forwards to, and whether it serves the control API.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    mode: Mode,
    control: Option<SocketAddr>,
    failover: bool,
}

impl ProxyBuilder {
    /// A proxy on a free port of 127.0.0.1, without a control port.
    pub fn new(mode: Mode, upstreams: Vec<SocketAddr>) -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), upstreams, mode, control: None, failover: false }
    }

    /// Route every connection to the first upstream that accepts it, in the order given (a
    /// primary and its backups), instead of round robin.
    pub fn failover(mut self) -> Self {
        self.failover = true;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Also serve the HTTP control API (see the crate docs) on `addr` (port 0: a free one).
    pub fn control(mut self, addr: SocketAddr) -> Self {
        self.control = Some(addr);
        self
    }

    pub async fn start(self) -> io::Result<FaultProxy> {
        if self.upstreams.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no upstream"));
        }
        let listener = TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: self.mode,
            per_upstream: self.upstreams.iter().map(|_| AtomicU64::new(0)).collect(),
            upstreams: self.upstreams,
            next_upstream: AtomicU64::new(0),
            failover: self.failover,
            faults: watch::channel(Faults::none()).0,
            reject_left: Mutex::new((0, None)),
            counters: Counters::default(),
            open: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(listener, shared.clone()))];
        let control = match self.control {
            Some(at) => {
                let (control_addr, task) = crate::control::serve(at, shared.clone()).await?;
                tasks.push(task);
                Some(control_addr)
            }
            None => None,
        };
        Ok(FaultProxy { addr, control, shared, tasks })
    }
}

impl FaultProxy {
    /// An HTTP proxy in front of `upstreams` (round robin per connection).
    pub async fn http(upstreams: Vec<SocketAddr>) -> io::Result<Self> {
        ProxyBuilder::new(Mode::Http, upstreams).start().await
    }

    /// A TCP proxy in front of one upstream (e.g. Redis).
    pub async fn tcp(upstream: SocketAddr) -> io::Result<Self> {
        ProxyBuilder::new(Mode::Tcp, vec![upstream]).start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The control API's address, if it was started.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Forwards everything untouched again.
    pub fn clear(&self) {
        self.shared.set_faults(Faults::none());
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.shared.snapshot()
    }

    /// Resets (TCP RST) every open connection now. Returns how many there were.
    pub fn reset_connections(&self) -> usize {
        self.shared.reset_all()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or similar: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        Counters::bump(&shared.counters.connections);
        let upstream = if shared.failover {
            0
        } else {
            (shared.next_upstream.fetch_add(1, Relaxed) % shared.upstreams.len() as u64) as usize
        };
        if let Some(c) = shared.per_upstream.get(upstream) {
            c.fetch_add(1, Relaxed);
        }
        let id = shared.next_conn.fetch_add(1, Relaxed);
        let kill = Arc::new(Notify::new());
        shared.open.lock().insert(id, kill.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(&shared, client, upstream, kill).await;
            shared.open.lock().remove(&id);
        });
    }
}

/// How a connection's relay ended early.
#[derive(Debug)]
enum Abort {
    /// Reset both sockets (TCP RST).
    Reset,
    /// Close normally (an I/O error, a protocol error, the other end left).
    Close,
}

impl From<io::Error> for Abort {
    fn from(_: io::Error) -> Self {
        Abort::Close
    }
}

/// A second handle on a socket, so it can be reset after the relay that owns it is gone.
type RstHandle = Arc<Mutex<Option<socket2::Socket>>>;

fn rst_handle(stream: &TcpStream) -> Option<socket2::Socket> {
    socket2::SockRef::from(stream).try_clone().ok()
}

async fn connection(shared: &Arc<Shared>, client: TcpStream, upstream: usize, kill: Arc<Notify>) {
    let client_rst = rst_handle(&client);
    let upstream_rst: RstHandle = Arc::new(Mutex::new(None));
    let reset = {
        let relay = relay(shared.clone(), client, upstream, upstream_rst.clone());
        tokio::select! {
            r = relay => matches!(r, Err(Abort::Reset)),
            _ = kill.notified() => true,
            _ = reset_timer(shared.faults.subscribe()) => {
                Counters::bump(&shared.counters.resets);
                true
            }
        }
    };
    // The relay and its writer tasks are gone (or going); with linger 0 the last close of each
    // socket sends RST instead of FIN.
    if reset {
        for sock in client_rst.iter().chain(upstream_rst.lock().iter()) {
            let _ = sock.set_linger(Some(Duration::ZERO));
        }
    }
}

/// Completes when the `reset` fault says this connection's time is up.
async fn reset_timer(mut faults: watch::Receiver<Faults>) {
    loop {
        let reset = faults.borrow_and_update().reset;
        match reset {
            None => {
                if faults.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
            Some(r) => {
                let ms = rand::random_range(r.min_ms..=r.max_ms.max(r.min_ms));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => return,
                    changed = faults.changed() => if changed.is_err() { return std::future::pending().await },
                }
            }
        }
    }
}

/// Waits while the blackhole is in force.
async fn while_blackholed(faults: &mut watch::Receiver<Faults>) {
    loop {
        if !faults.borrow_and_update().blackhole {
            return;
        }
        if faults.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The read side of one socket, with what was read but not forwarded yet.
struct Inbound {
    half: ReadHalf<TcpStream>,
    buf: BytesMut,
    faults: watch::Receiver<Faults>,
}

impl Inbound {
    fn new(half: ReadHalf<TcpStream>, faults: watch::Receiver<Faults>) -> Self {
        Self { half, buf: BytesMut::with_capacity(16 * 1024), faults }
    }

    /// Reads more into the buffer (not while blackholed). False at end of stream. Cancel-safe.
    async fn fill(&mut self) -> io::Result<bool> {
        while_blackholed(&mut self.faults).await;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.half.read_buf(&mut self.buf).await? > 0)
    }

    /// The next message head, or `None` if the stream ended cleanly between messages.
    async fn head(&mut self) -> Result<Option<Bytes>, Abort> {
        loop {
            if let Some(end) = http1::head_end(&self.buf) {
                return Ok(Some(self.buf.split_to(end).freeze()));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Abort::Close);
            }
            if !self.fill().await? {
                return if self.buf.is_empty() { Ok(None) } else { Err(Abort::Close) };
            }
        }
    }

    /// Up to `max` buffered bytes.
    fn take(&mut self, max: usize) -> Bytes {
        let n = self.buf.len().min(max);
        self.buf.split_to(n).freeze()
    }
}

/// The write side of one socket: a task writes queued chunks when they are due.
struct Outbound {
    tx: Option<mpsc::UnboundedSender<(Instant, Bytes)>>,
    last_due: Instant,
    faults: watch::Receiver<Faults>,
    writer: Option<JoinHandle<()>>,
}

/// Which way bytes flow, for the counters.
#[derive(Clone, Copy)]
enum Dir {
    Up,
    Down,
}

impl Outbound {
    fn spawn(half: WriteHalf<TcpStream>, shared: &Arc<Shared>, dir: Dir) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(half, rx, shared.faults.subscribe(), shared.clone(), dir));
        Self { tx: Some(tx), last_due: Instant::now(), faults: shared.faults.subscribe(), writer: Some(writer) }
    }

    /// Queues bytes; false if the writer is gone (the peer closed).
    fn send(&mut self, bytes: Bytes) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let now = Instant::now();
        let delay = self.faults.borrow().latency.map_or(0, |l| l.ms + rand::random_range(0..=l.jitter_ms));
        let due = (now + Duration::from_millis(delay)).max(self.last_due);
        self.last_due = due;
        self.tx.as_ref().is_some_and(|tx| tx.send((due, bytes)).is_ok())
    }

    /// Writes what is queued, then closes the write side (FIN). Bounded.
    async fn finish(&mut self) {
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

async fn write_loop(
    mut half: WriteHalf<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Bytes)>,
    mut faults: watch::Receiver<Faults>,
    shared: Arc<Shared>,
    dir: Dir,
) {
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        while_blackholed(&mut faults).await;
        if half.write_all(&bytes).await.is_err() {
            return;
        }
        let counter = match dir {
            Dir::Up => &shared.counters.bytes_up,
            Dir::Down => &shared.counters.bytes_down,
        };
        counter.fetch_add(bytes.len() as u64, Relaxed);
    }
    let _ = half.shutdown().await;
}

/// Connects to `upstream`, or, if it refuses (a dead node), to the next ones in turn, each
/// once: what a load balancer does on a connect error (nginx's `proxy_next_upstream error`)
/// before its health check takes the node out.
async fn connect_upstream(shared: &Arc<Shared>, upstream: usize, rst: &RstHandle) -> Option<TcpStream> {
    let mut faults = shared.faults.subscribe();
    while_blackholed(&mut faults).await;
    let n = shared.upstreams.len();
    for i in 0..n {
        let addr = *shared.upstreams.get((upstream + i) % n)?;
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                *rst.lock() = rst_handle(&stream);
                return Some(stream);
            }
            _ => Counters::bump(&shared.counters.upstream_connect_failures),
        }
    }
    None
}

async fn relay(shared: Arc<Shared>, client: TcpStream, upstream: usize, rst: RstHandle) -> Result<(), Abort> {
    // `io::split`, not `into_split`: dropping a write half must not send FIN, or a reset
    // would reach the peer as a clean close.
    let (cr, cw) = tokio::io::split(client);
    let mut from_client = Inbound::new(cr, shared.faults.subscribe());
    let mut to_client = Outbound::spawn(cw, &shared, Dir::Down);
    if shared.mode == Mode::Tcp {
        let Some(stream) = connect_upstream(&shared, upstream, &rst).await else {
            return Err(Abort::Close);
        };
        let (ur, uw) = tokio::io::split(stream);
        let mut up = (Inbound::new(ur, shared.faults.subscribe()), Outbound::spawn(uw, &shared, Dir::Up));
        return tunnel(&mut from_client, &mut to_client, &mut up.0, &mut up.1).await;
    }
    let mut up: Option<(Inbound, Outbound)> = None;
    loop {
        let Some(raw) = from_client.head().await? else {
            to_client.finish().await;
            return Ok(());
        };
        let head = match http1::parse_request(&raw) {
            Ok(h) => h,
            Err(why) => {
                to_client.send(Bytes::from(http1::error_response(400, None, "bad_request", &why)));
                to_client.finish().await;
                return Ok(());
            }
        };
        let c = &shared.counters;
        Counters::bump(&c.requests);
        let opening = head.opening();
        match opening {
            Some(Opening::Ticket) => Counters::bump(&c.tickets),
            Some(Opening::Ws) => Counters::bump(&c.websocket_upgrades),
            Some(Opening::Sse) => Counters::bump(&c.sse_opens),
            Some(Opening::Poll) => Counters::bump(&c.poll_opens),
            None => {}
        }
        let faults = shared.faults();
        if let Some(reject) = opening.and_then(|o| shared.take_reject(o)) {
            Counters::bump(&c.rejected);
            let body = http1::error_response(
                reject.status,
                Some(reject.retry_after_s),
                "overloaded",
                "refused by the fault proxy",
            );
            to_client.send(Bytes::from(body));
            to_client.finish().await;
            return Ok(());
        }
        if head.upgrade_websocket && faults.refuse_websocket {
            Counters::bump(&c.refused_websocket);
            let body = http1::error_response(502, None, "bad_gateway", "the fault proxy refuses WebSocket upgrades");
            to_client.send(Bytes::from(body));
            to_client.finish().await;
            return Ok(());
        }
        if up.is_none() {
            let Some(stream) = connect_upstream(&shared, upstream, &rst).await else {
                to_client.send(Bytes::from(http1::error_response(502, None, "bad_gateway", "upstream unreachable")));
                to_client.finish().await;
                return Ok(());
            };
            let (ur, uw) = tokio::io::split(stream);
            up = Some((Inbound::new(ur, shared.faults.subscribe()), Outbound::spawn(uw, &shared, Dir::Up)));
        }
        let Some((from_up, to_up)) = up.as_mut() else { return Err(Abort::Close) };
        to_up.send(raw);
        copy_body(&mut from_client, to_up, head.body, None).await?;

        let Some(raw) = from_up.head().await? else {
            to_client.finish().await;
            return Ok(());
        };
        let resp = http1::parse_response(&raw).map_err(|_| Abort::Close)?;
        if resp.status == 101 {
            to_client.send(raw);
            if let Some(ms) = faults.kill_after_upgrade_ms {
                let tunnel = tunnel(&mut from_client, &mut to_client, from_up, to_up);
                let _ = tokio::time::timeout(Duration::from_millis(ms), tunnel).await;
                Counters::bump(&c.killed_after_upgrade);
                // Give the 101 a moment to reach the client before the reset discards it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(Abort::Reset);
            }
            return tunnel(&mut from_client, &mut to_client, from_up, to_up).await;
        }
        let body = resp.body(&head.method);
        if resp.event_stream && faults.buffer_sse {
            Counters::bump(&c.buffered_sse_responses);
            let mut held = BytesMut::from(&raw[..]);
            copy_body(from_up, &mut Hold(&mut held), body, Some(&mut from_client)).await?;
            to_client.send(held.freeze());
        } else {
            to_client.send(raw);
            copy_body(from_up, &mut to_client, body, Some(&mut from_client)).await?;
        }
        if body == Body::UntilClose || resp.close || head.close {
            to_client.finish().await;
            return Ok(());
        }
    }
}

/// Where a body goes: a socket's writer, or a buffer that holds it back.
trait Sink {
    fn put(&mut self, bytes: Bytes) -> bool;
}

impl Sink for Outbound {
    fn put(&mut self, bytes: Bytes) -> bool {
        self.send(bytes)
    }
}

struct Hold<'a>(&'a mut BytesMut);

impl Sink for Hold<'_> {
    fn put(&mut self, bytes: Bytes) -> bool {
        self.0.extend_from_slice(&bytes);
        true
    }
}

/// Moves one message body from `src` to `dst`. While a response streams, `client` is watched:
/// a client that goes away ends the connection (so the server sees it leave too).
async fn copy_body(
    src: &mut Inbound,
    dst: &mut impl Sink,
    body: Body,
    mut client: Option<&mut Inbound>,
) -> Result<(), Abort> {
    let mut left = match body {
        Body::None => return Ok(()),
        Body::Length(n) => Some(n),
        Body::Chunked | Body::UntilClose => None,
    };
    let mut chunked = (body == Body::Chunked).then(ChunkedEnd::default);
    loop {
        if !src.buf.is_empty() {
            let chunk = match (&mut left, &mut chunked) {
                (Some(n), _) => {
                    let chunk = src.take(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= chunk.len() as u64;
                    chunk
                }
                (None, Some(tracker)) => match tracker.feed(&src.buf).map_err(|_| Abort::Close)? {
                    Some(end) => {
                        let chunk = src.take(end);
                        if !dst.put(chunk) {
                            return Err(Abort::Close);
                        }
                        return Ok(());
                    }
                    None => src.take(usize::MAX),
                },
                (None, None) => src.take(usize::MAX),
            };
            if !dst.put(chunk) {
                return Err(Abort::Close);
            }
            if left == Some(0) {
                return Ok(());
            }
        }
        let more = match client.as_deref_mut() {
            None => src.fill().await?,
            Some(watch) => loop {
                tokio::select! {
                    more = src.fill() => break more?,
                    alive = watch.fill() => if !alive? { return Err(Abort::Close) },
                }
            },
        };
        if !more {
            return if body == Body::UntilClose { Ok(()) } else { Err(Abort::Close) };
        }
    }
}

/// Moves bytes both ways until either side closes, then flushes the other way and ends.
async fn tunnel(
    from_client: &mut Inbound,
    to_client: &mut Outbound,
    from_up: &mut Inbound,
    to_up: &mut Outbound,
) -> Result<(), Abort> {
    async fn pump(src: &mut Inbound, dst: &mut Outbound) -> Result<(), Abort> {
        loop {
            if !src.buf.is_empty() && !dst.send(src.take(usize::MAX)) {
                return Err(Abort::Close);
            }
            if !src.fill().await? {
                return Ok(());
            }
        }
    }
    tokio::select! {
        r = pump(from_client, to_up) => {
            to_up.finish().await;
            r
        }
        r = pump(from_up, to_client) => {
            to_client.finish().await;
            r
        }
    }
}

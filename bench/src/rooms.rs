//! Large rooms: N members join one room with presence. Each member tracks the set of sessions it
//! knows to be present (snapshot, joins, diffs, leaves). Measured: time from the first
//! `subscribe` until every member's list holds all N, frames and bytes the members received,
//! server CPU.
//!
//! Three servers side by side: presence diffs sent one by one (`--presence-batch 0ms`, the old
//! behaviour), coalesced per interval (the default), and a room that opts out of presence
//! (`--presence-off`), where "consistent" means every member is subscribed.
//!
//! The members are set up first (ticket, WebSocket, `hello`, `welcome`: the session ids go into
//! a directory that no one writes to afterwards), then the clock starts and they join, at most
//! [`WINDOW`] subscribes in flight at a time (a `subscribe` is in flight until its
//! `subscribed`). One by one, the server sends about N²/2 presence frames; a tokio-tungstenite
//! task per member (an allocation, a wake-up and a directory lookup under a lock per frame) got
//! through a fifth of them in 150 s on this machine, so the load generator measured itself. The
//! members are now read like the fan-out subscribers ([`crate::readers`]): a few threads, each
//! polling its share of the sockets with epoll, parsing frames in place out of one read buffer,
//! and looking session ids up in the read-only directory; a member's list is a bitset.
//!
//! Each mode runs against the embedded broker and, with `--redis`, also against a
//! `redis-server` the harness starts on a free loopback port (no persistence) and stops after
//! (the server gets `--redis URL`): the same figures, plus the bytes Redis sent (`INFO stats`
//! `total_net_output_bytes`, before and after) and Redis's CPU time.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustc_hash::FxHasher;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clients::{rtlink_ticket, Target};
use crate::procs::{Paths, Peer, RtlinkOptions, Server};
use crate::wire::{self, WsConn, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

const ROOM: &str = "big";
/// Subscribes in flight at once (sent, `subscribed` not yet received).
const WINDOW: i64 = 32;
/// Reader threads for the members.
const THREADS: usize = 2;
/// How long the members may take to agree.
const BOUND: Duration = Duration::from_secs(150);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    OneByOne,
    Coalesced,
    OptOut,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::OneByOne => "presence diffs one by one (before)",
            Self::Coalesced => "presence diffs coalesced (after)",
            Self::OptOut => "room opted out of presence",
        }
    }

    /// The name `rtlink-bench rooms --modes` knows it by.
    pub fn flag_name(self) -> &'static str {
        match self {
            Self::OneByOne => "one-by-one",
            Self::Coalesced => "coalesced",
            Self::OptOut => "opt-out",
        }
    }

    fn flags(self) -> Vec<String> {
        match self {
            Self::OneByOne => vec!["--presence-batch".into(), "0ms".into()],
            Self::Coalesced => vec![],
            Self::OptOut => vec!["--presence-off".into(), ROOM.into()],
        }
    }
}

/// Where the server keeps presence and history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// In process (the default).
    Embedded,
    /// A real `redis-server` (`--redis URL`), one node.
    Redis,
}

/// What Redis spent on a run (from the clock's start until the server settled).
#[derive(Clone, Copy, Debug)]
pub struct RedisCost {
    /// Bytes Redis sent to its clients (`total_net_output_bytes`).
    pub out_bytes: u64,
    pub cpu_s: f64,
}

#[derive(Clone, Debug)]
pub struct LargeRoom {
    pub mode: Mode,
    pub broker: BrokerKind,
    /// Set for runs over Redis.
    pub redis: Option<RedisCost>,
    pub members: usize,
    /// From the first subscribe until every member's list was complete (or all subscribed).
    pub consistent_s: Option<f64>,
    pub frames: u64,
    pub bytes: u64,
    pub server_cpu_s: f64,
    pub failure: Option<String>,
}

impl LargeRoom {
    /// The mode, and the broker when it is Redis.
    pub fn label(&self) -> String {
        match self.broker {
            BrokerKind::Embedded => self.mode.name().to_owned(),
            BrokerKind::Redis => format!("{}, over Redis", self.mode.name()),
        }
    }

    /// Redis's share of the run, for the table's note column.
    pub fn redis_note(&self) -> String {
        self.redis.map_or_else(String::new, |c| {
            format!(
                "Redis sent {:.1} MB, Redis CPU {:.1} s",
                c.out_bytes as f64 / 1e6,
                c.cpu_s
            )
        })
    }
}

pub async fn run_all(paths: &Paths, members: usize) -> Vec<LargeRoom> {
    let mut out = Vec::new();
    for mode in [Mode::OneByOne, Mode::Coalesced, Mode::OptOut] {
        out.push(run_mode(paths, mode, BrokerKind::Embedded, members).await);
    }
    out
}

/// One mode, logged as it ends.
pub async fn run_mode(paths: &Paths, mode: Mode, broker: BrokerKind, members: usize) -> LargeRoom {
    let over = match broker {
        BrokerKind::Embedded => "",
        BrokerKind::Redis => " over Redis",
    };
    eprintln!("large room: {}{over} with {members} members", mode.name());
    let r = run(paths, mode, broker, members).await;
    eprintln!(
        "  consistent after {:?} s, {} frames, {:.1} MB, server CPU {:.1} s{}{}",
        r.consistent_s,
        r.frames,
        r.bytes as f64 / 1e6,
        r.server_cpu_s,
        r.redis
            .map_or_else(String::new, |_| format!(", {}", r.redis_note())),
        r.failure
            .as_deref()
            .map(|f| format!(" FAILED: {f}"))
            .unwrap_or_default()
    );
    r
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// What every member thread shares. The directory is written before the threads start.
struct Shared {
    mode: Mode,
    n: usize,
    /// Session id → member index.
    directory: FxMap<Box<[u8]>, u32>,
    /// Subscribes that may still be sent now.
    window: AtomicI64,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Members whose list is complete (or, opted out, who are subscribed).
    complete: AtomicUsize,
    /// When the last member completed, in µs after the start.
    last_complete_us: AtomicU64,
    /// Session ids no member was set up with, and connections that ended.
    unknown_ids: AtomicU64,
    closed: AtomicU64,
    stop: AtomicBool,
    started: Instant,
}

async fn run(paths: &Paths, mode: Mode, broker: BrokerKind, n: usize) -> LargeRoom {
    let mut out = LargeRoom {
        mode,
        broker,
        redis: None,
        members: n,
        consistent_s: None,
        frames: 0,
        bytes: 0,
        server_cpu_s: 0.0,
        failure: None,
    };
    let redis = match broker {
        BrokerKind::Embedded => None,
        BrokerKind::Redis => match RedisServer::start() {
            Ok(r) => Some(r),
            Err(e) => {
                out.failure = Some(format!("redis-server: {e:#}"));
                return out;
            }
        },
    };
    let mut extra = mode.flags();
    if let Some(r) = &redis {
        extra.extend(["--redis".into(), r.url()]);
    }
    let opts = RtlinkOptions {
        extra,
        ..RtlinkOptions::default()
    };
    let server = match Server::start(paths, Peer::Rtlink, &opts) {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(format!("{e:#}"));
            return out;
        }
    };
    let target = Target::new(Peer::Rtlink, server.port);
    let members = match connect_all(&target, n).await {
        Ok(m) => m,
        Err(e) => {
            out.failure = Some(format!("setup: {e:#}"));
            return out;
        }
    };
    let mut directory = FxMap::default();
    for (i, m) in members.iter().enumerate() {
        directory.insert(m.session.clone().into_bytes().into_boxed_slice(), i as u32);
    }
    if directory.len() != n {
        out.failure = Some("two members got the same session id".into());
        return out;
    }
    quiesce_server(&server).await;
    let cpu0 = server.cpu();
    let redis0 = redis.as_ref().map(RedisServer::cost);
    let shared = Arc::new(Shared {
        mode,
        n,
        directory,
        window: AtomicI64::new(WINDOW),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
        last_complete_us: AtomicU64::new(0),
        unknown_ids: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        started: Instant::now(),
    });
    let mut shares: Vec<Vec<(usize, Setup)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, m) in members.into_iter().enumerate() {
        shares[i % THREADS].push((i, m));
    }
    let threads: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("member-reader-{t}"))
                .spawn(move || member_thread(share, &shared))
        })
        .collect();
    let deadline = shared.started + BOUND;
    while shared.complete.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let complete = shared.complete.load(Ordering::Relaxed);
    if complete >= n {
        out.consistent_s = Some(shared.last_complete_us.load(Ordering::Relaxed) as f64 / 1e6);
    } else {
        out.failure = Some(format!(
            "{complete} of {n} members consistent after {} s",
            BOUND.as_secs()
        ));
    }
    quiesce_server(&server).await;
    out.server_cpu_s = server.cpu().saturating_sub(cpu0).as_secs_f64();
    if let (Some(r), Some(Ok(before))) = (&redis, redis0) {
        out.redis = match r.cost() {
            Ok(after) => Some(RedisCost {
                out_bytes: after.out_bytes.saturating_sub(before.out_bytes),
                cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
            }),
            Err(e) => {
                out.failure = Some(format!("redis INFO: {e:#}"));
                None
            }
        };
    }
    out.frames = shared.frames.load(Ordering::Relaxed);
    out.bytes = shared.bytes.load(Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    let (unknown, closed) = (
        shared.unknown_ids.load(Ordering::Relaxed),
        shared.closed.load(Ordering::Relaxed),
    );
    if unknown > 0 || closed > 0 {
        let note = format!("{unknown} unknown session ids, {closed} connections ended");
        out.failure = Some(match out.failure.take() {
            Some(f) => format!("{f}; {note}"),
            None => note,
        });
    }
    out
}

/// A throwaway `redis-server` (or `$REDIS_SERVER`) on a free loopback port, without
/// persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> anyhow::Result<Self> {
        let port = crate::procs::free_port()?;
        let dir = std::env::temp_dir().join(format!("rtlink-bench-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {binary}: {e} (is redis-server installed?)"))?;
        let mut server = Self { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.info_stats().is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("redis-server exited at start: {status}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("redis-server did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `INFO stats` over a plain connection (RESP: one bulk string).
    fn info_stats(&self) -> anyhow::Result<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let len: usize = header
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected INFO reply {header:?}"))?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Bytes sent to clients so far, and CPU time.
    fn cost(&self) -> anyhow::Result<RedisCost> {
        let info = self.info_stats()?;
        let out_bytes = info
            .lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no total_net_output_bytes in INFO stats"))?;
        let cpu_s = crate::procs::cpu_time(self.child.id())
            .unwrap_or_default()
            .as_secs_f64();
        Ok(RedisCost { out_bytes, cpu_s })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the server's CPU use settles (its setup work done), at most a few seconds.
async fn quiesce_server(server: &Server) {
    crate::fanout::quiesce(server).await;
}

/// A member after setup: its session id, socket and what arrived after `welcome`.
struct Setup {
    session: String,
    stream: std::net::TcpStream,
    buffered: Vec<u8>,
}

/// Tickets, then WebSockets with `hello` / `welcome`, 32 at a time.
async fn connect_all(target: &Target, n: usize) -> anyhow::Result<Vec<Setup>> {
    let gate = Arc::new(Semaphore::new(32));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (target, gate) = (target.clone(), gate.clone());
        set.spawn(async move {
            let _p = gate.acquire_owned().await;
            (i, connect(&target, &format!("m{i}")).await)
        });
    }
    let mut members: Vec<Option<Setup>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, m) = r?;
        members[i] = Some(m?);
    }
    Ok(members.into_iter().flatten().collect())
}

async fn connect(target: &Target, name: &str) -> anyhow::Result<Setup> {
    let ticket = rtlink_ticket(target, name).await?;
    let mut ws = WsConn::connect(target.port, &format!("/v1/ws?ticket={ticket}")).await?;
    ws.send_text("{\"t\":\"hello\",\"v\":1}").await?;
    let welcome = loop {
        let t = ws.next_text().await?;
        if t.contains("\"t\":\"welcome\"") {
            break t;
        }
    };
    let session = session_ids(welcome.as_bytes())
        .next()
        .map(|id| String::from_utf8_lossy(id).into_owned())
        .ok_or_else(|| anyhow::anyhow!("no session id in {welcome}"))?;
    let (stream, buffered) = ws.into_parts()?;
    Ok(Setup {
        session,
        stream,
        buffered,
    })
}

/// Session ids in a frame, after each `"session":"`.
fn session_ids(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    const KEY: &[u8] = b"\"session\":\"";
    memmem::find_iter(text, KEY).filter_map(move |at| {
        let rest = &text[at + KEY.len()..];
        memchr::memchr(b'"', rest).map(|end| &rest[..end])
    })
}

/// One member, as its reader thread holds it.
struct Member {
    stream: TcpStream,
    partial: Vec<u8>,
    message: Vec<u8>,
    out: Vec<u8>,
    writable_interest: bool,
    subscribe_sent: bool,
    subscribed: bool,
    done: bool,
    /// Bit `j`: member `j` is in this member's list.
    known: Vec<u64>,
    count: usize,
}

fn member_thread(share: Vec<(usize, Setup)>, shared: &Shared) {
    let Ok(mut poll) = Poll::new() else {
        shared
            .closed
            .fetch_add(share.len() as u64, Ordering::Relaxed);
        return;
    };
    let words = shared.n.div_ceil(64);
    let mut members: Vec<Option<Member>> = Vec::with_capacity(share.len());
    let mut to_subscribe: Vec<usize> = Vec::with_capacity(share.len());
    let mut scratch = vec![0u8; 256 * 1024];
    for (slot, (_, setup)) in share.into_iter().enumerate() {
        let mut m = Member {
            stream: TcpStream::from_std(setup.stream),
            partial: Vec::new(),
            message: Vec::new(),
            out: Vec::new(),
            writable_interest: false,
            subscribe_sent: false,
            subscribed: false,
            done: false,
            known: vec![0; words],
            count: 0,
        };
        let registered = poll
            .registry()
            .register(&mut m.stream, Token(slot), Interest::READABLE)
            .is_ok();
        if !registered || m.consume(&setup.buffered, shared).is_err() {
            shared.closed.fetch_add(1, Ordering::Relaxed);
            members.push(None);
            continue;
        }
        members.push(Some(m));
        to_subscribe.push(slot);
    }
    // Subscribes go out in the order the members were set up.
    to_subscribe.reverse();
    let mut events = Events::with_capacity(1024);
    let subscribe = {
        let mut frame = Vec::new();
        wire::encode_frame(
            OP_TEXT,
            format!("{{\"t\":\"subscribe\",\"room\":\"{ROOM}\"}}").as_bytes(),
            &mut frame,
        );
        frame
    };
    while !shared.stop.load(Ordering::Relaxed) {
        while !to_subscribe.is_empty() && take_permit(&shared.window) {
            let Some(slot) = to_subscribe.pop() else {
                break;
            };
            let Some(m) = members[slot].as_mut() else {
                shared.window.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            m.out.extend_from_slice(&subscribe);
            m.subscribe_sent = true;
            if m.flush_out(poll.registry(), Token(slot)).is_err() {
                members[slot] = None;
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.window.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(5))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(m) = members.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let mut alive = true;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                alive = m.read_ready(&mut scratch, shared).is_ok();
            }
            if alive && (ev.is_writable() || !m.out.is_empty()) {
                alive = m.flush_out(poll.registry(), Token(slot)).is_ok();
            }
            if !alive {
                if let Some(mut m) = members[slot].take() {
                    let _ = poll.registry().deregister(&mut m.stream);
                    if m.subscribe_sent && !m.subscribed {
                        shared.window.fetch_add(1, Ordering::Relaxed);
                    }
                }
                shared.closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn take_permit(window: &AtomicI64) -> bool {
    window
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w > 0).then(|| w - 1)
        })
        .is_ok()
}

impl Member {
    /// Reads until the socket is empty (mio is edge-triggered).
    fn read_ready(&mut self, scratch: &mut [u8], shared: &Shared) -> anyhow::Result<()> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => anyhow::bail!("connection ended"),
                Ok(n) => self.consume(&scratch[..n], shared)?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parses the frames in `data` (after what is left of the previous read).
    fn consume(&mut self, data: &[u8], shared: &Shared) -> anyhow::Result<()> {
        if self.partial.is_empty() {
            let used = self.parse(data, shared)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, shared)?;
            buf.drain(..used);
            self.partial = buf;
        }
        Ok(())
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn parse(&mut self, buf: &[u8], shared: &Shared) -> anyhow::Result<usize> {
        let (mut at, mut frames, mut bytes) = (0, 0u64, 0u64);
        while let Some(f) = wire::parse_frame(&buf[at..])? {
            let payload = &buf[at + f.payload.start..at + f.payload.end];
            at += f.len;
            match f.opcode {
                OP_TEXT | OP_BINARY | OP_CONTINUATION if f.fin && self.message.is_empty() => {
                    frames += 1;
                    bytes += payload.len() as u64;
                    self.on_message(payload, shared);
                }
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    self.message.extend_from_slice(payload);
                    if f.fin {
                        let message = std::mem::take(&mut self.message);
                        frames += 1;
                        bytes += message.len() as u64;
                        self.on_message(&message, shared);
                    }
                }
                OP_PING => wire::encode_frame(OP_PONG, payload, &mut self.out),
                OP_CLOSE => anyhow::bail!("closed by the server"),
                _ => {}
            }
        }
        if frames > 0 {
            shared.frames.fetch_add(frames, Ordering::Relaxed);
            shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(at)
    }

    fn on_message(&mut self, text: &[u8], shared: &Shared) {
        if let Some(reply) = crate::readers::keepalive_reply(Peer::Rtlink, text) {
            wire::encode_frame(OP_TEXT, reply, &mut self.out);
            return;
        }
        const SUBSCRIBED: &[u8] = b"{\"t\":\"subscribed\"";
        const SNAPSHOT: &[u8] = b"{\"t\":\"presence_snapshot\"";
        const DIFF: &[u8] = b"{\"t\":\"presence_diff\"";
        const JOIN: &[u8] = b"{\"t\":\"presence_join\"";
        const UPDATE: &[u8] = b"{\"t\":\"presence_update\"";
        const LEAVE: &[u8] = b"{\"t\":\"presence_leave\"";
        if text.starts_with(SUBSCRIBED) {
            if !self.subscribed {
                self.subscribed = true;
                shared.window.fetch_add(1, Ordering::Relaxed);
            }
        } else if text.starts_with(SNAPSHOT) {
            self.known.iter_mut().for_each(|w| *w = 0);
            self.count = 0;
            self.mark(text, true, shared);
        } else if text.starts_with(JOIN) || text.starts_with(UPDATE) {
            self.mark(text, true, shared);
        } else if text.starts_with(LEAVE) {
            self.mark(text, false, shared);
        } else if text.starts_with(DIFF) {
            match memmem::find(text, b"\"leaves\":") {
                Some(at) => {
                    self.mark(&text[..at], true, shared);
                    self.mark(&text[at..], false, shared);
                }
                None => self.mark(text, true, shared),
            }
        } else {
            return;
        }
        let complete = match shared.mode {
            Mode::OptOut => self.subscribed,
            _ => self.subscribed && self.count == shared.n,
        };
        if complete && !self.done {
            self.done = true;
            let at = shared.started.elapsed().as_micros() as u64;
            shared.last_complete_us.fetch_max(at, Ordering::Relaxed);
            shared.complete.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds (or removes) the sessions named in `text` to this member's list.
    fn mark(&mut self, text: &[u8], present: bool, shared: &Shared) {
        for id in session_ids(text) {
            let Some(&j) = shared.directory.get(id) else {
                shared.unknown_ids.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (word, bit) = (j as usize / 64, 1u64 << (j % 64));
            let was = self.known[word] & bit != 0;
            if present && !was {
                self.known[word] |= bit;
                self.count += 1;
            } else if !present && was {
                self.known[word] &= !bit;
                self.count -= 1;
            }
        }
    }

    /// Writes pending frames; asks for writability while some remain.
    fn flush_out(&mut self, registry: &mio::Registry, token: Token) -> std::io::Result<()> {
        crate::readers::flush_pending(
            &mut self.stream,
            &mut self.out,
            &mut self.writable_interest,
            registry,
            token,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_found_in_every_presence_frame() {
        let diff = br#"{"t":"presence_diff","room":"big","joins":[{"session":"a1","user":"u","name":"m1","meta":""},{"session":"b2","user":"v","name":"m2","meta":"{\"session\":\"x\"}"}],"leaves":[{"session":"c3","user":"w"}]}"#;
        let ids: Vec<&[u8]> = session_ids(diff).collect();
        assert_eq!(ids, [&b"a1"[..], b"b2", b"c3"]);
        let welcome = br#"{"t":"welcome","v":1,"session":"abc","resume_token":"t"}"#;
        assert_eq!(session_ids(welcome).next(), Some(&b"abc"[..]));
    }
}

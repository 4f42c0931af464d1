//! The WebSocket subscribers' readers: one OS thread (or a few), each polling its share of the
//! connections with epoll (mio), reading every ready socket into one shared buffer and parsing
//! the frames in place.
//!
//! The server under test and the load generator share the machine's cores; a reader task per
//! connection (tokio-tungstenite) spent more per delivery than some servers did, so the load
//! generator saturated first. Here a delivery costs its share of one `read` and a scan for the
//! `#seq.µs#` marker: no task wake-up, no allocation, no lock.
//!
//! Every delivery is checked as before: `seq` must be the previous one plus one on each
//! connection (no loss, no duplicate, in order), and its latency is recorded. Keep-alives are
//! answered (rtlink `ping` → `pong`, Engine.IO `2` → `3`, WebSocket pings), so connections can
//! also be held idle.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::clients::now_us;
use crate::procs::Peer;
use crate::wire::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

const WAKER: Token = Token(usize::MAX);
/// One read takes this much at most; most reads return one or a few frames.
const READ_CHUNK: usize = 256 * 1024;

/// A connection set up by [`crate::clients::ws_subscriber`], ready to be read.
pub struct Sub {
    pub stream: std::net::TcpStream,
    /// Bytes received during setup but not parsed yet.
    pub buffered: Vec<u8>,
    pub peer: Peer,
}

/// What the readers saw since the last [`Readers::take`].
#[derive(Default)]
pub struct Taken {
    pub latencies_us: Vec<u32>,
    /// Gaps, duplicates, reorderings.
    pub errors: u64,
    /// Connections that ended (the server closed them, or they failed).
    pub closed: u64,
}

enum Cmd {
    Add(Sub),
    Take(tokio::sync::oneshot::Sender<Taken>),
}

struct Thread {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
}

/// The reader threads. Dropping it stops them and closes every connection they hold.
pub struct Readers {
    threads: Vec<Thread>,
    next: usize,
}

impl Readers {
    /// `threads` reader threads; each delivery adds one to `total`.
    pub fn new(threads: usize, total: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for i in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            let total = total.clone();
            let join = std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || run(poll, rx, total))
                .context("starting a reader thread")?;
            out.push(Thread {
                tx,
                waker,
                join: Some(join),
            });
        }
        Ok(Self {
            threads: out,
            next: 0,
        })
    }

    /// Hands a connection to the next thread (round robin).
    pub fn add(&mut self, sub: Sub) {
        let t = &self.threads[self.next % self.threads.len()];
        self.next += 1;
        let _ = t.tx.send(Cmd::Add(sub));
        let _ = t.waker.wake();
    }

    /// Takes the latencies and counts recorded so far by every thread.
    pub async fn take(&self) -> Taken {
        let mut all = Taken::default();
        for t in &self.threads {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if t.tx.send(Cmd::Take(tx)).is_err() {
                continue;
            }
            let _ = t.waker.wake();
            if let Ok(part) = rx.await {
                all.latencies_us.extend(part.latencies_us);
                all.errors += part.errors;
                all.closed += part.closed;
            }
        }
        all
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for t in &mut self.threads {
            // A closed channel stops the thread at its next wake-up.
            let (tx, _) = mpsc::channel();
            drop(std::mem::replace(&mut t.tx, tx));
            let _ = t.waker.wake();
        }
        for t in &mut self.threads {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// One connection, as a reader thread holds it.
struct Conn {
    stream: TcpStream,
    peer: Peer,
    /// The start of a frame whose end has not arrived yet.
    partial: Vec<u8>,
    /// A fragmented message being assembled (servers here do not fragment, but may).
    message: Vec<u8>,
    /// Keep-alive answers not written yet (the socket was full).
    out: Vec<u8>,
    writable_interest: bool,
    last_seq: u64,
}

/// Per-thread results of the current step.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    errors: u64,
    closed: u64,
}

fn run(mut poll: Poll, rx: mpsc::Receiver<Cmd>, total: Arc<AtomicU64>) {
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut seen = Seen::default();
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut delivered = 0u64;
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let mut alive = true;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                match conn.read_ready(&mut scratch, &mut seen) {
                    Ok(n) => delivered += n,
                    Err(_) => alive = false,
                }
            }
            if alive && (ev.is_writable() || !conn.out.is_empty()) {
                alive = conn.flush_out(poll.registry(), Token(i)).is_ok();
            }
            if !alive {
                if let Some(mut c) = conns[i].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                seen.closed += 1;
            }
        }
        if delivered > 0 {
            total.fetch_add(delivered, Ordering::Relaxed);
        }
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(sub)) => {
                    let i = conns.len();
                    let mut conn = Conn {
                        stream: TcpStream::from_std(sub.stream),
                        peer: sub.peer,
                        partial: Vec::new(),
                        message: Vec::new(),
                        out: Vec::new(),
                        writable_interest: false,
                        last_seq: 0,
                    };
                    if poll
                        .registry()
                        .register(&mut conn.stream, Token(i), Interest::READABLE)
                        .is_err()
                    {
                        seen.closed += 1;
                        conns.push(None);
                        continue;
                    }
                    // Frames that arrived with the setup's last answer.
                    let ok = conn
                        .consume(&sub.buffered, now_us(), &mut seen)
                        .map(|n| total.fetch_add(n, Ordering::Relaxed));
                    if ok.is_err() {
                        seen.closed += 1;
                        conns.push(None);
                    } else {
                        conns.push(Some(conn));
                    }
                }
                Ok(Cmd::Take(reply)) => {
                    let _ = reply.send(Taken {
                        latencies_us: std::mem::take(&mut seen.latencies_us),
                        errors: std::mem::take(&mut seen.errors),
                        closed: std::mem::take(&mut seen.closed),
                    });
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
    }
}

impl Conn {
    /// Reads until the socket is empty (mio is edge-triggered). Returns the deliveries seen.
    fn read_ready(&mut self, scratch: &mut [u8], seen: &mut Seen) -> anyhow::Result<u64> {
        let mut delivered = 0;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => anyhow::bail!("connection ended"),
                Ok(n) => delivered += self.consume(&scratch[..n], now_us(), seen)?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(delivered),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parses the frames in `data` (after what is left of the previous read).
    fn consume(&mut self, data: &[u8], now: u64, seen: &mut Seen) -> anyhow::Result<u64> {
        if self.partial.is_empty() {
            let (used, n) = self.parse(data, now, seen)?;
            self.partial.extend_from_slice(&data[used..]);
            Ok(n)
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let (used, n) = self.parse(&buf, now, seen)?;
            buf.drain(..used);
            self.partial = buf;
            Ok(n)
        }
    }

    /// Handles every complete frame at the start of `buf`: returns the bytes used and the
    /// deliveries seen.
    fn parse(&mut self, buf: &[u8], now: u64, seen: &mut Seen) -> anyhow::Result<(usize, u64)> {
        let mut at = 0;
        let mut delivered = 0;
        while let Some(f) = wire::parse_frame(&buf[at..])? {
            let payload = &buf[at + f.payload.start..at + f.payload.end];
            at += f.len;
            match f.opcode {
                OP_TEXT | OP_BINARY | OP_CONTINUATION if f.fin && self.message.is_empty() => {
                    delivered += self.on_message(payload, now, seen);
                }
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    self.message.extend_from_slice(payload);
                    if f.fin {
                        let message = std::mem::take(&mut self.message);
                        delivered += self.on_message(&message, now, seen);
                    }
                }
                OP_PING => wire::encode_frame(OP_PONG, payload, &mut self.out),
                OP_CLOSE => anyhow::bail!("closed by the server"),
                _ => {}
            }
        }
        Ok((at, delivered))
    }

    /// A whole message: a keep-alive to answer, or a delivery to check. Returns 1 for a delivery.
    fn on_message(&mut self, text: &[u8], now: u64, seen: &mut Seen) -> u64 {
        if let Some(reply) = keepalive_reply(self.peer, text) {
            wire::encode_frame(OP_TEXT, reply, &mut self.out);
            return 0;
        }
        let Some((seq, sent)) = marker(text) else {
            return 0;
        };
        if seq != self.last_seq + 1 {
            seen.errors += 1;
        }
        self.last_seq = self.last_seq.max(seq);
        seen.latencies_us
            .push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
        1
    }

    /// Writes pending keep-alive answers; asks for writability while some remain.
    fn flush_out(&mut self, registry: &mio::Registry, token: Token) -> std::io::Result<()> {
        flush_pending(
            &mut self.stream,
            &mut self.out,
            &mut self.writable_interest,
            registry,
            token,
        )
    }
}

/// The answer a client owes to a server's keep-alive message, if `text` is one.
pub fn keepalive_reply(peer: Peer, text: &[u8]) -> Option<&'static [u8]> {
    match peer {
        Peer::Rtlink if text.len() < 32 && contains(text, b"\"t\":\"ping\"") => {
            Some(b"{\"t\":\"pong\"}")
        }
        Peer::SocketIo if text == b"2" => Some(b"3"),
        _ => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Finds `#seq.µs#` in a message: every published payload starts with it, whatever the framing.
pub fn marker(text: &[u8]) -> Option<(u64, u64)> {
    let start = text.iter().position(|b| *b == b'#')? + 1;
    let mut seq = 0u64;
    let mut i = start;
    while let Some(d) = text.get(i).filter(|b| b.is_ascii_digit()) {
        seq = seq.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    if i == start || text.get(i) != Some(&b'.') {
        return None;
    }
    i += 1;
    let us_start = i;
    let mut us = 0u64;
    while let Some(d) = text.get(i).filter(|b| b.is_ascii_digit()) {
        us = us.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    if i == us_start || text.get(i) != Some(&b'#') {
        return None;
    }
    Some((seq, us))
}

/// Writes what `out` holds to a non-blocking `stream` until it would block, and keeps the
/// stream's registration asking for writability exactly while bytes remain (the member loops of
/// this file and of `rooms.rs` share it).
pub fn flush_pending(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    writable_interest: &mut bool,
    registry: &mio::Registry,
    token: Token,
) -> std::io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let want = !out.is_empty();
    if want != *writable_interest {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(stream, token, interest)?;
        *writable_interest = want;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::payload;

    #[test]
    fn finds_the_marker_in_every_framing() {
        let p = payload(42, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(marker(p.as_bytes()).map(|m| m.0), Some(42));
        let rt = format!("{{\"t\":\"message\",\"room\":\"b\",\"offset\":3,\"sender\":\"u\",\"payload\":\"{p}\"}}");
        assert_eq!(marker(rt.as_bytes()).map(|m| m.0), Some(42));
        let sio = format!("42[\"msg\",\"{p}\"]");
        assert_eq!(marker(sio.as_bytes()).map(|m| m.0), Some(42));
        assert_eq!(marker(b"{\"t\":\"presence_join\"}"), None);
        assert_eq!(marker(b"#12#"), None);
    }

    #[test]
    fn keepalives_are_answered_per_peer() {
        assert_eq!(
            keepalive_reply(Peer::Rtlink, b"{\"t\":\"ping\"}"),
            Some(&b"{\"t\":\"pong\"}"[..])
        );
        assert_eq!(keepalive_reply(Peer::SocketIo, b"2"), Some(&b"3"[..]));
        assert_eq!(keepalive_reply(Peer::Raw, b"2"), None);
    }

    /// Frames split at every byte boundary across reads are all seen, in order, once.
    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server_side = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut conn = Conn {
            stream: TcpStream::from_std(a),
            peer: Peer::Raw,
            partial: Vec::new(),
            message: Vec::new(),
            out: Vec::new(),
            writable_interest: false,
            last_seq: 0,
        };
        let mut wire_bytes = Vec::new();
        for seq in 1..=5u64 {
            let p = payload(seq, 100 + seq as usize * 60);
            wire_bytes.push(0x81);
            if p.len() < 126 {
                wire_bytes.push(p.len() as u8);
            } else {
                wire_bytes.push(126);
                wire_bytes.extend_from_slice(&(p.len() as u16).to_be_bytes());
            }
            wire_bytes.extend_from_slice(p.as_bytes());
        }
        let mut seen = Seen::default();
        let mut delivered = 0;
        for chunk in wire_bytes.chunks(7) {
            delivered += conn.consume(chunk, now_us(), &mut seen).unwrap();
        }
        assert_eq!(delivered, 5);
        assert_eq!(seen.errors, 0);
        assert_eq!(seen.latencies_us.len(), 5);
        assert!(conn.partial.is_empty());
    }
}

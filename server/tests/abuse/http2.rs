//! HTTP/2: one connection cannot hold more than `--h2-max-streams` requests at once. The
//! attacker is a hand-written HTTP/2 client (a conforming one, like `h2`, would never exceed
//! the limit the server announces): it opens twice as many streams as allowed, each a
//! `POST /v1/send` whose body never comes, without waiting for anything.

use std::collections::{HashMap, HashSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::ServerProcess;
use crate::{bounded, Bystander, WAIT};

const LIMIT: u32 = 8;
const REFUSED_STREAM: u32 = 0x7;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal without indexing, with a static-table name (index < 15) and a short value.
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut out = vec![name_index, value.len() as u8];
    out.extend_from_slice(value.as_bytes());
    out
}

/// `POST http://{authority}/v1/send`, body to follow (no END_STREAM).
fn open_stream(stream: u32, authority: &str) -> Vec<u8> {
    // 0x83 = :method POST, 0x86 = :scheme http (static table, indexed).
    let mut block = vec![0x83, 0x86];
    block.extend(literal(4, "/v1/send")); // :path
    block.extend(literal(1, authority)); // :authority
    frame(HEADERS, END_HEADERS, stream, &block)
}

/// What the server said on the attacker's connection.
#[derive(Default, Debug)]
struct Seen {
    max_streams: Option<u32>,
    resets: HashMap<u32, u32>,
    /// Streams the server answered (a response HEADERS frame).
    answered: HashSet<u32>,
    goaway: bool,
    closed: bool,
}

/// Reads frames until `until` holds or the connection closes; answers SETTINGS and PING.
async fn read_until(
    tcp: &mut TcpStream,
    seen: &mut Seen,
    buf: &mut Vec<u8>,
    until: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !until(seen) && !seen.closed {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    for s in payload.chunks(6) {
                        if s.len() == 6 && u16::from_be_bytes([s[0], s[1]]) == 0x3 {
                            seen.max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                        }
                    }
                    tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                PING if flags & ACK == 0 => {
                    tcp.write_all(&frame(PING, ACK, 0, &payload)).await.unwrap();
                }
                RST_STREAM => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    seen.resets.insert(stream, code);
                }
                GOAWAY => seen.goaway = true,
                HEADERS => {
                    seen.answered.insert(stream);
                }
                _ => {}
            }
        }
        if until(seen) {
            return;
        }
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .expect("the server said nothing more");
        match read {
            Ok(0) | Err(_) => seen.closed = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Twice the allowed streams at once: the server announced the limit, refuses every stream
/// over it with `RST_STREAM(REFUSED_STREAM)`, keeps the ones within it open and the connection
/// up; once the attacker ends its open streams, new ones are accepted again. Meanwhile another
/// user over WebSocket keeps being served and a newcomer joins.
#[tokio::test]
async fn abuse_one_http2_connection_cannot_open_more_than_the_stream_limit() {
    bounded(async {
        let limit = LIMIT.to_string();
        let server = ServerProcess::start(&["--h2-max-streams", &limit]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let authority = server.addr.to_string();

        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tcp.write_all(&hello).await.unwrap();
        let (mut seen, mut buf) = (Seen::default(), Vec::new());
        read_until(&mut tcp, &mut seen, &mut buf, |s| s.max_streams.is_some()).await;
        assert_eq!(seen.max_streams, Some(LIMIT), "the limit is announced");

        // Without waiting for anything: 2 x LIMIT streams, ids 1, 3, 5, ...
        let streams: Vec<u32> = (0..2 * LIMIT).map(|i| 2 * i + 1).collect();
        let mut burst = Vec::new();
        for &s in &streams {
            burst.extend(open_stream(s, &authority));
        }
        tcp.write_all(&burst).await.unwrap();
        read_until(&mut tcp, &mut seen, &mut buf, |s| s.resets.len() >= LIMIT as usize).await;
        let refused: Vec<u32> = streams[LIMIT as usize..].to_vec();
        for s in &refused {
            assert_eq!(seen.resets.get(s), Some(&REFUSED_STREAM), "stream {s}: {seen:?}");
        }
        for s in &streams[..LIMIT as usize] {
            assert!(!seen.resets.contains_key(s), "stream {s} within the limit was reset");
        }
        assert!(!seen.goaway && !seen.closed, "the connection stays up: {seen:?}");

        // Meanwhile everyone else is served.
        bystander.assert_unaffected(&client).await;

        // The attacker ends its streams (an empty body, not a valid batch): each is answered
        // (`400`), which frees its slot, and a new stream is accepted and answered too.
        let open = streams[..LIMIT as usize].to_vec();
        for &s in &open {
            tcp.write_all(&frame(DATA, END_STREAM, s, &[])).await.unwrap();
        }
        read_until(&mut tcp, &mut seen, &mut buf, |s| open.iter().all(|o| s.answered.contains(o)))
            .await;
        let next = 2 * (2 * LIMIT) + 1;
        tcp.write_all(&open_stream(next, &authority)).await.unwrap();
        tcp.write_all(&frame(DATA, END_STREAM, next, &[])).await.unwrap();
        read_until(&mut tcp, &mut seen, &mut buf, |s| s.answered.contains(&next)).await;
        assert!(seen.answered.contains(&next), "a stream after the others ended: {seen:?}");
        assert!(!seen.resets.contains_key(&next), "{seen:?}");
        eprintln!(
            "h2 streams: {} of {} streams opened at once were refused REFUSED_STREAM (limit {LIMIT}); the connection stayed up",
            refused.len(),
            streams.len()
        );
    })
    .await;
}

//! A minimal WebSocket client (RFC 6455) for the load generator's subscribers.
//!
//! tokio-tungstenite costs a task wake-up, a few allocations and a UTF-8 check per message; on a
//! 2-core machine shared with the server under test, that made the load generator the
//! bottleneck. Subscribers here speak just enough WebSocket to set up a connection
//! ([`WsConn`]: handshake, masked text frames out, frames in), then hand the socket to the
//! readers ([`crate::readers`]), which parse the server's unmasked frames straight out of one
//! shared read buffer. No extension is negotiated, so frames are plain.

use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload is in the buffer.
    pub payload: Range<usize>,
    /// Bytes the frame takes, header included.
    pub len: usize,
}

/// Parses the frame at the start of `buf`: `Ok(None)` if it is not complete yet. Server frames
/// are never masked; a masked one is an error.
pub fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (len, header) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let Ok(len) = usize::try_from(len) else {
        bail!("frame too large")
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: header..header + len,
        len: header + len,
    }))
}

/// Appends a client frame (masked, as RFC 6455 requires of clients) to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A WebSocket connection during setup (handshake, hello, subscribe), before the readers take it.
pub struct WsConn {
    stream: TcpStream,
    /// Received bytes not parsed yet.
    buf: Vec<u8>,
}

impl WsConn {
    /// Connects to `127.0.0.1:port` and upgrades `path` (which holds the query, if any).
    pub async fn connect(port: u16, path: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream,
            buf: Vec::with_capacity(4096),
        };
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.stream.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(end) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if conn.buf.len() > 16 * 1024 {
                bail!("handshake: response headers too long");
            }
            conn.fill().await.context("handshake")?;
        };
        let head = String::from_utf8_lossy(&conn.buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("handshake refused: {}", head.lines().next().unwrap_or(""));
        }
        conn.buf.drain(..end);
        Ok(conn)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read(&mut chunk))
            .await
            .context("waiting for the server")??;
        if n == 0 {
            bail!("connection ended");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_frame(OP_TEXT, text.as_bytes(), &mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next text message (pings are answered, fragments joined).
    pub async fn next_text(&mut self) -> anyhow::Result<String> {
        let mut message: Vec<u8> = Vec::new();
        loop {
            let Some(f) = parse_frame(&self.buf)? else {
                self.fill().await?;
                continue;
            };
            let payload = self.buf[f.payload.clone()].to_vec();
            self.buf.drain(..f.len);
            match f.opcode {
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    message.extend_from_slice(&payload);
                    if f.fin {
                        return Ok(String::from_utf8(message)?);
                    }
                }
                OP_PING => {
                    let mut out = Vec::new();
                    encode_frame(OP_PONG, &payload, &mut out);
                    self.stream.write_all(&out).await?;
                }
                OP_CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    bail!(
                        "closed by the server ({code:?}: {})",
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                    );
                }
                _ => {}
            }
        }
    }

    /// The socket (non-blocking) and the bytes received but not parsed yet.
    pub fn into_parts(self) -> anyhow::Result<(std::net::TcpStream, Vec<u8>)> {
        Ok((self.stream.into_std()?, self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_every_length_form_and_waits_for_the_rest() {
        for len in [0usize, 5, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let payload = vec![b'a'; len];
            let mut buf = server_frame(OP_TEXT, true, &payload);
            buf.extend_from_slice(&server_frame(OP_PING, true, b"x"));
            let f = parse_frame(&buf).unwrap().unwrap();
            assert_eq!((f.fin, f.opcode, f.payload.len()), (true, OP_TEXT, len));
            assert_eq!(&buf[f.payload.clone()], &payload[..]);
            let next = parse_frame(&buf[f.len..]).unwrap().unwrap();
            assert_eq!(next.opcode, OP_PING);
            for cut in [1, f.len / 2, f.len - 1] {
                assert_eq!(
                    parse_frame(&buf[..cut]).unwrap(),
                    None,
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn client_frames_are_masked_and_decode_back() {
        for len in [3usize, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(OP_TEXT, &payload, &mut out);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0, "masked");
            let (len_field, header) = match out[1] & 0x7F {
                126 => (usize::from(u16::from_be_bytes([out[2], out[3]])), 4),
                127 => (
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            assert_eq!(len_field, len);
            let mask = &out[header..header + 4];
            let decoded: Vec<u8> = out[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(decoded, payload);
        }
    }

    #[test]
    fn a_masked_server_frame_is_refused() {
        assert!(parse_frame(&[0x81, 0x81, 0, 0, 0, 0, b'a']).is_err());
    }
}

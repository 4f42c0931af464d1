//! The server→client half of the WebSocket wire (RFC 6455), written without tungstenite.
//!
//! Server frames are never masked, so a text frame is a 2–10 byte header that depends only on
//! the payload's length, followed by the payload. A room event's payload is the one encoded
//! [`Frame`] every subscriber shares (reference counted): writing it to a subscriber is a
//! `writev` of [header, payload] from those shared bytes, with no per-subscriber encoding, no
//! copy into a per-connection write buffer and no flush machinery. Several queued frames go out
//! in one `writev`.
//!
//! A plain-TCP connection is shared ([`SharedTcp`]) between hyper, which reads the HTTP request
//! and hands the socket to the upgrade, and the WebSocket write side; the session may then write
//! an event straight to the socket while routing it ([`DirectSocket::try_write_frame`]), which
//! spares the writer task a wake-up when its outbox is empty. (hyper's upgraded I/O is a boxed
//! type that cannot give the socket back, hence the sharing.)

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::broker::Frame;

const FIN_TEXT: u8 = 0x81;
const FIN_CLOSE: u8 = 0x88;

/// A frame header: the first `len` bytes of `bytes`.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    fn new(first: u8, payload: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = first;
        let len = if payload < 126 {
            bytes[1] = payload as u8;
            2
        } else if let Ok(short) = u16::try_from(payload) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// The header of a final, unmasked text frame carrying `payload` bytes.
    pub fn text(payload: usize) -> Self {
        Self::new(FIN_TEXT, payload)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The whole close frame for `code` and `reason` (cut to the 123 bytes a control frame allows,
/// at a character boundary).
pub fn close_frame_bytes(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason[..cut];
    let header = Header::new(FIN_CLOSE, 2 + reason.len());
    let mut out = Vec::with_capacity(header.as_bytes().len() + 2 + reason.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

/// A plain TCP connection, shared: hyper reads and writes HTTP through it, and after a
/// WebSocket upgrade the write side writes to the same socket directly.
pub struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_tcp_write(&self.0, cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_tcp_write(&self.0, cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

fn poll_tcp_write(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match write(tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// The socket of a plain-TCP WebSocket, for writes that bypass its writer task.
#[derive(Clone)]
pub struct DirectSocket(pub Arc<TcpStream>);

impl std::fmt::Debug for DirectSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectSocket")
    }
}

impl DirectSocket {
    /// Writes as much of `frame` (as a text frame) as the socket takes now, without waiting:
    /// the bytes written (header included), or `WouldBlock`.
    pub fn try_write_frame(&self, frame: &Frame) -> io::Result<usize> {
        let header = Header::text(frame.len());
        self.0.try_write_vectored(&[
            IoSlice::new(header.as_bytes()),
            IoSlice::new(frame.as_bytes()),
        ])
    }
}

/// The length of `frame` on the wire, header included.
pub fn wire_len(frame: &Frame) -> usize {
    Header::text(frame.len()).as_bytes().len() + frame.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_three_length_forms() {
        assert_eq!(Header::text(0).as_bytes(), &[0x81, 0]);
        assert_eq!(Header::text(125).as_bytes(), &[0x81, 125]);
        assert_eq!(Header::text(126).as_bytes(), &[0x81, 126, 0, 126]);
        assert_eq!(Header::text(65535).as_bytes(), &[0x81, 126, 0xff, 0xff]);
        assert_eq!(
            Header::text(65536).as_bytes(),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn close_frames_carry_the_code_and_a_cut_reason() {
        assert_eq!(
            close_frame_bytes(4004, "x"),
            vec![0x88, 3, 0x0f, 0xa4, b'x']
        );
        // 200 two-byte characters: cut to 122 bytes (61 characters), not mid-character.
        let long = "é".repeat(200);
        let frame = close_frame_bytes(1000, &long);
        assert_eq!(frame[1], 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}

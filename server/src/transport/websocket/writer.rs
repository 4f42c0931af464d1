//! The write side: the session's outbox into the socket, batched, within the write window.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use rtlink_protocol::CloseCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::broker::Frame;
use crate::metrics::{DropReason, Metrics};
use crate::session::{Attached, OutFrame, Session, WsTake};
use crate::ws_wire::{close_frame_bytes, Header, SharedTcp};

/// At most this many slices per `writev` (Linux allows 1,024).
const MAX_IOV: usize = 64;

/// Where the writer writes: the shared plain-TCP socket, or the upgraded connection's write
/// half (TLS).
pub(super) enum Out<W> {
    Tcp(SharedTcp),
    Io(W),
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Out<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Out::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Out::Io(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Out::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Out::Io(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Out::Tcp(t) => t.is_write_vectored(),
            Out::Io(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Out::Tcp(t) => Pin::new(t).poll_flush(cx),
            Out::Io(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Out::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Out::Io(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Writes every byte of `chunks`, in order, a `writev` of up to [`MAX_IOV`] of them at a time
/// (one copied buffer if `out` cannot write vectors, e.g. TLS), then flushes. The slice array is
/// built on the stack in each poll, not kept in the future: this future is inlined in every
/// connection's writer.
async fn write_chunks<W: AsyncWrite + Unpin>(out: &mut W, chunks: &[&[u8]]) -> io::Result<()> {
    if !out.is_write_vectored() {
        out.write_all(&chunks.concat()).await?;
        return out.flush().await;
    }
    let (mut i, mut off) = (0, 0);
    while i < chunks.len() {
        if off == chunks[i].len() {
            (i, off) = (i + 1, 0);
            continue;
        }
        let mut n = std::future::poll_fn(|cx| {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            iov[0] = IoSlice::new(&chunks[i][off..]);
            let mut used = 1;
            for c in chunks[i + 1..].iter().filter(|c| !c.is_empty()) {
                if used == MAX_IOV {
                    break;
                }
                iov[used] = IoSlice::new(c);
                used += 1;
            }
            Pin::new(&mut *out).poll_write_vectored(cx, &iov[..used])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < chunks.len() {
            let left = chunks[i].len() - off;
            if n >= left {
                n -= left;
                (i, off) = (i + 1, 0);
            } else {
                off += n;
                n = 0;
            }
        }
    }
    out.flush().await
}

/// Finishes a frame a direct write left unfinished, then sends a close frame with `code`, within
/// `limit`.
pub(super) async fn send_close<W: AsyncWrite + Unpin>(
    out: &mut W,
    unfinished: Option<(Frame, usize)>,
    code: CloseCode,
    reason: &str,
    limit: Duration,
) {
    let close = close_frame_bytes(code.0, reason);
    let head = unfinished.as_ref().map(|(f, _)| Header::text(f.len()));
    let mut chunks: Vec<&[u8]> = Vec::with_capacity(3);
    if let (Some((frame, written)), Some(head)) = (&unfinished, &head) {
        push_frame_rest(&mut chunks, head.as_bytes(), frame.as_bytes(), *written);
    }
    chunks.push(&close);
    let _ = tokio::time::timeout(limit, write_chunks(out, &chunks)).await;
}

/// The part of a frame (`header` + `payload`) after its first `written` bytes.
fn push_frame_rest<'a>(
    chunks: &mut Vec<&'a [u8]>,
    header: &'a [u8],
    payload: &'a [u8],
    written: usize,
) {
    if written < header.len() {
        chunks.push(&header[written..]);
        chunks.push(payload);
    } else {
        chunks.push(&payload[(written - header.len()).min(payload.len())..]);
    }
}

/// Drains the session's outbox into the socket until the transport closes: everything queued
/// (and a frame a direct write left unfinished, and control frames) goes out in one `writev`
/// or a few, not one write per frame: with `TCP_NODELAY` a write is a packet, and a burst to a
/// subscriber should not become hundreds of them. Within the connection's write window
/// ([`WsTake::Hold`]) it waits for the window's end instead of writing, so a busy connection
/// writes once per window. Generic over the output so it can be driven without a socket.
pub(super) async fn write_loop<W>(
    mut out: W,
    session: Arc<Session>,
    mut att: Attached,
    metrics: Arc<Metrics>,
    stall: Duration,
) where
    W: AsyncWrite + Unpin,
{
    // Taken from the outbox and freed after each batch: an idle connection keeps no buffer.
    let mut frames: VecDeque<OutFrame> = VecDeque::new();
    let mut control: Vec<u8> = Vec::new();
    loop {
        let now = tokio::time::Instant::now();
        let unfinished = match session.take_ws_batch(att.gen, now, &mut frames, &mut control) {
            WsTake::Gone => break,
            WsTake::Hold(until) => {
                // Within the write window (`--write-window`): what comes meanwhile joins this
                // batch without waking us. Boxed: the timer lives only while a busy connection
                // holds, not in every idle connection's task.
                let hold = Box::pin(async {
                    tokio::select! {
                        code = &mut att.force_close => Some(code),
                        () = tokio::time::sleep_until(until) => None,
                    }
                });
                if let Some(code) = hold.await {
                    if let Ok(code) = code {
                        let rest = session.take_ws_unfinished(att.gen);
                        let limit = Duration::from_secs(1);
                        Box::pin(send_close(&mut out, rest, code, code.name(), limit)).await;
                    }
                    return;
                }
                continue;
            }
            WsTake::Write(unfinished) => unfinished,
        };
        if unfinished.is_none() && frames.is_empty() && control.is_empty() {
            tokio::select! {
                code = &mut att.force_close => {
                    if let Ok(code) = code {
                        let rest = session.take_ws_unfinished(att.gen);
                        let limit = Duration::from_secs(1);
                        Box::pin(send_close(&mut out, rest, code, code.name(), limit)).await;
                    }
                    return;
                }
                () = session.changed(&mut att.seen) => {}
            }
            continue;
        }
        let close_at = frames.iter().position(|f| f.close.is_some());
        let data = frames.range(..close_at.unwrap_or(frames.len()));
        let count = data.len();
        let headers: Vec<Header> = data.clone().map(|f| Header::text(f.frame.len())).collect();
        let unfinished_head = unfinished.as_ref().map(|(f, _)| Header::text(f.len()));
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(2 + 2 * count);
        if let (Some((frame, written)), Some(head)) = (&unfinished, &unfinished_head) {
            push_frame_rest(&mut chunks, head.as_bytes(), frame.as_bytes(), *written);
        }
        for (f, h) in data.zip(&headers) {
            chunks.push(h.as_bytes());
            chunks.push(f.frame.as_bytes());
        }
        // Control frames after the data queued before them: a close reply must be the last
        // frame, and a pong may wait behind a batch.
        chunks.push(&control);
        // Most batches go out at once (the socket has room): the stall timer is armed only for
        // one that does not, rather than a timer entry per batch. A write stalled this long is
        // a consumer that stopped reading.
        let written = {
            let batch = write_chunks(&mut out, &chunks);
            tokio::pin!(batch);
            match batch.as_mut().now_or_never() {
                Some(r) => Ok(r),
                // Boxed: the timer lives only as long as a stalled batch, not in every idle
                // connection's task.
                None => Box::pin(tokio::time::timeout(stall, batch)).await,
            }
        };
        drop(chunks);
        match written {
            Ok(Ok(())) => metrics.frames_out((count + usize::from(unfinished.is_some())) as u64),
            Ok(Err(_)) => return,
            Err(_) => {
                metrics.count_drop(DropReason::SlowConsumer);
                return;
            }
        }
        if let Some(code) = close_at.and_then(|i| frames[i].close) {
            Box::pin(send_close(&mut out, None, code, code.name(), stall)).await;
            return;
        }
        frames = VecDeque::new();
        control.clear();
    }
    // Detached: say why if we were told.
    if let Ok(code) = att.force_close.try_recv() {
        let rest = session.take_ws_unfinished(att.gen);
        let limit = Duration::from_secs(1);
        Box::pin(send_close(&mut out, rest, code, code.name(), limit)).await;
    }
}

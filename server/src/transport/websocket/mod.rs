//! WebSocket transport: `GET /v1/ws?ticket=T`.
//!
//! The Origin, limits and ticket are checked before the upgrade (a refusal is a plain HTTP
//! error, never `101`); the ticket is consumed last, after the upgrade headers. After the
//! upgrade the first frame must be `hello`. Then the upgrade's one task runs a reader, which
//! feeds client frames to the hub, beside a writer, which drains the session's outbox.
//!
//! Reading is tungstenite's (masks, fragments, control frames, the frame size limit) over a
//! read-only view of the socket: what tungstenite writes (a pong, the close reply) is queued on
//! the session and goes out through the writer. Writing is ours ([`crate::ws_wire`]): a frame is
//! a header in front of the encoded bytes every subscriber shares, several frames per `writev`,
//! and on plain TCP routing writes an event straight to the socket while the writer is idle.
//! Both honour the connection's write window ([`crate::write_window`]): a connection that
//! wrote less than `--write-window` ago gets what comes next in one write at the window's end.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, Method, StatusCode, Version};
use axum::response::Response;
use futures_util::{FutureExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use rtlink_protocol::codec::decode_client;
use rtlink_protocol::{ClientFrame, CloseCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use ws::tungstenite::handshake::derive_accept_key;
use ws::tungstenite::protocol::{Role, WebSocketConfig};
use ws::tungstenite::{Error as WsError, Message};
use ws::WebSocketStream;

use crate::app::AppState;
use crate::broker::Frame;
use crate::config::TransportKind;
use crate::http::{self, precheck, Admission};
use crate::hub::{Hub, SessionRefusal};
use crate::listener::TcpSlot;
use crate::metrics::{DropReason, Metrics};
use crate::session::{Attached, OutFrame, Session, WsTake};
use crate::ws_wire::{close_frame_bytes, DirectSocket, Header, SharedTcp};

pub async fn handler(State(state): State<AppState>, req: Request) -> Response {
    let ip = http::client_ip(&state, &req);
    let (mut parts, _body) = req.into_parts();
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let prechecked = match precheck(&state, TransportKind::WebSocket, &parts.headers, ip) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let upgrade = accept_key(&parts).and_then(|key| {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some((key, on_upgrade))
    });
    let Some((accept, on_upgrade)) = upgrade else {
        return http::bad_request("expected a WebSocket upgrade");
    };
    // Last: a request refused above leaves its ticket usable.
    let admission = match prechecked
        .redeem(&state, query.get("ticket").map(String::as_str))
        .await
    {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let tcp_slot = parts.extensions.get::<TcpSlot>().cloned();
    let direct = parts.extensions.get::<DirectSocket>().cloned();
    // Everything until the session is attached runs in a boxed future freed before the
    // connection idles: see `connection`.
    let setup = Box::pin(upgraded(on_upgrade, tcp_slot, direct, state, admission, ip));
    tokio::spawn(connection(setup));
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

/// Waits for hyper to hand over the upgraded connection, then reads its `hello` and opens its
/// session; None if it went away or was refused.
async fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    tcp_slot: Option<TcpSlot>,
    direct: Option<DirectSocket>,
    state: AppState,
    admission: Admission,
    ip: Option<IpAddr>,
) -> Option<Open<TokioIo<hyper::upgrade::Upgraded>>> {
    let upgraded = on_upgrade.await.ok()?;
    // Hyper let go of the connection; it stays counted under the TCP caps (the slot is held
    // until the connection ends).
    open(
        TokioIo::new(upgraded),
        tcp_slot,
        direct,
        state,
        admission,
        ip,
    )
    .await
}

/// `Sec-WebSocket-Accept` for an HTTP/1.1 WebSocket upgrade request (RFC 6455 §4.2.1), or None
/// if it is not one.
fn accept_key(parts: &Parts) -> Option<String> {
    let h = &parts.headers;
    let upgrade = parts.version <= Version::HTTP_11
        && parts.method == Method::GET
        && header_has_token(h, header::CONNECTION, "upgrade")
        && header_is(h, header::UPGRADE, "websocket")
        && header_is(h, header::SEC_WEBSOCKET_VERSION, "13");
    let key = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade)?;
    Some(derive_accept_key(key.as_bytes()))
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Per-connection buffers (docs/BENCHMARKS.md, idle memory): tungstenite's read buffer is
/// zero-filled up to its capacity before every read, so it is kept small (client frames are
/// small; a larger one grows it as needed). Tungstenite writes only control frames here, each
/// at once.
const READ_BUFFER: usize = 1024;

/// At most this many slices per `writev` (Linux allows 1,024).
const MAX_IOV: usize = 64;

/// RFC 6455's "try again later": no session could be opened (sessions full).
const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

/// How the reader stopped.
enum ReadEnd {
    /// The peer closed or the connection failed.
    PeerGone,
    /// A close frame was queued; the writer sends it.
    Closing,
}

/// The upgraded connection, read by tungstenite. It cannot write: its pongs and close replies go
/// to the session's control queue (once there is a session), which the writer sends.
struct ReadSide<R> {
    inner: R,
    control: Option<(Arc<Session>, u64)>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some((session, gen)) = &self.control {
            session.queue_ws_control(*gen, buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where the writer writes: the shared plain-TCP socket, or the upgraded connection's write
/// half (TLS).
enum Out<W> {
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
async fn send_close<W: AsyncWrite + Unpin>(
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

/// A connection past its `hello`, attached to its session.
struct Open<Io> {
    _tcp: Option<TcpSlot>,
    stream: WebSocketStream<ReadSide<tokio::io::ReadHalf<Io>>>,
    out: Out<tokio::io::WriteHalf<Io>>,
    direct: Option<DirectSocket>,
    hub: Arc<Hub>,
    session: Arc<Session>,
    attached: Attached,
    max: usize,
    stall: Duration,
}

/// The connection's one task (the upgrade's own). Its future is what every idle connection
/// keeps in memory (docs/BENCHMARKS.md, idle memory), so what runs once is boxed and freed when
/// done: the upgrade and the handshake (`setup`: `hello`, refusals) before, the closing
/// handshake after; reader and writer are boxed once each. What stays inline is a few pointers
/// and the `select!` over the two.
// An `async fn` would keep its argument and a copy of it (see `read_loop`).
#[allow(clippy::manual_async_fn)]
fn connection<Io, F>(setup: Pin<Box<F>>) -> impl std::future::Future<Output = ()>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = Option<Open<Io>>> + ?Sized,
{
    async move {
        // The `Open` goes straight into `serve`, and that future straight into the `await`:
        // neither is a local kept beside what it became.
        futures_util::future::OptionFuture::from(setup.await.map(serve)).await;
    }
}

/// Reads the `hello` and opens or resumes its session; None if the connection was refused (its
/// close frame sent) or went away.
async fn open<Io>(
    io: Io,
    tcp_slot: Option<TcpSlot>,
    direct: Option<DirectSocket>,
    state: AppState,
    admission: Admission,
    ip: Option<IpAddr>,
) -> Option<Open<Io>>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Admission {
        claims,
        guard,
        resume: ticket_resume,
        probe,
    } = admission;
    let (read_half, write_half) = tokio::io::split(io);
    let mut out = match &direct {
        Some(d) => Out::Tcp(SharedTcp(d.0.clone())),
        None => Out::Io(write_half),
    };
    let max = state.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        // The protocol's limit, so tungstenite refuses an oversized frame from its header
        // (close 4001) instead of first reading up to 16 MiB of it.
        .max_frame_size(Some(max))
        .max_message_size(Some(max))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let read_side = ReadSide {
        inner: read_half,
        control: None,
    };
    let mut stream = WebSocketStream::from_raw_socket(read_side, Role::Server, Some(config)).await;
    let hello_timeout = state.config.ping_interval + state.config.heartbeat_grace;
    let refuse = Duration::from_secs(1);
    let first = tokio::time::timeout(hello_timeout, stream.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => decode_client(t.as_bytes(), max),
        Ok(Some(Ok(_))) => {
            let code = CloseCode::PROTOCOL_VIOLATION;
            send_close(&mut out, None, code, "expected hello", refuse).await;
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            send_close(
                &mut out,
                None,
                CloseCode::HEARTBEAT_TIMEOUT,
                "no hello",
                refuse,
            )
            .await;
            return None;
        }
    };
    // The session to continue: `hello.resume`, else the one the ticket names.
    let resume = match hello {
        Ok(ClientFrame::Hello { resume, .. }) => resume.or(ticket_resume),
        Ok(_) => {
            let code = CloseCode::PROTOCOL_VIOLATION;
            send_close(&mut out, None, code, "expected hello", refuse).await;
            return None;
        }
        Err(e) => {
            let code = e.close_code();
            send_close(&mut out, None, code, code.name(), refuse).await;
            return None;
        }
    };
    let hub = state.hub.clone();
    let (session, attached) = match (probe, resume) {
        (true, Some(resume)) => {
            match hub.open_probe(claims, &resume, TransportKind::WebSocket, guard) {
                Ok(opened) => opened,
                Err(code) => {
                    send_close(&mut out, None, code, code.name(), refuse).await;
                    return None;
                }
            }
        }
        (_, resume) => {
            let (session, resumed) =
                match crate::cluster::open_session(&state, claims, resume.as_deref(), ip) {
                    Ok(opened) => opened,
                    Err(refusal) => {
                        // 1013 "try again later": the server is full, not the transport blocked.
                        let reason = match refusal {
                            SessionRefusal::Total => "too many sessions",
                            SessionRefusal::PerIp => "too many sessions from this address",
                            SessionRefusal::PerUser => "too many connected sessions for this user",
                        };
                        send_close(&mut out, None, TRY_AGAIN_LATER, reason, refuse).await;
                        return None;
                    }
                };
            let attached = hub.attach(&session, TransportKind::WebSocket, guard, resumed);
            (session, attached)
        }
    };
    let stall = state.config.ping_interval + state.config.heartbeat_grace;
    Some(Open {
        _tcp: tcp_slot,
        stream,
        out,
        direct,
        hub,
        session,
        attached,
        max,
        stall,
    })
}

/// Runs reader and writer until the connection ends. Not an `async fn`: its future holds only
/// the two (boxed) and what the teardown needs, not a copy of `open`.
fn serve<Io>(open: Open<Io>) -> impl std::future::Future<Output = ()>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Open {
        _tcp: tcp_slot,
        mut stream,
        out,
        direct,
        hub,
        session,
        attached,
        max,
        stall,
    } = open;
    let gen = attached.gen;
    session.set_ws_wire(gen, direct, hub.config.write_window);
    stream.get_mut().control = Some((session.clone(), gen));
    // Reader and writer run in this task (the upgrade's own), one task per connection, each
    // boxed once: inline, the task's future would hold room for both beside copies of what they
    // were built from.
    let mut writer = Box::pin(write_loop(
        out,
        session.clone(),
        attached,
        hub.metrics.clone(),
        stall,
    ));
    let mut reader = Box::pin(read_loop(stream, hub.clone(), session.clone(), max));
    async move {
        tokio::select! {
            _ = &mut writer => {
                // The reader may be in the middle of a frame (e.g. a `close` whose presence leaves
                // still await the broker): let it finish, then stop it between frames.
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
                    tokio::select! {
                        _ = &mut reader => {}
                        _between_frames = session.inbound.lock() => {}
                    }
                }))
                .await;
            }
            (end, mut stream) = &mut reader => {
                if let ReadEnd::PeerGone = end {
                    // What the write window holds (an ack, say) and tungstenite's close reply
                    // still go out, at once, before the connection is dropped: bounded, the peer
                    // may be gone.
                    session.finish_ws(gen);
                    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), &mut writer)).await;
                }
                if let ReadEnd::Closing = end {
                    // Our close is queued: let the writer send it, then read (and discard) what the
                    // peer still sends until its close, so unread data does not turn into a reset
                    // that could swallow the close code.
                    Box::pin(async {
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Some(Ok(m)) = stream.next().await {
                                if matches!(m, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    })
                    .await;
                }
            }
        }
        session.clear_ws_wire(gen);
        hub.detached(&session, gen);
        drop(tcp_slot);
    }
}

/// Feeds client frames to the hub; hands the stream back when it stops (boxed: the task's future
/// would otherwise keep room for it). Generic over the stream so it can be driven without a
/// socket.
#[allow(clippy::manual_async_fn)]
fn read_loop<R>(
    mut stream: R,
    hub: Arc<Hub>,
    session: Arc<Session>,
    max: usize,
) -> impl std::future::Future<Output = (ReadEnd, Box<R>)>
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    // Not an `async fn`: the block borrows `stream` where it was captured instead of keeping a
    // second copy of it.
    async move {
        let end = read_frames(&mut stream, &hub, &session, max).await;
        (end, Box::new(stream))
    }
}

async fn read_frames<R>(
    stream: &mut R,
    hub: &Arc<Hub>,
    session: &Arc<Session>,
    max: usize,
) -> ReadEnd
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                hub.metrics.count_drop(DropReason::Malformed);
                session.close_transport(CloseCode::MALFORMED_FRAME, "frames are text");
                return ReadEnd::Closing;
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(_)) => return ReadEnd::PeerGone,
            Err(WsError::Capacity(_)) => {
                hub.metrics.count_drop(DropReason::TooLarge);
                session.close_transport(CloseCode::FRAME_TOO_LARGE, "frame too large");
                return ReadEnd::Closing;
            }
            Err(_) => return ReadEnd::PeerGone,
        };
        let frame = match decode_client(text.as_bytes(), max) {
            Ok(f) => f,
            Err(e) => {
                let code = e.close_code();
                let reason = if code == CloseCode::FRAME_TOO_LARGE {
                    hub.metrics.count_drop(DropReason::TooLarge);
                    "frame too large"
                } else {
                    hub.metrics.count_drop(DropReason::Malformed);
                    "malformed frame"
                };
                session.close_transport(code, reason);
                return ReadEnd::Closing;
            }
        };
        // Boxed: handling a frame takes a future far larger than the rest of the reader, which
        // every idle connection would otherwise keep.
        let handled = Box::pin(async {
            let _serial = session.inbound.lock().await;
            hub.handle_frame(session, frame).await
        })
        .await;
        if handled.is_err() {
            return ReadEnd::Closing;
        }
        // A client's own burst must not starve its writer (and make it a "slow consumer").
        tokio::task::yield_now().await;
    }
    ReadEnd::PeerGone
}

/// Drains the session's outbox into the socket until the transport closes: everything queued
/// (and a frame a direct write left unfinished, and control frames) goes out in one `writev`
/// or a few, not one write per frame: with `TCP_NODELAY` a write is a packet, and a burst to a
/// subscriber should not become hundreds of them. Within the connection's write window
/// ([`WsTake::Hold`]) it waits for the window's end instead of writing, so a busy connection
/// writes once per window. Generic over the output so it can be driven without a socket.
async fn write_loop<W>(
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

#[cfg(test)]
mod tests {
    use super::*;

    type Io = TokioIo<hyper::upgrade::Upgraded>;
    type Ws = WebSocketStream<ReadSide<tokio::io::ReadHalf<Io>>>;

    fn ret_size4<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    fn ret_size5<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What every idle WebSocket keeps (docs/BENCHMARKS.md, idle memory): the task's future,
    /// the reader's and the writer's (5,904 B in all, inline in the task, before they were
    /// split up; 1,232 B after). A size, not a time: it fails only if something large becomes
    /// part of the idle state again (a handshake future, a timer, a buffer, a frame's handling).
    #[test]
    fn an_idle_connection_keeps_small_futures() {
        let setup = Box::pin(std::future::pending::<Option<Open<Io>>>());
        let task = std::mem::size_of_val(&connection(setup));
        let reader = ret_size4(read_loop::<Ws>);
        let writer = ret_size5(write_loop::<Out<tokio::io::WriteHalf<Io>>>);
        assert!(task <= 256, "task future {task} B");
        assert!(
            reader + writer <= 1280,
            "reader {reader} B + writer {writer} B"
        );
    }
}

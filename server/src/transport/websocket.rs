//! WebSocket transport: `GET /v1/ws?ticket=T`.
//!
//! The Origin, limits and ticket are checked before the upgrade (a refusal is a plain HTTP
//! error, never `101`); the ticket is consumed last, after the upgrade headers. After the upgrade the first frame must be `hello`; then a reader task feeds client
//! frames to the hub and a writer task drains the session's outbox, joined by `select!`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::extract::{Query, Request, State};
use axum::response::Response;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use rtlink_protocol::codec::decode_client;
use rtlink_protocol::{ClientFrame, CloseCode};

use crate::app::AppState;
use crate::config::TransportKind;
use crate::http::{self, precheck, Admission};
use crate::hub::{Hub, SessionRefusal};
use crate::listener::TcpSlot;
use crate::metrics::{DropReason, Metrics};
use crate::session::{Attached, Session};

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
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(_) => return http::bad_request("expected a WebSocket upgrade"),
    };
    // Last: a request refused above leaves its ticket usable.
    let admission = match prechecked
        .redeem(&state, query.get("ticket").map(String::as_str))
        .await
    {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let max = state.config.max_frame_bytes;
    let tcp_slot = parts.extensions.get::<TcpSlot>().cloned();
    upgrade
        // The protocol's limit, so tungstenite refuses an oversized frame from its header
        // (close 4001) instead of first reading up to 16 MiB of it.
        .max_frame_size(max)
        .max_message_size(max)
        // tungstenite's default read buffer (128 KiB) is zero-filled up to its capacity before
        // every read, so each idle connection kept 128 KiB resident. Client frames are small;
        // a larger frame grows the buffer as needed. Writes are batched per outbox drain (see
        // `write_loop`); 8 KiB bounds one batch's buffer, which a Vec keeps after a burst.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            // Hyper let go of the connection; it stays counted under the TCP caps.
            let _tcp = tcp_slot;
            run(socket, state, admission, ip).await
        })
}

/// Per-connection WebSocket buffers (docs/BENCHMARKS.md, idle memory).
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 8 * 1024;

/// RFC 6455's "try again later": no session could be opened (sessions full).
const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

/// How the reader stopped.
enum ReadEnd {
    /// The peer closed or the connection failed.
    PeerGone,
    /// A close frame was queued; the writer sends it.
    Closing,
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.0,
        reason: reason.into(),
    }))
}

async fn run(socket: WebSocket, state: AppState, admission: Admission, ip: Option<IpAddr>) {
    let Admission {
        claims,
        guard,
        resume: ticket_resume,
        probe,
    } = admission;
    let (mut sink, mut stream) = socket.split();
    let max = state.config.max_frame_bytes;
    let hello_timeout = state.config.ping_interval + state.config.heartbeat_grace;
    let first = tokio::time::timeout(hello_timeout, stream.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => decode_client(t.as_bytes(), max),
        Ok(Some(Ok(_))) => {
            let _ = sink
                .send(close_message(
                    CloseCode::PROTOCOL_VIOLATION,
                    "expected hello",
                ))
                .await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            let _ = sink
                .send(close_message(CloseCode::HEARTBEAT_TIMEOUT, "no hello"))
                .await;
            return;
        }
    };
    // The session to continue: `hello.resume`, else the one the ticket names.
    let resume = match hello {
        Ok(ClientFrame::Hello { resume, .. }) => resume.or(ticket_resume),
        Ok(_) => {
            let _ = sink
                .send(close_message(
                    CloseCode::PROTOCOL_VIOLATION,
                    "expected hello",
                ))
                .await;
            return;
        }
        Err(e) => {
            let _ = sink
                .send(close_message(e.close_code(), e.close_code().name()))
                .await;
            return;
        }
    };
    let hub = state.hub.clone();
    let (session, attached) = match (probe, resume) {
        (true, Some(resume)) => {
            match hub.open_probe(claims, &resume, TransportKind::WebSocket, guard) {
                Ok(opened) => opened,
                Err(code) => {
                    let _ = sink.send(close_message(code, code.name())).await;
                    return;
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
                        let _ = sink.send(close_message(TRY_AGAIN_LATER, reason)).await;
                        return;
                    }
                };
            let attached = hub.attach(&session, TransportKind::WebSocket, guard, resumed);
            (session, attached)
        }
    };
    let gen = attached.gen;
    let stall = state.config.ping_interval + state.config.heartbeat_grace;
    // The writer runs in this task (the upgrade's own), the reader in a second one: one task
    // fewer per connection than spawning both. Dropping the writer anywhere is safe; the reader
    // is only stopped between frames.
    let writer = write_loop(sink, session.clone(), attached, hub.metrics.clone(), stall);
    tokio::pin!(writer);
    let mut reader = tokio::spawn({
        let (hub, session) = (hub.clone(), session.clone());
        async move {
            let end = read_loop(&mut stream, hub, session, max).await;
            (end, stream)
        }
    });
    tokio::select! {
        _ = &mut writer => {
            // The reader may be in the middle of a frame (e.g. a `close` whose presence leaves
            // still await the broker): let it finish, then stop it between frames.
            let _between_frames =
                tokio::time::timeout(Duration::from_secs(2), session.inbound.lock()).await;
            reader.abort();
        }
        ended = &mut reader => {
            if let Ok((ReadEnd::Closing, mut stream)) = ended {
                // Our close is queued: let the writer send it, then read (and discard) what the
                // peer still sends until its close, so unread data does not turn into a reset
                // that could swallow the close code.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
    hub.detached(&session, gen);
}

/// Feeds client frames to the hub. Generic over the stream so it can be driven without a socket.
async fn read_loop<R>(stream: &mut R, hub: Arc<Hub>, session: Arc<Session>, max: usize) -> ReadEnd
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(msg) = stream.next().await {
        let bytes = match msg {
            Ok(Message::Text(t)) => axum::body::Bytes::from(t),
            Ok(Message::Binary(_)) => {
                hub.metrics.count_drop(DropReason::Malformed);
                session.close_transport(CloseCode::MALFORMED_FRAME, "frames are text");
                return ReadEnd::Closing;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return ReadEnd::PeerGone,
            Err(e) => {
                if e.to_string().contains("Space limit exceeded") {
                    hub.metrics.count_drop(DropReason::TooLarge);
                    session.close_transport(CloseCode::FRAME_TOO_LARGE, "frame too large");
                    return ReadEnd::Closing;
                }
                return ReadEnd::PeerGone;
            }
        };
        let frame = match decode_client(&bytes, max) {
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
        {
            let _serial = session.inbound.lock().await;
            if hub.handle_frame(&session, frame).await.is_err() {
                return ReadEnd::Closing;
            }
        }
        // A client's own burst must not starve its writer (and make it a "slow consumer").
        tokio::task::yield_now().await;
    }
    ReadEnd::PeerGone
}

/// Drains the session's outbox into the socket until the transport closes. Generic over the
/// sink so it can be driven without a socket.
async fn write_loop<S>(
    mut sink: S,
    session: Arc<Session>,
    mut att: Attached,
    metrics: Arc<Metrics>,
    stall: Duration,
) where
    S: Sink<Message> + Unpin,
{
    loop {
        let Some(frames) = session.take_frames(att.gen) else {
            break;
        };
        // Everything queued so far goes out in one flush (a few writes at most), not one
        // write per frame: with TCP_NODELAY a write is a packet, and a burst to a subscriber
        // should not become hundreds of them. A write stalled this long is a consumer that
        // stopped reading.
        let count = frames.len() as u64;
        let mut close = None;
        // Most batches go out at once (the socket has room): the stall timer is armed only for
        // one that does not, rather than a timer entry per batch.
        let written = {
            let batch = async {
                for f in frames {
                    if let Some(code) = f.close {
                        close = Some(code);
                        break;
                    }
                    sink.feed(Message::Text(f.frame)).await?;
                }
                sink.flush().await
            };
            tokio::pin!(batch);
            match batch.as_mut().now_or_never() {
                Some(r) => Ok(r),
                None => tokio::time::timeout(stall, batch).await,
            }
        };
        match written {
            Ok(Ok(())) => metrics.frames_out(count - u64::from(close.is_some())),
            Ok(Err(_)) => return,
            Err(_) => {
                metrics.count_drop(DropReason::SlowConsumer);
                return;
            }
        }
        if let Some(code) = close {
            let reason = code.name();
            let _ = tokio::time::timeout(stall, sink.send(close_message(code, reason))).await;
            return;
        }
        tokio::select! {
            code = &mut att.force_close => {
                if let Ok(code) = code {
                    let send = sink.send(close_message(code, code.name()));
                    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
                }
                return;
            }
            () = session.changed(&mut att.seen) => {}
        }
    }
    // Detached without a force signal: the force sender was dropped; just end.
    if let Ok(code) = att.force_close.try_recv() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(close_message(code, code.name())),
        )
        .await;
    }
}

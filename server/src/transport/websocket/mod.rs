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

mod reader;
mod upgrade;
mod writer;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rtlink_protocol::codec::decode_client;
use rtlink_protocol::{ClientFrame, CloseCode};
use tokio::io::{AsyncRead, AsyncWrite};
use ws::tungstenite::protocol::{Role, WebSocketConfig};
use ws::tungstenite::Message;
use ws::WebSocketStream;

use crate::app::AppState;
use crate::config::TransportKind;
use crate::http::Admission;
use crate::hub::{Hub, SessionRefusal};
use crate::listener::TcpSlot;
use crate::session::{Attached, Session};
use crate::ws_wire::{DirectSocket, SharedTcp};
use reader::{read_loop, ReadEnd, ReadSide};
pub use upgrade::handler;
use writer::{send_close, write_loop, Out};

/// Per-connection buffers (docs/BENCHMARKS.md, idle memory): tungstenite's read buffer is
/// zero-filled up to its capacity before every read, so it is kept small (client frames are
/// small; a larger one grows it as needed). Tungstenite writes only control frames here, each
/// at once.
const READ_BUFFER: usize = 1024;

/// RFC 6455's "try again later": no session could be opened (sessions full).
const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

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
            // Resuming a session that ended for good (4013) while the socket was down: stop it.
            let ended =
                (resume.as_deref()).and_then(|resume| hub.ended_for_good(resume, &claims.sub));
            if let Some(code) = ended {
                send_close(&mut out, None, code, code.name(), refuse).await;
                return None;
            }
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
    session.set_ws_wire(gen, direct, hub.coalescing.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

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

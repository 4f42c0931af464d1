//! The read side: client frames, read by tungstenite, fed to the hub.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use rtlink_protocol::codec::decode_client;
use rtlink_protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ws::tungstenite::{Error as WsError, Message};

use crate::hub::Hub;
use crate::metrics::DropReason;
use crate::session::Session;

/// How the reader stopped.
pub(super) enum ReadEnd {
    /// The peer closed or the connection failed.
    PeerGone,
    /// A close frame was queued; the writer sends it.
    Closing,
}

/// The upgraded connection, read by tungstenite. It cannot write: its pongs and close replies go
/// to the session's control queue (once there is a session), which the writer sends.
pub(super) struct ReadSide<R> {
    pub(super) inner: R,
    pub(super) control: Option<(Arc<Session>, u64)>,
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

/// Feeds client frames to the hub; hands the stream back when it stops (boxed: the task's future
/// would otherwise keep room for it). Generic over the stream so it can be driven without a
/// socket.
#[allow(clippy::manual_async_fn)]
pub(super) fn read_loop<R>(
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

//! The practical limit: a WebSocket broadcast server with no protocol at all. Every text message
//! a client sends goes to every other connected client, unchanged. tokio-tungstenite (the same
//! version axum uses), `TCP_NODELAY`, one task per connection, and what is queued for a
//! connection goes out in one flush. Its buffers are rtlink-server's (1 KiB read, 8 KiB write):
//! with tungstenite's default 128 KiB read buffer, zero-filled before every read attempt, the
//! "limit" spent 90 % of its instructions in `memset` (callgrind), which would flatter rtlink.
//!
//! It has no rooms, no offsets, no history, no acks, no presence, no auth: what rtlink costs
//! above this is the price of those.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Event = (u64, Message);

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let (tx, _) = broadcast::channel::<Event>(1 << 16);
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = connection(stream, id, tx).await;
        });
    }
}

async fn connection(
    stream: TcpStream,
    id: u64,
    tx: broadcast::Sender<Event>,
) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(m @ Message::Text(_))) => {
                    let _ = tx.send((id, m));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            event = rx.recv() => {
                let mut next = Some(event);
                while let Some(ev) = next.take() {
                    match ev {
                        Ok((from, m)) if from != id => sink.feed(m).await?,
                        Ok(_) => {}
                        // Lost messages show up as gaps in the load generator's checks.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                    next = match rx.try_recv() {
                        Ok(ev) => Some(Ok(ev)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Some(Err(broadcast::error::RecvError::Lagged(n)))
                        }
                        Err(_) => None,
                    };
                }
                sink.flush().await?;
            }
        }
    }
}

//! Abuse tests: each one attacks a real `rtlink-server` process (spawned on 127.0.0.1, free
//! port, killed on drop) and asserts that a **bystander** is unaffected: another user stays
//! connected, keeps receiving and can still join. `make test-abuse` runs them; every test
//! function is named `abuse_*` (`make test-native` skips them). SECURITY.md lists which test
//! proves which limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod process;
#[path = "../support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

mod admission;
mod api;
mod bursts;
mod connections;
mod fail_closed;
mod history;
mod http2;
mod redis_keys;
mod replay;
mod rooms;
mod sessions;
mod supervision;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtlink_protocol::codec::{decode_server, encode_client};
use rtlink_protocol::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use common::{Server, Ws};

/// Generous: the attacks load a shared 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The value of a `/metrics` series: a name, with its labels if it has any (exactly as the
/// exposition writes them, e.g. `rtlink_connections{transport="sse"}`).
pub async fn metric(client: &common::Server, name: &str) -> u64 {
    let text = client
        .http
        .get(client.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Bounds a whole test (the fault scenarios' bound).
pub use faultkit::scenario::bounded;

#[derive(Default)]
struct Seen {
    frames: Vec<ServerFrame>,
    closed: Option<Option<u16>>,
}

/// A WebSocket client whose socket is served by background tasks: one reads everything the
/// server sends (and answers pings), one writes what [`Peer::send`] queues. So a peer is never
/// a slow consumer by the test's fault, and an attacker can pipeline without waiting.
pub struct Peer {
    out: mpsc::UnboundedSender<ClientFrame>,
    seen: Arc<Mutex<Seen>>,
}

/// A WebSocket that has said `hello` with a ticket for `token`.
pub async fn connect_ws(server: &Server, token: &str) -> Ws {
    let ticket = server.ticket_with(token).await;
    let mut ws = Ws::connect(&server.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    let welcome = ws.recv().await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    ws.welcome = Some(welcome);
    ws
}

impl Peer {
    pub fn spawn(ws: Ws) -> Peer {
        let (mut sink, mut stream) = ws.inner.split();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (out, mut out_rx) = mpsc::unbounded_channel::<ClientFrame>();
        let reader_seen = seen.clone();
        let pong = out.clone();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        let frame = decode_server(t.as_bytes(), usize::MAX).unwrap();
                        if frame == ServerFrame::Ping {
                            let _ = pong.send(ClientFrame::Pong);
                        }
                        reader_seen.lock().unwrap().frames.push(frame);
                    }
                    Ok(Message::Close(c)) => {
                        reader_seen.lock().unwrap().closed = Some(c.map(|c| u16::from(c.code)));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            reader_seen.lock().unwrap().closed.get_or_insert(None);
        });
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                let text = String::from_utf8(encode_client(&frame)).unwrap();
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        Peer { out, seen }
    }

    pub fn send(&self, frame: ClientFrame) {
        let _ = self.out.send(frame);
    }

    pub fn closed(&self) -> Option<Option<u16>> {
        self.seen.lock().unwrap().closed
    }

    /// Every frame received so far.
    pub fn frames(&self) -> Vec<ServerFrame> {
        self.seen.lock().unwrap().frames.clone()
    }

    pub fn count(&self, pred: impl FnMut(&&ServerFrame) -> bool) -> usize {
        self.seen.lock().unwrap().frames.iter().filter(pred).count()
    }

    /// Waits (bounded) until a received frame matches; panics if the socket closes first.
    pub async fn wait_for(&self, what: &str, mut pred: impl FnMut(&ServerFrame) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if seen.frames.iter().any(&mut pred) {
                    return;
                }
                if let Some(code) = seen.closed {
                    panic!("closed ({code:?}) while waiting for {what}");
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until a frame matches or the socket closes; true if a frame matched.
    pub async fn wait_for_or_close(&self, mut pred: impl FnMut(&ServerFrame) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if seen.frames.iter().any(&mut pred) {
                    return true;
                }
                if seen.closed.is_some() {
                    return false;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "neither frame nor close"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client that attacks: a [`Peer`] of its own user.
pub type Attacker = Peer;

impl Attacker {
    pub async fn connect(server: &Server, user: &str) -> Attacker {
        Peer::spawn(connect_ws(server, &server.token(user)).await)
    }
}

/// A well-behaved user in `room`, the one every abuse test protects.
pub struct Bystander {
    pub room: String,
    pub peer: Peer,
    published: u64,
    /// A token of another user, for the newcomer of [`Bystander::assert_unaffected`].
    newcomer_token: String,
}

impl std::ops::Deref for Bystander {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Bystander {
    /// Joins with tokens signed by the test secret.
    pub async fn join(server: &Server, user: &str, room: &str) -> Bystander {
        let newcomer = server.token(&format!("{user}-newcomer"));
        Self::join_with(server, &server.token(user), newcomer, room).await
    }

    /// Joins with `token`; `newcomer_token` is another user's.
    pub async fn join_with(
        server: &Server,
        token: &str,
        newcomer_token: String,
        room: &str,
    ) -> Bystander {
        let mut ws = connect_ws(server, token).await;
        ws.subscribe(room, None).await;
        Bystander {
            room: room.to_owned(),
            peer: Peer::spawn(ws),
            published: 0,
            newcomer_token,
        }
    }

    /// Still connected, and its own publish is acknowledged.
    pub async fn assert_served(&mut self) {
        assert_eq!(self.closed(), None, "the bystander was disconnected");
        self.published += 1;
        let id = format!("bystander-{}", self.published);
        self.send(ClientFrame::Publish {
            room: self.room.clone(),
            id: id.clone(),
            payload: String::from("still here"),
        });
        self.wait_for(
            "the ack of the bystander's publish",
            |f| matches!(f, ServerFrame::Ack { id: i, .. } if *i == id),
        )
        .await;
    }

    /// The bystander is unaffected: still connected, its own publish is acknowledged, a
    /// newcomer can still join its room, and it receives the newcomer's message.
    pub async fn assert_unaffected(&mut self, server: &Server) {
        self.assert_served().await;
        let mut newcomer = tokio::time::timeout(WAIT, connect_ws(server, &self.newcomer_token))
            .await
            .expect("a newcomer could not connect");
        let subscribed = tokio::time::timeout(WAIT, newcomer.subscribe(&self.room, None))
            .await
            .expect("a newcomer could not join the room");
        assert!(matches!(subscribed, ServerFrame::Subscribed { .. }));
        let payload = format!("hello from a newcomer {}", self.published);
        newcomer
            .publish(&self.room, &format!("n{}", self.published), &payload)
            .await;
        self.wait_for(
            "the newcomer's message",
            |f| matches!(f, ServerFrame::Message { payload: p, .. } if *p == payload),
        )
        .await;
        assert_eq!(self.closed(), None, "the bystander was disconnected");
    }
}

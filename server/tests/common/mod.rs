//! Test harness: serves `app()` on 127.0.0.1:0 and speaks to it with real clients
//! (tokio-tungstenite WebSocket, reqwest streaming SSE, plain HTTP long polling).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtlink_protocol::codec::{decode_poll, decode_server, encode_client, encode_upstream};
use rtlink_protocol::envelope::{PollRequest, TicketRequest, TicketResponse, UpstreamBatch};
use rtlink_protocol::{ClientFrame, ServerFrame};
use rtlink_server::auth::Claims;
use rtlink_server::{app, serve, AppState, Config};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const T: Duration = Duration::from_secs(5);

/// A config with short timers for tests.
pub fn fast_config() -> Config {
    let mut c = Config::for_tests();
    c.ping_interval = Duration::from_secs(30);
    c.presence_grace = Duration::from_millis(300);
    c.resume_window = Duration::from_secs(5);
    c.poll_hold = Duration::from_millis(500);
    c.typing_ttl = Duration::from_millis(300);
    c.drain_window = Duration::from_millis(1500);
    c.drain_grace = Duration::from_millis(500);
    c.rate_per_sec = 1000;
    c.rate_burst = 1000;
    c.publish_bytes_per_sec = u32::MAX;
    c.publish_bytes_burst = u32::MAX;
    c
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
}

pub async fn start(config: Config) -> Server {
    start_state(AppState::new(config).unwrap()).await
}

pub async fn start_state(state: AppState) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(serve(listener, router, std::future::pending()));
    Server {
        addr,
        state,
        http: reqwest::Client::new(),
    }
}

/// A server running elsewhere (a child process started with `--auth-secret` `rtlink_server::config::TEST_SECRET`) at
/// `addr`. The local state only signs tokens with that secret; every request goes to `addr`.
pub fn remote(addr: SocketAddr) -> Server {
    Server {
        addr,
        state: AppState::new(Config::for_tests()).unwrap(),
        http: reqwest::Client::new(),
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The body of `GET path` (e.g. `/metrics`), whatever its status.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn token(&self, user: &str) -> String {
        self.token_for(user, &["*"], 3600)
    }

    pub fn token_for(&self, user: &str, rooms: &[&str], ttl_secs: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.state.auth.sign(&Claims {
            sub: user.into(),
            name: format!("{user}-name"),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp: (now + ttl_secs).max(0) as u64,
        })
    }

    pub async fn ticket(&self, user: &str) -> String {
        let token = self.token(user);
        self.ticket_with(&token).await
    }

    pub async fn ticket_with(&self, token: &str) -> String {
        self.ticket_for_request(token, &TicketRequest::default())
            .await
    }

    /// A ticket that names the session to resume (`probe`: a probe of it).
    pub async fn ticket_resuming(&self, user: &str, resume: &str, probe: bool) -> String {
        let request = TicketRequest {
            resume: Some(resume.into()),
            probe,
        };
        self.ticket_for_request(&self.token(user), &request).await
    }

    pub async fn ticket_for_request(&self, token: &str, request: &TicketRequest) -> String {
        let resp = self
            .http
            .post(self.url("/v1/ticket"))
            .bearer_auth(token)
            .body(serde_json::to_vec(request).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<TicketResponse>().await.unwrap().ticket
    }

    /// A connected WebSocket that has sent `hello` and received `welcome`.
    pub async fn ws(&self, user: &str) -> Ws {
        self.ws_resume(user, None).await
    }

    pub async fn ws_resume(&self, user: &str, resume: Option<&str>) -> Ws {
        let ticket = self.ticket(user).await;
        let mut ws = Ws::connect(&self.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
        ws.send(&ClientFrame::Hello {
            v: 1,
            resume: resume.map(Into::into),
        })
        .await;
        let welcome = ws.recv().await;
        assert!(
            matches!(welcome, ServerFrame::Welcome { .. }),
            "{welcome:?}"
        );
        ws.welcome = Some(welcome);
        ws
    }
}

pub fn resume_token(welcome: &ServerFrame) -> String {
    match welcome {
        ServerFrame::Welcome { resume_token, .. } => resume_token.clone(),
        other => panic!("not a welcome: {other:?}"),
    }
}

pub fn session_id(welcome: &ServerFrame) -> String {
    match welcome {
        ServerFrame::Welcome { session, .. } => session.clone(),
        other => panic!("not a welcome: {other:?}"),
    }
}

pub fn resumed(welcome: &ServerFrame) -> bool {
    matches!(welcome, ServerFrame::Welcome { resumed: true, .. })
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Option<ServerFrame>,
}

/// What came out of a WebSocket.
#[derive(Debug)]
pub enum WsEvent {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (inner, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        Ws {
            inner,
            welcome: None,
        }
    }

    /// Tries to connect; on an HTTP refusal returns its status (and proves no 101 came).
    pub async fn try_connect(url: &str, origin: Option<&str>) -> Result<Ws, u16> {
        let mut req = url.into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((inner, resp)) => {
                assert_eq!(resp.status(), 101);
                Ok(Ws {
                    inner,
                    welcome: None,
                })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected connect error {e}"),
        }
    }

    pub fn welcome(&self) -> &ServerFrame {
        self.welcome.as_ref().unwrap()
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let text = String::from_utf8(encode_client(frame)).unwrap();
        self.inner.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: String) {
        let _ = self.inner.send(Message::text(text)).await;
    }

    pub async fn next_event(&mut self) -> WsEvent {
        loop {
            let msg = tokio::time::timeout(T, self.inner.next())
                .await
                .expect("ws receive timed out");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return WsEvent::Frame(decode_server(t.as_bytes(), usize::MAX).unwrap())
                }
                Some(Ok(Message::Close(c))) => {
                    return WsEvent::Closed(c.map(|c| u16::from(c.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return WsEvent::Closed(None),
            }
        }
    }

    /// The next frame that is not a ping.
    pub async fn recv(&mut self) -> ServerFrame {
        loop {
            match self.next_event().await {
                WsEvent::Frame(ServerFrame::Ping) => continue,
                WsEvent::Frame(f) => return f,
                WsEvent::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.recv().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// Reads until the close, returning its code and the frames before it.
    pub async fn recv_close(&mut self) -> (Option<u16>, Vec<ServerFrame>) {
        let mut frames = Vec::new();
        loop {
            match self.next_event().await {
                WsEvent::Frame(f) => frames.push(f),
                WsEvent::Closed(c) => return (c, frames),
            }
        }
    }

    pub async fn subscribe(&mut self, room: &str, since: Option<u64>) -> ServerFrame {
        self.send(&ClientFrame::Subscribe {
            room: room.into(),
            since,
            epoch: None,
            history: None,
        })
        .await;
        self.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. }))
            .await
    }

    pub async fn publish(&mut self, room: &str, id: &str, payload: &str) -> u64 {
        self.send(&ClientFrame::Publish {
            room: room.into(),
            id: id.into(),
            payload: payload.into(),
        })
        .await;
        match self.recv_until(|f| matches!(f, ServerFrame::Ack { id: i, .. } | ServerFrame::Nack { id: i, .. } if i == id)).await {
            ServerFrame::Ack { offset, .. } => offset,
            other => panic!("publish refused: {other:?}"),
        }
    }
}

/// A Server-Sent Events client over a streaming reqwest response.
pub struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    pub comments: usize,
}

impl Sse {
    pub async fn open(server: &Server, query: &str) -> Result<Sse, reqwest::Response> {
        let resp = server
            .http
            .get(server.url(&format!("/v1/sse?{query}")))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            return Err(resp);
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            resp,
            buf: Vec::new(),
            comments: 0,
        })
    }

    /// The next event's frame; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(decode_server(data.as_bytes(), usize::MAX).unwrap());
            }
            let chunk = tokio::time::timeout(T, self.resp.chunk())
                .await
                .expect("sse timed out");
            match chunk {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                _ => return None,
            }
        }
    }

    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.next().await.expect("sse stream ended");
            if pred(&f) {
                return f;
            }
        }
    }
}

/// A long-polling client.
pub struct Poll {
    pub token: String,
    pub cursor: u64,
}

impl Poll {
    /// Opens with `ticket` (which names the session to resume, if any: `resume` is only the
    /// reader's reminder of which one, and must be what the ticket names).
    pub async fn open(
        server: &Server,
        ticket: &str,
        resume: Option<&str>,
    ) -> (Poll, Vec<ServerFrame>) {
        let _ = resume;
        let url = server.url(&format!("/v1/poll?ticket={ticket}&v=1"));
        let resp = server.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let batch = decode_poll(&resp.bytes().await.unwrap(), usize::MAX).unwrap();
        let token = resume_token(&batch.frames[0]);
        (
            Poll {
                token,
                cursor: batch.cursor,
            },
            batch.frames,
        )
    }

    pub async fn poll(&mut self, server: &Server) -> Vec<ServerFrame> {
        let resp = tokio::time::timeout(T, poll_request(server, &self.token, self.cursor))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let batch = decode_poll(&resp.bytes().await.unwrap(), usize::MAX).unwrap();
        self.cursor = batch.cursor;
        batch.frames
    }

    pub async fn send(&self, server: &Server, frames: Vec<ClientFrame>) -> u16 {
        send_upstream(server, &self.token, frames).await
    }
}

/// `POST /v1/poll {"session", "cursor"}` as a browser sends it (`text/plain`).
pub async fn poll_request(server: &Server, token: &str, cursor: u64) -> reqwest::Response {
    let body = serde_json::to_vec(&PollRequest {
        session: token.into(),
        cursor,
    })
    .unwrap();
    server
        .http
        .post(server.url("/v1/poll"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn send_upstream(server: &Server, token: &str, frames: Vec<ClientFrame>) -> u16 {
    let body = encode_upstream(&UpstreamBatch {
        session: token.into(),
        frames,
    });
    let resp = server
        .http
        .post(server.url("/v1/send"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// Polls until a frame matches (bounded by `T`).
pub async fn poll_until(
    poll: &mut Poll,
    server: &Server,
    mut pred: impl FnMut(&ServerFrame) -> bool,
) -> Vec<ServerFrame> {
    let deadline = tokio::time::Instant::now() + T;
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let frames = poll.poll(server).await;
        let hit = frames.iter().any(&mut pred);
        seen.extend(frames);
        if hit {
            return seen;
        }
    }
    panic!("no matching frame; saw {seen:?}");
}

/// Two tabs of one user (`ana`, the first on `x`, the second on `y`) with different metadata,
/// and the tab whose session id sorts first changes last. A member who followed the events
/// shows ana by that last change (a client shows a user by their latest connection); so must
/// a joiner who starts from a snapshot, on either node: its snapshot lists ana's tabs in the
/// order they last changed. (`x` and `y` may be the same server.)
pub async fn joiners_see_the_tab_that_changed_last(x: &Server, y: &Server) {
    let room = "tabs";
    let mut member = x.ws("cy").await;
    member.subscribe(room, None).await;
    let mut first = x.ws("ana").await;
    first.subscribe(room, None).await;
    let mut second = y.ws("ana").await;
    second.subscribe(room, None).await;
    let (first_id, second_id) = (session_id(first.welcome()), session_id(second.welcome()));
    let (mut early, mut late) = (&mut first, &mut second);
    let (early_id, late_id) = if first_id < second_id {
        std::mem::swap(&mut early, &mut late);
        (second_id, first_id)
    } else {
        (first_id, second_id)
    };
    for (tab, meta) in [(early, "typing"), (late, "away")] {
        tab.send(&ClientFrame::Presence {
            room: room.into(),
            meta: meta.into(),
        })
        .await;
        member
            .recv_until(
                |f| matches!(f, ServerFrame::PresenceUpdate { conn, .. } if conn.meta == meta),
            )
            .await;
    }
    for node in [x, y] {
        let mut joiner = node.ws("dan").await;
        joiner.subscribe(room, None).await;
        let ServerFrame::PresenceSnapshot { conns, .. } = joiner
            .recv_until(|f| matches!(f, ServerFrame::PresenceSnapshot { .. }))
            .await
        else {
            unreachable!()
        };
        let ana: Vec<(&str, &str)> = conns
            .iter()
            .filter(|c| c.user == "ana")
            .map(|c| (c.session.as_str(), c.meta.as_str()))
            .collect();
        assert_eq!(
            ana,
            [(early_id.as_str(), "typing"), (late_id.as_str(), "away")],
            "{conns:?}"
        );
    }
}

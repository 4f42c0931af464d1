//! HTTP/2: many Server-Sent Events streams from one client share one connection.
//!
//! Browsers open at most 6 HTTP/1.1 connections per origin, so a user with several tabs on SSE
//! starves the seventh. Over HTTP/2 the streams are multiplexed. These tests open more than 6
//! SSE streams from one `reqwest::Client`, over TLS (ALPN `h2`, the server's `serve_tls` path)
//! and over h2c (prior knowledge, the plain `serve` path), and check that every stream gets a
//! published message, that every response was HTTP/2, and that a counting TCP forwarder in
//! front of the server accepted exactly one connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Server, T};
use rtlink_protocol::codec::{decode_server, encode_upstream};
use rtlink_protocol::envelope::{TicketResponse, UpstreamBatch};
use rtlink_protocol::{ClientFrame, ServerFrame};
use rtlink_server::{app, serve, tls, AppState, Config};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// More than the 6 HTTP/1.1 connections a browser allows per origin.
const STREAMS: usize = 10;
const ROOM: &str = "tabs";

#[tokio::test]
async fn many_sse_streams_share_one_tls_h2_connection() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let server_cfg = tls::config(vec![cert.clone()], key).unwrap();

    let state = AppState::new(Config::for_tests()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    tokio::spawn(tls::serve_tls(
        listener,
        app(state.clone()),
        server_cfg,
        std::future::pending(),
    ));
    let (addr, accepted) = counting_forwarder(server_addr).await;

    // No prior knowledge: the client offers h2 and http/1.1, as a browser does, and ALPN
    // must pick h2.
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&cert).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let client = H2Client {
        base: format!("https://localhost:{}", addr.port()),
        http,
        server: Server {
            addr,
            state,
            http: reqwest::Client::new(),
        },
    };
    client.fan_out_over_many_streams().await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "TCP connections accepted"
    );
}

#[tokio::test]
async fn many_sse_streams_share_one_h2c_connection() {
    let state = AppState::new(Config::for_tests()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app(state.clone()), std::future::pending()));
    let (addr, accepted) = counting_forwarder(server_addr).await;

    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let client = H2Client {
        base: format!("http://{addr}"),
        http,
        server: Server {
            addr,
            state,
            http: reqwest::Client::new(),
        },
    };
    client.fan_out_over_many_streams().await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "TCP connections accepted"
    );
}

/// A TCP forwarder on 127.0.0.1:0 in front of `target` that counts the connections it
/// accepts: the client's connection count, seen from outside both client and server.
async fn counting_forwarder(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, accepted)
}

/// One HTTP/2 client (one `reqwest::Client`, hence one pool) speaking to the server.
struct H2Client {
    base: String,
    http: reqwest::Client,
    /// Signs tokens with the server's secret.
    server: Server,
}

impl H2Client {
    /// Opens `STREAMS` SSE sessions of one user (the "many tabs" case), subscribes each to one
    /// room over `POST /v1/send`, publishes once and checks that every stream delivers it.
    async fn fan_out_over_many_streams(&self) {
        let mut streams = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            let ticket = self.ticket("ana").await;
            let mut sse = self.open_sse(&ticket).await;
            let resume_token = match sse.next().await {
                ServerFrame::Welcome { resume_token, .. } => resume_token,
                other => panic!("expected welcome, got {other:?}"),
            };
            let subscribe = ClientFrame::Subscribe {
                room: ROOM.into(),
                since: None,
                epoch: None,
                history: None,
            };
            assert_eq!(self.send(&resume_token, subscribe).await, 204);
            sse.until(|f| matches!(f, ServerFrame::Subscribed { .. }))
                .await;
            streams.push((sse, resume_token));
        }

        // Every stream is still open; publish from the first.
        let publish = ClientFrame::Publish {
            room: ROOM.into(),
            id: "p1".into(),
            payload: "hello from tab 0".into(),
        };
        assert_eq!(self.send(&streams[0].1, publish).await, 204);
        for (i, (sse, _)) in streams.iter_mut().enumerate() {
            let frame = sse
                .until(|f| matches!(f, ServerFrame::Message { .. }))
                .await;
            match frame {
                ServerFrame::Message {
                    room,
                    offset,
                    payload,
                    ..
                } => {
                    assert_eq!(room, ROOM, "stream {i}");
                    assert_eq!(offset, 1, "stream {i}");
                    assert_eq!(payload, "hello from tab 0", "stream {i}");
                }
                _ => unreachable!(),
            }
        }
    }

    async fn ticket(&self, user: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/ticket", self.base))
            .bearer_auth(self.server.token(user))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        resp.json::<TicketResponse>().await.unwrap().ticket
    }

    async fn open_sse(&self, ticket: &str) -> SseStream {
        let resp = tokio::time::timeout(
            T,
            self.http
                .get(format!("{}/v1/sse?ticket={ticket}&v=1", self.base))
                .send(),
        )
        .await
        .expect("SSE request timed out")
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseStream {
            resp,
            buf: Vec::new(),
        }
    }

    /// Posts one upstream frame; returns the status.
    async fn send(&self, resume_token: &str, frame: ClientFrame) -> u16 {
        let body = encode_upstream(&UpstreamBatch {
            session: resume_token.into(),
            frames: vec![frame],
        });
        let resp = self
            .http
            .post(format!("{}/v1/send", self.base))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        resp.status().as_u16()
    }
}

/// An SSE response body read event by event.
struct SseStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseStream {
    /// The next event's frame (keep-alive comments skipped); panics after `T` of silence.
    async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    return decode_server(data.as_bytes(), usize::MAX).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(T, self.resp.chunk())
                .await
                .expect("SSE stream went silent")
                .unwrap()
                .expect("SSE stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let frame = self.next().await;
            if pred(&frame) {
                return frame;
            }
        }
    }
}

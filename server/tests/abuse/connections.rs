//! Connection-level protection: tickets, header timeouts, connection caps, frame sizes, stalled
//! streams.

use std::time::{Duration, Instant};

use rtlink_protocol::envelope::TicketResponse;
use rtlink_protocol::{ClientFrame, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{Poll, Server, Sse, Ws};
use crate::process::ServerProcess;
use crate::{bounded, metric, Bystander};

/// The `/metrics` series of open SSE connections.
const SSE_CONNECTIONS: &str = r#"rtlink_connections{transport="sse"}"#;

/// Opens refused for a reason other than the ticket (wrong protocol version, not an upgrade)
/// leave the ticket usable: it is consumed last.
#[tokio::test]
async fn abuse_refused_opens_do_not_burn_the_ticket() {
    bounded(async {
        let server = ServerProcess::start(&[]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;

        let ticket = client.ticket("bob").await;
        // A plain GET of the WebSocket endpoint (no upgrade headers).
        let resp = client
            .http
            .get(client.url(&format!("/v1/ws?ticket={ticket}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        // SSE and long polling with an unsupported protocol version: refused with a `close
        // 4002` in the stream or batch (what a browser can see).
        for path in ["/v1/sse", "/v1/poll"] {
            let resp = client
                .http
                .get(client.url(&format!("{path}?ticket={ticket}&v=2")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let body = resp.text().await.unwrap();
            assert!(body.contains(r#""code":4002"#), "{path}: {body}");
        }
        // The ticket still opens a WebSocket, once.
        let url = client.ws_url(&format!("/v1/ws?ticket={ticket}"));
        assert!(Ws::try_connect(&url, None).await.is_ok());
        assert_eq!(Ws::try_connect(&url, None).await.err(), Some(401));

        // The same for SSE and polling.
        let ticket = client.ticket("bob").await;
        let _ = client
            .http
            .get(client.url(&format!("/v1/sse?ticket={ticket}&v=2")))
            .send()
            .await
            .unwrap();
        let mut sse = Sse::open(&client, &format!("ticket={ticket}&v=1"))
            .await
            .unwrap_or_else(|r| panic!("{}", r.status()));
        assert!(sse.next().await.is_some());
        let ticket = client.ticket("bob").await;
        let _ = client
            .http
            .get(client.url(&format!("/v1/poll?ticket={ticket}&v=2")))
            .send()
            .await
            .unwrap();
        let (_poll, frames) = Poll::open(&client, &ticket, None).await;
        assert!(!frames.is_empty());

        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// Gets a ticket and opens an SSE stream, both claiming to come from `forwarded_for`; the
/// response (kept open) or the refusal's status (at the ticket step or at the open).
async fn sse_from(client: &Server, forwarded_for: &str) -> Result<reqwest::Response, u16> {
    let resp = client
        .http
        .post(client.url("/v1/ticket"))
        .bearer_auth(client.token("mallory"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let ticket = resp.json::<TicketResponse>().await.unwrap().ticket;
    let resp = client
        .http
        .get(client.url(&format!("/v1/sse?ticket={ticket}&v=1")))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Ok(resp),
        status => Err(status),
    }
}

/// Behind a trusted proxy the per-address limits key on the forwarded client, so one client
/// behind the balancer cannot use up the balancer's address for everyone; from an untrusted
/// peer the header is ignored, so it cannot be used to dodge the limits.
#[tokio::test]
async fn abuse_per_address_limits_see_through_trusted_proxies_only() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--trusted-proxy",
            "127.0.0.1",
            "--max-connections-per-ip",
            "2",
        ]);
        let client = server.client();
        // The bystander comes through the proxy without a forwarding header: 127.0.0.1.
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(sse_from(&client, "6.6.6.6").await.expect("within the cap"));
        }
        assert_eq!(sse_from(&client, "6.6.6.6").await.err(), Some(429));
        // A spoofed left part does not help: the proxy appended the real client.
        assert_eq!(sse_from(&client, "1.2.3.4, 6.6.6.6").await.err(), Some(429));
        // Another client behind the same proxy is not affected.
        held.push(sse_from(&client, "7.7.7.7").await.expect("another client"));
        bystander.assert_unaffected(&client).await;
        drop(held);

        // Without --trusted-proxy the header is ignored: spoofing does not add slots.
        let server = ServerProcess::start(&["--max-connections-per-ip", "4"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut held = Vec::new();
        for i in 0.. {
            match sse_from(&client, &format!("9.9.9.{i}")).await {
                Ok(r) => held.push(r),
                Err(status) => {
                    assert_eq!(status, 429);
                    break;
                }
            }
        }
        assert_eq!(held.len(), 3, "four per address, the bystander holds one");
        drop(held);
        crate::process::eventually("the slots are released", crate::WAIT, || async {
            metric(&client, SSE_CONNECTIONS).await == 0
        })
        .await;
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// A TCP connection to `server` from the loopback address `local` (127.0.0.2, …): another
/// address than the bystander's 127.0.0.1, so per-address caps can be tested on one machine.
async fn tcp_from(
    local: &str,
    server: std::net::SocketAddr,
    recv_buffer: Option<u32>,
) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes the connection (bounded); what it sent, and when it closed.
async fn read_until_closed(mut tcp: TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

/// Half-sent request heads (slowloris), silent connections and a stalled HTTP/2 preface are
/// cut by the header and idle timeouts, and one address cannot hold more than its share of
/// TCP connections meanwhile.
#[tokio::test]
async fn abuse_half_sent_and_idle_connections_are_cut_and_capped_per_address() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-tcp-connections-per-ip",
            "50",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut attack = Vec::new();
        for _ in 0..100 {
            let mut tcp = tcp_from("127.0.0.2", server.addr, None).await;
            let _ = tcp
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            attack.push(tokio::spawn(read_until_closed(
                tcp,
                Duration::from_secs(15),
            )));
        }
        // While the attack holds its connections, the bystander's address is served.
        bystander.assert_unaffected(&client).await;
        let (mut refused, mut timed_out) = (0, 0);
        for conn in attack {
            let (got, after) = conn.await.unwrap();
            if String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503") {
                refused += 1;
            } else {
                // Closed without an answer (hyper sends none on a header timeout).
                assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
                assert!(after >= Duration::from_millis(800), "cut after {after:?}");
                timed_out += 1;
            }
        }
        assert_eq!(
            (timed_out, refused),
            (50, 50),
            "50 held until the header timeout"
        );

        // Silent connections and a stalled HTTP/2 preface: the idle timeout.
        let mut idle = Vec::new();
        for i in 0..10 {
            let mut tcp = tcp_from("127.0.0.3", server.addr, None).await;
            if i % 2 == 0 {
                let _ = tcp.write_all(b"PRI * HTTP/2.0\r\n").await;
            }
            idle.push(tokio::spawn(read_until_closed(
                tcp,
                Duration::from_secs(15),
            )));
        }
        for conn in idle {
            let (_, after) = conn.await.unwrap();
            assert!(after >= Duration::from_millis(1500), "cut after {after:?}");
        }

        // Upgraded WebSockets stay counted (hyper lets go of them after the upgrade).
        let mut sockets = Vec::new();
        for i in 0..50 {
            let tcp = tcp_from("127.0.0.4", server.addr, None).await;
            let ticket = client.ticket(&format!("w{i}")).await;
            let url = client.ws_url(&format!("/v1/ws?ticket={ticket}"));
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
            sockets.push(ws);
        }
        let (got, _) = read_until_closed(
            tcp_from("127.0.0.4", server.addr, None).await,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"),
            "{got:?}"
        );
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// Requests in flight are capped per address, `POST /v1/poll` and `/v1/send` included: one
/// address holding ten polls gets `429` for more of either, while other addresses are served.
#[tokio::test]
async fn abuse_requests_in_flight_are_capped_per_address() {
    bounded(async {
        let server = ServerProcess::start(&["--max-requests-per-ip", "10", "--poll-hold", "20s"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let attacker = reqwest::Client::builder()
            .local_address(Some("127.0.0.2".parse().unwrap()))
            .build()
            .unwrap();
        let mut sessions = Vec::new();
        for i in 0..15 {
            let ticket = client.ticket(&format!("m{i}")).await;
            let resp = attacker
                .get(client.url(&format!("/v1/poll?ticket={ticket}&v=1")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let batch =
                rtlink_protocol::codec::decode_poll(&resp.bytes().await.unwrap(), usize::MAX)
                    .unwrap();
            sessions.push((crate::common::resume_token(&batch.frames[0]), batch.cursor));
        }
        let poll = |token: &str, cursor: u64| {
            let body = format!(r#"{{"session":"{token}","cursor":{cursor}}}"#);
            let request = attacker
                .post(client.url("/v1/poll"))
                .header("content-type", "text/plain")
                .body(body);
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        };
        let held: Vec<_> = sessions[..10]
            .iter()
            .map(|(token, cursor)| poll(token, *cursor))
            .collect();
        // An empty `/v1/send` is answered at once: 204 until the ten polls are held, then 429.
        let send = || {
            attacker
                .post(client.url("/v1/send"))
                .header("content-type", "text/plain")
                .body(format!(r#"{{"session":"{}","frames":[]}}"#, sessions[0].0))
                .send()
        };
        crate::process::eventually("ten polls held", crate::WAIT, || async {
            let status = send().await.unwrap().status();
            assert!(status == 204 || status == 429, "{status}");
            status == 429
        })
        .await;
        let refused = send().await.unwrap();
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "overloaded", "{body}");
        assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
        // More polls from that address are refused at once too.
        for (token, cursor) in &sessions[10..] {
            assert_eq!(poll(token, *cursor).await.unwrap(), 429);
        }
        assert!(
            held.iter().all(|h| !h.is_finished()),
            "the held polls stay held"
        );
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// An SSE client that stops reading (a full receive window) while its room is busy is cut
/// after the ping interval plus the grace, instead of holding its connection and buffers for
/// ever; the room's other members keep receiving.
#[tokio::test]
async fn abuse_an_sse_client_that_stops_reading_is_cut() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--ping-interval",
            "1s",
            "--heartbeat-grace",
            "1s",
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
            // This test is not about the per-user publish budget.
            "--publish-bytes-per-sec",
            "4000000000",
            "--publish-bytes-burst",
            "4000000000",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:busy").await;
        let ticket = client.ticket("mallory").await;
        let mut tcp = tcp_from("127.0.0.2", server.addr, Some(4096)).await;
        tcp.write_all(
            format!("GET /v1/sse?ticket={ticket}&v=1 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        // Read the welcome to learn the session, subscribe it, then never read again.
        let mut head = vec![0u8; 4096];
        let n = tcp.read(&mut head).await.unwrap();
        let text = String::from_utf8_lossy(&head[..n]).into_owned();
        let token = text
            .split("\"resume_token\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("welcome in the first read")
            .to_owned();
        assert_eq!(
            crate::common::send_upstream(
                &client,
                &token,
                vec![ClientFrame::Subscribe {
                    room: "chat:busy".into(),
                    since: None,
                    epoch: None,
                    history: None,
                }]
            )
            .await,
            204
        );
        let mut publisher = crate::connect_ws(&client, &client.token("publisher")).await;
        publisher.subscribe("chat:busy", None).await;
        let publisher = crate::Peer::spawn(publisher);
        let started = Instant::now();
        let mut i = 0;
        loop {
            // Keep the room busy with large messages the stalled client cannot take.
            for _ in 0..5 {
                i += 1;
                publisher.send(ClientFrame::Publish {
                    room: "chat:busy".into(),
                    id: format!("p{i}"),
                    payload: "x".repeat(30_000),
                });
            }
            if metric(&client, SSE_CONNECTIONS).await == 0 {
                break;
            }
            assert!(
                started.elapsed() < crate::WAIT,
                "the stalled SSE client was never cut"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The connection itself is gone too: reading now reaches its end.
        let (_, _) = read_until_closed(tcp, Duration::from_secs(10)).await;
        bystander
            .wait_for(
                "the last busy message",
                |f| matches!(f, ServerFrame::Message { offset, .. } if *offset == i),
            )
            .await;
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// tungstenite's frame limit is the protocol's: a frame announcing 16 MiB (tungstenite's own
/// default limit) is refused from its header (close 4001), not read first: only 1 KB of it is
/// ever sent.
#[tokio::test]
async fn abuse_an_oversized_websocket_frame_is_refused_from_its_header() {
    bounded(async {
        let server = ServerProcess::start(&[]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut ws = crate::connect_ws(&client, &client.token("mallory")).await;
        // A masked text frame header announcing 16 MiB, then only 1 KB of it.
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(16u64 * 1024 * 1024).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend_from_slice(&[b'x'; 1024]);
        let tcp = ws.inner.get_mut();
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = tcp else {
            panic!("plain TCP expected")
        };
        tcp.write_all(&frame).await.unwrap();
        let (code, _) = ws.recv_close().await;
        assert_eq!(code, Some(4001));
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

//! A client that bursts publishes without reading the replies and then resets its connection
//! (closing a socket with unread data sends a TCP reset): its WebSocket ends at once and gives
//! back its TCP-connection slot, so repeating it never uses up a cap other users need.

use std::time::Duration;

use futures_util::SinkExt;
use rtlink_protocol::codec::encode_client;
use rtlink_protocol::ClientFrame;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Server;
use crate::process::{eventually, ServerProcess};
use crate::{bounded, metric, Bystander};

/// More attacks than the per-address TCP cap has room for: one leaked slot per attack would
/// refuse the last ones (and the bystander's newcomer).
const ROUNDS: usize = 6;
const TCP_CAP_PER_IP: &str = "4";
const BURST: usize = 3000;

/// The `rtlink_connections{transport="websocket"}` gauge.
const WEBSOCKETS: &str = "rtlink_connections{transport=\"websocket\"}";

/// Opens a WebSocket with a 4 KiB receive buffer (so the server's writes to it block soon),
/// says `hello`, subscribes to `room` (so every publish also sends it its own copy), pipelines
/// `BURST` publishes without reading anything, then resets the connection.
async fn burst_and_reset(client: &Server, user: &str, room: &str) {
    let ticket = client.ticket(user).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(client.addr).await.unwrap();
    let url = client.ws_url(&format!("/v1/ws?ticket={ticket}"));
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let text = |f: &ClientFrame| Message::text(String::from_utf8(encode_client(f)).unwrap());
    ws.feed(text(&ClientFrame::Hello { v: 1, resume: None }))
        .await
        .unwrap();
    ws.feed(text(&ClientFrame::Subscribe {
        room: room.into(),
        since: None,
        epoch: None,
        history: None,
    }))
    .await
    .unwrap();
    for i in 0..BURST {
        let publish = ClientFrame::Publish {
            room: room.into(),
            id: format!("p{i}"),
            payload: String::from("\"burst\""),
        };
        // The server may already have given up on the connection: that is fine here.
        if ws.feed(text(&publish)).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.flush()).await;
    // An abortive close, as when a process exits with unread data: a reset, no FIN.
    ws.get_ref().set_zero_linger().unwrap();
    drop(ws);
}

/// Bursts and resets, several times from the bystander's own address: each connection ends and
/// releases its slot well before the heartbeat (25 s + 10 s) would have reaped it, and the
/// bystander keeps being served.
#[tokio::test]
async fn abuse_a_burst_then_reset_releases_the_connection_at_once() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--max-tcp-connections-per-ip",
            TCP_CAP_PER_IP,
            "--rate-per-sec",
            "1000000",
            "--rate-burst",
            "1000000",
            "--publish-bytes-per-sec",
            "1000000000",
            "--publish-bytes-burst",
            "1000000000",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:burst").await;
        // The bystander's socket and the connection this scrape comes on.
        let tcp_baseline = metric(&client, "rtlink_tcp_connections").await;
        for round in 0..ROUNDS {
            burst_and_reset(&client, "mallory", "chat:burst").await;
            eventually(
                &format!("round {round}: the reset WebSocket and its TCP slot are released"),
                Duration::from_secs(10),
                || async {
                    metric(&client, WEBSOCKETS).await == 1
                        && metric(&client, "rtlink_tcp_connections").await <= tcp_baseline
                },
            )
            .await;
            bystander.assert_served().await;
        }
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

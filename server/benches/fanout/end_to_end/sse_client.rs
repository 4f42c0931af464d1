//! The benchmark's SSE subscriber: an EventSource-like reader over reqwest (HTTP/1.1, one
//! connection per stream as in a browser), subscribing through `POST /v1/send`.

use rtlink_protocol::codec::decode_server;
use rtlink_protocol::ServerFrame;

use super::{Received, Server, Shared, ROOM};

/// An SSE session over HTTP/1.1 (reqwest, one connection per stream as in a browser).
pub(super) struct SseClient {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseClient {
    pub(super) async fn connect(server: &Server, user: &str) -> SseClient {
        let ticket = server.ticket(user).await;
        let resp = server
            .http
            .get(format!("http://{}/v1/sse?ticket={ticket}&v=1", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut sse = SseClient {
            resp,
            buf: Vec::new(),
        };
        let welcome = sse.next_data().await.expect("SSE ended before welcome");
        let Ok(ServerFrame::Welcome { resume_token, .. }) = decode_server(&welcome, usize::MAX)
        else {
            panic!("expected welcome");
        };
        let body = serde_json::json!({
            "session": resume_token,
            "frames": [{"t": "subscribe", "room": ROOM}],
        })
        .to_string();
        let status = server
            .http
            .post(format!("http://{}/v1/send", server.addr))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        while let Some(data) = sse.next_data().await {
            if data.starts_with(br#"{"t":"subscribed""#) {
                return sse;
            }
        }
        panic!("SSE ended before subscribed");
    }

    /// The `data:` of the next event (keep-alive comments skipped); `None` at the end.
    async fn next_data(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let data = event
                    .split(|b| *b == b'\n')
                    .find_map(|line| line.strip_prefix(b"data: "));
                if let Some(data) = data {
                    return Some(data.to_vec());
                }
                continue;
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    pub(super) async fn receive(mut self, shared: &Shared) -> Received {
        let mut rx = Received {
            next_offset: 1,
            ..Received::default()
        };
        while let Some(data) = self.next_data().await {
            if shared.on_frame(&data, &mut rx) {
                break;
            }
        }
        rx.connection = Some(Box::new(self));
        rx
    }
}

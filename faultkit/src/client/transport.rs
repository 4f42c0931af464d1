//! The ticket step and the three transports for the native driver, doing what the browser glue
//! (`js/io.js`) does: trade the token for a ticket (the body names the session to
//! resume or probe), open with the ticket, report what happens.
//!
//! Like a browser, the driver cannot see why a WebSocket upgrade or an EventSource was refused
//! (`opaque_refusals`, on by default): any refusal there is [`OpenError::Network`]. `fetch`
//! answers (the ticket, long polling, upstream POSTs) are read by status.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rtlink::core::batch::take_batch;
use rtlink::core::{ClientFrame, CloseCode, OpenError, ServerFrame, TransportId, TransportKind};
use rtlink_protocol::codec::{decode_poll, decode_server, encode_client};
use rtlink_protocol::envelope::{PollRequest, TicketRequest};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// What a transport tells the driver.
#[derive(Debug)]
pub(crate) enum Report {
    /// The ticket step succeeded.
    Ticket(String),
    Opened,
    Frame(ServerFrame),
    Closed {
        code: Option<CloseCode>,
        reason: String,
    },
    OpenFailed(OpenError),
}

/// What the driver tells a transport.
#[derive(Debug)]
pub(crate) enum Order {
    Send(ClientFrame),
    Close(Option<CloseCode>),
}

pub(crate) type Reports = mpsc::UnboundedSender<(TransportId, Report)>;

/// Everything a transport needs to open.
#[derive(Clone)]
pub(crate) struct Open {
    pub id: TransportId,
    pub kind: TransportKind,
    pub base_url: String,
    /// The single-use ticket from the ticket step.
    pub ticket: String,
    pub http: reqwest::Client,
    pub opaque_refusals: bool,
    pub reports: Reports,
}

/// What the ticket step asks for.
pub(crate) struct TicketStep {
    pub id: TransportId,
    pub base_url: String,
    pub token: String,
    pub request: TicketRequest,
    pub http: reqwest::Client,
    pub reports: Reports,
}

impl Open {
    fn report(&self, r: Report) {
        let _ = self.reports.send((self.id, r));
    }
}

/// Runs one transport until it ends or its order channel closes.
pub(crate) async fn run(open: Open, orders: mpsc::UnboundedReceiver<Order>) {
    let ticket = open.ticket.clone();
    match open.kind {
        TransportKind::WebSocket => websocket(open, &ticket, orders).await,
        TransportKind::Sse => sse(open, &ticket, orders).await,
        TransportKind::LongPoll => long_poll(open, &ticket, orders).await,
    }
}

/// The ticket step (`POST /v1/ticket`). At this step no answer or a 5xx means the server is
/// unreachable ([`OpenError::Unreachable`]), whatever the transport.
pub(crate) async fn ticket_step(step: TicketStep) {
    let report = match ticket(&step).await {
        Ok(t) => Report::Ticket(t),
        Err(OpenError::Network) => Report::OpenFailed(OpenError::Unreachable),
        Err(e) => Report::OpenFailed(e),
    };
    let _ = step.reports.send((step.id, report));
}

/// How the browser glue reads a refused `fetch` (`js/io.js`, `failure`).
async fn failure(resp: reqwest::Response) -> OpenError {
    let status = resp.status().as_u16();
    let header = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s * 1000);
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body.get("error").and_then(|c| c.as_str()).unwrap_or_default();
    let retry_body = body.get("retry_after_ms").and_then(|v| v.as_u64());
    match (status, code) {
        (401, _) => OpenError::Unauthorized,
        (403, _) => OpenError::Forbidden,
        (404, "unknown_session") => OpenError::SessionUnknown,
        (429, _) | (503, _) => OpenError::Overloaded { retry_after_ms: retry_body.or(header) },
        _ => OpenError::Network,
    }
}

async fn ticket(step: &TicketStep) -> Result<String, OpenError> {
    let body = serde_json::to_vec(&step.request).unwrap_or_default();
    let resp = step
        .http
        .post(format!("{}/v1/ticket", step.base_url))
        .bearer_auth(&step.token)
        .body(body)
        .send()
        .await
        .map_err(|_| OpenError::Network)?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let body: serde_json::Value = resp.json().await.map_err(|_| OpenError::Network)?;
    body.get("ticket").and_then(|t| t.as_str()).map(str::to_owned).ok_or(OpenError::Network)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn transport_url(open: &Open, path: &str, ticket: &str) -> String {
    format!("{}{path}?v=1&ticket={}", open.base_url, enc(ticket))
}

/// What the upstream needs from a `welcome`: the resume token and the largest body.
#[derive(Clone, Debug)]
struct Upstream {
    token: String,
    max_batch_bytes: usize,
}

fn welcome_upstream(frame: &ServerFrame) -> Option<Upstream> {
    match frame {
        ServerFrame::Welcome { resume_token, limits, .. } => {
            let max = [limits.max_batch_bytes, limits.max_frame_bytes].into_iter().find(|&n| n > 0).unwrap_or(65_536);
            Some(Upstream { token: resume_token.clone(), max_batch_bytes: usize::try_from(max).unwrap_or(usize::MAX) })
        }
        _ => None,
    }
}

async fn websocket(open: Open, ticket: &str, mut orders: mpsc::UnboundedReceiver<Order>) {
    let base = open.base_url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let url = format!("{base}/v1/ws?ticket={}", enc(ticket));
    let connect = tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(url));
    let ws = match connect.await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) if !open.opaque_refusals => {
            let status = resp.status().as_u16();
            let retry_after_ms = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1000);
            let err = match status {
                401 => OpenError::Unauthorized,
                403 => OpenError::Forbidden,
                429 | 503 => OpenError::Overloaded { retry_after_ms },
                _ => OpenError::Network,
            };
            return open.report(Report::OpenFailed(err));
        }
        _ => return open.report(Report::OpenFailed(OpenError::Network)),
    };
    open.report(Report::Opened);
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => match decode_server(text.as_bytes(), usize::MAX) {
                    Ok(frame) => open.report(Report::Frame(frame)),
                    Err(_) => {
                        let _ = sink.send(close(Some(CloseCode::MALFORMED_FRAME))).await;
                        return open.report(Report::Closed { code: Some(CloseCode::MALFORMED_FRAME), reason: "malformed frame from server".into() });
                    }
                },
                Some(Ok(Message::Close(frame))) => {
                    // A close without a status is 1005 in a browser's CloseEvent.
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return open.report(Report::Closed { code: Some(CloseCode(code)), reason: String::new() });
                }
                Some(Ok(_)) => {}
                // An abnormal end is 1006 in a browser's CloseEvent.
                Some(Err(_)) | None => return open.report(Report::Closed { code: Some(CloseCode(1006)), reason: String::new() }),
            },
            order = orders.recv() => match order {
                Some(Order::Send(frame)) => {
                    let text = String::from_utf8_lossy(&encode_client(&frame)).into_owned();
                    if sink.send(Message::text(text)).await.is_err() {
                        return open.report(Report::Closed { code: Some(CloseCode(1006)), reason: String::new() });
                    }
                }
                Some(Order::Close(code)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close(code))).await;
                    return;
                }
                None => return,
            },
        }
    }
}

fn close(code: Option<CloseCode>) -> Message {
    let code = code.map_or(1000, |c| c.0);
    Message::Close(Some(CloseFrame { code: WsCloseCode::from(code), reason: "".into() }))
}

/// Ordered upstream POSTs (`js/io.js`, `upstream`): one in flight, frames queued
/// meanwhile go in the next bodies, each within the server's `max_batch_bytes`; nothing is sent
/// before the session's token is known.
async fn upstream(
    open: Open,
    mut session: watch::Receiver<Option<Upstream>>,
    mut frames: mpsc::UnboundedReceiver<ClientFrame>,
) {
    let mut queue: Vec<String> = Vec::new();
    loop {
        if queue.is_empty() {
            let Some(first) = frames.recv().await else { return };
            queue.push(String::from_utf8_lossy(&encode_client(&first)).into_owned());
        }
        while let Ok(f) = frames.try_recv() {
            queue.push(String::from_utf8_lossy(&encode_client(&f)).into_owned());
        }
        let up = loop {
            if let Some(u) = session.borrow_and_update().clone() {
                break u;
            }
            if session.changed().await.is_err() {
                return;
            }
        };
        let Some(body) = take_batch(&up.token, &mut queue, up.max_batch_bytes) else { continue };
        let sent = open
            .http
            .post(format!("{}/v1/send", open.base_url))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await;
        let (failed, status) = match sent {
            Ok(resp) if resp.status().is_success() => continue,
            Ok(resp) => {
                let status = resp.status().as_u16();
                (failure(resp).await, status)
            }
            Err(_) => (OpenError::Network, 0),
        };
        let code = match (failed, status) {
            (OpenError::SessionUnknown, _) => Some(CloseCode::SESSION_EXPIRED),
            (_, 413) => Some(CloseCode::FRAME_TOO_LARGE),
            _ => None,
        };
        return open.report(Report::Closed { code, reason: format!("upstream failed: {failed:?}") });
    }
}

/// Forwards the driver's orders to the upstream task until the transport closes.
async fn relay_orders(mut orders: mpsc::UnboundedReceiver<Order>, up: mpsc::UnboundedSender<ClientFrame>) {
    while let Some(order) = orders.recv().await {
        match order {
            Order::Send(frame) => {
                if up.send(frame).is_err() {
                    return;
                }
            }
            Order::Close(_) => return,
        }
    }
}

async fn sse(open: Open, ticket: &str, orders: mpsc::UnboundedReceiver<Order>) {
    let url = transport_url(&open, "/v1/sse", ticket);
    let resp = match open.http.get(url).header("accept", "text/event-stream").send().await {
        Ok(r) => r,
        Err(_) => return open.report(Report::OpenFailed(OpenError::Network)),
    };
    let event_stream = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !resp.status().is_success() || !event_stream {
        // EventSource only says "error".
        let err = if open.opaque_refusals { OpenError::Network } else { failure(resp).await };
        return open.report(Report::OpenFailed(err));
    }
    open.report(Report::Opened);
    let (session_tx, session_rx) = watch::channel(None);
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let upstream = AbortOnDrop(tokio::spawn(upstream(open.clone(), session_rx, up_rx)));
    let relay = relay_orders(orders, up_tx);
    let read = async {
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for data in parser.feed(&chunk) {
                match decode_server(data.as_bytes(), usize::MAX) {
                    Ok(frame) => {
                        if let Some(up) = welcome_upstream(&frame) {
                            session_tx.send_replace(Some(up));
                        }
                        open.report(Report::Frame(frame));
                    }
                    Err(_) => {
                        return open.report(Report::Closed {
                            code: Some(CloseCode::MALFORMED_FRAME),
                            reason: "malformed frame from server".into(),
                        });
                    }
                }
            }
        }
        open.report(Report::Closed { code: None, reason: "event stream ended".into() });
    };
    tokio::select! {
        _ = read => {}
        _ = relay => {}
    }
    drop(upstream);
}

/// The `data` of SSE events, split out of a byte stream (comments and other fields ignored).
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(data);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let (field, value) = match text.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (&*text, ""),
            };
            if field == "data" {
                let data = self.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
        }
        out
    }
}

/// One poll: the opening `GET` (`body` none) or a `POST /v1/poll` with the session and cursor.
async fn poll_once(open: &Open, url: &str, body: Option<Vec<u8>>) -> Result<(u64, Vec<ServerFrame>), OpenError> {
    let request = match body {
        Some(b) => open.http.post(url).header("content-type", "text/plain").body(b),
        None => open.http.get(url),
    };
    let resp = request.send().await.map_err(|_| OpenError::Network)?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let bytes = resp.bytes().await.map_err(|_| OpenError::Network)?;
    let batch = decode_poll(&bytes, usize::MAX).map_err(|_| OpenError::Network)?;
    Ok((batch.cursor, batch.frames))
}

async fn long_poll(open: Open, ticket: &str, orders: mpsc::UnboundedReceiver<Order>) {
    let (mut cursor, frames) = match poll_once(&open, &transport_url(&open, "/v1/poll", ticket), None).await {
        Ok(batch) => batch,
        Err(e) => return open.report(Report::OpenFailed(e)),
    };
    open.report(Report::Opened);
    let Some(up) = frames.iter().find_map(welcome_upstream) else {
        return open.report(Report::Closed {
            code: Some(CloseCode::PROTOCOL_VIOLATION),
            reason: "poll opened without welcome".into(),
        });
    };
    let token = up.token.clone();
    let (session_tx, session_rx) = watch::channel(Some(up));
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let upstream = AbortOnDrop(tokio::spawn(upstream(open.clone(), session_rx, up_rx)));
    let relay = relay_orders(orders, up_tx);
    let read = async {
        for frame in frames {
            open.report(Report::Frame(frame));
        }
        loop {
            let url = format!("{}/v1/poll", open.base_url);
            let body = serde_json::to_vec(&PollRequest { session: token.clone(), cursor }).unwrap_or_default();
            match poll_once(&open, &url, Some(body)).await {
                Ok((next, frames)) => {
                    cursor = next;
                    for frame in frames {
                        open.report(Report::Frame(frame));
                    }
                }
                Err(e) => {
                    let code = (e == OpenError::SessionUnknown).then_some(CloseCode::SESSION_EXPIRED);
                    return open.report(Report::Closed { code, reason: format!("poll failed: {e:?}") });
                }
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = relay => {}
    }
    drop((upstream, session_tx));
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn sse_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": ka\n\nid: 1\nda").is_empty());
        assert_eq!(p.feed(b"ta: {\"t\":\"ping\"}\r\n\r\ndata: a\ndata: b\n\n"), vec!["{\"t\":\"ping\"}", "a\nb"]);
    }
}

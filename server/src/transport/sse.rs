//! Server-Sent Events transport: `GET /v1/sse?ticket=T&v=1` (the ticket names the session to
//! resume, or to probe).
//!
//! One event per frame (`id: <seq>`, `data: <frame JSON>`), `: ka` comments as keep-alives so
//! buffering proxies flush. Upstream frames arrive on `POST /v1/send`. When the client goes
//! away the body stream is dropped, which detaches the session. A refusal the browser must see
//! (another protocol version, a probe of a session this node does not hold) is a stream of one
//! `close` event: an `EventSource` cannot read HTTP statuses.
//!
//! Writes are coalesced like the WebSocket's (`--write-window`, [`crate::write_window`]): a
//! stream that handed hyper a batch less than the window ago leaves what comes next queued
//! until the window has passed, then hands it over at once (hyper writes what it is given
//! before the stream waits again in one `writev`).
//!
//! A client that stops reading without going away leaves hyper stuck writing to it, and the
//! body is no longer polled. A watchdog notices (the body has not been asked for more for a
//! ping interval plus the heartbeat grace, while pings are queued every ping interval), closes
//! the session's transport (4004) and cuts the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rtlink_protocol::codec::SSE_KEEPALIVE;
use rtlink_protocol::CloseCode;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::app::AppState;
use crate::config::TransportKind;
use crate::http;
use crate::hub::Hub;
use crate::listener::ConnectionKill;
use crate::metrics::DropReason;
use crate::session::{close_frame, Attached, Session};
use crate::write_window::WriteWindow;

pub async fn handler(State(state): State<AppState>, req: Request) -> Response {
    let ip = http::client_ip(&state, &req);
    let query = match Query::<HashMap<String, String>>::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(_) => return http::bad_request("malformed query"),
    };
    let old_version = || closed_stream(CloseCode::UNSUPPORTED_VERSION);
    let admission = match http::admit_query(
        &state,
        TransportKind::Sse,
        req.headers(),
        ip,
        &query,
        old_version,
    )
    .await
    {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let hub = state.hub.clone();
    let (session, attached) = match (admission.probe, admission.resume) {
        (true, Some(resume)) => {
            match hub.open_probe(
                admission.claims,
                &resume,
                TransportKind::Sse,
                admission.guard,
            ) {
                Ok(opened) => opened,
                Err(code) => return closed_stream(code),
            }
        }
        (_, resume) => {
            // Resuming a session that ended for good (4013) before its client heard: stop it.
            let ended = (resume.as_deref())
                .and_then(|resume| hub.ended_for_good(resume, &admission.claims.sub));
            if let Some(code) = ended {
                return closed_stream(code);
            }
            let opened =
                crate::cluster::open_session(&state, admission.claims, resume.as_deref(), ip);
            let (session, resumed) = match opened {
                Ok(opened) => opened,
                Err(refusal) => return http::session_refused(&refusal),
            };
            let attached = hub.attach(&session, TransportKind::Sse, admission.guard, resumed);
            (session, attached)
        }
    };
    let kill = req.extensions().get::<ConnectionKill>().cloned();
    let pulls = Arc::new(Pulls::default());
    tokio::spawn(watchdog(
        hub.clone(),
        session.clone(),
        attached.gen,
        pulls.clone(),
        kill,
        state.config.ping_interval + state.config.heartbeat_grace,
    ));
    let mut keepalive = tokio::time::interval_at(
        Instant::now() + state.config.sse_keepalive,
        state
            .config
            .sse_keepalive
            .max(std::time::Duration::from_millis(10)),
    );
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = SseStream {
        detach: DetachOnDrop {
            hub,
            session,
            gen: attached.gen,
        },
        attached,
        keepalive,
        pending: VecDeque::new(),
        done: false,
        pulls,
        window: WriteWindow::new(state.hub.coalescing.clone()),
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        s.pulls.enter();
        let chunk = s.next_chunk().await;
        s.pulls.leave();
        Some((Ok::<_, std::convert::Infallible>(chunk?), s))
    }));
    (sse_headers(), body).into_response()
}

fn sse_headers() -> [(header::HeaderName, &'static str); 3] {
    [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache, no-transform"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ]
}

/// A stream that says only `close` with `code`, then ends.
fn closed_stream(code: CloseCode) -> Response {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(close_frame(code, code.name()).as_bytes());
    event.extend_from_slice(b"\n\n");
    (sse_headers(), event).into_response()
}

/// Detaches the session when the response body is dropped (client gone or stream ended).
struct DetachOnDrop {
    hub: Arc<Hub>,
    session: Arc<Session>,
    gen: u64,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.hub.detached(&self.session, self.gen);
    }
}

struct SseStream {
    detach: DetachOnDrop,
    attached: Attached,
    keepalive: Interval,
    pending: VecDeque<Bytes>,
    done: bool,
    pulls: Arc<Pulls>,
    window: WriteWindow,
}

/// When hyper last asked the body for a chunk, and whether it is waiting for one now.
struct Pulls {
    started: std::time::Instant,
    asked_ms: AtomicU64,
    waiting: AtomicBool,
}

impl Default for Pulls {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            asked_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
        }
    }
}

impl Pulls {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn enter(&self) {
        self.asked_ms.store(self.now_ms(), Relaxed);
        self.waiting.store(true, Relaxed);
    }

    fn leave(&self) {
        self.waiting.store(false, Relaxed);
    }

    /// Hyper holds a chunk it has not been able to write for longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        !self.waiting.load(Relaxed)
            && self.now_ms().saturating_sub(self.asked_ms.load(Relaxed)) > limit.as_millis() as u64
    }
}

/// Ends an SSE transport whose client stopped reading (see the module docs).
async fn watchdog(
    hub: Arc<Hub>,
    session: Arc<Session>,
    gen: u64,
    pulls: Arc<Pulls>,
    kill: Option<ConnectionKill>,
    limit: Duration,
) {
    let every = (limit / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        if session.lock().attached_gen() != Some(gen) {
            return;
        }
        if pulls.stalled(limit) {
            tracing::debug!(session = %session.id, "SSE client stopped reading; cutting it");
            hub.metrics.count_drop(DropReason::SlowConsumer);
            hub.force_close(&session, CloseCode::SLOW_CONSUMER);
            if let Some(kill) = kill {
                kill.kill();
            }
            return;
        }
    }
}

impl SseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            let session = &self.detach.session;
            let now = Instant::now();
            // Within the write window, what is queued stays queued (see below).
            let take = match self.window.hold_until(now) {
                None => session.take_frames(self.attached.gen),
                Some(_) => Some(Vec::new()),
            };
            match take {
                Some(frames) => {
                    if !frames.is_empty() {
                        self.window.wrote(now);
                    }
                    session.metrics().frames_out(frames.len() as u64);
                    for f in frames {
                        // Three chunks, so the frame's shared bytes go out without a copy:
                        // the event's id is per session, the frame is the same for the room.
                        self.pending
                            .push_back(Bytes::from(format!("id: {}\ndata: ", f.seq)));
                        self.pending.push_back(Bytes::from(f.frame.clone()));
                        self.pending.push_back(Bytes::from_static(b"\n\n"));
                        if f.close.is_some() {
                            self.done = true;
                            break;
                        }
                    }
                    if !self.pending.is_empty() {
                        continue;
                    }
                }
                None => {
                    // Superseded or cut: say why if we were told.
                    if let Ok(code) = self.attached.force_close.try_recv() {
                        self.push_close(code);
                        continue;
                    }
                    return None;
                }
            }
            tokio::select! {
                code = &mut self.attached.force_close => match code {
                    Ok(code) => self.push_close(code),
                    Err(_) => return None,
                },
                () = session.changed(&mut self.attached.seen) => {
                    // Something was queued: within the write window it waits for the window's
                    // end, with whatever else comes meanwhile. Boxed: the timer lives only while
                    // a busy stream holds.
                    if let Some(until) = self.window.hold_until(Instant::now()) {
                        let force = &mut self.attached.force_close;
                        let held = Box::pin(async {
                            tokio::select! {
                                code = force => Some(code),
                                () = tokio::time::sleep_until(until) => None,
                            }
                        });
                        match held.await {
                            Some(Ok(code)) => self.push_close(code),
                            Some(Err(_)) => return None,
                            None => {}
                        }
                    }
                }
                _ = self.keepalive.tick() => self.pending.push_back(Bytes::from_static(SSE_KEEPALIVE)),
            }
        }
    }

    fn push_close(&mut self, code: CloseCode) {
        let frame = close_frame(code, code.name());
        let mut event = Vec::with_capacity(frame.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(frame.as_bytes());
        event.extend_from_slice(b"\n\n");
        self.pending.push_back(Bytes::from(event));
        self.done = true;
    }
}

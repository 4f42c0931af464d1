//! Long-polling transport.
//!
//! - `GET /v1/poll?ticket=T&v=1` opens (or resumes the session the ticket names) and answers at
//!   once with a batch that starts with `welcome`.
//! - `POST /v1/poll` with the body `{"session": R, "cursor": N}` (sent as `text/plain`: no CORS
//!   preflight; the resume token stays out of the URL) forgets the frames up to `N` and answers
//!   the later ones, waiting up to the hold time when there are none. A lost response loses
//!   nothing: the client sends the same cursor again and gets the same frames. At most one
//!   poll per session is held; a newer one makes the older answer an empty batch.
//! - The old form `GET /v1/poll?session=R&cursor=N` is refused with 400 (a secret in a URL).
//!
//! A poll for a session that now lives on another transport answers `close 4006`. A poll for
//! a session of another node is forwarded to it ([`crate::cluster`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rtlink_protocol::codec::decode_poll_request;
use rtlink_protocol::envelope::PollRequest;
use rtlink_protocol::CloseCode;

use crate::app::AppState;
use crate::cluster::{self, Owner, POLL_FORWARD_MARGIN};
use crate::config::TransportKind;
use crate::http;
use crate::session::{close_frame, OutFrame, Session};
use crate::transport::poll_batch_body;

pub async fn handler(State(state): State<AppState>, req: Request) -> Response {
    let ip = http::client_ip(&state, &req);
    if let Err(resp) = http::check_enabled(&state, TransportKind::Poll) {
        return resp;
    }
    let query = match Query::<HashMap<String, String>>::try_from_uri(req.uri()) {
        Ok(q) => q.0,
        Err(_) => return http::bad_request("malformed query"),
    };
    let old_version = || close_batch(0, CloseCode::UNSUPPORTED_VERSION);
    let admission = match http::admit_query(
        &state,
        TransportKind::Poll,
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
    if admission.probe {
        return http::bad_request("long polling is the lowest rung: it cannot be a probe");
    }
    let hub = &state.hub;
    // Resuming a session that ended for good (4013) before its client heard: stop it.
    let ended = (admission.resume.as_deref())
        .and_then(|resume| hub.ended_for_good(resume, &admission.claims.sub));
    if let Some(code) = ended {
        return close_batch(0, code);
    }
    let opened = cluster::open_session(&state, admission.claims, admission.resume.as_deref(), ip);
    let (session, resumed) = match opened {
        Ok(opened) => opened,
        Err(refusal) => return http::session_refused(&refusal),
    };
    let attached = hub.attach(&session, TransportKind::Poll, admission.guard, resumed);
    let frames = session.frames_after(0);
    answer(&state, &session, attached.gen, 0, &frames, usize::MAX)
}

/// Largest `POST /v1/poll` body (a resume token and a cursor).
const MAX_POLL_BODY: usize = 4096;

/// `POST /v1/poll` `{"session": R, "cursor": N}`: the held poll after the opening one.
pub async fn continue_handler(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(resp) = http::check_enabled(&state, TransportKind::Poll) {
        return resp;
    }
    if !state.origins.check(&headers) {
        return http::origin_refused();
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_POLL_BODY).await else {
        return http::bad_request("poll body too large");
    };
    let PollRequest { session, cursor } = match decode_poll_request(&bytes, MAX_POLL_BODY) {
        Ok(r) => r,
        Err(e) => return http::bad_request(&format!("poll: {e}")),
    };
    if let Owner::Remote(node) = state.cluster.owner(&session) {
        let request = cluster::Request::Poll {
            token: session.clone(),
            cursor,
        };
        let wait = state.config.poll_hold + POLL_FORWARD_MARGIN;
        let result = state.cluster.forward(node, request, wait).await;
        // No answer in time: nothing was acknowledged, the client simply polls again.
        return cluster::respond(result, || json(poll_batch_body(cursor, std::iter::empty())));
    }
    poll_local(&state, &session, cursor, usize::MAX).await
}

/// A poll of a session of this node (`POST /v1/poll`, or forwarded by another node). The batch holds at most about `max_bytes` of frames (always at least one).
pub(crate) async fn poll_local(
    state: &AppState,
    token: &str,
    cursor: u64,
    max_bytes: usize,
) -> Response {
    let Some(session) = state.hub.session_by_token(token) else {
        // Ended between two polls: tell the client how (a 4013 must not read as "start over").
        return match state.hub.ended_session(token) {
            Some(code) => close_batch(cursor, code),
            None => http::unknown_session(),
        };
    };
    wait(state, &session, cursor, max_bytes).await
}

fn json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn close_batch(cursor: u64, code: CloseCode) -> Response {
    let frame = close_frame(code, code.name());
    json(poll_batch_body(cursor, std::iter::once(frame.as_str())))
}

/// Answers a batch (cut after about `max_bytes`; the rest goes in the next one); if it carries
/// the transport's close, the transport detaches.
fn answer(
    state: &AppState,
    session: &Arc<Session>,
    gen: u64,
    cursor: u64,
    frames: &[OutFrame],
    max_bytes: usize,
) -> Response {
    let mut bytes = 0usize;
    let fit = frames
        .iter()
        .position(|f| {
            bytes = bytes.saturating_add(f.frame.len());
            bytes > max_bytes
        })
        .map_or(frames.len(), |i| i.max(1));
    let frames = &frames[..fit];
    let last = frames.last().map_or(cursor, |f| f.seq);
    state.metrics.frames_out(frames.len() as u64);
    let body = poll_batch_body(last, frames.iter().map(|f| f.frame.as_str()));
    if frames.iter().any(|f| f.close.is_some()) {
        state.hub.detached(session, gen);
    } else {
        session.touch();
    }
    json(body)
}

async fn wait(state: &AppState, session: &Arc<Session>, cursor: u64, max_bytes: usize) -> Response {
    let (kind, gen) = {
        let st = session.lock();
        (st.attached_kind(), st.attached_gen())
    };
    let gen = match (kind, gen) {
        (Some(TransportKind::Poll), Some(gen)) => gen,
        (Some(_), _) => return close_batch(cursor, CloseCode::SUPERSEDED),
        _ => {
            // Not attached: tell the client why, or (after a silence) to reopen with resume.
            let code = session
                .take_poll_close()
                .unwrap_or(CloseCode::HEARTBEAT_TIMEOUT);
            return close_batch(cursor, code);
        }
    };
    let ticket = session.begin_poll();
    let mut seen = session.version();
    let deadline = tokio::time::Instant::now() + state.config.poll_hold;
    loop {
        if session.lock().attached_gen() != Some(gen) {
            let code = session.take_poll_close().unwrap_or(CloseCode::SUPERSEDED);
            return close_batch(cursor, code);
        }
        if session.poll_superseded(ticket) {
            return answer(state, session, gen, cursor, &[], max_bytes);
        }
        let frames = session.frames_after(cursor);
        if !frames.is_empty() {
            return answer(state, session, gen, cursor, &frames, max_bytes);
        }
        tokio::select! {
            () = session.changed(&mut seen) => {}
            _ = tokio::time::sleep_until(deadline) => return answer(state, session, gen, cursor, &[], max_bytes),
        }
    }
}

//! Long-polling transport.
//!
//! - `GET /v1/poll?ticket=T&v=1[&resume=R]` opens (or resumes) a session and answers at once
//!   with a batch that starts with `welcome`.
//! - `GET /v1/poll?session=R&cursor=N` forgets the frames up to `N` and answers the later ones,
//!   waiting up to the hold time when there are none. A lost response loses nothing: the client
//!   sends the same cursor again and gets the same frames. At most one poll per session is
//!   held; a newer one makes the older answer an empty batch.
//!
//! A poll for a session that now lives on another transport answers `close 4006`. A poll for
//! a session of another node is forwarded to it ([`crate::cluster`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
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
    if let Some(token) = query.get("session") {
        if !state.origins.check(req.headers()) {
            return http::origin_refused();
        }
        let cursor = match query.get("cursor").map(|c| c.parse::<u64>()) {
            None => 0,
            Some(Ok(c)) => c,
            Some(Err(_)) => return http::bad_request("cursor must be a number"),
        };
        if let Owner::Remote(node) = state.cluster.owner(token) {
            let request = cluster::Request::Poll {
                token: token.clone(),
                cursor,
            };
            let wait = state.config.poll_hold + POLL_FORWARD_MARGIN;
            let result = state.cluster.forward(node, request, wait).await;
            // No answer in time: nothing was acknowledged, the client simply polls again.
            return cluster::respond(result, || json(poll_batch_body(cursor, std::iter::empty())));
        }
        return poll_local(&state, token, cursor, usize::MAX).await;
    }
    let admission =
        match http::admit_query(&state, TransportKind::Poll, req.headers(), ip, &query).await {
            Ok(a) => a,
            Err(resp) => return resp,
        };
    let hub = &state.hub;
    let opened = cluster::open_session(
        &state,
        admission.claims,
        query.get("resume").map(String::as_str),
        ip,
    );
    let (session, resumed) = match opened {
        Ok(opened) => opened,
        Err(refusal) => return http::session_refused(&refusal),
    };
    let attached = hub.attach(&session, TransportKind::Poll, admission.guard, resumed);
    let frames = session.frames_after(0);
    answer(&state, &session, attached.gen, 0, &frames, usize::MAX)
}

/// A poll of a session of this node (`GET /v1/poll?session&cursor`, or forwarded by another
/// node). The batch holds at most about `max_bytes` of frames (always at least one).
pub(crate) async fn poll_local(
    state: &AppState,
    token: &str,
    cursor: u64,
    max_bytes: usize,
) -> Response {
    let Some(session) = state.hub.session_by_token(token) else {
        return http::unknown_session();
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
    let mut changes = session.changes();
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
            changed = changes.changed() => if changed.is_err() { return answer(state, session, gen, cursor, &[], max_bytes) },
            _ = tokio::time::sleep_until(deadline) => return answer(state, session, gen, cursor, &[], max_bytes),
        }
    }
}

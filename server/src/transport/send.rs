//! `POST /v1/send`: upstream frames for SSE and long polling, as an `UpstreamBatch`
//! `{"session": R, "frames": [...]}`. Sent as `text/plain` by browsers to avoid a preflight; the
//! content type is not checked. `204` on success (and, frames dropped, for a session that ended
//! while its client may not have been told: [`crate::ended_sessions`]). A body may be
//! `max_batch_bytes` long (the frame limit plus the envelope's allowance, announced in
//! `welcome`), each frame in it at most `max_frame_bytes`; over either: `413 too_large`.
//!
//! A batch for a session of another node is forwarded to that node, which applies it as if it
//! had been posted there ([`crate::cluster`]).

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rtlink_protocol::codec::{decode_upstream, DecodeError};
use rtlink_protocol::envelope::{max_batch_bytes, UpstreamBatch};
use rtlink_protocol::ErrorCode;

use crate::app::AppState;
use crate::cluster::{self, Owner, Request, SEND_FORWARD_TIMEOUT};
use crate::http;
use crate::metrics::DropReason;

pub async fn handler(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !state.origins.check(&headers) {
        return http::origin_refused();
    }
    let Ok(bytes) = to_bytes(body, max_batch_bytes(state.config.max_frame_bytes)).await else {
        return too_large(&state);
    };
    let batch = match decode(&state, &bytes) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if let Owner::Remote(node) = state.cluster.owner(&batch.session) {
        // It decoded as JSON, so it is UTF-8.
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let result = state
            .cluster
            .forward(node, Request::Send { body }, SEND_FORWARD_TIMEOUT)
            .await;
        return cluster::respond(result, || {
            http::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node that holds this session did not answer",
                std::time::Duration::from_secs(1),
            )
        });
    }
    apply(&state, batch).await
}

/// A body forwarded by another node: validated and applied as if it was posted here.
pub(crate) async fn apply_forwarded(state: &AppState, body: &str) -> Response {
    if body.len() > max_batch_bytes(state.config.max_frame_bytes) {
        return too_large(state);
    }
    match decode(state, body.as_bytes()) {
        Ok(batch) => apply(state, batch).await,
        Err(resp) => resp,
    }
}

fn too_large(state: &AppState) -> Response {
    state.metrics.count_drop(DropReason::TooLarge);
    http::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooLarge,
        "body over max_batch_bytes, or a frame in it over max_frame_bytes",
        None,
    )
}

#[allow(clippy::result_large_err)]
fn decode(state: &AppState, bytes: &[u8]) -> Result<UpstreamBatch, Response> {
    match decode_upstream(bytes, state.config.max_frame_bytes) {
        Ok(b) => Ok(b),
        Err(DecodeError::TooLarge { .. }) => Err(too_large(state)),
        Err(e) => {
            state.metrics.count_drop(DropReason::Malformed);
            Err(http::bad_request(&e.to_string()))
        }
    }
}

/// Applies the frames of a batch to a session of this node.
async fn apply(state: &AppState, batch: UpstreamBatch) -> Response {
    let Some(session) = state.hub.session_by_token(&batch.session) else {
        return ended(state, &batch.session);
    };
    let _serial = session.inbound.lock().await;
    if session.lock().ended {
        return ended(state, &batch.session);
    }
    for frame in batch.frames {
        if state.hub.handle_frame(&session, frame).await.is_err() {
            break;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A batch for a session that is gone. One that ended while its client may not have been told
/// (between two polls, a send crossing the close on the SSE stream) is taken and its frames
/// dropped: `404 unknown_session` would tell the client to start a new session, wrong after a
/// terminal close (4013: logout, ban), and the close reaches it on its downstream (its next
/// poll, the stream, or the open that resumes it), as on a WebSocket, whose close never
/// travels upstream either.
fn ended(state: &AppState, token: &str) -> Response {
    match state.hub.ended_session(token) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => http::unknown_session(),
    }
}

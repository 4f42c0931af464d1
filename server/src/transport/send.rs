//! `POST /v1/send`: upstream frames for SSE and long polling, as an `UpstreamBatch`
//! `{"session": R, "frames": [...]}`. Sent as `text/plain` by browsers to avoid a preflight; the
//! content type is not checked. `204` on success.

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rtlink_protocol::codec::{decode_upstream, DecodeError};
use rtlink_protocol::ErrorCode;

use crate::app::AppState;
use crate::http;
use crate::metrics::DropReason;

pub async fn handler(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !state.origins.check(&headers) {
        return http::origin_refused();
    }
    let max = state.config.max_frame_bytes;
    let too_large = || {
        state.metrics.count_drop(DropReason::TooLarge);
        http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            "body over the frame limit",
            None,
        )
    };
    let Ok(bytes) = to_bytes(body, max).await else {
        return too_large();
    };
    let batch = match decode_upstream(&bytes, max) {
        Ok(b) => b,
        Err(DecodeError::TooLarge { .. }) => return too_large(),
        Err(e) => {
            state.metrics.count_drop(DropReason::Malformed);
            return http::bad_request(&e.to_string());
        }
    };
    let Some(session) = state.hub.session_by_token(&batch.session) else {
        return http::unknown_session();
    };
    let _serial = session.inbound.lock().await;
    if session.lock().ended {
        return http::unknown_session();
    }
    for frame in batch.frames {
        if state.hub.handle_frame(&session, frame).await.is_err() {
            break;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

//! The server API for backends: publish to rooms and to users, read presence and history,
//! disconnect a user. Every endpoint needs `Authorization: Bearer <api key>` ([`keys`]).
//!
//! Like Centrifugo's server API or Pusher's `trigger`, this is how the application's own
//! backend takes part: a message published here is stored, numbered and delivered exactly like
//! one published by a client, on every node. Errors are the protocol's HTTP errors (status +
//! `{"error","message","retry_after_ms"?}`). See docs/PROTOCOL.md, "Server API".

pub mod keys;
mod publish;
mod rooms;
mod users;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use rtlink_protocol::ErrorCode;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::http;

pub use keys::{ApiKey, ApiKeys};

pub const PUBLISH: &str = "/v1/publish";
pub const PRESENCE: &str = "/v1/rooms/{room}/presence";
pub const HISTORY: &str = "/v1/rooms/{room}/history";
pub const USER_SESSIONS: &str = "/v1/users/{user}/sessions";

/// Largest request body of the server API (a batch of publishes).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The routes of the server API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(PUBLISH, post(publish::handler))
        .route(PRESENCE, get(rooms::presence))
        .route(HISTORY, get(rooms::history))
        .route(USER_SESSIONS, delete(users::disconnect))
}

/// Proof that the request carried a valid API key. Handlers take it as an extractor, so no
/// endpoint can forget the check.
pub struct Backend {
    /// Which key (its index): budgets are per key.
    key: usize,
}

impl FromRequestParts<AppState> for Backend {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if state.api_keys.is_empty() {
            return Err(refuse(
                "the server API is off: start the server with --api-key",
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(key) => match state.api_keys.find(key) {
                Some(key) => Ok(Backend { key }),
                None => Err(refuse("invalid API key")),
            },
            None => Err(refuse("missing `Authorization: Bearer <api key>`")),
        }
    }
}

fn refuse(message: &str) -> Response {
    let mut resp = http::unauthorized(message);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Reads a JSON body (any content type), with the protocol's errors: `413 too_large` over the
/// limit, `400 bad_request` naming what did not parse.
async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                &format!("request body over {MAX_BODY_BYTES} bytes"),
                None,
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| http::bad_request(&format!("body: {e}")))
}

/// `400 invalid_room`.
fn invalid_room(message: &str) -> Response {
    http::error(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRoom,
        message,
        None,
    )
}

/// `503` when the broker (Redis) failed; the call may be retried (publishes with an `id`
/// are stored once).
fn broker_unavailable(e: &crate::broker::BrokerError) -> Response {
    tracing::warn!(error = %e, "server API: broker call failed");
    http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal,
        "the broker is unavailable; retry",
        Some(std::time::Duration::from_secs(1)),
    )
}

/// A JSON `200`.
fn ok(body: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

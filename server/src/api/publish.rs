//! `POST /v1/publish`: a backend publishes to a room, or to one user's room, like a client
//! would (stored, given the next offset, delivered on every node, replayed on resume).
//!
//! One message: `{"room" | "user", "payload", "id"?, "name"?, "sender"?}` →
//! `{"room", "offset", "duplicate"}`. A batch: `{"messages": [...]}` →
//! `{"results": [...]}`, published in order; it is checked whole before anything is stored.

use std::sync::atomic::Ordering::Relaxed;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use rtlink_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{broker_unavailable, json_body, ok, Backend};
use crate::app::AppState;
use crate::auth::user_room;
use crate::broker::{DedupeKey, PublishOutcome, PublishRequest};
use crate::http;
use crate::rooms::valid_room;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 100;
/// Longest `id`, `sender` and `name`.
const MAX_ID_LEN: usize = 128;
const MAX_SENDER_LEN: usize = 256;
const MAX_NAME_LEN: usize = 128;

#[derive(Deserialize)]
struct Message {
    room: Option<String>,
    /// A user id: publish to that user's room.
    user: Option<String>,
    payload: Value,
    id: Option<String>,
    name: Option<String>,
    /// Defaults to `""`: no user (ids are never empty), i.e. the server API.
    #[serde(default)]
    sender: String,
}

#[derive(Deserialize)]
struct Batch {
    messages: Vec<Message>,
}

/// A checked message, ready for the broker.
struct Checked {
    room: String,
    request: PublishRequest,
}

/// Publishes one message or a batch.
pub async fn handler(backend: Backend, State(state): State<AppState>, body: Body) -> Response {
    let body: Value = match json_body(body).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let batch = body.get("messages").is_some();
    let messages = if batch {
        match serde_json::from_value::<Batch>(body) {
            Ok(b) if b.messages.is_empty() => return http::bad_request("`messages` is empty"),
            Ok(b) if b.messages.len() > MAX_BATCH => {
                return http::bad_request(&format!("at most {MAX_BATCH} messages per batch"))
            }
            Ok(b) => b.messages,
            Err(e) => return http::bad_request(&format!("body: {e}")),
        }
    } else {
        match serde_json::from_value::<Message>(body) {
            Ok(m) => vec![m],
            Err(e) => return http::bad_request(&format!("body: {e}")),
        }
    };
    let mut checked = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        match check(&state, m) {
            Ok(c) => checked.push(c),
            Err(refusal) => return refusal.respond(batch.then_some(i)),
        }
    }
    // The whole request draws from the key's budget before anything is stored.
    let bytes = checked.iter().map(|c| c.request.payload.len()).sum();
    if let Err(wait) = state
        .api_keys
        .charge(backend.key, bytes, std::time::Instant::now())
    {
        return over_budget(wait);
    }
    let mut results = Vec::with_capacity(checked.len());
    for c in checked {
        match state.hub.broker.publish(c.request).await {
            Ok(outcome) => {
                let duplicate = matches!(outcome, PublishOutcome::Duplicate { .. });
                if !duplicate {
                    state.metrics.messages_published.fetch_add(1, Relaxed);
                }
                results.push(json!({
                    "room": c.room,
                    "offset": outcome.offset(),
                    "duplicate": duplicate,
                }));
            }
            // What was stored stays stored: retrying the whole batch with ids is safe.
            Err(e) => return broker_unavailable(&e),
        }
    }
    if batch {
        ok(json!({ "results": results }))
    } else {
        ok(results.pop().unwrap_or_default())
    }
}

/// `429 rate_limited` with the time until the key's budget holds the request, spread like
/// every `Retry-After` (a request over the burst cannot happen: the burst is at least the
/// largest body).
fn over_budget(wait: Option<std::time::Duration>) -> Response {
    let wait = wait
        .unwrap_or(std::time::Duration::from_secs(60))
        .max(std::time::Duration::from_millis(1));
    http::error(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        "publish byte budget of this API key exceeded; nothing was stored",
        Some(http::spread(wait)),
    )
}

/// Why a message was refused.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn bad_request(message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequest,
            message: message.to_owned(),
        }
    }

    fn invalid_room(message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::InvalidRoom,
            message: message.to_owned(),
        }
    }

    /// The error response; in a batch, the message names the index it is about.
    fn respond(self, index: Option<usize>) -> Response {
        let message = match index {
            Some(i) => format!("messages[{i}]: {}", self.message),
            None => self.message,
        };
        http::error(self.status, self.code, &message, None)
    }
}

fn check(state: &AppState, m: Message) -> Result<Checked, Refusal> {
    let room = match (m.room, m.user) {
        (Some(room), None) => {
            if !valid_room(&room) {
                return Err(Refusal::invalid_room(
                    "room names are 1-128 of [A-Za-z0-9_.:-]",
                ));
            }
            room
        }
        (None, Some(user)) => user_room(&user).ok_or_else(|| {
            Refusal::invalid_room("this user id is too long (or empty) for a user room")
        })?,
        _ => {
            return Err(Refusal::bad_request(
                "give exactly one of `room` and `user`",
            ))
        }
    };
    let payload = m.payload.to_string();
    let max = state.config.max_frame_bytes;
    if payload.len() > max {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::TooLarge,
            message: format!("payload over {max} bytes (the server's max_frame_bytes)"),
        });
    }
    if m.id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_ID_LEN)
    {
        return Err(Refusal::bad_request("`id` must be 1-128 bytes"));
    }
    if m.sender.len() > MAX_SENDER_LEN || m.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_LEN) {
        return Err(Refusal::bad_request("`sender` or `name` too long"));
    }
    let request = PublishRequest {
        room: room.clone(),
        sender: m.sender,
        name: m.name.filter(|n| !n.is_empty()),
        payload,
        // An empty user id is nobody's: the server API's ids never collide with a client's.
        dedupe: m.id.map(|id| DedupeKey {
            user: String::new(),
            id,
        }),
    };
    Ok(Checked { room, request })
}

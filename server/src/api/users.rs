//! `DELETE /v1/users/{user}/sessions`: ends every session of a user on every node (logout,
//! ban). Each transport is closed with 4013 `disconnected`, which tells the client not to
//! reconnect; presence leaves at once and the sessions cannot be resumed.
//!
//! On a cluster the other live nodes are asked in parallel and the answer waits for them, so a
//! `200` means every live node has closed them. A node that does not answer makes it a `503`;
//! the call is idempotent, so the backend retries it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::future::join_all;
use rtlink_protocol::{CloseCode, ErrorCode};
use serde::Deserialize;
use serde_json::json;

use super::{ok, Backend};
use crate::app::AppState;
use crate::cluster::{ForwardError, Request};
use crate::http;

/// How long another node has to answer.
const NODE_WAIT: Duration = Duration::from_secs(5);

pub async fn disconnect(
    _: Backend,
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Response {
    if user.is_empty() {
        return http::bad_request("empty user id");
    }
    let mut closed = state
        .hub
        .end_sessions_of(&user, CloseCode::DISCONNECTED)
        .await;
    let peers = match state.cluster.peers().await {
        Ok(p) => p,
        Err(e) => return nodes_unreachable(closed, &format!("{e:?}")),
    };
    let asks = peers.iter().map(|node| {
        let request = Request::Disconnect { user: user.clone() };
        state.cluster.forward(node, request, NODE_WAIT)
    });
    let mut unreachable = 0;
    for answer in join_all(asks).await {
        #[derive(Deserialize)]
        struct Closed {
            closed: usize,
        }
        match answer {
            Ok(reply) if reply.status == 200 => {
                closed += serde_json::from_str::<Closed>(&reply.body).map_or(0, |c| c.closed);
            }
            // A node that died took its sessions with it.
            Err(ForwardError::OwnerGone) => {}
            Ok(_) | Err(ForwardError::Unavailable(_)) | Err(ForwardError::TimedOut) => {
                unreachable += 1
            }
        }
    }
    if unreachable > 0 {
        return nodes_unreachable(closed, &format!("{unreachable} node(s) did not answer"));
    }
    tracing::info!(user = %user, closed, "server API: user disconnected");
    ok(json!({ "user": user, "closed": closed }))
}

fn nodes_unreachable(closed: usize, why: &str) -> Response {
    tracing::warn!(
        error = why,
        "server API: disconnect did not reach every node"
    );
    http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Overloaded,
        &format!("closed {closed} session(s), but not every node answered; retry"),
        Some(Duration::from_secs(1)),
    )
}

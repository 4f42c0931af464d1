//! Serving any session from any node: scale-out without sticky sessions.
//!
//! A session lives on the node that created it: its outbox, its timers and its presence grace
//! are there. Its resume token names that node: `{node_id}.{secret}` on a cluster (a bare
//! secret on a single node), so every node can tell who owns a session without asking anyone.
//! A request that lands on another node is handled like this:
//!
//! - `POST /v1/send`: the body is forwarded to the owner, which applies it exactly as if it
//!   had been posted there (same validation, limits, rate limit) and sends back its answer.
//! - `GET /v1/poll?session&cursor`: forwarded to the owner, which holds it like a local poll
//!   and sends back the batch. No answer in time: an empty batch with the same cursor (the
//!   client polls again; frames are only forgotten when a later cursor acknowledges them).
//! - The owner is dead (its liveness key expired): `404 unknown_session`, so the client starts
//!   a new session and re-subscribes from its offsets.
//! - A streaming transport (WebSocket, SSE) that asks to resume a session of another node gets
//!   a new session (`welcome{resumed: false}`): the client re-subscribes from its offsets, so
//!   nothing is lost. The owner is told to release the old one (close 4006, presence leaves at
//!   once rather than after the grace period).
//!
//! [`Cluster`] is the seam: [`local::SingleNode`] (everything is local, no cost) without
//! `--redis`, [`redis::RedisCluster`] (a Pub/Sub inbox per node) beside the Redis broker.

pub mod local;
pub mod redis;

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rtlink_protocol::CloseCode;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::app::{AppState, Inner};
use crate::auth::Claims;
use crate::http;
use crate::hub::SessionRefusal;
use crate::session::Session;
use crate::transport;

/// Which node owns a session, as its resume token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner<'a> {
    /// This node (or nobody: the local lookup then answers `unknown_session`).
    Local,
    /// Another node, by id.
    Remote(&'a str),
}

/// A request forwarded to the node that owns the session. Its `Debug` hides the resume token
/// (also the one inside a send body): tokens are never logged.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Request {
    /// The body of a `POST /v1/send` (an `UpstreamBatch`), applied as if posted to the owner.
    Send { body: String },
    /// `GET /v1/poll?session={token}&cursor={cursor}`, held on the owner.
    Poll { token: String, cursor: u64 },
    /// No answer: the client of `user` opened a new session elsewhere instead of resuming
    /// `token`; the owner ends the old one (close 4006, presence leaves without grace).
    Release { token: String, user: String },
    /// The server API disconnects `user`: the node ends that user's sessions (close 4013) and
    /// answers `{"closed": n}`.
    Disconnect { user: String },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send { body } => write!(f, "Send({} bytes)", body.len()),
            Self::Poll { cursor, .. } => write!(f, "Poll(cursor {cursor})"),
            Self::Release { user, .. } => write!(f, "Release(user {user})"),
            Self::Disconnect { user } => write!(f, "Disconnect(user {user})"),
        }
    }
}

/// The owner's HTTP answer to a forwarded request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    /// The response body (JSON, or empty for `204`).
    pub body: String,
    /// `Retry-After` in seconds, when the owner set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Largest response body turned into a [`Reply`] (a forwarded poll batch is capped well
/// below it, see [`FORWARDED_BATCH_BYTES`]).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// A forwarded poll answers at most about this many bytes of frames (at least one frame); the
/// client's next poll gets the rest. Keeps Pub/Sub messages small.
pub const FORWARDED_BATCH_BYTES: usize = 1 << 20;

/// How long a forwarded send waits for the owner's answer.
pub const SEND_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How much longer than the poll hold a forwarded poll waits for the owner's answer.
pub const POLL_FORWARD_MARGIN: Duration = Duration::from_secs(2);

impl Reply {
    /// Captures a response built by the owner's local handler.
    pub async fn from_response(resp: Response) -> Self {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = match axum::body::to_bytes(resp.into_body(), MAX_REPLY_BYTES).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => {
                return Self {
                    status: 500,
                    body: String::new(),
                    retry_after: None,
                }
            }
        };
        Self {
            status,
            body,
            retry_after,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let has_body = !self.body.is_empty();
        let mut resp = (status, self.body).into_response();
        let headers = resp.headers_mut();
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        } else {
            headers.remove(header::CONTENT_TYPE);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Why a forwarded request got no answer.
#[derive(Debug)]
pub enum ForwardError {
    /// The owner is dead (its liveness key expired): the session is gone.
    OwnerGone,
    /// The owner is alive but did not take the request (e.g. reconnecting), or Redis failed.
    Unavailable(String),
    /// The request was delivered but no answer came in time.
    TimedOut,
}

/// A request from another node, handed to this node's [`serve`] loop.
pub struct Inbound {
    pub request: Request,
    /// Where the answer goes; `None` for requests without one ([`Request::Release`]).
    pub respond: Option<oneshot::Sender<Reply>>,
}

/// How the nodes of a cluster reach each other's sessions. See the module docs.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's id, written into the resume tokens it mints; `None` on a single node.
    fn node_id(&self) -> Option<&str>;

    /// The node that owns the session of a resume token.
    fn owner<'t>(&self, token: &'t str) -> Owner<'t> {
        let Some(me) = self.node_id() else {
            return Owner::Local;
        };
        match token.split_once('.') {
            Some((node, _)) if node != me && plausible_node_id(node) => Owner::Remote(node),
            _ => Owner::Local,
        }
    }

    /// Sends `request` to `node` and waits (at most `wait`) for its answer.
    async fn forward(
        &self,
        node: &str,
        request: Request,
        wait: Duration,
    ) -> Result<Reply, ForwardError>;

    /// Sends `request` to `node` without waiting for (or expecting) an answer. Best effort.
    async fn notify(&self, node: &str, request: Request);

    /// The other nodes that are alive (for requests every node must see).
    async fn peers(&self) -> Result<Vec<String>, ForwardError>;
}

/// Node ids are generated by the broker (hex); anything else in a token is not a node.
fn plausible_node_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Opens (or resumes) a session for a transport on this node. A resume token of another node
/// cannot be resumed here: the session is new, and the owner is told to release the old one.
pub fn open_session(
    state: &AppState,
    claims: Claims,
    resume: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> Result<(Arc<Session>, bool), SessionRefusal> {
    let opened = state
        .hub
        .open_session(claims, resume, state.cluster.node_id(), ip);
    if let (Ok((session, false)), Some(token)) = (&opened, resume) {
        if let Owner::Remote(node) = state.cluster.owner(token) {
            tracing::debug!(owner = node, session = %session.id, "resume of another node's session: opened a new one");
            let cluster = state.cluster.clone();
            let (node, request) = (
                node.to_owned(),
                Request::Release {
                    token: token.to_owned(),
                    user: session.claims.sub.clone(),
                },
            );
            tokio::spawn(async move { cluster.notify(&node, request).await });
        }
    }
    opened
}

/// Turns the outcome of a forward into the client's response. `on_timeout` answers when the
/// owner did not reply in time.
pub fn respond(
    result: Result<Reply, ForwardError>,
    on_timeout: impl FnOnce() -> Response,
) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(ForwardError::OwnerGone) => http::unknown_session(),
        Err(ForwardError::TimedOut) => on_timeout(),
        Err(ForwardError::Unavailable(why)) => {
            tracing::debug!(error = %why, "forward to the owning node failed");
            http::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node that holds this session is not reachable right now",
                Duration::from_secs(1),
            )
        }
    }
}

/// Serves requests forwarded by other nodes, each on its own task, until the state is gone.
pub(crate) async fn serve(state: Weak<Inner>, mut inbox: mpsc::Receiver<Inbound>) {
    while let Some(inbound) = inbox.recv().await {
        let Some(state) = AppState::upgrade(&state) else {
            return;
        };
        tokio::spawn(async move {
            let resp = match inbound.request {
                Request::Send { body } => transport::send::apply_forwarded(&state, &body).await,
                Request::Poll { token, cursor } => {
                    transport::long_poll::poll_local(&state, &token, cursor, FORWARDED_BATCH_BYTES)
                        .await
                }
                Request::Release { token, user } => return release(&state, &token, &user).await,
                Request::Disconnect { user } => {
                    let closed = state
                        .hub
                        .end_sessions_of(&user, CloseCode::DISCONNECTED)
                        .await;
                    axum::Json(serde_json::json!({ "closed": closed })).into_response()
                }
            };
            if let Some(respond) = inbound.respond {
                let _ = respond.send(Reply::from_response(resp).await);
            }
        });
    }
}

/// Ends a session of this node whose client moved to another node.
async fn release(state: &AppState, token: &str, user: &str) {
    let Some(session) = state.hub.session_by_token(token) else {
        return;
    };
    if session.claims.sub != user {
        return;
    }
    tracing::debug!(session = %session.id, "session moved to another node: released");
    state.hub.end_session(&session, CloseCode::SUPERSEDED).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    #[async_trait]
    impl Cluster for Named {
        fn node_id(&self) -> Option<&str> {
            Some(self.0)
        }
        async fn forward(&self, _: &str, _: Request, _: Duration) -> Result<Reply, ForwardError> {
            Err(ForwardError::OwnerGone)
        }
        async fn notify(&self, _: &str, _: Request) {}
        async fn peers(&self) -> Result<Vec<String>, ForwardError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn tokens_name_their_owner() {
        let c = Named("aa11");
        assert_eq!(c.owner("aa11.secret"), Owner::Local);
        assert_eq!(c.owner("bb22.secret"), Owner::Remote("bb22"));
        assert_eq!(c.owner("bare-secret"), Owner::Local);
        assert_eq!(c.owner("b b.secret"), Owner::Local);
        assert_eq!(c.owner(".secret"), Owner::Local);
        assert_eq!(local::SingleNode.owner("bb22.secret"), Owner::Local);
    }
}

//! The Redis cluster: each node subscribes to its own inbox channel
//! (`{prefix}:node:{id}:inbox`) and receives there both the requests other nodes forward to
//! it and the replies to the requests it forwarded. The inbox is subscribed before the node
//! serves anything, so it is always subscribed before a request of this node is published.
//!
//! `PUBLISH` says how many subscribers got a message. None: the owner's inbox is not
//! subscribed. If its liveness key (the broker's, refreshed every third of the node TTL) is gone
//! too, the owner is dead and the session with it ([`ForwardError::OwnerGone`]); otherwise it
//! is alive but reconnecting ([`ForwardError::Unavailable`], the client retries).
//!
//! Nothing here is stored: a request or reply lost with a connection times out, and the
//! protocol makes retries harmless (publish ids, poll cursors).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{plausible_node_id, Cluster, ForwardError, Inbound, Reply, Request};
use crate::broker::redis::ClusterLink;
use crate::broker::{BrokerError, BrokerResult};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often the inbox connection is pinged (a peer that vanished without closing it).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Forwarded requests waiting for this node's serve loop.
const INBOX_CAPACITY: usize = 1024;

/// One message on an inbox channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    /// A request from node `from`; the reply goes to `from`'s inbox with the same `id`.
    Req { id: u64, from: String, req: Request },
    /// The answer to this node's request `id`.
    Rep { id: u64, rep: Reply },
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;

/// The [`Cluster`] of nodes sharing one Redis. Dropping it stops its inbox reader.
pub struct RedisCluster {
    link: ClusterLink,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a pending request when its forward returns (answered, timed out or cancelled).
struct PendingGuard<'a>(&'a Pending, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

fn redis_err(e: redis::RedisError) -> BrokerError {
    BrokerError(format!("redis: {e}"))
}

impl RedisCluster {
    /// Subscribes this node's inbox (confirmed before it returns) and starts its reader.
    /// Requests from other nodes come out of the returned receiver (for [`super::serve`]).
    pub async fn start(link: ClusterLink) -> BrokerResult<(Arc<Self>, mpsc::Receiver<Inbound>)> {
        let (sink, stream) = subscribe(&link).await?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let pending = Arc::new(Pending::default());
        let reader = tokio::spawn(run(link.clone(), pending.clone(), tx, sink, stream));
        let cluster = Arc::new(Self {
            link,
            pending,
            next_id: AtomicU64::new(1),
            reader,
        });
        Ok((cluster, rx))
    }

    async fn publish(&self, node: &str, wire: &Wire) -> Result<i64, ForwardError> {
        let json = serde_json::to_string(wire)
            .map_err(|e| ForwardError::Unavailable(format!("encode: {e}")))?;
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.link.inbox(node)).arg(json);
        match tokio::time::timeout(
            self.link.response_timeout,
            cmd.query_async::<i64>(&mut conn),
        )
        .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ForwardError::Unavailable(redis_err(e).0)),
            Err(_) => Err(ForwardError::Unavailable(String::from(
                "redis: publish timed out",
            ))),
        }
    }

    /// Why nobody took a request: a dead owner, or a live one that is reconnecting.
    async fn nobody_listened(&self, node: &str) -> ForwardError {
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.link.liveness_key(node));
        match tokio::time::timeout(
            self.link.response_timeout,
            cmd.query_async::<bool>(&mut conn),
        )
        .await
        {
            Ok(Ok(false)) => ForwardError::OwnerGone,
            Ok(Ok(true)) => ForwardError::Unavailable(format!("node {node} is not listening")),
            Ok(Err(e)) => ForwardError::Unavailable(redis_err(e).0),
            Err(_) => ForwardError::Unavailable(String::from("redis: exists timed out")),
        }
    }
}

#[async_trait]
impl Cluster for RedisCluster {
    fn node_id(&self) -> Option<&str> {
        Some(&self.link.node_id)
    }

    async fn forward(
        &self,
        node: &str,
        request: Request,
        wait: Duration,
    ) -> Result<Reply, ForwardError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let _pending = PendingGuard(&self.pending, id);
        let wire = Wire::Req {
            id,
            from: self.link.node_id.clone(),
            req: request,
        };
        if self.publish(node, &wire).await? == 0 {
            return Err(self.nobody_listened(node).await);
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ForwardError::Unavailable(String::from("reply dropped"))),
            Err(_) => Err(ForwardError::TimedOut),
        }
    }

    async fn notify(&self, node: &str, request: Request) {
        let wire = Wire::Req {
            id: 0,
            from: self.link.node_id.clone(),
            req: request,
        };
        if let Err(e) = self.publish(node, &wire).await {
            tracing::debug!(node, error = ?e, "cluster notify failed");
        }
    }

    async fn peers(&self) -> Result<Vec<String>, ForwardError> {
        let mut conn = self.link.conn.clone();
        let ask = async {
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.link.nodes_key())
                .query_async(&mut conn)
                .await?;
            let others: Vec<String> = nodes
                .into_iter()
                .filter(|n| *n != self.link.node_id && plausible_node_id(n))
                .collect();
            let mut pipe = redis::pipe();
            for node in &others {
                pipe.cmd("EXISTS").arg(self.link.liveness_key(node));
            }
            let alive: Vec<bool> = if others.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut conn).await?
            };
            Ok::<_, redis::RedisError>(
                others
                    .into_iter()
                    .zip(alive)
                    .filter_map(|(node, alive)| alive.then_some(node))
                    .collect(),
            )
        };
        match tokio::time::timeout(self.link.response_timeout, ask).await {
            Ok(Ok(nodes)) => Ok(nodes),
            Ok(Err(e)) => Err(ForwardError::Unavailable(redis_err(e).0)),
            Err(_) => Err(ForwardError::Unavailable(String::from(
                "redis: listing nodes timed out",
            ))),
        }
    }
}

async fn subscribe(link: &ClusterLink) -> BrokerResult<(PubSubSink, PubSubStream)> {
    let pubsub = tokio::time::timeout(link.connect_timeout, link.client.get_async_pubsub())
        .await
        .map_err(|_| BrokerError(String::from("redis: inbox connect timed out")))?
        .map_err(redis_err)?;
    let (mut sink, stream) = pubsub.split();
    tokio::time::timeout(
        link.response_timeout,
        sink.subscribe(link.inbox(&link.node_id)),
    )
    .await
    .map_err(|_| BrokerError(String::from("redis: inbox subscribe timed out")))?
    .map_err(redis_err)?;
    Ok((sink, stream))
}

/// The inbox reader: dispatches messages until the connection is lost, then resubscribes with
/// backoff. Stops when the cluster is dropped (aborted).
async fn run(
    link: ClusterLink,
    pending: Arc<Pending>,
    inbox: mpsc::Sender<Inbound>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) {
    loop {
        pump(&link, &pending, &inbox, &mut sink, &mut stream).await;
        tracing::warn!("cluster inbox: pub/sub connection lost, reconnecting");
        let mut backoff = RECONNECT_MIN;
        (sink, stream) = loop {
            match subscribe(&link).await {
                Ok(pair) => break pair,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster inbox: resubscribe failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        tracing::info!("cluster inbox: resubscribed");
    }
}

async fn pump(
    link: &ClusterLink,
    pending: &Pending,
    inbox: &mpsc::Sender<Inbound>,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => dispatch(link, pending, inbox, msg.get_payload_bytes()),
                None => return,
            },
            _ = ping.tick() => {
                let alive = tokio::time::timeout(link.response_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

fn dispatch(link: &ClusterLink, pending: &Pending, inbox: &mpsc::Sender<Inbound>, payload: &[u8]) {
    let wire = match serde_json::from_slice::<Wire>(payload) {
        Ok(w) => w,
        Err(e) => return tracing::warn!(error = %e, "cluster inbox: undecodable message"),
    };
    match wire {
        Wire::Rep { id, rep } => {
            // None: the forward already gave up (timed out or its client left).
            if let Some(tx) = pending.lock().remove(&id) {
                let _ = tx.send(rep);
            }
        }
        Wire::Req { id, from, req } => {
            if !plausible_node_id(&from) {
                return;
            }
            let wants_reply = !matches!(req, Request::Release { .. });
            let (tx, rx) = oneshot::channel();
            let inbound = Inbound {
                request: req,
                respond: wants_reply.then_some(tx),
            };
            if inbox.try_send(inbound).is_err() {
                // Overloaded: the requester times out and its client retries.
                return tracing::warn!("cluster inbox: serve loop is full, dropping a request");
            }
            if !wants_reply {
                return;
            }
            let (channel, conn) = (link.inbox(&from), link.conn.clone());
            tokio::spawn(reply_when_done(channel, conn, id, rx));
        }
    }
}

async fn reply_when_done(
    channel: String,
    mut conn: ConnectionManager,
    id: u64,
    rx: oneshot::Receiver<Reply>,
) {
    let Ok(rep) = rx.await else { return };
    let Ok(json) = serde_json::to_string(&Wire::Rep { id, rep }) else {
        return;
    };
    let sent: Result<i64, _> = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(json)
        .query_async(&mut conn)
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cluster inbox: reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips() {
        let req = Wire::Req {
            id: 7,
            from: "ab12".into(),
            req: Request::Poll {
                token: "ab12.x".into(),
                cursor: 3,
            },
        };
        let json = serde_json::to_string(&req).unwrap_or_default();
        assert!(matches!(
            serde_json::from_str::<Wire>(&json),
            Ok(Wire::Req {
                id: 7,
                req: Request::Poll { cursor: 3, .. },
                ..
            })
        ));
        let rep = Wire::Rep {
            id: 7,
            rep: Reply {
                status: 204,
                body: String::new(),
                retry_after: None,
            },
        };
        let json = serde_json::to_string(&rep).unwrap_or_default();
        assert!(matches!(
            serde_json::from_str::<Wire>(&json),
            Ok(Wire::Rep {
                id: 7,
                rep: Reply { status: 204, .. }
            })
        ));
    }
}

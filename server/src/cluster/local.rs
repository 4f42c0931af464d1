//! One node: every session is local, nothing is ever forwarded.

use std::time::Duration;

use async_trait::async_trait;

use super::{Cluster, ForwardError, Reply, Request};

/// The cluster of one node (no `--redis`). Tokens carry no node id; [`Cluster::owner`] is
/// always [`super::Owner::Local`], so the transports never call the other methods.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode;

#[async_trait]
impl Cluster for SingleNode {
    fn node_id(&self) -> Option<&str> {
        None
    }

    async fn forward(&self, _: &str, _: Request, _: Duration) -> Result<Reply, ForwardError> {
        Err(ForwardError::OwnerGone)
    }

    async fn notify(&self, _: &str, _: Request) {}

    async fn peers(&self) -> Result<Vec<String>, ForwardError> {
        Ok(Vec::new())
    }
}

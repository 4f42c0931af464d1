//! The upkeep task: this node's liveness key, the reaper of dead nodes' presence, and the
//! cached numbers of `stats()`.
//!
//! Every tick (a third of the node TTL) the node refreshes `node:{id}` with the TTL. The reaper
//! looks at the announced nodes; when one's key is gone it walks every room's presence and a
//! script removes (and announces the leave of) each entry whose node is not alive — checked
//! inside the script, so two reapers never announce the same leave and a node that came back
//! in between keeps its entries. The first tick starts a sweep of every room, for nodes that
//! died while no other node was running. A walk looks at most `reap_rooms_per_tick` (default
//! [`REAP_ROOMS_PER_TICK`]) rooms per tick (`SSCAN`) and goes on over the next ticks, so Redis and the node never do O(rooms) work
//! at once; with many presence rooms the leaves of a dead node's users arrive over
//! `rooms / REAP_ROOMS_PER_TICK` ticks.
//!
//! Stats: every `stats_interval` each node reads the cluster's numbers from one hash (O(1)).
//! One node at a time (the holder of a lease with a TTL) computes them by walking the room
//! indexes with `SSCAN`, at most [`STATS_ROOMS_PER_TICK`] rooms per interval, and writes the
//! totals when a pass ends; so Redis never runs an O(rooms) script, and a cluster of N nodes
//! walks the rooms once, not N times. With many rooms the numbers lag by
//! `rooms / STATS_ROOMS_PER_TICK` intervals.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::int;
use super::{millis, redis_err, Shared};
use crate::broker::{BrokerError, BrokerResult};

impl Shared {
    /// Refreshes this node's liveness key. Returns true if the key had expired, i.e. the other
    /// nodes may have taken this node for dead and reaped its presence.
    pub(super) async fn heartbeat(&self) -> BrokerResult<bool> {
        let (previous,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&self.node_id))
            .arg(1)
            .arg("PX")
            .arg(millis(self.opts.node_ttl))
            .arg("GET")
            .cmd("SADD")
            .arg(self.keys.nodes())
            .arg(&self.node_id)
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(previous.is_none())
    }

    /// Joins again every presence entry this node owns (after it was taken for dead).
    async fn reannounce(&self) -> BrokerResult<()> {
        let owned: Vec<(String, rtlink_protocol::PresenceConn)> = self
            .owned
            .lock()
            .iter()
            .flat_map(|(room, conns)| conns.values().map(move |c| (room.clone(), c.clone())))
            .collect();
        for (room, conn) in owned {
            self.presence_join(&room, &conn).await?;
        }
        Ok(())
    }

    /// The announced nodes other than this one whose liveness key is gone.
    async fn dead_nodes(&self) -> BrokerResult<Vec<String>> {
        let mut conn = self.conn();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let others: Vec<String> = nodes.into_iter().filter(|n| *n != self.node_id).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("EXISTS").arg(self.keys.node(node));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await.map_err(redis_err)?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(n, _)| n)
            .collect())
    }

    /// Removes the presence of dead nodes, at most `reap_rooms_per_tick` rooms per call: a
    /// pass starts when a node is found dead (or on the first tick, `sweep_anyway`, for nodes
    /// that died while none ran) and walks the presence rooms with `SSCAN` over as many ticks
    /// as it needs. The dead nodes are forgotten when the pass ends.
    async fn reap(&self, pass: &mut ReapPass, sweep_anyway: bool) -> BrokerResult<()> {
        if !pass.active {
            let dead = self.dead_nodes().await?;
            if dead.is_empty() && !sweep_anyway {
                return Ok(());
            }
            *pass = ReapPass {
                active: true,
                dead,
                ..ReapPass::default()
            };
        }
        let mut conn = self.conn();
        let mut budget = self.opts.reap_rooms_per_tick.max(1);
        loop {
            let (next, rooms): (String, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.keys.presence_rooms())
                .arg(&pass.cursor)
                .arg("COUNT")
                .arg(REAP_BATCH.min(budget))
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            for room in &rooms {
                let n: u64 = self
                    .scripts
                    .reap_room
                    .key(self.keys.presence(room))
                    .key(self.keys.presence_rooms())
                    .arg(room)
                    .arg(self.keys.channel(room))
                    .arg(self.keys.node_prefix())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_err)?;
                pass.removed += n;
            }
            pass.cursor = next;
            if pass.cursor == "0" {
                break;
            }
            budget = budget.saturating_sub(rooms.len().max(1));
            if budget == 0 {
                return Ok(());
            }
        }
        if !pass.dead.is_empty() {
            // A node that comes back announces itself again on its next heartbeat.
            let _: () = redis::cmd("SREM")
                .arg(self.keys.nodes())
                .arg(&pass.dead)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
        }
        if pass.removed > 0 {
            tracing::info!(
                removed = pass.removed,
                dead_nodes = pass.dead.len(),
                "redis broker: reaped presence of dead nodes"
            );
        }
        *pass = ReapPass::default();
        Ok(())
    }

    /// Advances the stats pass if this node holds the lease, then reads the cluster's numbers.
    async fn refresh_stats(&self, pass: &mut StatsPass) -> BrokerResult<()> {
        let mut conn = self.conn();
        let lease_ms = super::millis(self.opts.stats_interval * 3);
        let leader: i64 = self
            .scripts
            .stats_lease
            .key(self.keys.stats_lease())
            .arg(&self.node_id)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if leader == 1 {
            self.advance_stats(pass).await?;
        } else {
            // Another node walks; if this one takes over later, it starts a pass afresh.
            *pass = StatsPass::default();
        }
        let (rooms, members, messages): (Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(self.keys.stats())
                .arg("rooms")
                .arg("members")
                .arg("messages")
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
        let cache = &self.stats;
        cache.rooms.store(rooms.unwrap_or(0), Ordering::Relaxed);
        cache
            .presence_members
            .store(members.unwrap_or(0), Ordering::Relaxed);
        cache
            .history_messages
            .store(messages.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Walks at most [`STATS_ROOMS_PER_TICK`] rooms of the pass; at its end, writes the totals.
    async fn advance_stats(&self, pass: &mut StatsPass) -> BrokerResult<()> {
        let mut conn = self.conn();
        let mut budget = STATS_ROOMS_PER_TICK;
        while budget > 0 {
            let (index, prefix, kind) = if pass.presence_phase {
                (self.keys.presence_rooms(), self.keys.presence_prefix(), "p")
            } else {
                (self.keys.history_rooms(), self.keys.history_prefix(), "h")
            };
            let reply: Vec<redis::Value> = self
                .scripts
                .stats_step
                .key(index)
                .arg(&pass.cursor)
                .arg(STATS_BATCH)
                .arg(prefix)
                .arg(kind)
                .arg(self.keys.history_prefix())
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let [cursor, rooms, n] = reply.as_slice() else {
                return Err(BrokerError(String::from("redis: unexpected stats reply")));
            };
            pass.cursor = super::wire::text(cursor).unwrap_or_else(|| String::from("0"));
            pass.rooms += int(rooms).unwrap_or(0);
            if pass.presence_phase {
                pass.members += int(n).unwrap_or(0);
            } else {
                pass.messages += int(n).unwrap_or(0);
            }
            budget = budget.saturating_sub(STATS_BATCH);
            if pass.cursor != "0" {
                continue;
            }
            if !pass.presence_phase {
                pass.presence_phase = true;
                continue;
            }
            let _: () = redis::cmd("HSET")
                .arg(self.keys.stats())
                .arg("rooms")
                .arg(pass.rooms)
                .arg("members")
                .arg(pass.members)
                .arg("messages")
                .arg(pass.messages)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            *pass = StatsPass::default();
            break;
        }
        Ok(())
    }
}

/// Presence rooms one `SSCAN` step of the reaper asks for (a hint).
const REAP_BATCH: usize = 200;
/// Presence rooms the reaper looks at per tick by default, at most (give or take a batch).
pub(super) const REAP_ROOMS_PER_TICK: usize = 2_000;

/// Where a pass of the reaper is.
#[derive(Debug)]
pub(super) struct ReapPass {
    active: bool,
    cursor: String,
    /// The dead nodes that started the pass, forgotten when it ends.
    dead: Vec<String>,
    removed: u64,
}

impl Default for ReapPass {
    fn default() -> Self {
        Self {
            active: false,
            cursor: String::from("0"),
            dead: Vec::new(),
            removed: 0,
        }
    }
}

/// Rooms one `SSCAN` step of the stats pass looks at (a hint: Redis may return a few more).
const STATS_BATCH: usize = 500;
/// Rooms the stats pass looks at per interval, at most (give or take a batch).
pub(super) const STATS_ROOMS_PER_TICK: usize = 5_000;

/// Where the stats pass is: history rooms first, then presence rooms, and the partial sums.
#[derive(Debug)]
pub(super) struct StatsPass {
    presence_phase: bool,
    cursor: String,
    rooms: u64,
    members: u64,
    messages: u64,
}

impl Default for StatsPass {
    fn default() -> Self {
        Self {
            presence_phase: false,
            cursor: String::from("0"),
            rooms: 0,
            members: 0,
            messages: 0,
        }
    }
}

/// Runs until the broker is dropped (the task is aborted). Failures are logged and retried on
/// the next tick: Redis being away is not this task's to report.
pub(super) async fn run(shared: Arc<Shared>) {
    let period = (shared.opts.node_ttl / 3).max(Duration::from_millis(20));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept_once = false;
    let mut reap = ReapPass::default();
    let mut stats_due = Instant::now();
    let mut pass = StatsPass::default();
    loop {
        tick.tick().await;
        match shared.heartbeat().await {
            Ok(true) => {
                tracing::warn!(
                    "redis broker: this node's liveness had expired, re-announcing its presence"
                );
                // Redis lost its data (presence gone without events), or this node was away
                // long enough to be reaped: the presence mirrors may be wrong.
                shared.invalidate_mirrors();
                if let Err(e) = shared.reannounce().await {
                    tracing::warn!(error = %e, "redis broker: re-announcing presence failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "redis broker: liveness refresh failed"),
        }
        match shared.reap(&mut reap, !swept_once).await {
            Ok(()) => swept_once = true,
            Err(e) => tracing::warn!(error = %e, "redis broker: reaper failed"),
        }
        if Instant::now() >= stats_due {
            if let Err(e) = shared.refresh_stats(&mut pass).await {
                tracing::warn!(error = %e, "redis broker: stats refresh failed");
            }
            stats_due = Instant::now() + shared.opts.stats_interval;
        }
    }
}

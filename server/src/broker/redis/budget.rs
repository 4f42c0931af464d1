//! The history byte budget of a cluster (`--history-max-bytes`), the Redis counterpart of the
//! in-process broker's eviction: the oldest message of any room goes first.
//!
//! Three keys hold it (`keys.rs`): a counter of bytes, a hash room -> bytes of that room's
//! stream, and the eviction log, a stream with one record (room, offset, stamp) per stored
//! message in publish order across rooms. The count is kept by the scripts themselves, in the
//! same atomic step as the change it counts:
//!
//! - a publish adds its entry and its log record, and uncounts what the count and age bounds
//!   trim from the room; the history read uncounts what it trims by age;
//! - over the budget, the publish itself evicts from the log's head, at most
//!   [`EVICT_PER_PUBLISH`] records, so a flood is held at the budget as it happens;
//! - the holder of a lease (one node per cluster) runs bounded trim steps every
//!   `budget_interval`: it evicts what publishes left over the budget (records whose message the
//!   count bound already trimmed free only the record) and pops the records of messages that
//!   aged out, so the log never outlives the history it describes.
//!
//! A stream that expires as a whole (`PEXPIRE`, the room was idle for the history age) leaves
//! without a script; its bytes stay in the hash and are uncounted when the room's next publish
//! or its oldest log record finds the stream gone, at the latest one history age plus one trim
//! interval after its last publish. So the count never drifts for good; in between it may count
//! an expired room's bytes (an error that only ever evicts early, never lets memory past the
//! budget). What an entry counts is its field names and values plus a fixed overhead (64 bytes,
//! and as much per log record plus its room name): Redis's own allocator overhead per key is not
//! counted, so the memory Redis uses for history is the budget times a small factor (measured
//! by the abuse test). Keys evicted by Redis's own `maxmemory` policy are not foreseen: run
//! Redis with `noeviction` or a `volatile-*` policy (the budget's keys have no TTL).
//!
//! A room is never uncounted more than it was counted (the total is always the sum of the
//! per-room counts plus the log's records). So entries stored before the budget existed (an
//! upgrade), which were never counted, make the count read low only until their room's
//! counted entries are gone too (about one history age), never for good.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::wire::int;
use super::{millis, redis_err, Shared};
use crate::broker::{BrokerError, BrokerResult};

/// Log records a publish evicts at most (each frees at least its record, usually a message).
pub(super) const EVICT_PER_PUBLISH: usize = 64;
/// Log records one background trim step handles at most (one script call).
const TRIM_BATCH: usize = 500;
/// Trim steps per interval at most: bounded work per tick, the rest waits for the next one.
const TRIM_STEPS_PER_TICK: usize = 20;

/// What one trim step did.
struct TrimStep {
    /// This node holds the trim lease.
    held: bool,
    /// Log records popped.
    popped: u64,
    /// The cluster's count after the step.
    bytes: u64,
}

impl Shared {
    async fn budget_trim_step(&self) -> BrokerResult<TrimStep> {
        let reply: Vec<redis::Value> = self
            .scripts
            .budget_trim
            .key(self.keys.budget_lease())
            .key(self.keys.budget_bytes())
            .key(self.keys.budget_rooms())
            .key(self.keys.budget_log())
            .arg(&self.node_id)
            .arg(millis(self.opts.budget_interval * 5))
            .arg(self.opts.history_max_bytes)
            .arg(millis(self.opts.history_max_age))
            .arg(TRIM_BATCH)
            .arg(self.keys.history_prefix())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let [held, popped, bytes] = reply.as_slice() else {
            return Err(BrokerError(String::from("redis: unexpected trim reply")));
        };
        Ok(TrimStep {
            held: int(held) == Some(1),
            popped: int(popped).unwrap_or(0),
            bytes: int(bytes).unwrap_or(0),
        })
    }

    /// One tick: trim steps while this node holds the lease and there is work, at most
    /// [`TRIM_STEPS_PER_TICK`]; then the cluster's count goes to `stats()`.
    async fn budget_tick(&self) -> BrokerResult<()> {
        for _ in 0..TRIM_STEPS_PER_TICK {
            let step = self.budget_trim_step().await?;
            self.stats
                .history_bytes
                .store(step.bytes, Ordering::Relaxed);
            if !step.held || step.popped < TRIM_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

/// Runs until the broker is dropped (the task is aborted). Failures are logged and retried on
/// the next tick.
pub(super) async fn run(shared: Arc<Shared>) {
    let period = shared.opts.budget_interval.max(Duration::from_millis(20));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = shared.budget_tick().await {
            tracing::warn!(error = %e, "redis broker: history budget trim failed");
        }
    }
}

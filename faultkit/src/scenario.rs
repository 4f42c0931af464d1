//! Building blocks shared by the fault scenarios: a stack of real processes behind the proxy,
//! short timers on both sides, a publisher that keeps publishing, and the figures a scenario
//! prints.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rtlink::core::{BackoffConfig, Config, SendError, SendId, TransportKind};
use tokio::sync::watch;

use crate::check::{tally, Tally};
use crate::client::{ClientOptions, Observed, TestClient};
use crate::node::{Node, NodeConfig};
use crate::proxy::FaultProxy;
use crate::redis::Redis;

/// Server ping interval in scenarios.
pub const PING: Duration = Duration::from_secs(1);
/// Silence the client tolerates after a ping interval.
pub const CLIENT_GRACE: Duration = Duration::from_secs(1);
/// When a client must have noticed a dead transport: a ping interval plus the grace, after the
/// last frame (which came at most a ping interval before the fault).
pub const DETECTION_DEADLINE: Duration =
    Duration::from_millis(PING.as_millis() as u64 * 2 + CLIENT_GRACE.as_millis() as u64);
/// Client: a transport without `welcome` this long has failed.
pub const FIRST_FRAME: Duration = Duration::from_secs(2);
/// Client: how often a lower rung probes the one above.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// The longest any fault or abuse scenario may run: [`bounded`] fails it after that, so a hang
/// is a named failure and not a stuck CI job. (The slowest scenarios, a reconnect storm or a
/// node killed while a cluster publishes, take under a minute here.)
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(150);

/// Runs a test scenario, panicking if it takes longer than [`SCENARIO_LIMIT`].
pub async fn bounded<F: std::future::Future<Output = ()>>(scenario: F) {
    bounded_by(SCENARIO_LIMIT, scenario).await;
}

/// Runs a test scenario, panicking if it takes longer than `limit`.
pub async fn bounded_by<F: std::future::Future<Output = ()>>(limit: Duration, scenario: F) {
    if tokio::time::timeout(limit, scenario).await.is_err() {
        panic!("scenario timed out after {limit:?}");
    }
}

/// Server flags with short timers, for every node of a scenario.
pub fn fast_node(binary: &Path) -> NodeConfig {
    NodeConfig::new(binary).args([
        "--ping-interval",
        "1s",
        "--heartbeat-grace",
        "1s",
        "--sse-keepalive",
        "1s",
        "--poll-hold",
        "1s",
        "--presence-grace",
        "300ms",
        "--resume-window",
        "30s",
        "--drain-window",
        "1s",
        "--drain-grace",
        "1s",
        "--redis-node-ttl",
        "2s",
    ])
}

/// The client's defaults with timers scaled to the scenarios' server.
pub fn fast_client() -> Config {
    Config {
        backoff: BackoffConfig { base_ms: 200, cap_ms: 2_000, floor_ms: 50, max_attempts: None, stable_ms: 3_000 },
        first_frame_timeout_ms: FIRST_FRAME.as_millis() as u64,
        probe_interval_ms: PROBE_INTERVAL.as_millis() as u64,
        heartbeat_grace_ms: CLIENT_GRACE.as_millis() as u64,
        liveness_probe_window_ms: 1_000,
        ack_timeout_ms: 20_000,
        ..Config::default()
    }
}

/// A client of the scenario, pinned to `transports` (best first).
pub fn client(base_url: &str, user: &str, transports: &[TransportKind]) -> TestClient {
    let config = Config { transports: transports.to_vec(), ..fast_client() };
    TestClient::connect(ClientOptions::new(base_url, user).config(config))
}

/// Redis (optional), nodes, and a fault proxy in front of every node.
pub struct Stack {
    pub redis: Option<Redis>,
    pub nodes: Vec<Node>,
    pub proxy: FaultProxy,
}

impl Stack {
    /// One node with the in-process broker.
    pub async fn single(node: NodeConfig) -> anyhow::Result<Self> {
        let node = Node::start(node).await?;
        let proxy = FaultProxy::http(vec![node.addr()]).await?;
        Ok(Self { redis: None, nodes: vec![node], proxy })
    }

    /// `n` nodes sharing one Redis, behind a round-robin proxy.
    pub async fn cluster(n: usize, node: NodeConfig) -> anyhow::Result<Self> {
        let redis = Redis::start().await?;
        Self::cluster_on(redis, n, node).await
    }

    /// `n` nodes sharing `redis`, behind a round-robin proxy.
    pub async fn cluster_on(redis: Redis, n: usize, node: NodeConfig) -> anyhow::Result<Self> {
        let url = redis.url();
        Self::cluster_via(redis, &url, n, node).await
    }

    /// `n` nodes reaching `redis` at `url` (e.g. through a TCP fault proxy), behind a
    /// round-robin proxy.
    pub async fn cluster_via(redis: Redis, url: &str, n: usize, node: NodeConfig) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(Node::start(node.clone().redis(url)).await?);
        }
        let proxy = FaultProxy::http(nodes.iter().map(Node::addr).collect()).await?;
        Ok(Self { redis: Some(redis), nodes, proxy })
    }

    /// The proxy's URL (what clients connect to).
    pub fn url(&self) -> String {
        self.proxy.url()
    }
}

/// Publishes `{prefix}{n}` every `every` from a client, until stopped.
pub struct Publisher {
    pub client: Arc<TestClient>,
    sent: Arc<Mutex<Vec<(SendId, String)>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn start(client: Arc<TestClient>, room: &str, every: Duration, prefix: &str) -> Self {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let (client, sent, room, prefix) = (client.clone(), sent.clone(), room.to_owned(), prefix.to_owned());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    n += 1;
                    let payload = format!("{prefix}{n}");
                    match client.publish(&room, &payload).await {
                        Ok(id) => sent.lock().push((id, payload)),
                        Err(SendError::QueueFull) => n -= 1,
                        Err(_) => return,
                    }
                }
            })
        };
        Self { client, sent, stop, task }
    }

    /// Stops publishing (what was queued is still sent and acknowledged).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many publishes were queued.
    pub fn sent(&self) -> usize {
        self.sent.lock().len()
    }

    /// Waits until every queued publish was acknowledged or failed.
    pub async fn settle(&self, within: Duration) -> Result<Duration, String> {
        let ids: Vec<SendId> = self.sent.lock().iter().map(|(id, _)| *id).collect();
        self.client
            .wait(within, "settled (every publish acked or failed)", |o| {
                ids.iter().all(|id| o.acked.contains_key(id) || o.failed.contains_key(id))
            })
            .await
    }

    /// The acknowledged payloads, in publish order.
    pub fn acked(&self) -> Vec<String> {
        let sent = self.sent.lock().clone();
        self.client.observed(|o| sent.into_iter().filter(|(id, _)| o.acked.contains_key(id)).map(|(_, p)| p).collect())
    }

    /// How many publishes failed (nack, timeout).
    pub fn failed(&self) -> usize {
        self.client.observed(|o| o.failed.len())
    }
}

/// Subscribes every client to `room` and waits (each within `within`) until each is in.
pub async fn subscribe_all(clients: &[&TestClient], room: &str, within: Duration) -> Result<(), String> {
    for c in clients {
        c.subscribe(room);
        c.wait(within, "subscribed", |o| o.subscribed.iter().any(|r| r == room)).await?;
    }
    Ok(())
}

/// The node-death scenario's middle: `publisher` publishes into `room` every 50 ms; after 20
/// messages node `node` of `stack` is killed (SIGKILL); after 80 the publisher stops and every
/// publish is settled. Returns when the node was killed and the acknowledged payloads.
pub async fn kill_node_while_publishing(
    stack: &mut Stack,
    node: usize,
    publisher: Arc<TestClient>,
    room: &str,
    within: Duration,
) -> Result<(Instant, Vec<String>), String> {
    let publisher = Publisher::start(publisher, room, Duration::from_millis(50), "m");
    if !crate::wait_until(within, || publisher.sent() >= 20).await {
        return Err(String::from("the publisher never reached 20 messages"));
    }
    let killed_at = Instant::now();
    stack.nodes[node].kill().await;
    if !crate::wait_until(within, || publisher.sent() >= 80).await {
        return Err(String::from("the publisher never reached 80 messages after the kill"));
    }
    publisher.stop().await;
    publisher.settle(within).await?;
    Ok((killed_at, publisher.acked()))
}

/// The printed figures of a client that lost its node at `killed_at`: detection held to
/// [`DETECTION_DEADLINE`], recovery the first session open after the kill.
pub fn failover_figures(
    scenario: &str,
    client: &TestClient,
    room: &str,
    acked: &[String],
    killed_at: Instant,
) -> Figures {
    let reopened = client.observed(|o| o.opens.iter().find(|(t, _)| *t >= killed_at).map(|(t, _)| *t - killed_at));
    Figures::of(scenario, client, room, acked)
        .detected_since(client, killed_at, DETECTION_DEADLINE)
        .recovered_in(reopened)
        .print()
}

/// Waits until `client` has every payload of `expected` in `room` (or `within` passes).
pub async fn wait_delivered(
    client: &TestClient,
    room: &str,
    expected: &[String],
    within: Duration,
) -> Result<Duration, String> {
    client
        .wait(within, "caught up", |o| {
            let got: std::collections::HashSet<&str> = o.delivered(room).iter().map(|d| d.payload.as_str()).collect();
            expected.iter().all(|p| got.contains(p.as_str()))
        })
        .await
}

/// What one client went through in a scenario.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub scenario: String,
    pub client: String,
    /// From the fault to the client noticing (its session lost the transport).
    pub detection: Option<Duration>,
    /// What `detection` is held to.
    pub deadline: Option<Duration>,
    /// From the fault's end to a session open again with everything delivered.
    pub recovery: Option<Duration>,
    /// The transport it ended on.
    pub ended_on: Option<TransportKind>,
    /// Back on its best rung after the fault ended (`None`: not asked).
    pub climbed_back: Option<bool>,
    /// Transport losses during the run.
    pub drops: usize,
    pub fallbacks: usize,
    pub resyncs: usize,
    pub tally: Tally,
}

impl Figures {
    /// The figures of `client`'s deliveries in `room` against `published`.
    pub fn of(scenario: &str, client: &TestClient, room: &str, published: &[String]) -> Self {
        client.observed(|o: &Observed| Self {
            scenario: scenario.to_owned(),
            client: client.name().to_owned(),
            ended_on: o.open_on,
            drops: o.drops.len(),
            fallbacks: o.fallbacks.len(),
            resyncs: o.resync_count(room),
            tally: tally(published, o.delivered(room), o.resync_count(room) > 0),
            ..Self::default()
        })
    }

    /// Sets `detection`: the first transport loss after `fault_at`.
    pub fn detected_since(mut self, client: &TestClient, fault_at: Instant, deadline: Duration) -> Self {
        self.detection = client.observed(|o| o.drops.iter().find(|t| **t >= fault_at).map(|t| *t - fault_at));
        self.deadline = Some(deadline);
        self
    }

    pub fn recovered_in(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.recovery = d.into();
        self
    }

    pub fn climbed_back(mut self, yes: bool) -> Self {
        self.climbed_back = Some(yes);
        self
    }

    /// Prints the figures (one line, `FAULT-FIGURES` prefix, for RELIABILITY.md) and returns them.
    pub fn print(self) -> Self {
        println!("FAULT-FIGURES {self}");
        self
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| String::from("-"), |d| format!("{} ms", d.as_millis()))
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} | {} | detection {} (deadline {}) | recovery {} | ended on {} | climbed back {} | drops {} | fallbacks {} | resyncs {} | {}",
            self.scenario,
            self.client,
            ms(self.detection),
            ms(self.deadline),
            ms(self.recovery),
            self.ended_on.map_or_else(|| String::from("-"), |k| format!("{k:?}")),
            self.climbed_back.map_or("-", |b| if b { "yes" } else { "no" }),
            self.drops,
            self.fallbacks,
            self.resyncs,
            self.tally
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "scenario timed out after 20ms")]
    async fn a_scenario_over_its_bound_fails() {
        bounded_by(Duration::from_millis(20), std::future::pending()).await;
    }

    #[tokio::test]
    async fn a_scenario_within_its_bound_passes() {
        bounded_by(Duration::from_secs(5), async {}).await;
    }
}

//! Real `rtlink-server` processes on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::process::{sigterm, LogTail};
use crate::token::TEST_SECRET;

/// How to start a node. The defaults suit fault scenarios: short timers, generous rate limits,
/// `--auth-secret` [`TEST_SECRET`], any Origin.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The `rtlink-server` binary (tests of the server crate pass `env!("CARGO_BIN_EXE_rtlink-server")`).
    pub binary: PathBuf,
    /// `--redis URL`: a cluster node. `None`: the in-process broker.
    pub redis: Option<String>,
    /// Extra flags, after the defaults (a later flag wins).
    pub args: Vec<String>,
}

impl NodeConfig {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self { binary: binary.into(), redis: None, args: Vec::new() }
    }

    pub fn redis(mut self, url: &str) -> Self {
        self.redis = Some(url.to_owned());
        self
    }

    /// Adds flags, e.g. `.arg("--ping-interval").arg("1s")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A running `rtlink-server`. Killed (SIGKILL) on drop.
pub struct Node {
    config: NodeConfig,
    child: Option<Child>,
    addr: SocketAddr,
    log: LogTail,
}

impl Node {
    /// Starts a node on a free port and waits (bounded) until it listens.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let mut node =
            Node { config, child: None, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log: LogTail::default() };
        node.spawn().await?;
        Ok(node)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let c = &self.config;
        let mut cmd = Command::new(&c.binary);
        // Nothing from the test's environment (RTLINK_*) leaks in.
        cmd.env_clear()
            .env("RTLINK_LOG", "info")
            .args(["--listen", &self.addr.to_string(), "--log-format", "json"])
            .args(["--auth-secret", TEST_SECRET])
            .args(["--rate-per-sec", "1000", "--rate-burst", "1000"])
            .args(["--max-connections-per-ip", "10000"]);
        if let Some(url) = &c.redis {
            cmd.args(["--redis", url]);
        }
        cmd.args(&c.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawn {}", c.binary.display()))?;
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        if let Some(out) = child.stdout.take() {
            self.log.follow(out, move |line| {
                if let Some(addr) = listening_addr(line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            self.log.follow(err, |_| {});
        }
        self.child = Some(child);
        match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(addr)) => {
                self.addr = addr;
                Ok(())
            }
            _ => {
                self.kill().await;
                bail!("rtlink-server did not start listening:\n{}", self.log.lines().join("\n"))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The last lines the node logged (JSON).
    pub fn log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// SIGKILL (a crash): no drain, nothing cleaned up.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM: the node drains and exits.
    pub fn terminate(&self) -> bool {
        self.pid().is_some_and(sigterm)
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(within, child.wait()).await.ok()?.ok();
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Starts the node again on the same address (after [`Node::kill`] or an exit).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }
}

/// The address of a JSON log line `rtlink-server listening addr=…`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "rtlink-server listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

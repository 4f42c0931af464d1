//! A throwaway `redis-server` on a free loopback port, as a fault: kill it, restart it (with or
//! without its data), or put a TCP [`crate::FaultProxy`] in front of it to make it slow.
//!
//! The binary is `redis-server` from `PATH`, or `$REDIS_SERVER`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;
use tokio::process::{Child, Command};

use crate::process::free_port;

/// A `redis-server` child. Killed (and its directory removed) on drop.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Append-only file with fsync on every write: data survives a SIGKILL.
    durable: bool,
}

impl Redis {
    /// A server that keeps nothing on disk: a restart comes back empty.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// A server with an fsync'ed append-only file: a restart (even after SIGKILL) keeps the data.
    pub async fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> anyhow::Result<Self> {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "faultkit-redis-{}-{port}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let mut redis = Self { child: None, port, dir, durable };
            if redis.spawn().await {
                return Ok(redis);
            }
        }
        bail!("could not start redis-server (is it installed? set REDIS_SERVER to its path)")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: every client's connection drops; nothing is flushed that was not already.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port and directory: a durable server has its data back, the
    /// other kind is empty.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        if !self.spawn().await {
            bail!("redis-server did not restart on port {}", self.port);
        }
        Ok(())
    }

    /// Kill, lose every byte on disk, start again: a crash between snapshots, or a failover to
    /// an empty replica.
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.spawn().await {
            bail!("redis-server did not restart on port {}", self.port);
        }
        Ok(())
    }

    async fn spawn(&mut self) -> bool {
        let _ = std::fs::create_dir_all(&self.dir);
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| String::from("redis-server"));
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true).spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break; // exited: most likely the port was taken meanwhile
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill().await;
        false
    }

    /// True when the server answers `PING` (and has finished loading its data).
    pub async fn ping(&self) -> bool {
        matches!(self.command(&["PING"]).await, Ok(reply) if reply.starts_with("+PONG"))
    }

    /// Sends one command and returns the first line of the reply (RESP, unparsed). For
    /// test set-up and checks (`FLUSHALL`, `DBSIZE`, …).
    pub async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(self.addr()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), BufReader::new(stream).read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply"))??;
        Ok(line)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The servers under test, each in its own process on 127.0.0.1, stopped when dropped; and what
//! the kernel says about them (`/proc/PID/stat` CPU time, `/proc/PID/status` RSS).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which server a scenario talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `rtlink-server` (the `server` cargo profile).
    Rtlink,
    /// Socket.IO 4.8 on Node, websocket transport (`bench/peers/socketio-server.mjs`).
    SocketIo,
    /// `rtlink-bench raw-server`: tokio-tungstenite, broadcast, no protocol.
    Raw,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtlink => "rtlink",
            Self::SocketIo => "Socket.IO",
            Self::Raw => "raw",
        }
    }
}

/// Where the binaries and scripts are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    pub rtlink_server: PathBuf,
    pub node: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let rtlink_server = root.join("target/server/rtlink-server");
        if !rtlink_server.exists() {
            bail!(
                "{} is missing: build it with `cargo build --profile server -p rtlink-server`",
                rtlink_server.display()
            );
        }
        let script = root.join("bench/peers/socketio-server.mjs");
        if !root.join("bench/peers/node_modules/socket.io").exists() {
            bail!("bench/peers/node_modules is missing: run `npm ci` in bench/peers");
        }
        if !script.exists() {
            bail!("{} is missing", script.display());
        }
        Ok(Self {
            root: root.to_owned(),
            rtlink_server,
            node: PathBuf::from("node"),
        })
    }
}

/// Options that change how rtlink-server is started.
#[derive(Clone, Debug, Default)]
pub struct RtlinkOptions {
    /// Extra command-line flags.
    pub extra: Vec<String>,
    /// Names a run with non-default `extra` flags in the report (e.g. "write window off");
    /// empty for the server as shipped, whose runs the ratios are taken from.
    pub variant: String,
    /// Fixed port (the reconnect storm restarts on the same one).
    pub port: Option<u16>,
    /// Keep the server's total accept-rate budget (the reconnect storm measures it); otherwise
    /// it is lifted like every other limit.
    pub accept_budget: bool,
}

/// A running server process; killed (and reaped) on drop.
pub struct Server {
    pub peer: Peer,
    pub port: u16,
    child: Child,
}

pub const AUTH_SECRET: &str = "rtlink-bench-secret-0123456789abcdef0123";

/// Flags that lift the limits a benchmark would otherwise measure instead of the server:
/// per-address caps and accept budgets (every client here is 127.0.0.1), the per-connection
/// publish rate, and (unless `accept_budget`) the total accept-rate budget.
pub fn rtlink_bench_flags(accept_budget: bool) -> Vec<String> {
    let mut flags: Vec<&str> = vec![
        "--auth-secret",
        AUTH_SECRET,
        "--demo-auth",
        "--max-connections",
        "200000",
        "--max-connections-per-ip",
        "200000",
        "--max-sessions",
        "400000",
        "--max-sessions-per-ip",
        "400000",
        "--max-tcp-connections",
        "400000",
        "--max-tcp-connections-per-ip",
        "400000",
        "--max-requests",
        "400000",
        "--max-requests-per-ip",
        "400000",
        "--accept-rate-per-ip",
        "1000000",
        "--accept-burst-per-ip",
        "1000000",
        "--rate-per-sec",
        "1000000",
        "--rate-burst",
        "1000000",
        "--publish-bytes-per-sec",
        "4000000000",
        "--publish-bytes-burst",
        "4000000000",
    ];
    if !accept_budget {
        flags.extend(["--accept-rate", "1000000", "--accept-burst", "1000000"]);
    }
    flags.into_iter().map(str::to_owned).collect()
}

impl Server {
    pub fn start(paths: &Paths, peer: Peer, rtlink: &RtlinkOptions) -> anyhow::Result<Self> {
        let port = match rtlink.port {
            Some(p) => p,
            None => free_port()?,
        };
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match peer {
            Peer::Rtlink => {
                let mut c = Command::new(&paths.rtlink_server);
                c.arg("--listen")
                    .arg(&addr)
                    .args(rtlink_bench_flags(rtlink.accept_budget));
                c.args(&rtlink.extra);
                c.env("RTLINK_LOG", "warn");
                c
            }
            Peer::SocketIo => {
                let mut c = Command::new(&paths.node);
                c.arg(paths.root.join("bench/peers/socketio-server.mjs"))
                    .arg(port.to_string());
                c
            }
            Peer::Raw => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("raw-server").arg("--listen").arg(&addr);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", peer.name()))?;
        let mut server = Self { peer, port, child };
        server.wait_listening(Duration::from_secs(15))?;
        Ok(server)
    }

    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited before listening: {status}", self.peer.name());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} in time",
                    self.peer.name(),
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid()).unwrap_or(0)
    }

    /// Sends SIGTERM (rtlink drains; Node exits at once, as it does by default).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits (bounded) for the process to exit by itself; kills it past the limit.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time of a process, user and system (kernel) apart.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSplit {
    pub user: Duration,
    pub system: Duration,
}

impl CpuSplit {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// utime + stime of a process (all its threads, also those that ended), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_split(pid).map(CpuSplit::total)
}

/// utime and stime of a process, from `/proc/PID/stat`.
pub fn cpu_split(pid: u32) -> Option<CpuSplit> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the man page; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = clock_ticks_per_sec();
    Some(CpuSplit {
        user: Duration::from_micros(utime * 1_000_000 / hz),
        system: Duration::from_micros(stime * 1_000_000 / hz),
    })
}

/// `VmRSS` of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stats() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
    }
}

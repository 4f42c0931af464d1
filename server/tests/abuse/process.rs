//! A real `rtlink-server` process on a free port of 127.0.0.1, killed (SIGKILL) when dropped,
//! also when the test panics. Its log (JSON lines) is kept for assertions.
#![allow(dead_code)] // not every test uses every helper

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rtlink_server::config::TEST_SECRET;

use crate::common::{remote, Server};

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

fn command(args: &[&str]) -> Command {
    command_with_env(args, &[])
}

fn command_with_env(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(faultkit::rtlink_server_bin!());
    // Nothing from the test's environment (RTLINK_*) leaks in.
    cmd.env_clear()
        .env("RTLINK_LOG", "info")
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

impl ServerProcess {
    /// Starts a server with `--auth-secret TEST_SECRET` and `args`; waits (bounded) until it
    /// listens.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut all = vec!["--auth-secret", TEST_SECRET];
        all.extend_from_slice(args);
        Self::start_raw(&all)
    }

    /// Starts a server with `--auth-secret TEST_SECRET`, `args` and the environment `env`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut all = vec!["--auth-secret", TEST_SECRET];
        all.extend_from_slice(args);
        Self::spawn(command_with_env(&all, env), &all)
    }

    /// Starts a server with exactly `args` (plus the listen address and log format).
    pub fn start_raw(args: &[&str]) -> ServerProcess {
        Self::spawn(command(args), args)
    }

    fn spawn(mut cmd: Command, args: &[&str]) -> ServerProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rtlink-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        // Reads the log for the address, then keeps draining it so the child never blocks.
        std::thread::spawn({
            let log = log.clone();
            move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = listening_addr(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let stderr = err_rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                panic!("rtlink-server {args:?} did not log its address; stderr: {stderr}");
            }
        };
        ServerProcess { child, addr, log }
    }

    /// Runs a server that is expected to refuse to start: its exit status and stderr.
    pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
        let mut child = command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rtlink-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rtlink-server kept running with {args:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        let _ = child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr);
        (status, stderr)
    }

    /// A test client of this process (signs tokens with [`TEST_SECRET`]).
    pub fn client(&self) -> Server {
        remote(self.addr)
    }

    /// True once a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of the JSON log line `rtlink-server listening addr=…`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "rtlink-server listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

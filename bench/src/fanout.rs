//! Fan-out: N subscribers in one room, one publisher at rising rates until saturation.
//!
//! For each offered load (deliveries per second = rate × N) the publisher sends for a fixed
//! time, paced open-loop; the step ends when every subscriber has every message (or at a
//! deadline). Per step: delivered/s, server CPU per 1,000 deliveries (`/proc/PID/stat`),
//! p50/p99/p99.9 latency, and errors (gap, duplicate, reordering, missing). A peer stops
//! climbing once a step is incomplete or delivers less than 90 % of what was offered.
//!
//! WebSocket subscribers are read by [`Readers`] (epoll threads, no task per connection), so
//! the load generator costs little per delivery; its own CPU use is recorded beside the
//! server's, to show which of the two ran out first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::clients::{payload, subscriber, ws_subscriber, Publisher, Recorder, Target, Transport};
use crate::procs::{cpu_split, CpuSplit, Paths, Peer, RtlinkOptions, Server};
use crate::readers::Readers;
use crate::stats::percentile;

pub const ROOM: &str = "bench";
const PAYLOAD: usize = 100;

/// One step at one offered load.
#[derive(Clone, Debug)]
pub struct Step {
    pub peer: Peer,
    /// [`RtlinkOptions::variant`]: empty for the server as shipped.
    pub variant: String,
    pub transport: Transport,
    pub subscribers: usize,
    pub offered_per_sec: f64,
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub cpu_ms_per_1000: f64,
    /// The kernel's part of `cpu_ms_per_1000` (system time: socket writes, loopback delivery).
    pub sys_ms_per_1000: f64,
    pub server_cpu_share: f64,
    /// The load generator's own CPU use over the step (1.0 = one core).
    pub loadgen_cpu_share: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub complete: bool,
}

impl Step {
    /// The server's name in tables and plots, with its variant.
    pub fn server(&self) -> String {
        if self.variant.is_empty() {
            self.peer.name().to_owned()
        } else {
            format!("{} ({})", self.peer.name(), self.variant)
        }
    }

    pub fn saturated(&self) -> bool {
        !self.complete || self.errors > 0 || self.delivered_per_sec < 0.9 * self.offered_per_sec
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub subscribers: usize,
    /// Offered deliveries per second, rising.
    pub loads: Vec<f64>,
    pub step_time: Duration,
    /// Reader threads of the load generator.
    pub readers: usize,
    /// Shell commands run just before and after each step's publishing and deliveries (to
    /// zero and dump a profiler's counters: `callgrind_control -z` / `-d`).
    pub hooks: Option<(String, String)>,
}

fn hook(cmd: &str) {
    let _ = std::process::Command::new("sh").arg("-c").arg(cmd).status();
}

pub struct Outcome {
    pub setup: Duration,
    pub steps: Vec<Step>,
    pub failure: Option<String>,
}

/// Runs one peer (one transport for rtlink) through the plan.
pub async fn run(
    paths: &Paths,
    peer: Peer,
    transport: Transport,
    plan: &Plan,
    rtlink: &RtlinkOptions,
) -> Outcome {
    let server = match Server::start(paths, peer, rtlink) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                setup: Duration::ZERO,
                steps: Vec::new(),
                failure: Some(format!("server: {e:#}")),
            };
        }
    };
    let mut out = drive(peer, server.port, server.pid(), transport, plan).await;
    drop(server);
    for s in &mut out.steps {
        s.variant.clone_from(&rtlink.variant);
    }
    out
}

/// Runs the plan against a server already listening on `port` (process `pid`, for its CPU
/// time): also used to drive a server started under a profiler (`rtlink-bench drive`).
pub async fn drive(peer: Peer, port: u16, pid: u32, transport: Transport, plan: &Plan) -> Outcome {
    let mut out = Outcome {
        setup: Duration::ZERO,
        steps: Vec::new(),
        failure: None,
    };
    let server = Watched(pid);
    let target = Target::new(peer, port);
    let total = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut readers = match Readers::new(plan.readers, total.clone()) {
        Ok(r) => r,
        Err(e) => {
            out.failure = Some(format!("readers: {e:#}"));
            return out;
        }
    };
    // SSE and long-poll subscribers keep a task each (reqwest); WebSocket ones go to the readers.
    let recorders: Vec<Arc<Recorder>> = if transport == Transport::WebSocket {
        Vec::new()
    } else {
        (0..plan.subscribers)
            .map(|_| Recorder::new(total.clone()))
            .collect()
    };
    let gate = Arc::new(Semaphore::new(32));
    let mut setup = JoinSet::new();
    for i in 0..plan.subscribers {
        let (target, rec, stop, gate) = (
            target.clone(),
            recorders.get(i).cloned(),
            stop_rx.clone(),
            gate.clone(),
        );
        setup.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let name = format!("s{i}");
            match rec {
                None => ws_subscriber(&target, &name, Some(ROOM))
                    .await
                    .map(Subscriber::Ws),
                Some(rec) => subscriber(&target, transport, &name, Some(ROOM), rec, stop)
                    .await
                    .map(Subscriber::Task),
            }
        });
    }
    let mut tasks = Vec::new();
    while let Some(r) = setup.join_next().await {
        match r {
            Ok(Ok(Subscriber::Ws(sub))) => readers.add(sub),
            Ok(Ok(Subscriber::Task(h))) => tasks.push(h),
            Ok(Err(e)) => {
                out.failure
                    .get_or_insert(format!("subscriber setup: {e:#}"));
            }
            Err(e) => out.failure = Some(format!("subscriber task: {e}")),
        }
    }
    if out.failure.is_some() {
        let _ = stop_tx.send(true);
        return out;
    }
    let publisher = match Publisher::connect(&target, ROOM).await {
        Ok(p) => p,
        Err(e) => {
            out.failure = Some(format!("publisher: {e:#}"));
            let _ = stop_tx.send(true);
            return out;
        }
    };
    quiesce_pid(&server).await;
    out.setup = started.elapsed();

    let mut seq = 0u64;
    for &load in &plan.loads {
        let rate = load / plan.subscribers as f64;
        let messages = ((rate * plan.step_time.as_secs_f64()).round() as u64).max(5);
        let expected = messages * plan.subscribers as u64;
        for r in &recorders {
            r.take();
        }
        readers.take().await;
        total.store(0, Ordering::Relaxed);
        if let Some((before, _)) = &plan.hooks {
            hook(before);
        }
        let cpu0 = server.cpu_split();
        let own0 = own_cpu();
        let t0 = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        for i in 0..messages {
            let due = t0 + period.mul_f64(i as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            seq += 1;
            publisher.send(payload(seq, PAYLOAD));
        }
        // Deliveries still in flight: wait for all of them, bounded.
        let deadline = Instant::now() + plan.step_time.max(Duration::from_secs(2)) * 2;
        while total.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = t0.elapsed();
        let split = server.cpu_split().since(cpu0);
        if let Some((_, after)) = &plan.hooks {
            hook(after);
        }
        let cpu = split.total();
        let own = own_cpu().since(own0).total();
        let delivered = total.load(Ordering::Relaxed);
        let taken = readers.take().await;
        let mut lat: Vec<u32> = taken.latencies_us;
        let mut errors = taken.errors;
        for r in &recorders {
            let (l, e) = r.take();
            lat.extend(l);
            errors += e;
        }
        lat.sort_unstable();
        let step = Step {
            peer,
            variant: String::new(),
            transport,
            subscribers: plan.subscribers,
            offered_per_sec: load,
            delivered,
            delivered_per_sec: delivered as f64 / elapsed.as_secs_f64(),
            cpu_ms_per_1000: cpu.as_secs_f64() * 1e3 / (delivered.max(1) as f64 / 1000.0),
            sys_ms_per_1000: split.system.as_secs_f64() * 1e3 / (delivered.max(1) as f64 / 1000.0),
            server_cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64(),
            loadgen_cpu_share: own.as_secs_f64() / elapsed.as_secs_f64(),
            p50_us: percentile(&lat, 50.0),
            p99_us: percentile(&lat, 99.0),
            p999_us: percentile(&lat, 99.9),
            errors: errors + expected.saturating_sub(delivered),
            complete: delivered >= expected,
        };
        eprintln!(
            "  {:<9} {:<12} N={:<5} offered {:>8.0}/s delivered {:>8.0}/s cpu {:>6.3} ms/1k (sys {:>6.3}) server {:>3.0} % loadgen {:>3.0} % p50 {:>7} p99 {:>7} µs{}",
            peer.name(),
            transport.name(),
            plan.subscribers,
            load,
            step.delivered_per_sec,
            step.cpu_ms_per_1000,
            step.sys_ms_per_1000,
            step.server_cpu_share * 100.0,
            step.loadgen_cpu_share * 100.0,
            step.p50_us,
            step.p99_us,
            if step.saturated() { "  (saturated)" } else { "" }
        );
        let saturated = step.saturated();
        out.steps.push(step);
        if saturated {
            break;
        }
        // Let the resync of a lagging client (if any) settle before the next step.
        quiesce_pid(&server).await;
    }
    let _ = stop_tx.send(true);
    publisher.close().await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    drop(readers);
    out
}

/// The process under test, as far as measuring it goes.
pub struct Watched(pub u32);

impl Watched {
    pub fn cpu(&self) -> Duration {
        self.cpu_split().total()
    }

    pub fn cpu_split(&self) -> CpuSplit {
        cpu_split(self.0).unwrap_or_default()
    }
}

enum Subscriber {
    Ws(crate::readers::Sub),
    Task(tokio::task::JoinHandle<()>),
}

/// This process's CPU time (the load generator's, readers included).
fn own_cpu() -> CpuSplit {
    cpu_split(std::process::id()).unwrap_or_default()
}

/// Waits until the server's CPU use has settled (setup traffic such as presence joins done).
pub async fn quiesce(server: &Server) {
    quiesce_pid(&Watched(server.pid())).await;
}

async fn quiesce_pid(server: &Watched) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = server.cpu();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.cpu();
        if now.saturating_sub(last) <= Duration::from_millis(20) || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

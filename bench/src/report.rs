//! The written report: Markdown tables for the terminal and docs/BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::clients::Transport;
use crate::fanout::{Outcome, Step};
use crate::idle::Idle;
use crate::plot::{Chart, Series};
use crate::procs::Peer;
use crate::rooms::LargeRoom;
use crate::storm::Storm;

/// CPU model, cores, memory, kernel, load: one line.
pub fn machine_line() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {model}, {cores} cores, {mem:.0} GiB, Linux {}, load average {} (before the run)",
        kernel.trim(),
        load.join(" ")
    )
}

pub fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// [`RtlinkOptions::variant`] of the fan-out runs without write coalescing.
///
/// [`RtlinkOptions::variant`]: crate::procs::RtlinkOptions::variant
pub const WINDOW_OFF: &str = "write window off";

/// [`RtlinkOptions::variant`] of the fan-out runs whose write windows hold whatever the
/// server's CPU use (`--write-window-above-cpu 0`).
///
/// [`RtlinkOptions::variant`]: crate::procs::RtlinkOptions::variant
pub const WINDOW_ALWAYS: &str = "write window always";

/// Write coalescing on (`on`, the server as shipped) against off, at each offered load both
/// ran: server CPU per 1,000 deliveries, p50 and p99, on → off.
pub fn window_summary(on: &[Step], off: &[Step]) -> String {
    let each: Vec<String> = on
        .iter()
        .filter_map(|a| {
            let b = off
                .iter()
                .find(|b| b.offered_per_sec == a.offered_per_sec)?;
            Some(format!(
                "{:.0}/s: CPU {:.2} vs {:.2} ms, p50 {} vs {}, p99 {} vs {}{}",
                a.offered_per_sec,
                a.cpu_ms_per_1000,
                b.cpu_ms_per_1000,
                fmt_us(a.p50_us),
                fmt_us(b.p50_us),
                fmt_us(a.p99_us),
                fmt_us(b.p99_us),
                if a.saturated() || b.saturated() {
                    " (saturated)"
                } else {
                    ""
                }
            ))
        })
        .collect();
    if each.is_empty() {
        "no offered load that both ran".to_owned()
    } else {
        each.join("; ")
    }
}

pub fn fanout_table(steps: &[Step]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| server | transport | N | offered deliveries/s | delivered/s | server CPU ms / 1,000 deliveries | server CPU use | p50 | p99 | p99.9 | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for st in steps {
        let errors = if st.errors == 0 && st.complete {
            "none".to_owned()
        } else {
            format!(
                "{} missing/out of order{}",
                st.errors,
                if st.saturated() { " (saturated)" } else { "" }
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0}{} | {:.3} | {:.0} % | {} | {} | {} | {} |",
            st.server(),
            st.transport.name(),
            st.subscribers,
            st.offered_per_sec,
            st.delivered_per_sec,
            if st.saturated() { " (saturated)" } else { "" },
            st.cpu_ms_per_1000,
            st.server_cpu_share * 100.0,
            fmt_us(st.p50_us),
            fmt_us(st.p99_us),
            fmt_us(st.p999_us),
            errors
        );
    }
    s
}

/// Everything `rtlink-bench full` measured.
pub struct Report {
    pub machine: String,
    pub fanout: Vec<(usize, Peer, Transport, Outcome)>,
    pub idle: Vec<Idle>,
    pub rooms: Vec<LargeRoom>,
    pub storm: Vec<Storm>,
    pub elapsed: Duration,
}

fn versions(root: &Path) -> String {
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let pkg = |name: &str| {
        std::fs::read_to_string(
            root.join("bench/peers/node_modules")
                .join(name)
                .join("package.json"),
        )
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
    };
    format!(
        "{}; Node {}; socket.io {} (server), socket.io-client {}; rtlink-server built with the `server` profile; \
         the raw peer on tokio-tungstenite 0.29 (the version axum uses)",
        cmd("rustc", &["--version"]),
        cmd("node", &["--version"]),
        pkg("socket.io"),
        pkg("socket.io-client")
    )
}

impl Report {
    pub fn new() -> Self {
        Self {
            machine: machine_line(),
            fanout: Vec::new(),
            idle: Vec::new(),
            rooms: Vec::new(),
            storm: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn steps(&self, n: usize, peer: Peer, transport: Transport) -> Vec<Step> {
        self.fanout
            .iter()
            .filter(|(m, p, t, _)| *m == n && *p == peer && *t == transport)
            .flat_map(|(_, _, _, o)| o.steps.clone())
            .filter(|s| s.variant.is_empty())
            .collect()
    }

    /// rtlink's WebSocket steps at `n` under `variant`.
    fn variant_steps(&self, n: usize, variant: &str) -> Vec<Step> {
        self.fanout
            .iter()
            .filter(|(m, p, t, _)| *m == n && *p == Peer::Rtlink && *t == Transport::WebSocket)
            .flat_map(|(_, _, _, o)| o.steps.clone())
            .filter(|s| s.variant == variant)
            .collect()
    }

    pub fn write(&self, root: &Path, path: &Path) -> anyhow::Result<()> {
        let plots = path.parent().unwrap_or(Path::new(".")).join("bench");
        std::fs::create_dir_all(&plots)?;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Benchmarks: rtlink side by side with Socket.IO and raw WebSocket\n"
        );
        let _ = writeln!(md, "Generated by `make bench` (`target/server/rtlink-bench full`, source in `bench/`); do not edit by hand. \
            Every server runs in its own process on 127.0.0.1, started and stopped by the harness; the harness is the load generator, \
            in its own process. Nothing is asserted: read the ratios, measured side by side in one run.\n");
        let _ = writeln!(
            md,
            "- {}\n- {}\n- whole run: {:.0} s\n",
            self.machine,
            versions(root),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(md, "Reproduce: `make bench` (everything, minutes), `make bench-quick` (1,000 subscribers, rtlink vs Socket.IO vs raw, and idle memory; \
            under 2 minutes of running; its last line is `fanout_vs_socketio=X.XX fanout_vs_raw=Y.YY idle_kb_per_conn=Z.Z`).\n");
        let _ = writeln!(md, "The load generator and the servers share the machine's 2 cores (and other work ran on them: see the load average above), \
            so delivered/s often measures the load generator. The comparable figure is **server CPU time per 1,000 deliveries** \
            (utime + stime from `/proc/PID/stat`, 10 ms ticks), at equal offered load. Latency is publish-to-receive on one clock \
            and includes the load generator's own queueing.\n");

        let _ = writeln!(md, "## Fan-out\n\nOne room, N subscribers, one publisher at rising rates (100-byte payloads) for 2 s per step until a peer saturates \
            (a step incomplete, or under 90 % of the offered deliveries/s). Every delivery is checked: no loss, no duplicate, in order. \
            rtlink's publisher uses WebSocket; its subscribers each transport in turn. The fan-out room is started without presence \
            (`--presence-off bench`), as the peers have none. rtlink's WebSocket runs three times: as shipped (5 ms write windows that hold \
            only while the server uses at least a quarter of its cores, the `--write-window` and `--write-window-above-cpu` defaults), \
            with windows that always hold (`--write-window-above-cpu 0`, \"write window always\") and without (`--write-window 0ms`, \
            \"write window off\"); the ratios are the shipped server's.\n");
        let mut ns: Vec<usize> = self.fanout.iter().map(|f| f.0).collect();
        ns.dedup();
        for n in ns {
            let _ = writeln!(md, "### N = {n}\n");
            let steps: Vec<Step> = self
                .fanout
                .iter()
                .filter(|f| f.0 == n)
                .flat_map(|f| f.3.steps.clone())
                .collect();
            md.push_str(&fanout_table(&steps));
            for (_, p, t, o) in self.fanout.iter().filter(|f| f.0 == n) {
                if let Some(f) = &o.failure {
                    let _ = writeln!(md, "\n{} over {}: **failed**: {f}", p.name(), t.name());
                }
            }
            let rt = self.steps(n, Peer::Rtlink, Transport::WebSocket);
            let _ = writeln!(md);
            for peer in [Peer::SocketIo, Peer::Raw] {
                match crate::compare::cpu_ratio(&rt, &self.steps(n, peer, Transport::WebSocket)) {
                    Some((load, r)) => {
                        let _ = writeln!(md, "- fan-out ratio, server CPU per delivery {} ÷ rtlink: **{r:.2}** (at {load:.0} deliveries/s offered)", peer.name());
                    }
                    None => {
                        let _ = writeln!(md, "- fan-out ratio against {}: no offered load that both delivered in full", peer.name());
                    }
                }
            }
            let sio = self.steps(n, Peer::SocketIo, Transport::WebSocket);
            let _ = writeln!(
                md,
                "- p99 latency, rtlink ÷ Socket.IO, at each offered load both kept up with: {}",
                crate::compare::p99_summary(&crate::compare::p99_pairs(&rt, &sio))
            );
            let off = self.variant_steps(n, WINDOW_OFF);
            if !off.is_empty() {
                let _ = writeln!(
                    md,
                    "- write coalescing as shipped (while busy) ÷ off, at each offered load: {}",
                    window_summary(&rt, &off)
                );
                let always = self.variant_steps(n, WINDOW_ALWAYS);
                if !always.is_empty() {
                    let _ = writeln!(
                        md,
                        "- write coalescing always ÷ off, at each offered load: {}",
                        window_summary(&always, &off)
                    );
                }
            }
            let series: Vec<Series> = self
                .fanout
                .iter()
                .filter(|f| f.0 == n)
                .map(|(_, p, t, o)| Series {
                    name: match o.steps.first() {
                        Some(s) if !s.variant.is_empty() => format!("{} {}", s.server(), t.name()),
                        _ if *p == Peer::Rtlink => format!("rtlink {}", t.name()),
                        _ => p.name().to_owned(),
                    },
                    points: o
                        .steps
                        .iter()
                        .map(|s| (s.offered_per_sec, s.p99_us as f64 / 1000.0))
                        .collect(),
                })
                .collect();
            let file = format!("fanout-latency-{n}.svg");
            let title = format!("Fan-out to {n} subscribers: p99 latency vs offered load");
            let chart = Chart {
                title: &title,
                x_label: "offered deliveries per second",
                y_label: "p99 latency (ms)",
                log_x: true,
                log_y: true,
            };
            std::fs::write(plots.join(&file), chart.svg(&series))?;
            let _ = writeln!(md, "\n![p99 latency vs load, N = {n}](bench/{file})\n");
        }

        if !self.idle.is_empty() {
            let _ = writeln!(md, "## Idle memory\n\n100 warm-up connections are opened and kept, then N more; `(RSS after − RSS before) ÷ N` \
                from `/proc/PID/status` is the cost of one idle connection (WebSocket for all three; \"one room each\": each connection \
                in a room of its own). Target for rtlink: ≤ 8 KB.\n");
            md.push_str(&idle_table(&self.idle));
            let _ = writeln!(md);
        }

        if !self.rooms.is_empty() {
            let _ = writeln!(md, "## Large rooms\n\nN members join one room with presence. They are set up first (ticket, WebSocket, `hello`); \
                then the clock starts and they subscribe, at most 32 subscribes in flight at a time. Each member tracks the set of \
                sessions present from snapshots, joins, leaves and diffs (read like the fan-out subscribers: a few epoll threads, frames \
                parsed in place). \"Consistent\" is when every member's list holds all N (for the opted-out room: every member \
                subscribed). Frames and bytes are what the members received; server CPU is from the first subscribe until the server \
                is idle again.\n");
            md.push_str(&rooms_table(&self.rooms));
            let _ = writeln!(md);
        }

        if !self.storm.is_empty() {
            let _ = writeln!(md, "## Reconnect storm\n\nN clients connected; the server gets SIGTERM and is started again on the same port as soon as it has exited. \
                rtlink drains (`reconnect_after` window, then close 4008) and its clients follow docs/PROTOCOL.md (uniform in the window, \
                full-jitter backoff, `Retry-After` jittered); Socket.IO's Node process exits at once (it has no drain) and its clients follow \
                socket.io-client 4.8's default reconnection (1 s ± 50 %, doubling to 5 s). Times are from the SIGTERM.\n");
            let _ = writeln!(md, "| server | clients | restarted after | peak accepts / 100 ms | all back after | failed attempts | note |\n|---|---:|---:|---:|---:|---:|---|");
            for s in &self.storm {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} s | {} | {} | {} | {} |",
                    s.peer.name(),
                    s.clients,
                    s.restart_s,
                    s.peak(),
                    s.all_back_s().map_or("—".into(), |t| format!("{t:.1} s")),
                    s.failed_attempts,
                    s.failure.as_deref().unwrap_or("")
                );
            }
            let series: Vec<Series> = self
                .storm
                .iter()
                .map(|s| Series {
                    name: s.peer.name().to_owned(),
                    points: s
                        .buckets()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (i as f64 * 0.1, f64::from(*c)))
                        .collect(),
                })
                .collect();
            let chart = Chart {
                title: "Reconnect storm: accepts per 100 ms after SIGTERM",
                x_label: "seconds since SIGTERM",
                y_label: "accepts per 100 ms",
                log_x: false,
                log_y: false,
            };
            std::fs::write(plots.join("storm.svg"), chart.svg(&series))?;
            let _ = writeln!(md, "\n![accepts per 100 ms](bench/storm.svg)\n");
        }
        if let Ok(client) = std::fs::read_to_string(root.join("target/bench/client.md")) {
            let _ = writeln!(md, "## Client\n\nFrom `make bench-client` (`bench/client/run.mjs`), run by `make bench` just before the rest.\n");
            md.push_str(client.trim_start_matches(
                "### Client: messages/s to a JS listener in headless Chromium\n\n",
            ));
            md.push('\n');
        }
        let notes = root.join("bench/NOTES.md");
        if let Ok(n) = std::fs::read_to_string(&notes) {
            md.push_str(&n);
        }
        std::fs::write(path, md)?;
        Ok(())
    }
}

/// The idle-memory table.
pub fn idle_table(idle: &[Idle]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "| server | rooms | connections | RSS before | RSS after | per connection | note |\n|---|---|---:|---:|---:|---:|---|");
    for i in idle {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} MB | {:.1} MB | **{:.1} KB** | {} |",
            i.peer.name(),
            if i.with_room { "one room each" } else { "none" },
            i.connections,
            i.rss_before as f64 / 1e6,
            i.rss_after as f64 / 1e6,
            i.bytes_per_conn() / 1024.0,
            i.failure.as_deref().unwrap_or("")
        );
    }
    md
}

/// The large-rooms table.
pub fn rooms_table(rooms: &[LargeRoom]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "| server | members | consistent after | frames received | bytes received | server CPU | note |\n|---|---:|---:|---:|---:|---:|---|");
    for r in rooms {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} MB | {:.1} s | {} |",
            r.label(),
            r.members,
            r.consistent_s.map_or("—".into(), |s| format!("{s:.1} s")),
            r.frames,
            r.bytes as f64 / 1e6,
            r.server_cpu_s,
            [r.redis_note(), r.failure.clone().unwrap_or_default()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    md
}

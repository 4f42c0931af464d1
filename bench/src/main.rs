//! `rtlink-bench`: rtlink-server side by side with Socket.IO 4.8 and a raw WebSocket broadcast
//! server (docs/BENCHMARKS.md).
//!
//! This process is the harness and the load generator; every server runs in its own process
//! on 127.0.0.1, started here and stopped after its scenario. Nothing here asserts a time: the
//! machine is shared, so the figures that matter are ratios measured side by side in one run.
//!
//! - `rtlink-bench quick`: reduced fan-out (1,000 subscribers) and idle memory; the last line is
//!   `fanout_vs_socketio=X.XX fanout_vs_raw=Y.YY idle_kb_per_conn=Z.Z`.
//! - `rtlink-bench full --report docs/BENCHMARKS.md`: every scenario; rewrites the report
//!   and its plots.
//! - `rtlink-bench raw-server --listen ADDR`: the raw peer.

mod clients;
mod compare;
mod fanout;
mod idle;
mod plot;
mod procs;
mod raw_server;
mod readers;
mod report;
mod rooms;
mod stats;
mod storm;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::clients::Transport;
use crate::compare::{cpu_ratio, p99_pairs, p99_summary};
use crate::fanout::Plan;
use crate::procs::{Paths, Peer, RtlinkOptions};

#[derive(Parser)]
#[command(
    name = "rtlink-bench",
    about = "rtlink-server side by side with Socket.IO and raw WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reduced fan-out (~1,000 subscribers) and idle memory, in under 2 minutes.
    Quick {
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Every scenario; writes the report and its plots.
    Full {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Markdown report to (re)write.
        #[arg(long, default_value = "docs/BENCHMARKS.md")]
        report: PathBuf,
        /// Only these scenarios (fanout, idle, rooms, storm); all by default.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Publishes `count` messages at `rate` per second to a room (the publisher of
    /// `make bench-client`; payloads are JSON strings, which the rtlink client parses).
    Publish {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "bench")]
        room: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        rate: f64,
    },
    /// Runs one fan-out plan against a server already listening (e.g. one started under
    /// `valgrind --tool=callgrind`): `--pid` is the process whose CPU time is reported.
    Drive {
        #[arg(long, default_value = "rtlink")]
        peer: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Offered deliveries per second, one step each (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "50000")]
        loads: Vec<f64>,
        #[arg(long, default_value = "2s", value_parser = parse_secs)]
        step: Duration,
        /// Shell command run before each step (e.g. `callgrind_control -z PID`).
        #[arg(long, requires = "after_step")]
        before_step: Option<String>,
        /// Shell command run after each step's deliveries (e.g. `callgrind_control -d PID`).
        #[arg(long)]
        after_step: Option<String>,
        /// How rtlink's subscribers connect: ws, sse or poll (other peers: ws only).
        #[arg(long, default_value = "ws", value_parser = parse_transport)]
        transport: Transport,
    },
    /// Opens `connections` WebSockets to a server already listening, each in a room of its own
    /// (`--room-each`) or in none, holds them for `--hold` and exits: for a heap profiler
    /// (e.g. `valgrind --tool=dhat`) to see where an idle connection's bytes go.
    Hold {
        #[arg(long, default_value = "rtlink")]
        peer: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long)]
        room_each: bool,
        #[arg(long, default_value = "5s", value_parser = parse_secs)]
        hold: Duration,
    },
    /// Prints the flags every benchmark starts rtlink-server with (one per line): the limits a
    /// benchmark would otherwise measure instead of the server, lifted. `bench/callgrind` and
    /// `bench/client/run.mjs` start the server with these too, so the list lives in one place.
    RtlinkFlags {
        /// Keep the total accept-rate budget (the reconnect storm measures it).
        #[arg(long)]
        keep_accept_budget: bool,
    },
    /// The large-rooms scenario alone (N members join one room with presence), each mode
    /// against its own server; prints the table.
    Rooms {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, default_value_t = 5000)]
        members: usize,
        /// Modes to run (one-by-one, coalesced, opt-out); all by default.
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Also run each mode over a real Redis (`redis-server` started on a free loopback
        /// port and stopped after), side by side with the embedded broker.
        #[arg(long)]
        redis: bool,
        /// Only over Redis (implies `--redis`).
        #[arg(long)]
        redis_only: bool,
    },
    /// Idle memory of rtlink alone, without and with one room per connection (each against its
    /// own server); prints the table.
    Idle {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// rtlink's WebSocket fan-out under several write windows (`--write-window`), beside
    /// Socket.IO and raw in the same run: the server CPU each window saves and the latency it
    /// costs, at each offered load; prints the tables.
    Windows {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Offered deliveries per second, one step each (comma separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,25000,50000,100000,200000"
        )]
        loads: Vec<f64>,
        /// Write windows in milliseconds (comma separated); 0 is write-at-once.
        #[arg(long, value_delimiter = ',', default_value = "0,5,10,20,50")]
        windows_ms: Vec<u64>,
        /// rtlink's `--write-window-above-cpu` (percent; 0: windows always hold); the server's
        /// default if not given.
        #[arg(long)]
        above_cpu: Option<String>,
    },
    /// The raw WebSocket broadcast peer.
    RawServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // 10,000 connections need as many descriptors here and in the servers (inherited).
    let _ = rlimit::increase_nofile_limit(65_536);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::RawServer { listen } => rt.block_on(raw_server::run(listen)),
        Cmd::RtlinkFlags { keep_accept_budget } => {
            for flag in procs::rtlink_bench_flags(keep_accept_budget) {
                println!("{flag}");
            }
            Ok(())
        }
        Cmd::Publish {
            peer,
            port,
            room,
            count,
            rate,
        } => rt.block_on(publish(&peer, port, &room, count, rate)),
        Cmd::Quick { root } => rt.block_on(quick(root)),
        Cmd::Windows {
            root,
            subscribers,
            loads,
            windows_ms,
            above_cpu,
        } => rt.block_on(windows(root, subscribers, loads, windows_ms, above_cpu)),
        Cmd::Hold {
            peer,
            port,
            connections,
            room_each,
            hold,
        } => rt.block_on(async move {
            let peer = parse_peer(&peer)?;
            let held =
                idle::hold(&clients::Target::new(peer, port), 0, connections, room_each).await?;
            eprintln!("holding {connections} connections for {hold:?}");
            tokio::time::sleep(hold).await;
            drop(held);
            Ok(())
        }),
        Cmd::Drive {
            peer,
            port,
            pid,
            subscribers,
            loads,
            step,
            before_step,
            after_step,
            transport,
        } => rt.block_on(async move {
            let peer = parse_peer(&peer)?;
            let hooks = before_step.zip(after_step);
            let plan = Plan {
                subscribers,
                loads,
                step_time: step,
                readers: 1,
                hooks,
            };
            if peer != Peer::Rtlink && transport != Transport::WebSocket {
                anyhow::bail!("only rtlink speaks SSE and long polling");
            }
            let out = fanout::drive(peer, port, pid, transport, &plan).await;
            println!("{}", report::fanout_table(&out.steps));
            // For scripts (bench/callgrind divides instruction counts by it).
            for s in &out.steps {
                println!(
                    "step offered_per_sec={:.0} deliveries={}",
                    s.offered_per_sec, s.delivered
                );
            }
            match out.failure {
                Some(f) => anyhow::bail!("{f}"),
                None => Ok(()),
            }
        }),
        Cmd::Full { root, report, only } => rt.block_on(full(root, report, only)),
        Cmd::Rooms {
            root,
            members,
            modes,
            redis,
            redis_only,
        } => rt.block_on(async move {
            let paths = Paths::new(&std::fs::canonicalize(&root)?)?;
            let mut brokers = Vec::new();
            if !redis_only {
                brokers.push(rooms::BrokerKind::Embedded);
            }
            if redis || redis_only {
                brokers.push(rooms::BrokerKind::Redis);
            }
            let mut r = Vec::new();
            for mode in [
                rooms::Mode::OneByOne,
                rooms::Mode::Coalesced,
                rooms::Mode::OptOut,
            ] {
                if modes.is_empty() || modes.iter().any(|m| m == mode.flag_name()) {
                    for &broker in &brokers {
                        r.push(rooms::run_mode(&paths, mode, broker, members).await);
                    }
                }
            }
            println!("{}", report::machine_line());
            println!("{}", report::rooms_table(&r));
            Ok(())
        }),
        Cmd::Idle { root, connections } => rt.block_on(async move {
            let paths = Paths::new(&std::fs::canonicalize(&root)?)?;
            let mut r = Vec::new();
            for with_room in [false, true] {
                r.push(
                    idle::run(
                        &paths,
                        Peer::Rtlink,
                        connections,
                        with_room,
                        &RtlinkOptions::default(),
                    )
                    .await,
                );
            }
            println!("{}", report::machine_line());
            println!("{}", report::idle_table(&r));
            Ok(())
        }),
    }
}

fn parse_peer(name: &str) -> anyhow::Result<Peer> {
    Ok(match name {
        "rtlink" => Peer::Rtlink,
        "socketio" => Peer::SocketIo,
        "raw" => Peer::Raw,
        other => anyhow::bail!("unknown peer {other} (rtlink, socketio, raw)"),
    })
}

fn parse_transport(name: &str) -> Result<Transport, String> {
    Ok(match name {
        "ws" => Transport::WebSocket,
        "sse" => Transport::Sse,
        "poll" => Transport::Poll,
        other => return Err(format!("unknown transport {other} (ws, sse, poll)")),
    })
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v = s.strip_suffix('s').unwrap_or(s);
    v.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

async fn publish(peer: &str, port: u16, room: &str, count: u64, rate: f64) -> anyhow::Result<()> {
    let peer = parse_peer(peer)?;
    let publisher =
        clients::Publisher::connect_json(&clients::Target::new(peer, port), room).await?;
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    for seq in 1..=count {
        let due = t0 + period.mul_f64((seq - 1) as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        publisher.send(clients::payload(seq, 100));
    }
    publisher.close().await;
    Ok(())
}

/// The fan-out room has no presence (`--presence-off`): Socket.IO and the raw server have none,
/// and N subscribers joining one room with presence is the large-rooms scenario's subject.
fn fanout_options() -> RtlinkOptions {
    RtlinkOptions {
        extra: vec!["--presence-off".into(), fanout::ROOM.into()],
        ..RtlinkOptions::default()
    }
}

async fn quick(root: PathBuf) -> anyhow::Result<()> {
    let paths = Paths::new(&std::fs::canonicalize(&root)?)?;
    let started = Instant::now();
    println!("{}", report::machine_line());
    let plan = Plan {
        subscribers: 1000,
        loads: vec![10_000.0, 25_000.0, 50_000.0, 100_000.0, 200_000.0],
        step_time: Duration::from_secs(2),
        readers: 1,
        hooks: None,
    };
    let opts = fanout_options();
    let mut results = Vec::new();
    for peer in [Peer::Rtlink, Peer::SocketIo, Peer::Raw] {
        let out = fanout::run(&paths, peer, Transport::WebSocket, &plan, &opts).await;
        if let Some(f) = &out.failure {
            println!("{}: FAILED: {f}", peer.name());
        }
        results.push((peer, out));
    }
    println!();
    println!(
        "{}",
        report::fanout_table(
            &results
                .iter()
                .flat_map(|(_, o)| o.steps.clone())
                .collect::<Vec<_>>()
        )
    );
    let idle = idle::run(&paths, Peer::Rtlink, 2000, false, &RtlinkOptions::default()).await;
    if let Some(f) = &idle.failure {
        println!("idle: FAILED: {f}");
    }
    let steps = |p: Peer| {
        results
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, o)| o.steps.clone())
            .unwrap_or_default()
    };
    let rt = steps(Peer::Rtlink);
    let sio = cpu_ratio(&rt, &steps(Peer::SocketIo));
    let raw = cpu_ratio(&rt, &steps(Peer::Raw));
    println!();
    if let Some((load, r)) = sio {
        println!("server CPU per delivery, Socket.IO / rtlink: {r:.2} (at {load:.0} deliveries/s offered)");
    }
    if let Some((load, r)) = raw {
        println!(
            "server CPU per delivery, raw / rtlink: {r:.2} (at {load:.0} deliveries/s offered)"
        );
    }
    println!(
        "p99 latency, rtlink / Socket.IO at equal offered load: {}",
        p99_summary(&p99_pairs(&rt, &steps(Peer::SocketIo)))
    );
    println!(
        "idle rtlink WebSocket: {:.1} KB per connection ({} connections)",
        idle.bytes_per_conn() / 1024.0,
        idle.connections
    );
    println!("ran in {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "fanout_vs_socketio={:.2} fanout_vs_raw={:.2} idle_kb_per_conn={:.1}",
        sio.map_or(0.0, |r| r.1),
        raw.map_or(0.0, |r| r.1),
        idle.bytes_per_conn() / 1024.0
    );
    Ok(())
}

/// The `windows` sweep: Socket.IO and raw once, then rtlink once per write window, all with the
/// same plan; one table of every step, then per window and load what it cost against Socket.IO.
async fn windows(
    root: PathBuf,
    subscribers: usize,
    loads: Vec<f64>,
    windows_ms: Vec<u64>,
    above_cpu: Option<String>,
) -> anyhow::Result<()> {
    let paths = Paths::new(&std::fs::canonicalize(&root)?)?;
    println!("{}", report::machine_line());
    let plan = Plan {
        subscribers,
        loads,
        step_time: Duration::from_secs(2),
        readers: 1,
        hooks: None,
    };
    let mut runs: Vec<(Peer, RtlinkOptions)> = vec![
        (Peer::SocketIo, fanout_options()),
        (Peer::Raw, fanout_options()),
    ];
    for ms in windows_ms {
        let mut opts = fanout_options();
        opts.extra
            .extend(["--write-window".into(), format!("{ms}ms")]);
        opts.variant = format!("window {ms} ms");
        if let Some(p) = &above_cpu {
            opts.extra
                .extend(["--write-window-above-cpu".into(), p.clone()]);
            opts.variant = format!("window {ms} ms above {p} % CPU");
        }
        runs.push((Peer::Rtlink, opts));
    }
    let mut steps: Vec<Vec<fanout::Step>> = Vec::new();
    for (peer, opts) in &runs {
        let name = if opts.variant.is_empty() {
            peer.name().to_owned()
        } else {
            opts.variant.clone()
        };
        eprintln!("windows: {name} N={subscribers}");
        let out = fanout::run(&paths, *peer, Transport::WebSocket, &plan, opts).await;
        if let Some(f) = &out.failure {
            println!("{name}: FAILED: {f}");
        }
        steps.push(out.steps);
    }
    println!();
    println!("{}", report::fanout_table(&steps.concat()));
    let (sio, raw) = (&steps[0], &steps[1]);
    println!(
        "| write window | Socket.IO ÷ rtlink (CPU) | raw ÷ rtlink (CPU) | p99 rtlink ÷ Socket.IO |"
    );
    println!("|---|---|---|---|");
    for rt in &steps[2..] {
        let Some(first) = rt.first() else { continue };
        let ratio = |peer: &[fanout::Step]| {
            cpu_ratio(rt, peer).map_or("no load both completed".to_owned(), |(load, r)| {
                format!("{r:.2} at {load:.0}/s")
            })
        };
        println!(
            "| {} | {} | {} | {} |",
            first.variant,
            ratio(sio),
            ratio(raw),
            p99_summary(&p99_pairs(rt, sio))
        );
    }
    Ok(())
}

async fn full(root: PathBuf, report_path: PathBuf, only: Vec<String>) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&root)?;
    let paths = Paths::new(&root)?;
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let mut r = report::Report::new();
    let started = Instant::now();
    let opts = RtlinkOptions::default();
    if want("fanout") {
        let opts = fanout_options();
        for (n, loads) in [
            (
                100usize,
                vec![10_000.0, 25_000.0, 50_000.0, 100_000.0, 200_000.0],
            ),
            (
                1000,
                vec![10_000.0, 25_000.0, 50_000.0, 100_000.0, 200_000.0],
            ),
            (5000, vec![25_000.0, 50_000.0, 100_000.0, 200_000.0]),
        ] {
            let plan = Plan {
                subscribers: n,
                loads,
                step_time: Duration::from_secs(2),
                readers: 1,
                hooks: None,
            };
            let mut runs: Vec<(Peer, Transport)> = vec![
                (Peer::Rtlink, Transport::WebSocket),
                (Peer::SocketIo, Transport::WebSocket),
                (Peer::Raw, Transport::WebSocket),
            ];
            if n <= 1000 {
                runs.push((Peer::Rtlink, Transport::Sse));
                runs.push((Peer::Rtlink, Transport::Poll));
            }
            for (peer, transport) in runs {
                eprintln!("fan-out: {} {} N={n}", peer.name(), transport.name());
                let out = fanout::run(&paths, peer, transport, &plan, &opts).await;
                r.fanout.push((n, peer, transport, out));
                if (peer, transport) == (Peer::Rtlink, Transport::WebSocket) {
                    // The same server with write windows that always hold and without them:
                    // their latency and CPU beside the default's, in the same run (the ratios
                    // use the default).
                    for (variant, flags) in [
                        (report::WINDOW_ALWAYS, ["--write-window-above-cpu", "0"]),
                        (report::WINDOW_OFF, ["--write-window", "0ms"]),
                    ] {
                        let mut o = opts.clone();
                        o.extra.extend(flags.map(String::from));
                        o.variant = variant.into();
                        eprintln!("fan-out: rtlink WebSocket N={n}, {variant}");
                        let out = fanout::run(&paths, peer, transport, &plan, &o).await;
                        r.fanout.push((n, peer, transport, out));
                    }
                }
            }
        }
    }
    if want("idle") {
        for with_room in [false, true] {
            for peer in [Peer::Rtlink, Peer::SocketIo, Peer::Raw] {
                if peer == Peer::Raw && with_room {
                    continue;
                }
                eprintln!("idle: {} room={with_room}", peer.name());
                r.idle
                    .push(idle::run(&paths, peer, 10_000, with_room, &opts).await);
            }
        }
    }
    if want("rooms") {
        r.rooms = rooms::run_all(&paths, 5000).await;
    }
    if want("storm") {
        r.storm = storm::run_all(&paths, 5000).await;
    }
    r.elapsed = started.elapsed();
    r.write(&root, &report_path)?;
    eprintln!(
        "wrote {} in {:.0} s",
        report_path.display(),
        r.elapsed.as_secs_f64()
    );
    Ok(())
}

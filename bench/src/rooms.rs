//! Large rooms: N members join one room with presence, one after another (32 at a time). Each
//! member tracks the set of sessions it knows to be present (snapshot, joins, coalesced diffs,
//! leaves). Measured: time from the first join until every member's list holds all N, frames
//! and bytes the members received, server CPU.
//!
//! Three servers side by side: presence diffs sent one by one (`--presence-batch 0ms`, the old
//! behaviour), coalesced per interval (the default), and a room that opts out of presence
//! (`--presence-off`), where "consistent" means every member is subscribed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{rtlink_ticket, rtlink_ws_with_ticket, Target};
use crate::procs::{Paths, Peer, RtlinkOptions, Server};

const ROOM: &str = "big";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    OneByOne,
    Coalesced,
    OptOut,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::OneByOne => "presence diffs one by one (before)",
            Self::Coalesced => "presence diffs coalesced (after)",
            Self::OptOut => "room opted out of presence",
        }
    }

    fn flags(self) -> Vec<String> {
        match self {
            Self::OneByOne => vec!["--presence-batch".into(), "0ms".into()],
            Self::Coalesced => vec![],
            Self::OptOut => vec!["--presence-off".into(), ROOM.into()],
        }
    }
}

#[derive(Clone, Debug)]
pub struct LargeRoom {
    pub mode: Mode,
    pub members: usize,
    /// From the first join until every member's list was complete (or all subscribed).
    pub consistent_s: Option<f64>,
    pub frames: u64,
    pub bytes: u64,
    pub server_cpu_s: f64,
    pub failure: Option<String>,
}

pub async fn run_all(paths: &Paths, members: usize) -> Vec<LargeRoom> {
    let mut out = Vec::new();
    for mode in [Mode::OneByOne, Mode::Coalesced, Mode::OptOut] {
        eprintln!("large room: {} with {members} members", mode.name());
        let r = run(paths, mode, members).await;
        eprintln!(
            "  consistent after {:?} s, {} frames, {:.1} MB, server CPU {:.1} s{}",
            r.consistent_s,
            r.frames,
            r.bytes as f64 / 1e6,
            r.server_cpu_s,
            r.failure.as_deref().map(|f| format!(" FAILED: {f}")).unwrap_or_default()
        );
        out.push(r);
    }
    out
}

/// Session id → member index, filled in as members get their `welcome`.
type Directory = Arc<RwLock<HashMap<String, usize>>>;

struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Members whose list is complete.
    complete: AtomicUsize,
}

async fn run(paths: &Paths, mode: Mode, n: usize) -> LargeRoom {
    let mut out = LargeRoom { mode, members: n, consistent_s: None, frames: 0, bytes: 0, server_cpu_s: 0.0, failure: None };
    let opts = RtlinkOptions { extra: mode.flags(), ..RtlinkOptions::default() };
    let server = match Server::start(paths, Peer::Rtlink, &opts) {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(format!("{e:#}"));
            return out;
        }
    };
    let target = Target::new(Peer::Rtlink, server.port);
    // Tickets first (not part of the join), so the clock covers joining only.
    let mut tickets = Vec::with_capacity(n);
    let gate = Arc::new(Semaphore::new(32));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (target, gate) = (target.clone(), gate.clone());
        set.spawn(async move {
            let _p = gate.acquire_owned().await;
            (i, rtlink_ticket(&target, &format!("m{i}")).await)
        });
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, Ok(t))) => tickets.push((i, t)),
            Ok((_, Err(e))) => {
                out.failure.get_or_insert(format!("ticket: {e:#}"));
            }
            Err(e) => {
                out.failure.get_or_insert(format!("{e}"));
            }
        }
    }
    if out.failure.is_some() {
        return out;
    }
    let dir: Directory = Arc::default();
    let counters = Arc::new(Counters { frames: AtomicU64::new(0), bytes: AtomicU64::new(0), complete: AtomicUsize::new(0) });
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu0 = server.cpu();
    let t0 = Instant::now();
    let mut members = JoinSet::new();
    for (i, ticket) in tickets {
        let (target, gate, dir, counters, stop) = (target.clone(), gate.clone(), dir.clone(), counters.clone(), stop_rx.clone());
        members.spawn(async move { member(i, n, mode, target, ticket, gate, dir, counters, stop).await });
    }
    let deadline = t0 + Duration::from_secs(150);
    while counters.complete.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let complete = counters.complete.load(Ordering::Relaxed);
    if complete >= n {
        out.consistent_s = Some(t0.elapsed().as_secs_f64());
    } else {
        out.failure = Some(format!("{complete} of {n} members consistent after 150 s"));
    }
    crate::fanout::quiesce(&server).await;
    out.server_cpu_s = server.cpu().saturating_sub(cpu0).as_secs_f64();
    out.frames = counters.frames.load(Ordering::Relaxed);
    out.bytes = counters.bytes.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    while tokio::time::timeout(Duration::from_secs(5), members.join_next()).await.ok().flatten().is_some() {}
    out
}

/// Session ids named in a presence frame, after `"session":"`.
fn sessions(text: &str) -> impl Iterator<Item = &str> {
    text.split("\"session\":\"").skip(1).filter_map(|s| s.split('"').next())
}

#[allow(clippy::too_many_arguments)]
async fn member(
    i: usize,
    n: usize,
    mode: Mode,
    target: Target,
    ticket: String,
    gate: Arc<Semaphore>,
    dir: Directory,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = {
        let _p = gate.acquire().await;
        match rtlink_ws_with_ticket(&target, &ticket, None, None).await {
            Ok((ws, welcome)) => {
                if let Some(id) = sessions(&welcome).next() {
                    dir.write().insert(id.to_owned(), i);
                }
                ws
            }
            Err(_) => return,
        }
    };
    let _ = ws.send(Message::text(format!("{{\"t\":\"subscribe\",\"room\":\"{ROOM}\"}}"))).await;
    let mut known = vec![false; n];
    let mut count = 0usize;
    let mut done = false;
    let mut pending: Vec<String> = Vec::new();
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
        let s = t.as_str();
        if s.len() < 32 && s.contains("\"t\":\"ping\"") {
            let _ = ws.send(Message::text("{\"t\":\"pong\"}")).await;
            continue;
        }
        if mode == Mode::OptOut {
            if !done && s.contains("\"t\":\"subscribed\"") {
                done = true;
                counters.complete.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let leave = s.starts_with("{\"t\":\"presence_leave\"");
        if !(s.starts_with("{\"t\":\"presence_") || leave) {
            continue;
        }
        if s.starts_with("{\"t\":\"presence_snapshot\"") {
            known.iter_mut().for_each(|k| *k = false);
            count = 0;
        }
        let (joins, leaves) = match s.find("\"leaves\":") {
            Some(pos) if s.starts_with("{\"t\":\"presence_diff\"") => (&s[..pos], &s[pos..]),
            _ if leave => ("", s),
            _ => (s, ""),
        };
        // Ids not in the directory yet (their welcome is still on its way) are retried later.
        let d = dir.read();
        for id in sessions(joins).map(str::to_owned).chain(pending.drain(..)).collect::<Vec<_>>() {
            match d.get(&id) {
                Some(&j) if !known[j] => {
                    known[j] = true;
                    count += 1;
                }
                Some(_) => {}
                None => pending.push(id),
            }
        }
        for id in sessions(leaves) {
            if let Some(&j) = d.get(id) {
                if known[j] {
                    known[j] = false;
                    count -= 1;
                }
            }
        }
        drop(d);
        if !done && count == n {
            done = true;
            counters.complete.fetch_add(1, Ordering::Relaxed);
        }
    }
}

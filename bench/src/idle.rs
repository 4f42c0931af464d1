//! Idle memory: N connections held open and doing nothing; server RSS per connection.
//!
//! A warm-up of 100 connections is opened first and kept, so one-time costs (thread arenas,
//! lazily built tables) land in the baseline; then N more connections open (each in a room of
//! its own, or in none), the server settles, and `(RSS after - RSS before) / N` is the cost of
//! one idle connection.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clients::{ws_subscriber, Target};
use crate::fanout::quiesce;
use crate::procs::{Paths, Peer, RtlinkOptions, Server};
use crate::readers::Readers;

const WARMUP: usize = 100;

#[derive(Clone, Debug)]
pub struct Idle {
    pub peer: Peer,
    pub with_room: bool,
    pub connections: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub setup: Duration,
    pub failure: Option<String>,
}

impl Idle {
    pub fn bytes_per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.connections.max(1) as f64
    }
}

pub async fn run(
    paths: &Paths,
    peer: Peer,
    n: usize,
    with_room: bool,
    rtlink: &RtlinkOptions,
) -> Idle {
    let mut out = Idle {
        peer,
        with_room,
        connections: n,
        rss_before: 0,
        rss_after: 0,
        setup: Duration::ZERO,
        failure: None,
    };
    let server = match Server::start(paths, peer, rtlink) {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(format!("{e:#}"));
            return out;
        }
    };
    let target = Target::new(peer, server.port);
    let warm = match hold(&target, 0, WARMUP, with_room).await {
        Ok(r) => r,
        Err(e) => {
            out.failure = Some(format!("warm-up: {e:#}"));
            return out;
        }
    };
    quiesce(&server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.rss_before = server.rss();
    let started = Instant::now();
    let held = hold(&target, WARMUP, n, with_room).await;
    out.setup = started.elapsed();
    quiesce(&server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    out.rss_after = server.rss();
    match held {
        Ok(readers) => {
            let closed = readers.take().await.closed + warm.take().await.closed;
            if closed > 0 {
                out.failure
                    .get_or_insert(format!("{closed} connections ended while held"));
            }
        }
        Err(e) => {
            out.failure.get_or_insert(format!("connect: {e:#}"));
        }
    }
    drop(warm);
    drop(server);
    eprintln!(
        "  idle {:<9} room={:<5} {} conns: {:.1} KB/conn",
        peer.name(),
        with_room,
        n,
        out.bytes_per_conn() / 1024.0
    );
    out
}

/// Opens `count` WebSocket connections (numbered from `from`), each in a room of its own if
/// `room_each`, and hands them to a reader thread that holds them (answering keep-alives)
/// until the returned [`Readers`] is dropped.
pub async fn hold(
    target: &Target,
    from: usize,
    count: usize,
    room_each: bool,
) -> anyhow::Result<Readers> {
    let mut readers = Readers::new(1, Arc::new(AtomicU64::new(0)))?;
    let gate = Arc::new(Semaphore::new(32));
    let mut set = JoinSet::new();
    for i in from..from + count {
        let (target, gate) = (target.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let room = format!("idle-{i}");
            let room = room_each.then_some(room.as_str());
            ws_subscriber(&target, &format!("i{i}"), room).await
        });
    }
    let mut failure = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(sub)) => readers.add(sub),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(e.into());
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(readers),
    }
}

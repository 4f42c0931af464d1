//! Micro benchmark: handing one room message to N subscribers' outboxes, in memory.
//!
//! - **shared** is what the server does: `StoredMessage::new` encodes the `message` frame once,
//!   `RoomEvent::new` wraps it, and the hub pushes a clone of the same `Utf8Bytes` (a reference
//!   count increment) into every subscriber's outbox.
//! - **per-subscriber** is the naive server: the same frame serialised with the server's own
//!   encoder (`encode_frame`, serde_json) once per subscriber.
//! - **shared + SSE framing** is shared plus what the SSE transport does per subscriber when it
//!   writes: a fresh `id: <seq>\ndata: ` prefix, the shared frame bytes (no copy) and `\n\n`,
//!   as three body chunks (`server/src/transport/sse.rs`).
//!
//! Each outbox is a `parking_lot::Mutex<VecDeque<Frame>>` (the hub locks a session per
//! delivery), and every delivered frame is then taken out again, as a transport writer would.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use parking_lot::Mutex;
use rtlink_protocol::ServerFrame;
use rtlink_server::broker::{encode_frame, Frame, RoomEvent, RoomEventKind, StoredMessage};
use stats_alloc::Region;

use crate::stats::median;
use crate::GLOBAL;

const SUBSCRIBERS: [usize; 3] = [10, 100, 1000];
/// Payload sizes: a short chat line and a larger structured update (the SDK puts JSON text in
/// payloads, so they are full of quotes that the encoder must escape).
const PAYLOADS: [usize; 2] = [100, 2000];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Shared,
    PerSubscriber,
    SharedSse,
}

const STRATEGIES: [Strategy; 3] = [
    Strategy::Shared,
    Strategy::PerSubscriber,
    Strategy::SharedSse,
];

/// The fields of one message, as the broker receives them from a publish.
struct Publish {
    room: String,
    sender: String,
    name: String,
    payload: String,
}

impl Publish {
    fn with_payload(bytes: usize) -> Self {
        let mut payload = String::from(r#"{"kind":"chat","text":""#);
        while payload.len() + 20 < bytes {
            payload.push_str("lorem \"ipsum\" dolor ");
        }
        payload.push_str(r#"","ts":1}"#);
        Self {
            room: "bench:room".into(),
            sender: "user-42".into(),
            name: "Ana".into(),
            payload,
        }
    }
}

type Outbox = Mutex<VecDeque<Frame>>;

/// Delivers message `offset` to every outbox, then drains them as the writers would.
fn deliver_and_drain(strategy: Strategy, msg: &Publish, offset: u64, outboxes: &[Outbox]) {
    match strategy {
        Strategy::Shared | Strategy::SharedSse => {
            let stored = Arc::new(StoredMessage::new(
                msg.room.clone(),
                offset,
                msg.sender.clone(),
                Some(msg.name.clone()),
                msg.payload.clone(),
                0,
                Arc::from("e"),
            ));
            let event = RoomEvent::new(&msg.room, RoomEventKind::Message(stored));
            for outbox in outboxes {
                outbox.lock().push_back(event.frame.clone());
            }
        }
        Strategy::PerSubscriber => {
            let frame = ServerFrame::Message {
                room: msg.room.clone(),
                offset,
                sender: msg.sender.clone(),
                name: Some(msg.name.clone()),
                payload: msg.payload.clone(),
            };
            for outbox in outboxes {
                outbox.lock().push_back(encode_frame(&frame));
            }
        }
    }
    for outbox in outboxes {
        let mut queue = outbox.lock();
        while let Some(frame) = queue.pop_front() {
            if strategy == Strategy::SharedSse {
                black_box(Bytes::from(format!("id: {offset}\ndata: ")));
                black_box(Bytes::from(frame));
                black_box(Bytes::from_static(b"\n\n"));
            } else {
                black_box(frame.len());
            }
        }
    }
}

fn outboxes(n: usize) -> Vec<Outbox> {
    (0..n)
        .map(|_| Mutex::new(VecDeque::with_capacity(8)))
        .collect()
}

/// Nanoseconds per message over `iters` messages.
fn time_batch(strategy: Strategy, msg: &Publish, outboxes: &[Outbox], iters: u64) -> f64 {
    let start = Instant::now();
    for offset in 1..=iters {
        deliver_and_drain(strategy, msg, offset, outboxes);
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Allocations (including reallocations) and bytes allocated per message.
fn allocations(strategy: Strategy, msg: &Publish, outboxes: &[Outbox]) -> (f64, f64) {
    const MESSAGES: u64 = 20;
    deliver_and_drain(strategy, msg, 1, outboxes); // warm the queues' capacity
    let region = Region::new(GLOBAL);
    for offset in 1..=MESSAGES {
        deliver_and_drain(strategy, msg, offset, outboxes);
    }
    let change = region.change();
    (
        (change.allocations + change.reallocations) as f64 / MESSAGES as f64,
        (change.bytes_allocated as f64 + change.bytes_reallocated.max(0) as f64) / MESSAGES as f64,
    )
}

struct Row {
    ns: [f64; 3],
    allocs: [f64; 3],
    bytes: [f64; 3],
}

fn measure(n: usize, payload: usize, quick: bool) -> Row {
    let msg = Publish::with_payload(payload);
    let outboxes = outboxes(n);
    // Each timed batch lasts about `target_ns`; strategies alternate within a round so drift
    // on a shared machine hits them alike; the median over rounds is reported.
    let (rounds, target_ns) = if quick { (3, 2e6) } else { (9, 12e6) };
    let mut iters = [0u64; 3];
    for (i, s) in STRATEGIES.iter().enumerate() {
        let probe = time_batch(*s, &msg, &outboxes, 3);
        iters[i] = ((target_ns / probe.max(1.0)) as u64).clamp(3, 1_000_000);
    }
    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        for (i, s) in STRATEGIES.iter().enumerate() {
            samples[i].push(time_batch(*s, &msg, &outboxes, iters[i]));
        }
    }
    let mut row = Row {
        ns: [0.0; 3],
        allocs: [0.0; 3],
        bytes: [0.0; 3],
    };
    for (i, s) in STRATEGIES.iter().enumerate() {
        row.ns[i] = median(&mut samples[i]);
        (row.allocs[i], row.bytes[i]) = allocations(*s, &msg, &outboxes);
    }
    row
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

pub fn run(quick: bool) {
    let started = Instant::now();
    println!("## Micro: one message to N in-memory outboxes\n");
    println!(
        "| payload | N | shared (server) | per-subscriber encode | per-sub / shared | \
         allocs/msg shared | allocs/msg per-sub | bytes/msg shared | bytes/msg per-sub | \
         shared + SSE framing |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for payload in PAYLOADS {
        let frame_len = encode_frame(&ServerFrame::Message {
            room: "bench:room".into(),
            offset: 1,
            sender: "user-42".into(),
            name: Some("Ana".into()),
            payload: Publish::with_payload(payload).payload,
        })
        .len();
        for n in SUBSCRIBERS {
            let row = measure(n, payload, quick);
            println!(
                "| {payload} B (frame {frame_len} B) | {n} | {} | {} | **{:.1}×** | {:.1} | {:.1} | {} | {} | {} |",
                fmt_ns(row.ns[0]),
                fmt_ns(row.ns[1]),
                row.ns[1] / row.ns[0],
                row.allocs[0],
                row.allocs[1],
                fmt_bytes(row.bytes[0]),
                fmt_bytes(row.bytes[1]),
                fmt_ns(row.ns[2]),
            );
        }
    }
    println!(
        "\n(time per message = deliver to all N outboxes and drain them; median of rounds; \
         micro part took {:.1} s)\n",
        started.elapsed().as_secs_f64()
    );
}

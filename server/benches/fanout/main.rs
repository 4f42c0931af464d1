//! Fan-out benchmark: what it costs to deliver one room message to N subscribers.
//!
//! The server encodes a room message once (`StoredMessage::new`) and hands the same reference
//! counted bytes to every subscriber. This binary measures that claim against the naive
//! alternative, side by side in one run, and then measures the whole server end to end on
//! loopback. Shared, noisy 2-core machines: compare the ratios of one run, never absolute
//! numbers across runs (and never assert on any of this in a test).
//!
//! ```text
//! cargo bench -p rtlink-server --bench fanout              # full, < 60 s
//! cargo bench -p rtlink-server --bench fanout -- --quick   # quick, < 10 s
//! ```
//!
//! Results go to stdout as Markdown tables (docs/BENCHMARKS.md explains them).
#![allow(clippy::unwrap_used)]

mod end_to_end;
mod micro;
mod stats;

use std::alloc::System;
use std::time::Instant;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts allocations so the micro benchmark can report them (a few atomic adds per
/// allocation, paid by every variant alike).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    // `cargo bench` passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# rtlink fan-out benchmark ({} mode, {cores} cores visible, {} build)\n",
        if quick { "quick" } else { "full" },
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "optimized"
        },
    );

    // The micro benchmark runs first, before any runtime thread exists, so the allocation
    // counts are this thread's alone.
    micro::run(quick);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(end_to_end::run(quick));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));

    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
}

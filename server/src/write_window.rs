//! Write coalescing for a connection's outgoing frames (`--write-window`).
//!
//! With `TCP_NODELAY` every write is a segment, and on a busy server that system call (and, on
//! loopback, the receiver's TCP path it runs) is most of the CPU a delivery costs. A connection
//! that wrote less than the window ago holds new frames until the window has passed since that
//! write, then writes everything queued in one `writev`; a connection that has not written for
//! the window writes at once. So sparse traffic (one frame per window or fewer) is never
//! delayed, and a busy connection writes at most once per window whatever its rate: its
//! frames wait at most one window.
//!
//! Holding costs latency, and it only pays when CPU is what the server is short of. So by
//! default windows hold only while the server is busy (`--write-window-above-cpu`, a share of
//! the cores it may use, sampled every [`SAMPLE_EVERY`]): an idle or lightly loaded server
//! writes every frame at once, a busy one trades a few milliseconds per busy connection for up
//! to a third of its CPU per delivery (docs/BENCHMARKS.md). The same trade as a NIC's adaptive
//! interrupt coalescing.
//!
//! This batches per connection, in time: it saves writes only where a connection gets more than
//! one frame per window. One message fanned out to many connections still costs a write each
//! (docs/BENCHMARKS.md).
//!
//! The clock and the CPU samples are passed in, so the rules are tested without time passing.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How often the server's CPU use is sampled to engage or release coalescing.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Engaged coalescing cuts CPU per delivery up to about 3× (docs/BENCHMARKS.md), so it is
/// released only when the CPU use falls this many times below the engage threshold; closer,
/// the saving itself would release it and it would flap every sample.
const RELEASE_BELOW: f64 = 4.0;

/// The server's write coalescing, shared by every connection: the window, and whether windows
/// hold now.
#[derive(Debug)]
pub struct Coalescing {
    window: Duration,
    /// Engage at this share of the cores (0: always engaged, never sampled).
    above_cpu: f64,
    engaged: AtomicBool,
}

impl Coalescing {
    /// `window` zero never holds. `above_cpu`: the share of the cores (0.25 = a quarter) at
    /// which windows start holding; zero: they always do.
    pub fn new(window: Duration, above_cpu: f64) -> Arc<Self> {
        Arc::new(Self {
            window,
            above_cpu,
            engaged: AtomicBool::new(above_cpu <= 0.0),
        })
    }

    /// Whether the server's CPU use should be sampled for [`Coalescing::observe`].
    pub fn adaptive(&self) -> bool {
        !self.window.is_zero() && self.above_cpu > 0.0
    }

    /// One sample: the server used `share` of its cores over the last [`SAMPLE_EVERY`].
    /// Engages at the threshold, releases below a [`RELEASE_BELOW`]th of it. Returns whether
    /// windows hold now.
    pub fn observe(&self, share: f64) -> bool {
        if !self.adaptive() {
            return self.engaged();
        }
        let engaged = if self.engaged() {
            share >= self.above_cpu / RELEASE_BELOW
        } else {
            share >= self.above_cpu
        };
        self.engaged.store(engaged, Relaxed);
        engaged
    }

    /// Whether windows hold frames now.
    pub fn engaged(&self) -> bool {
        !self.window.is_zero() && self.engaged.load(Relaxed)
    }
}

/// When one connection may write next.
#[derive(Clone, Debug)]
pub struct WriteWindow {
    coalescing: Arc<Coalescing>,
    /// The last write (none yet, or the window is zero).
    last: Option<Instant>,
}

impl WriteWindow {
    pub fn new(coalescing: Arc<Coalescing>) -> Self {
        Self {
            coalescing,
            last: None,
        }
    }

    /// None if a write may go out at `now`; else when what is queued may go out.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        let next = self.last? + self.coalescing.window;
        (now < next && self.coalescing.engaged()).then_some(next)
    }

    /// A write went out at `now`. Recorded while coalescing is released too, so a connection
    /// that was writing every frame holds the next one as soon as it engages.
    pub fn wrote(&mut self, now: Instant) {
        if !self.coalescing.window.is_zero() {
            self.last = Some(now);
        }
    }
}

/// The share of the cores this process may use (1.0 = all of them) that it used between two
/// readings of its CPU time, `wall` apart.
pub fn cpu_share(cpu: Duration, wall: Duration, cores: usize) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu.as_secs_f64() / wall.as_secs_f64() / cores.max(1) as f64
}

/// This process's CPU time so far, user and system, all threads.
#[cfg(unix)]
pub fn process_cpu_time() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

#[cfg(not(unix))]
pub fn process_cpu_time() -> Option<Duration> {
    None
}

/// Samples the server's CPU use every [`SAMPLE_EVERY`] into `coalescing` until it is dropped
/// everywhere else. Without a CPU clock (not Unix) windows always hold.
pub async fn sample_cpu(coalescing: std::sync::Weak<Coalescing>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(std::time::Instant, Duration)> = None;
    loop {
        tick.tick().await;
        let Some(c) = coalescing.upgrade() else {
            return;
        };
        let Some(cpu) = process_cpu_time() else {
            c.engaged.store(true, Relaxed);
            return;
        };
        let now = std::time::Instant::now();
        if let Some((then, before)) = last {
            c.observe(cpu_share(cpu.saturating_sub(before), now - then, cores));
        }
        last = Some((now, cpu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A window that always holds (`--write-window-above-cpu 0`).
    fn always(window: Duration) -> WriteWindow {
        WriteWindow::new(Coalescing::new(window, 0.0))
    }

    #[test]
    fn a_connection_that_has_not_written_writes_at_once() {
        let t0 = Instant::now();
        assert_eq!(always(W).hold_until(t0), None);
    }

    #[test]
    fn a_write_within_the_window_is_held_until_the_window_has_passed() {
        let t0 = Instant::now();
        let mut w = always(W);
        w.wrote(t0);
        assert_eq!(w.hold_until(t0), Some(t0 + W));
        assert_eq!(w.hold_until(t0 + ms(1)), Some(t0 + W));
        // The deadline is the last write plus the window, not "now" plus the window: frames
        // queued late in a window wait less.
        assert_eq!(w.hold_until(t0 + Duration::from_micros(1999)), Some(t0 + W));
        assert_eq!(w.hold_until(t0 + W), None);
    }

    #[test]
    fn a_connection_idle_for_the_window_writes_at_once() {
        let t0 = Instant::now();
        let mut w = always(W);
        w.wrote(t0);
        assert_eq!(w.hold_until(t0 + ms(50)), None);
    }

    #[test]
    fn a_busy_connection_writes_once_per_window() {
        // A frame every 0.5 ms for 10 ms, written when the rule allows: at 0, then at the end of
        // each window, everything queued by then in one write.
        let t0 = Instant::now();
        let mut w = always(W);
        let mut writes = Vec::new();
        let mut queued = 0;
        let mut held_until: Option<Instant> = None;
        for step in 0..=20u64 {
            let now = t0 + Duration::from_micros(500 * step);
            if held_until.is_some_and(|t| now >= t) {
                writes.push((now - t0, queued));
                w.wrote(now);
                queued = 0;
                held_until = None;
            }
            queued += 1;
            match w.hold_until(now) {
                None if held_until.is_none() => {
                    writes.push((now - t0, queued));
                    w.wrote(now);
                    queued = 0;
                }
                None => {}
                Some(t) => held_until = Some(t),
            }
        }
        let frames: usize = writes.iter().map(|(_, n)| n).sum();
        assert_eq!(frames + queued, 21);
        assert_eq!(
            writes.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![ms(0), ms(2), ms(4), ms(6), ms(8), ms(10)]
        );
        // The first held write carries the 3 frames queued after the first write, each later
        // one the 4 frames of a whole window.
        assert_eq!(writes[1].1, 3);
        assert!(writes[2..].iter().all(|(_, n)| *n == 4), "{writes:?}");
    }

    #[test]
    fn a_zero_window_never_holds() {
        let t0 = Instant::now();
        let mut w = always(Duration::ZERO);
        w.wrote(t0);
        assert_eq!(w.hold_until(t0), None);
    }

    #[test]
    fn an_adaptive_window_holds_only_while_the_server_is_busy() {
        let t0 = Instant::now();
        let c = Coalescing::new(W, 0.25);
        assert!(c.adaptive());
        let mut w = WriteWindow::new(c.clone());
        // Idle server: every frame at once, even right after a write.
        w.wrote(t0);
        assert_eq!(w.hold_until(t0 + ms(1)), None);
        // A quarter of the cores busy: the write made while released already counts.
        assert!(c.observe(0.25));
        assert_eq!(w.hold_until(t0 + ms(1)), Some(t0 + W));
        // Released again: what was held may go at once.
        assert!(!c.observe(0.01));
        assert_eq!(w.hold_until(t0 + ms(1)), None);
    }

    #[test]
    fn coalescing_engages_at_the_threshold_and_releases_well_below_it() {
        let c = Coalescing::new(W, 0.25);
        assert!(!c.engaged(), "a server starts writing at once");
        assert!(!c.observe(0.2));
        assert!(c.observe(0.3));
        // Coalescing itself cuts the CPU use: a third of the threshold keeps it engaged.
        assert!(c.observe(0.25 / 3.0));
        assert!(c.engaged());
        assert!(!c.observe(0.05));
        assert!(!c.observe(0.2), "engages again only at the threshold");
    }

    #[test]
    fn always_and_zero_windows_ignore_the_samples() {
        let always = Coalescing::new(W, 0.0);
        assert!(!always.adaptive());
        assert!(always.observe(0.0) && always.engaged());
        let off = Coalescing::new(Duration::ZERO, 0.25);
        assert!(!off.adaptive());
        assert!(!off.observe(1.0) && !off.engaged());
    }

    #[test]
    fn the_cpu_share_is_of_the_cores_the_process_may_use() {
        assert_eq!(cpu_share(ms(50), ms(100), 2), 0.25);
        assert_eq!(cpu_share(ms(200), ms(100), 2), 1.0);
        assert_eq!(cpu_share(ms(10), Duration::ZERO, 2), 0.0);
    }

    #[test]
    fn the_process_cpu_clock_counts_work_done() {
        let Some(before) = process_cpu_time() else {
            panic!("a CPU clock on this platform");
        };
        // Work until the clock moves (it counts nanoseconds; a bounded loop, not a timing).
        let mut x = 0u64;
        let mut after = before;
        for i in 0..200_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            if i % 1_000_000 == 0 {
                after = process_cpu_time().unwrap_or(before);
                if after > before {
                    break;
                }
            }
        }
        std::hint::black_box(x);
        assert!(after > before, "{before:?} → {after:?}");
    }

    /// The WebSocket writer's side of the rule (`Session::take_ws_batch`): what is queued within
    /// the window stays queued and the writer is told when to come back; then it takes all of
    /// it at once. Instants are passed in; nothing waits.
    mod session {
        use std::collections::VecDeque;
        use std::sync::Arc;

        use rtlink_protocol::ServerFrame;

        use super::*;
        use crate::auth::Claims;
        use crate::config::TransportKind;
        use crate::limits::{ConnectionLimiter, TokenBucket};
        use crate::metrics::Metrics;
        use crate::session::{OutFrame, OutboxLimits, Session, WsTake};

        struct Writer {
            session: Arc<Session>,
            gen: u64,
            _att: crate::session::Attached,
        }

        impl Writer {
            /// An attached WebSocket without a socket: everything it is sent is queued for its
            /// writer (no direct writes).
            fn new(window: Duration) -> Self {
                let metrics = Arc::new(Metrics::default());
                let limiter = ConnectionLimiter::new(10, 10, metrics.clone());
                let Ok(guard) = limiter.acquire(None, TransportKind::WebSocket) else {
                    panic!("a free connection slot");
                };
                let claims = Claims {
                    sub: "u".into(),
                    name: String::new(),
                    rooms: vec!["*".into()],
                    exp: u64::MAX,
                };
                let limits = OutboxLimits {
                    max_frames: 100,
                    max_bytes: 1 << 20,
                };
                let bucket = TokenBucket::new(100, 100, std::time::Instant::now());
                let session = Arc::new(Session::new(
                    "s".into(),
                    None,
                    "t".into(),
                    claims,
                    limits,
                    bucket,
                    metrics,
                ));
                let att = session.attach(TransportKind::WebSocket, guard, &ServerFrame::Ping);
                session.set_ws_wire(att.gen, None, Coalescing::new(window, 0.0));
                Self {
                    session,
                    gen: att.gen,
                    _att: att,
                }
            }

            fn send(&self) {
                self.session.push_frame(&ServerFrame::Ping);
            }

            /// What a take at `now` does: `Err(until)` for a hold, else the frames taken.
            fn take(&self, now: Instant) -> Result<usize, Instant> {
                let mut frames: VecDeque<OutFrame> = VecDeque::new();
                let mut control = Vec::new();
                match self
                    .session
                    .take_ws_batch(self.gen, now, &mut frames, &mut control)
                {
                    WsTake::Gone => panic!("the transport is attached"),
                    WsTake::Hold(until) => {
                        assert!(frames.is_empty(), "a hold takes nothing");
                        Err(until)
                    }
                    WsTake::Write(_) => Ok(frames.len()),
                }
            }
        }

        #[test]
        fn frames_queued_within_the_window_wait_for_it_and_go_out_together() {
            let t0 = Instant::now();
            let w = Writer::new(W);
            // The welcome: nothing written before, so at once.
            assert_eq!(w.take(t0), Ok(1));
            w.send();
            assert_eq!(w.take(t0 + ms(1)), Err(t0 + W));
            w.send();
            w.send();
            assert_eq!(w.take(t0 + W), Ok(3));
            // Nothing queued: nothing to hold.
            assert_eq!(w.take(t0 + W), Ok(0));
            // Idle for the window: at once.
            w.send();
            assert_eq!(w.take(t0 + ms(10)), Ok(1));
        }

        #[test]
        fn when_the_reader_ends_what_the_window_holds_goes_out_at_once_then_the_writer_stops() {
            let t0 = Instant::now();
            let w = Writer::new(W);
            assert_eq!(w.take(t0), Ok(1));
            // An ack held by the window when the peer's close arrives.
            w.send();
            assert_eq!(w.take(t0 + ms(1)), Err(t0 + W));
            w.session.finish_ws(w.gen);
            assert_eq!(w.take(t0 + ms(1)), Ok(1));
            let mut frames = VecDeque::new();
            let taken = w
                .session
                .take_ws_batch(w.gen, t0 + ms(1), &mut frames, &mut Vec::new());
            assert!(matches!(taken, WsTake::Gone), "{taken:?}");
        }

        #[test]
        fn without_a_window_the_writer_takes_at_once() {
            let t0 = Instant::now();
            let w = Writer::new(Duration::ZERO);
            assert_eq!(w.take(t0), Ok(1));
            w.send();
            assert_eq!(w.take(t0), Ok(1));
        }
    }
}

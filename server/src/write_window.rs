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
//! This batches per connection, in time: it saves writes only where a connection gets more than
//! one frame per window. One message fanned out to many connections still costs a write each
//! (docs/BENCHMARKS.md).
//!
//! The clock is passed in (`now`), so the rule is tested without time passing.

use std::time::Duration;

use tokio::time::Instant;

/// When one connection may write next.
#[derive(Clone, Copy, Debug)]
pub struct WriteWindow {
    window: Duration,
    /// The last write (none yet, or the window is zero: never hold).
    last: Option<Instant>,
}

impl WriteWindow {
    /// A window of zero never holds anything.
    pub fn new(window: Duration) -> Self {
        Self { window, last: None }
    }

    /// None if a write may go out at `now`; else when what is queued may go out.
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        let next = self.last? + self.window;
        (now < next).then_some(next)
    }

    /// A write went out at `now`.
    pub fn wrote(&mut self, now: Instant) {
        if !self.window.is_zero() {
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_connection_that_has_not_written_writes_at_once() {
        let t0 = Instant::now();
        assert_eq!(WriteWindow::new(W).hold_until(t0), None);
    }

    #[test]
    fn a_write_within_the_window_is_held_until_the_window_has_passed() {
        let t0 = Instant::now();
        let mut w = WriteWindow::new(W);
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
        let mut w = WriteWindow::new(W);
        w.wrote(t0);
        assert_eq!(w.hold_until(t0 + ms(50)), None);
    }

    #[test]
    fn a_busy_connection_writes_once_per_window() {
        // A frame every 0.5 ms for 10 ms, written when the rule allows: at 0, then at the end of
        // each window, everything queued by then in one write.
        let t0 = Instant::now();
        let mut w = WriteWindow::new(W);
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
        let mut w = WriteWindow::new(Duration::ZERO);
        w.wrote(t0);
        assert_eq!(w.hold_until(t0), None);
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
                session.set_ws_wire(att.gen, None, window);
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

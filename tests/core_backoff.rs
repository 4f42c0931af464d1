#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! Backoff over thousands of seeds: envelopes, reset after a stable connection, drain windows,
//! and clients spread across the window rather than synchronized.
use rtlink::core::backoff::Backoff;
use rtlink::core::rng::Rng;
use rtlink::core::*;

fn always_failing(seed: u64) -> (Client, Instant) {
    let now = Instant::from_millis(0);
    let mut c = Client::new(Config::default(), now, seed);
    c.handle_input(now, Input::Connect);
    (c, now)
}

/// Fails the current attempt of `c` and returns the backoff delay it chose.
fn fail_once(c: &mut Client, now: &mut Instant) -> u64 {
    let mut open = None;
    for _ in 0..2 {
        while let Some(out) = c.poll_output() {
            match out {
                Output::RequestToken => c.handle_input(*now, Input::TokenReady("t".into())),
                Output::FetchTicket { id, .. } => c.handle_input(
                    *now,
                    Input::TicketIssued {
                        id,
                        ticket: "k".into(),
                    },
                ),
                Output::OpenTransport { id, .. } => open = Some(id),
                _ => {}
            }
        }
    }
    let id = open.expect("an attempt");
    c.handle_input(
        *now,
        Input::OpenFailed {
            id,
            error: OpenError::Overloaded {
                retry_after_ms: None,
            },
        },
    );
    let State::BackingOff { until, .. } = *c.state() else {
        panic!("{:?}", c.state())
    };
    let delay = until.millis_since(*now);
    *now = until;
    c.handle_timeout(*now);
    delay
}

#[test]
fn every_delay_is_inside_its_envelope_over_1000_seeds() {
    let cfg = BackoffConfig::default();
    for seed in 0..1_000u64 {
        let (mut c, mut now) = always_failing(seed);
        for k in 1..=12u32 {
            let delay = fail_once(&mut c, &mut now);
            let high = (cfg.base_ms << (k - 1)).min(cfg.cap_ms);
            assert!(
                (cfg.floor_ms..=high).contains(&delay),
                "seed {seed} failure {k}: {delay} not in [100, {high}]"
            );
        }
    }
}

#[test]
fn max_attempts_gives_up() {
    let cfg = Config {
        backoff: BackoffConfig {
            max_attempts: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut now = Instant::from_millis(0);
    let mut c = Client::new(cfg, now, 7);
    c.handle_input(now, Input::Connect);
    fail_once(&mut c, &mut now);
    fail_once(&mut c, &mut now);
    let mut open = None;
    while let Some(out) = c.poll_output() {
        match out {
            Output::RequestToken => c.handle_input(now, Input::TokenReady("t".into())),
            Output::FetchTicket { id, .. } => c.handle_input(
                now,
                Input::TicketIssued {
                    id,
                    ticket: "k".into(),
                },
            ),
            Output::OpenTransport { id, .. } => open = Some(id),
            _ => {}
        }
    }
    c.handle_input(
        now,
        Input::OpenFailed {
            id: open.unwrap(),
            error: OpenError::Network,
        },
    );
    assert_eq!(
        c.state(),
        &State::Closed {
            reason: CloseReason::GaveUp { attempts: 3 }
        }
    );
}

#[test]
fn clients_spread_across_the_window_instead_of_synchronizing() {
    // 1000 clients lose the same server at the same moment; look at their 4th retry.
    let mut delays = Vec::new();
    for seed in 0..1_000u64 {
        let (mut c, mut now) = always_failing(seed * 7919 + 1);
        let mut d = 0;
        for _ in 0..4 {
            d = fail_once(&mut c, &mut now);
        }
        delays.push(d);
    }
    // envelope [100, 4000]: ten equal buckets, each should hold roughly 100 clients
    let mut buckets = [0u32; 10];
    for d in &delays {
        let b = ((d - 100) * 10 / 3_901).min(9) as usize;
        buckets[b] += 1;
    }
    for (i, n) in buckets.iter().enumerate() {
        assert!((50..=150).contains(n), "bucket {i} holds {n}: {buckets:?}");
    }
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(
        distinct.len() > 600,
        "only {} distinct delays",
        distinct.len()
    );
}

#[test]
fn envelope_and_reset() {
    let mut b = Backoff::new(BackoffConfig::default());
    assert_eq!(b.envelope(1), (100, 500));
    assert_eq!(b.envelope(2), (100, 1_000));
    assert_eq!(b.envelope(7), (100, 30_000));
    assert_eq!(b.envelope(200), (100, 30_000));
    let tiny = Backoff::new(BackoffConfig {
        base_ms: 50,
        floor_ms: 100,
        ..Default::default()
    });
    assert_eq!(
        tiny.envelope(1),
        (50, 50),
        "floor is clamped to the envelope"
    );
    for _ in 0..5 {
        b.record_failure();
    }
    assert_eq!(b.failures(), 5);
    b.reset();
    assert_eq!(b.failures(), 0);
}

#[test]
fn drain_window_replaces_the_delay_once() {
    let mut rng = Rng::new(1);
    for seed in 0..1_000 {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut rng2 = Rng::new(seed);
        b.record_failure();
        b.set_drain_window(5_000, 9_000);
        let d = b.next_delay(&mut rng2);
        assert!((5_000..=9_000).contains(&d));
        let d = b.next_delay(&mut rng);
        assert!((100..=500).contains(&d));
    }
}

#[test]
fn attempts_reset_only_after_a_stable_connection() {
    for seed in 0..200u64 {
        let (mut c, mut now) = always_failing(seed);
        for _ in 0..5 {
            fail_once(&mut c, &mut now);
        }
        assert_eq!(c.failures(), 5);
        // next attempt succeeds
        let mut open = None;
        for _ in 0..2 {
            while let Some(out) = c.poll_output() {
                match out {
                    Output::RequestToken => c.handle_input(now, Input::TokenReady("t".into())),
                    Output::FetchTicket { id, .. } => c.handle_input(
                        now,
                        Input::TicketIssued {
                            id,
                            ticket: "k".into(),
                        },
                    ),
                    Output::OpenTransport { id, .. } => open = Some(id),
                    _ => {}
                }
            }
        }
        let id = open.unwrap();
        c.handle_input(now, Input::TransportOpened { id });
        c.handle_input(
            now,
            Input::Frame {
                id,
                frame: welcome(),
            },
        );
        assert!(matches!(c.state(), State::Open { .. }));
        // dies after 5 s: not stable, failures keep growing → larger envelope
        now = now.plus(5_000);
        c.handle_timeout(now);
        c.handle_input(
            now,
            Input::TransportClosed {
                id,
                code: None,
                reason: String::new(),
            },
        );
        assert_eq!(c.failures(), 6);
        let delay = match *c.state() {
            State::BackingOff { until, .. } => until.millis_since(now),
            ref s => panic!("{s:?}"),
        };
        assert!(delay <= 16_000);
        now = now.plus(delay);
        c.handle_timeout(now);
        let mut open = None;
        for _ in 0..2 {
            while let Some(out) = c.poll_output() {
                match out {
                    Output::RequestToken => c.handle_input(now, Input::TokenReady("t".into())),
                    Output::FetchTicket { id, .. } => c.handle_input(
                        now,
                        Input::TicketIssued {
                            id,
                            ticket: "k".into(),
                        },
                    ),
                    Output::OpenTransport { id, .. } => open = Some(id),
                    _ => {}
                }
            }
        }
        let id = open.unwrap();
        c.handle_input(now, Input::TransportOpened { id });
        c.handle_input(
            now,
            Input::Frame {
                id,
                frame: welcome(),
            },
        );
        // stays up past the stable period: reset
        now = now.plus(10_001);
        c.handle_timeout(now);
        assert_eq!(c.failures(), 0);
        c.handle_input(
            now,
            Input::TransportClosed {
                id,
                code: None,
                reason: String::new(),
            },
        );
        let State::BackingOff { until, .. } = *c.state() else {
            panic!()
        };
        assert!(
            until.millis_since(now) <= 500,
            "first retry after a stable connection uses the base envelope"
        );
    }
}

fn welcome() -> ServerFrame {
    ServerFrame::Welcome {
        v: 1,
        session: "s".into(),
        resume_token: "r".into(),
        resumed: false,
        ping_interval_ms: 20_000,
        user: rtlink_protocol::UserInfo {
            id: "u".into(),
            name: "U".into(),
        },
        limits: rtlink_protocol::Limits {
            max_frame_bytes: 65_536,
            rate_per_sec: 10,
            burst: 10,
            max_rooms: 10,
            resume_window_ms: 120_000,
            dedupe_window_ms: 120_000,
            max_batch_bytes: 0,
            publish_bytes_per_sec: 0,
            publish_bytes_burst: 0,
        },
    }
}

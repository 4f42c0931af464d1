#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! The transport ladder: stepping down for each failure kind, probing back up, remembering.
mod core_util;
use core_util::*;
use rtlink::core::*;

fn fallbacks(sim: &Sim) -> Vec<Fallback> {
    sim.tabs[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Fallback(f) => Some(*f),
            _ => None,
        })
        .collect()
}

fn downgrade_all_the_way(mode: Mode, reason: FallbackReason, within_ms: u64) {
    let mut sim = Sim::one(Config::default());
    sim.server.modes.insert(TransportKind::WebSocket, mode);
    sim.server.modes.insert(TransportKind::Sse, mode);
    sim.connect(0, &["lobby"]);
    sim.run_for(within_ms);
    assert_eq!(
        sim.tabs[0].open_kind(),
        Some(TransportKind::LongPoll),
        "{mode:?}: {:?}",
        sim.tabs[0].client.state()
    );
    let f = fallbacks(&sim);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        (f[0].from, f[0].to),
        (TransportKind::WebSocket, TransportKind::Sse)
    );
    assert_eq!(
        (f[1].from, f[1].to),
        (TransportKind::Sse, TransportKind::LongPoll)
    );
    assert_eq!(f[1].reason, reason);
    assert_eq!(sim.tabs[0].client.last_fallback(), Some(f[1]));
    assert!(sim.tabs[0]
        .events
        .contains(&Event::TransportRemembered(TransportKind::LongPoll)));
    assert!(sim.tabs[0].events.contains(&Event::Subscribed {
        room: "lobby".into()
    }));
}

#[test]
fn open_failures_step_down_after_two() {
    downgrade_all_the_way(
        Mode::OpenFail(OpenError::Network),
        FallbackReason::OpenFailures { count: 2 },
        10_000,
    );
    // exactly two tries per rung
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
    sim.connect(0, &[]);
    sim.run_for(5_000);
    let kinds: Vec<TransportKind> = sim.tabs[0].opens.iter().map(|o| o.1).collect();
    assert_eq!(
        kinds,
        [
            TransportKind::WebSocket,
            TransportKind::WebSocket,
            TransportKind::Sse
        ]
    );
}

#[test]
fn dies_before_first_frame_steps_down_at_once() {
    downgrade_all_the_way(
        Mode::DieBeforeFirstFrame,
        FallbackReason::DiedBeforeFirstFrame,
        5_000,
    );
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::DieBeforeFirstFrame);
    sim.connect(0, &[]);
    sim.run_for(2_000);
    let kinds: Vec<TransportKind> = sim.tabs[0].opens.iter().map(|o| o.1).collect();
    assert_eq!(kinds, [TransportKind::WebSocket, TransportKind::Sse]);
}

#[test]
fn silent_sse_steps_down_after_the_first_frame_deadline() {
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
    sim.server.modes.insert(TransportKind::Sse, Mode::Silent);
    sim.connect(0, &[]);
    sim.run_for(5_000);
    assert_eq!(sim.tabs[0].client.current_rung(), TransportKind::Sse);
    sim.run_for(10_000);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::LongPoll));
    let f = fallbacks(&sim);
    assert_eq!(f.last().unwrap().reason, FallbackReason::NoWelcomeInTime);
    // a silent WebSocket counts as an ordinary open failure (two needed)
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::Silent);
    sim.connect(0, &[]);
    sim.run_for(8_500);
    assert_eq!(sim.tabs[0].client.current_rung(), TransportKind::WebSocket);
    sim.run_for(20_000);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::Sse));
}

#[test]
fn overload_and_auth_do_not_step_down() {
    let mut sim = Sim::one(Config::default());
    sim.server.modes.insert(
        TransportKind::WebSocket,
        Mode::OpenFail(OpenError::Overloaded {
            retry_after_ms: Some(3_000),
        }),
    );
    sim.connect(0, &[]);
    sim.run_for(20_000);
    assert_eq!(sim.tabs[0].client.current_rung(), TransportKind::WebSocket);
    // Retry-After honoured
    let State::BackingOff { until, .. } = *sim.tabs[0].client.state() else {
        panic!()
    };
    assert!(until.millis_since(sim.now) <= 30_000);
    assert!(fallbacks(&sim).is_empty());
}

#[test]
fn starts_from_the_remembered_rung_and_respects_config_order() {
    let cfg = Config {
        start_transport: Some(TransportKind::Sse),
        ..Default::default()
    };
    let mut sim = Sim::one(cfg);
    sim.connect(0, &[]);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::Sse));
    assert!(!sim.tabs[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::TransportRemembered(_))));

    let cfg = Config {
        transports: vec![TransportKind::LongPoll],
        ..Default::default()
    };
    let mut sim = Sim::one(cfg);
    sim.connect(0, &[]);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::LongPoll));
    sim.run_for(600_000);
    assert_eq!(sim.tabs[0].opens.len(), 1, "no probes above the top rung");
}

#[test]
fn probes_up_and_switches_without_loss_or_duplicates() {
    {
        let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
        sim.server
            .modes
            .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
        sim.connect(0, &["lobby"]);
        sim.connect(1, &["lobby"]);
        sim.run_for(5_000);
        assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::Sse));
        let sse = sim.primary(0).unwrap();
        // traffic all the time, from both sides
        let mut sent = Vec::new();
        let mut t = 0;
        while t < 150_000 {
            sim.run_for(700);
            t += 700;
            sim.server_publish("lobby", "carl", &format!("c{t}"));
            if t % 2_100 == 0 {
                sent.push(sim.publish(0, "lobby", &format!("a{t}")).unwrap());
            }
            if t == 30_100 {
                // WebSocket works again
                sim.server.modes.clear();
            }
        }
        sim.run_for(1_000);
        assert_eq!(
            sim.tabs[0].open_kind(),
            Some(TransportKind::WebSocket),
            "switched up: {:?} {:?}",
            sim.tabs[0].opens,
            sim.tabs[0].closes
        );
        assert!(sim.tabs[0]
            .closes
            .contains(&(sse, Some(CloseCode::SUPERSEDED))));
        assert!(sim.tabs[0]
            .events
            .contains(&Event::TransportRemembered(TransportKind::WebSocket)));
        // one session throughout: the probe resumed it
        let sessions: std::collections::BTreeSet<_> = sim.tabs[0]
            .states()
            .into_iter()
            .filter_map(|s| match s {
                State::Open { session, .. } => Some(session),
                _ => None,
            })
            .collect();
        assert_eq!(sessions.len(), 1);
        // everything delivered once, in order (the harness asserts contiguity on every event)
        let head = sim.server.head("lobby");
        let delivered = &sim.tabs[0].delivered["lobby"];
        assert_eq!(delivered.last(), Some(&head));
        assert_eq!(delivered.len() as u64, head);
        assert_eq!(sim.tabs[1].delivered["lobby"].len() as u64, head);
        for id in sent {
            assert!(sim.tabs[0].acked(id).is_some(), "publish {id:?} not acked");
        }
        assert_eq!(sim.server.stored_publishes, head);
    }
}

#[test]
fn failed_probe_keeps_the_lower_rung_and_retries_later() {
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::DieBeforeFirstFrame);
    sim.connect(0, &["lobby"]);
    sim.run_for(2_000);
    let sse = sim.primary(0).unwrap();
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::Sse));
    sim.run_for(300_000);
    // several probes, each failed, the SSE transport untouched
    let ws_tries = sim.tabs[0]
        .opens
        .iter()
        .filter(|o| o.1 == TransportKind::WebSocket)
        .count();
    assert!(
        (4..=8).contains(&ws_tries),
        "{ws_tries} probes in 5 minutes"
    );
    assert_eq!(sim.primary(0), Some(sse));
    assert!(sim.tabs[0].is_open());
    // probes carry the resume token
    assert!(sim.tabs[0].opens.iter().skip(2).all(|o| o.2.is_some()));
}

#[test]
fn a_transport_failure_counts_only_when_the_next_ticket_step_admits() {
    // Each WebSocket refusal is followed by a ticket step answered 503: the server is full, the
    // WebSocket is not blocked. However long it lasts, the ladder stays.
    let mut sim = Sim::one(Config::default());
    sim.server.overloaded_race = true;
    sim.connect(0, &[]);
    sim.run_for(300_000);
    assert!(fallbacks(&sim).is_empty(), "{:?}", fallbacks(&sim));
    let kinds: std::collections::BTreeSet<_> = sim.tabs[0].opens.iter().map(|o| o.1).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [TransportKind::WebSocket]
    );

    // A server that cannot be reached at all (the ticket step fails on the network, or hangs)
    // says nothing about WebSocket either.
    for silent in [false, true] {
        let mut sim = Sim::one(Config::default());
        if silent {
            sim.server.ticket_silent = true;
        } else {
            sim.server.ticket_failure = Some(OpenError::Unreachable);
        }
        sim.connect(0, &[]);
        sim.run_for(300_000);
        assert!(fallbacks(&sim).is_empty());
        assert_eq!(sim.tabs[0].client.current_rung(), TransportKind::WebSocket);
        assert!(sim.tabs[0].client.failures() >= 5, "it kept backing off");
        sim.server.ticket_failure = None;
        sim.server.ticket_silent = false;
        sim.run_for(60_000);
        assert_eq!(
            sim.tabs[0].open_kind(),
            Some(TransportKind::WebSocket),
            "back as soon as it is reachable"
        );
    }
}

#[test]
fn a_close_code_the_server_chose_before_welcome_is_not_a_blocked_transport() {
    // 1013 (try again later) or 4011 (internal error) before `welcome`: the frames got through.
    for code in [
        CloseCode(1013),
        CloseCode::INTERNAL_ERROR,
        CloseCode::RATE_LIMITED,
    ] {
        let mut sim = Sim::one(Config::default());
        sim.server
            .modes
            .insert(TransportKind::WebSocket, Mode::CloseBeforeWelcome(code));
        sim.connect(0, &[]);
        sim.run_for(120_000);
        assert!(
            fallbacks(&sim).is_empty(),
            "{code:?}: {:?}",
            fallbacks(&sim)
        );
    }
    // A cut without a word (1006), or a proxy's own code, steps down at once.
    for code in [1006, 1011, 1001] {
        let mut sim = Sim::one(Config::default());
        sim.server.modes.insert(
            TransportKind::WebSocket,
            Mode::CloseBeforeWelcome(CloseCode(code)),
        );
        sim.connect(0, &[]);
        sim.run_for(5_000);
        assert_eq!(
            fallbacks(&sim).first().map(|f| f.reason),
            Some(FallbackReason::DiedBeforeFirstFrame),
            "{code}"
        );
    }
}

#[test]
fn a_probe_switches_only_after_its_welcome_and_says_switch_first() {
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
    sim.connect(0, &["lobby"]);
    sim.run_for(10_000);
    let sse = sim.primary(0).unwrap();
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::Sse));
    sim.server.modes.clear();
    sim.run_for(80_000);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::WebSocket));
    let ws = sim.primary(0).unwrap();
    // On the probe: hello (with the resume token), then `switch`, then the resync.
    let on_probe: Vec<&ClientFrame> = sim.tabs[0]
        .sent
        .iter()
        .filter(|(id, _)| *id == ws)
        .map(|(_, f)| f)
        .collect();
    assert!(
        matches!(
            on_probe[0],
            ClientFrame::Hello {
                resume: Some(_),
                ..
            }
        ),
        "{on_probe:?}"
    );
    assert_eq!(on_probe[1], &ClientFrame::Switch);
    assert!(matches!(on_probe[2], ClientFrame::Subscribe { .. }));
    // The probe's ticket asked for a probe of the session; the old transport was closed by us.
    assert!(sim.tabs[0]
        .closes
        .contains(&(sse, Some(CloseCode::SUPERSEDED))));
    assert!(sim.tabs[0].is_open());
}

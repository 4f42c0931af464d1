#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! Connection lifecycle: welcome, heartbeats, throttled timers, auth, offline, drain.
mod core_util;
use core_util::*;
use rtlink::core::*;

fn opened_count(sim: &Sim) -> usize {
    sim.tabs[0].opens.len()
}

#[test]
fn websocket_says_hello_with_resume_after_reconnect() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    let first = sim.tabs[0].opens[0].0;
    assert!(
        matches!(&sim.tabs[0].sent[0], (id, ClientFrame::Hello { v: 1, resume: None }) if *id == first)
    );
    sim.kill(0, None);
    sim.run_for(2_000);
    assert!(sim.tabs[0].is_open());
    let (second, kind, resume) = sim.tabs[0].opens[1].clone();
    assert_eq!(kind, TransportKind::WebSocket);
    assert_eq!(resume.as_deref(), Some("r-s1"));
    assert!(sim.tabs[0].sent.iter().any(|(id, f)| *id == second
        && *f
            == ClientFrame::Hello {
                v: 1,
                resume: Some("r-s1".into())
            }));
    // resumed: re-subscribed from the last offset
    assert!(sim.tabs[0].sent.iter().any(|(id, f)| *id == second
        && matches!(f, ClientFrame::Subscribe { room, since: Some(0), .. } if room == "lobby")));
}

#[test]
fn answers_server_ping_and_stays_open_for_hours() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    sim.run_for(3 * 3_600_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(opened_count(&sim), 1);
    assert!(
        sim.tabs[0]
            .sent
            .iter()
            .filter(|(_, f)| *f == ClientFrame::Pong)
            .count()
            > 500
    );
}

#[test]
fn heartbeat_miss_closes_and_reconnects() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    let old = sim.primary(0).unwrap();
    sim.blackhole(0);
    // ping interval 20 s + grace 10 s
    sim.run_for(29_000);
    assert!(sim.tabs[0].is_open());
    sim.run_for(1_500);
    assert!(sim.tabs[0]
        .closes
        .contains(&(old, Some(CloseCode::HEARTBEAT_TIMEOUT))));
    sim.run_for(2_000);
    assert!(sim.tabs[0].is_open());
    assert_ne!(sim.primary(0), Some(old));
}

#[test]
fn late_timer_probes_before_declaring_death_and_keeps_a_live_connection() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    let id = sim.primary(0).unwrap();
    // The page sleeps for 2 minutes: no timers, no event processing.
    sim.tabs[0].paused_until = Some(sim.at(120_000));
    sim.run_for(121_000);
    // It woke up late, pinged instead of closing, and the server's answer kept it alive.
    assert!(sim.tabs[0]
        .sent
        .iter()
        .any(|(i, f)| *i == id && *f == ClientFrame::Ping));
    assert!(
        sim.tabs[0].closes.is_empty(),
        "closed a live transport: {:?}",
        sim.tabs[0].closes
    );
    sim.run_for(60_000);
    assert_eq!(sim.primary(0), Some(id));
    assert!(sim.tabs[0].is_open());
}

#[test]
fn late_timer_on_a_dead_connection_closes_after_the_probe_window() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    let id = sim.primary(0).unwrap();
    sim.blackhole(0);
    sim.tabs[0].paused_until = Some(sim.at(120_000));
    sim.run_for(120_000 + 4_000);
    assert!(sim.tabs[0].closes.is_empty());
    sim.run_for(1_500);
    assert!(sim.tabs[0].closes.iter().any(|(i, _)| *i == id));
    sim.run_for(2_000);
    assert!(sim.tabs[0].is_open());
}

#[test]
fn reauthenticates_once_then_closes() {
    let mut sim = Sim::one(Config::default());
    sim.server.reject_tokens = 1;
    sim.connect(0, &[]);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].token_requests, 2);
    assert_eq!(sim.tabs[0].client.failures(), 0);

    // token expires while connected (longer than the re-auth window after the 401 above):
    // 4009 → fresh token, immediate retry
    sim.run_for(61_000);
    sim.server_close(0, CloseCode::TOKEN_EXPIRED);
    sim.run_for(100);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].token_requests, 3);

    // two auth failures in a row: terminal
    sim.server.reject_tokens = 2;
    sim.server_close(0, CloseCode::TOKEN_EXPIRED);
    sim.run_for(1_000);
    assert_eq!(
        sim.tabs[0].client.state(),
        &State::Closed {
            reason: CloseReason::Unauthorized
        }
    );
    assert!(sim.tabs[0].events.contains(&Event::Error {
        reason: CloseReason::Unauthorized
    }));
    assert_eq!(sim.tabs[0].client.poll_timeout(), None);
    // closed clients ignore input
    sim.input(0, Input::Connect);
    sim.input(0, Input::Online);
    assert!(matches!(sim.tabs[0].client.state(), State::Closed { .. }));
}

#[test]
fn forbidden_and_terminal_codes_close() {
    let mut sim = Sim::one(Config::default());
    sim.server.forbidden = true;
    sim.connect(0, &[]);
    assert_eq!(
        sim.tabs[0].client.state(),
        &State::Closed {
            reason: CloseReason::Forbidden
        }
    );

    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    sim.server_close(0, CloseCode::FORBIDDEN);
    sim.run_for(100);
    assert!(
        matches!(sim.tabs[0].client.state(), State::Closed { reason: CloseReason::Server { code, .. } } if *code == CloseCode::FORBIDDEN)
    );
}

#[test]
fn token_failure_backs_off_unless_terminal() {
    let mut sim = Sim::one(Config::default());
    sim.tabs[0].auto_token = false;
    sim.input(0, Input::Connect);
    sim.input(0, Input::TokenFailed { terminal: false });
    assert!(matches!(
        sim.tabs[0].client.state(),
        State::BackingOff { attempt: 2, .. }
    ));
    sim.run_for(1_000);
    assert_eq!(sim.tabs[0].token_requests, 2);
    sim.input(0, Input::TokenFailed { terminal: true });
    assert_eq!(
        sim.tabs[0].client.state(),
        &State::Closed {
            reason: CloseReason::TokenFailed
        }
    );
}

#[test]
fn offline_burns_no_attempts_and_online_reconnects_at_once() {
    let mut sim = Sim::one(Config::default());
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
    sim.server
        .modes
        .insert(TransportKind::Sse, Mode::OpenFail(OpenError::Network));
    sim.server
        .modes
        .insert(TransportKind::LongPoll, Mode::OpenFail(OpenError::Network));
    sim.connect(0, &[]);
    sim.run_for(600);
    let failures = sim.tabs[0].client.failures();
    assert!(failures >= 1);
    sim.input(0, Input::Offline);
    assert_eq!(sim.tabs[0].client.state(), &State::Offline);
    let opens = opened_count(&sim);
    sim.run_for(600_000);
    assert_eq!(opened_count(&sim), opens, "attempted while offline");
    assert_eq!(sim.tabs[0].client.failures(), failures);
    assert_eq!(sim.tabs[0].client.poll_timeout(), None);
    sim.server.modes.clear();
    sim.input(0, Input::Online);
    assert!(matches!(
        sim.tabs[0].client.state(),
        State::Connecting { .. }
    ));
    sim.run_for(100);
    assert!(sim.tabs[0].is_open());
}

#[test]
fn offline_while_open_keeps_rooms_and_resumes() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    sim.server_publish("lobby", "bob", "1");
    sim.run_for(50);
    sim.input(0, Input::Offline);
    assert_eq!(sim.tabs[0].client.state(), &State::Offline);
    sim.server_publish("lobby", "bob", "2");
    sim.server_publish("lobby", "bob", "3");
    sim.run_for(30_000);
    sim.input(0, Input::Online);
    sim.run_for(100);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].delivered["lobby"], vec![1, 2, 3]);
    // frozen behaves the same, resumed reconnects
    sim.input(0, Input::Frozen);
    assert_eq!(sim.tabs[0].client.state(), &State::Offline);
    sim.input(0, Input::Resumed);
    sim.run_for(100);
    assert!(sim.tabs[0].is_open());
}

#[test]
fn drain_reconnects_inside_the_server_window() {
    for seed_tab in 0..50 {
        let users: Vec<String> = (0..=seed_tab).map(|i| format!("u{i}")).collect();
        let users: Vec<&str> = users.iter().map(|s| s.as_str()).collect();
        let mut sim = Sim::new(Config::default(), &users);
        for i in 0..users.len() {
            sim.connect(i, &[]);
        }
        let tab = users.len() - 1;
        let id = sim.primary(tab).unwrap();
        sim.send_to_conn(
            tab,
            id,
            ServerFrame::ReconnectAfter {
                min_ms: 2_000,
                max_ms: 7_000,
            },
        );
        sim.server_close(tab, CloseCode::SERVER_DRAINING);
        sim.run_for(10);
        let State::BackingOff { until, .. } = *sim.tabs[tab].client.state() else {
            panic!("not backing off: {:?}", sim.tabs[tab].client.state())
        };
        let delay = until.millis_since(sim.now);
        assert!((1_990..=7_000).contains(&delay), "delay {delay}");
        // a drain is not a failure
        assert_eq!(sim.tabs[tab].client.failures(), 0);
    }
}

#[test]
fn session_expired_starts_a_new_session_at_once() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    sim.input(
        0,
        Input::SetPresence {
            room: "lobby".into(),
            meta: "{\"s\":1}".into(),
        },
    );
    sim.run_for(50);
    sim.server_close(0, CloseCode::SESSION_EXPIRED);
    sim.run_for(100);
    assert!(sim.tabs[0].is_open());
    let (_, _, resume) = sim.tabs[0].opens.last().unwrap().clone();
    assert_eq!(resume, None);
    // new session: presence re-announced
    let presences = sim.tabs[0]
        .sent
        .iter()
        .filter(|(_, f)| matches!(f, ClientFrame::Presence { .. }))
        .count();
    assert_eq!(presences, 2);
}

#[test]
fn every_state_change_is_reported() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &[]);
    sim.kill(0, None);
    sim.run_for(5_000);
    let kinds: Vec<&'static str> = sim.tabs[0]
        .states()
        .iter()
        .map(|s| match s {
            State::Idle => "idle",
            State::Connecting { .. } => "connecting",
            State::Open { .. } => "open",
            State::BackingOff { .. } => "backoff",
            State::Offline => "offline",
            State::Closed { .. } => "closed",
        })
        .collect();
    assert_eq!(
        kinds,
        ["connecting", "open", "backoff", "connecting", "open"]
    );
    let retry = sim.tabs[0].events.iter().find_map(|e| match e {
        Event::StateChanged {
            state: State::BackingOff { .. },
            retry_in_ms,
            attempt,
            ..
        } => Some((*retry_in_ms, *attempt)),
        _ => None,
    });
    let (retry_in, attempt) = retry.unwrap();
    assert!(retry_in.is_some_and(|ms| (100..=500).contains(&ms)));
    assert_eq!(attempt, 2);
}

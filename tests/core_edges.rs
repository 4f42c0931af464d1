#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! The edges of issue #8 §2, on the virtual clock against a fake server that fails the way the
//! real one does: frame limits, the dedupe window, overload, buffering proxies, expiring tokens.
mod core_util;
use core_util::*;
use rtlink::core::*;
use rtlink_protocol::codec::encode_client;

/// The encoded size of the publish frame the client would send.
fn frame_len(room: &str, payload: &str) -> usize {
    // Ids are `<16 hex digits>-<counter>`; the first publish of a client is `…-1`.
    let frame = ClientFrame::Publish {
        room: room.into(),
        id: "0123456789abcdef-1".into(),
        payload: payload.into(),
    };
    encode_client(&frame).len()
}

#[test]
fn a_publish_too_large_once_encoded_fails_alone_and_keeps_the_connection() {
    let mut sim = Sim::one(Config::default());
    sim.server.max_frame_bytes = 1_000;
    sim.connect(0, &["lobby"]);
    // 600 quotes are 600 bytes of payload but 1,200 once JSON-escaped.
    assert_eq!(
        sim.publish(0, "lobby", &"\"".repeat(600)),
        Err(SendError::TooLarge)
    );
    // A payload of exactly the limit once framed goes through; one byte more does not.
    let fits = "x".repeat(1_000 - frame_len("lobby", ""));
    assert_eq!(frame_len("lobby", &fits), 1_000);
    let ok = sim.publish(0, "lobby", &fits).unwrap();
    assert_eq!(
        sim.publish(0, "lobby", &format!("{fits}\n")),
        Err(SendError::TooLarge)
    );
    sim.run_for(100);
    assert_eq!(sim.tabs[0].acked(ok), Some(1));
    assert_eq!(sim.tabs[0].opens.len(), 1, "the connection stayed");

    // Queued before any welcome: checked when the limit becomes known; the others go through.
    let mut sim = Sim::one(Config::default());
    sim.server.max_frame_bytes = 1_000;
    sim.input(
        0,
        Input::Subscribe {
            room: "lobby".into(),
            history: 0,
        },
    );
    let big = sim.publish(0, "lobby", &"\u{1}".repeat(300)).unwrap();
    let small = sim.publish(0, "lobby", "hi").unwrap();
    sim.input(0, Input::Connect);
    sim.run_for(60_000);
    assert_eq!(sim.tabs[0].failed(big), Some(ErrorCode::TooLarge));
    assert_eq!(sim.tabs[0].acked(small), Some(1));
    assert!(sim.tabs[0].is_open());
    assert_eq!(
        sim.tabs[0].opens.len(),
        1,
        "never resent, never closed: {:?}",
        sim.tabs[0].closes
    );
}

#[test]
fn a_resend_after_the_dedupe_window_is_never_stored_twice() {
    let mut sim = Sim::one(Config::default());
    sim.server.dedupe_window_ms = Some(120_000);
    sim.connect(0, &["lobby"]);
    // Stored by the server, but the ack is lost with the link.
    let early = sim.publish(0, "lobby", "sent before the outage").unwrap();
    sim.queue.clear();
    sim.input(0, Input::Offline);
    // Queued while offline: never transmitted, so always safe to send.
    let offline = sim.publish(0, "lobby", "written while offline").unwrap();
    sim.run_for(5 * 60_000);
    sim.input(0, Input::Online);
    sim.run_for(1_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(
        sim.tabs[0].failed(early),
        Some(ErrorCode::Expired),
        "too old to resend safely"
    );
    assert_eq!(sim.tabs[0].acked(offline), Some(2));
    assert_eq!(sim.server.stored_publishes, 2, "nothing stored twice");

    // Within the window a resend is deduplicated as before.
    let mut sim = Sim::one(Config::default());
    sim.server.dedupe_window_ms = Some(120_000);
    sim.connect(0, &["lobby"]);
    let id = sim.publish(0, "lobby", "x").unwrap();
    sim.queue.clear();
    sim.input(0, Input::Offline);
    sim.run_for(60_000);
    sim.input(0, Input::Online);
    sim.run_for(1_000);
    assert_eq!(sim.tabs[0].acked(id), Some(1));
    assert_eq!(sim.server.stored_publishes, 1);
}

#[test]
fn a_token_that_keeps_expiring_ends_in_a_terminal_error() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    // The server closes 4009 at its next heartbeat after every resume (the token it holds is
    // still expired): the fresh token did not help, so this must end.
    for _ in 0..5 {
        sim.run_for(20_000);
        sim.server_close(0, CloseCode::TOKEN_EXPIRED);
        sim.run_for(100);
    }
    assert_eq!(
        sim.tabs[0].client.state(),
        &State::Closed {
            reason: CloseReason::Unauthorized
        }
    );
    assert!(
        sim.tabs[0].token_requests <= 3,
        "{} token requests",
        sim.tabs[0].token_requests
    );
    // A token that lasts (re-authenticated long ago) is not a repeated failure.
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    for _ in 0..5 {
        sim.run_for(3_600_000);
        sim.server_close(0, CloseCode::TOKEN_EXPIRED);
        sim.run_for(100);
        assert!(sim.tabs[0].is_open());
    }
}

#[test]
fn overload_never_steps_the_ladder_down() {
    let mut sim = Sim::one(Config::default());
    sim.server.overloaded_race = true;
    sim.connect(0, &["lobby"]);
    sim.run_for(120_000);
    assert_eq!(sim.tabs[0].client.current_rung(), TransportKind::WebSocket);
    assert!(
        !sim.tabs[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::Fallback(_))),
        "{:?}",
        sim.tabs[0].client.last_fallback()
    );
    assert!(!sim.tabs[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::TransportRemembered(_))));
    // Recovers on WebSocket once the server admits again.
    sim.server.overloaded_race = false;
    sim.run_for(60_000);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::WebSocket));
}

#[test]
fn server_given_delays_are_spread_not_obeyed_to_the_millisecond() {
    let mut delays = Vec::new();
    for tab in 0..200u64 {
        let mut sim = Sim::one(Config::default());
        sim.tabs[0].client = Client::new(Config::default(), sim.now, 0xD1CE + tab);
        // The ticket step answers 503 with `retry_after_ms: 5000`.
        sim.server.ticket_failure = Some(OpenError::Overloaded {
            retry_after_ms: Some(5_000),
        });
        sim.input(0, Input::Connect);
        sim.run_for(50);
        let State::BackingOff { until, .. } = *sim.tabs[0].client.state() else {
            panic!("{:?}", sim.tabs[0].client.state())
        };
        delays.push(until.millis_since(sim.now) + 50 - 2 * LATENCY_MS);
    }
    let (lo, hi) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
    assert!(lo >= 4_900, "never earlier than told: {lo}");
    assert!(hi <= 10_000, "at most twice the delay: {hi}");
    assert!(hi - lo >= 3_000, "spread over the window: {lo}..{hi}");
    let distinct: std::collections::BTreeSet<u64> = delays.iter().copied().collect();
    assert!(
        distinct.len() >= 150,
        "{} distinct instants",
        distinct.len()
    );
}

#[test]
fn a_probe_behind_a_buffering_proxy_never_costs_the_working_transport() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.server
        .modes
        .insert(TransportKind::WebSocket, Mode::OpenFail(OpenError::Network));
    sim.server.modes.insert(TransportKind::Sse, Mode::Buffered);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    sim.run_for(60_000);
    assert_eq!(sim.tabs[0].open_kind(), Some(TransportKind::LongPoll));
    let poll = sim.primary(0).unwrap();
    let states_before = sim.tabs[0].states().len();
    // Ten minutes of probes up to the buffered SSE, with traffic all along.
    for i in 0..600 {
        sim.run_for(1_000);
        if i % 3 == 0 {
            sim.publish(1, "lobby", &format!("m{i}")).unwrap();
        }
    }
    let probes = sim.tabs[0]
        .opens
        .iter()
        .filter(|o| o.1 == TransportKind::Sse)
        .count();
    assert!(probes >= 5, "{probes} probes");
    assert_eq!(
        sim.primary(0),
        Some(poll),
        "the long-poll transport was never replaced"
    );
    assert_eq!(
        sim.tabs[0].states().len(),
        states_before,
        "no state change at all: {:?}",
        &sim.tabs[0].states()[states_before..]
    );
    assert_eq!(
        sim.tabs[0].delivered["lobby"].len() as u64,
        sim.server.head("lobby")
    );
}

/// A session ended for good (4013: logout, ban) while its SSE or long-polling client's connection
/// was down: the server answers the open that resumes it with a stream / batch holding only that
/// `close` (docs/PROTOCOL.md, *A session that ended unheard*). The client stops there: a
/// terminal error, no other ticket, no other transport.
#[test]
fn a_close_frame_in_place_of_welcome_on_a_resume_is_terminal() {
    for kind in [TransportKind::Sse, TransportKind::LongPoll] {
        let mut sim = Sim::one(Config {
            transports: vec![kind],
            ..Config::default()
        });
        sim.connect(0, &["lobby"]);
        sim.run_for(2_000);
        assert_eq!(sim.tabs[0].open_kind(), Some(kind));
        sim.server
            .modes
            .insert(kind, Mode::CloseFrameBeforeWelcome(CloseCode::DISCONNECTED));
        sim.kill(0, None);
        sim.run_for(120_000);
        let resumes: Vec<_> = sim.tabs[0].opens[1..]
            .iter()
            .map(|o| (o.1, o.2.is_some()))
            .collect();
        assert_eq!(
            resumes,
            [(kind, true)],
            "{kind:?}: one resume, nothing after it"
        );
        assert_eq!(
            sim.tabs[0].client.state(),
            &State::Closed {
                reason: CloseReason::Server {
                    code: CloseCode::DISCONNECTED,
                    reason: "disconnected".into()
                }
            },
            "{kind:?}"
        );
    }
}

#[test]
fn the_terminal_error_carries_the_real_cause() {
    type Setup = fn(&mut Sim);
    let cases: [(Setup, &str); 5] = [
        (|sim| sim.server.forbidden = true, "forbidden"),
        (|sim| sim.server.reject_tokens = 5, "unauthorized"),
        (
            |sim| {
                sim.server
                    .modes
                    .insert(
                        TransportKind::WebSocket,
                        Mode::CloseBeforeWelcome(CloseCode::UNSUPPORTED_VERSION),
                    )
                    .map_or((), |_| ())
            },
            "unsupported_version",
        ),
        (
            |sim| {
                sim.server
                    .modes
                    .insert(
                        TransportKind::WebSocket,
                        Mode::CloseBeforeWelcome(CloseCode::FORBIDDEN),
                    )
                    .map_or((), |_| ())
            },
            "forbidden",
        ),
        (
            |sim| {
                sim.server
                    .modes
                    .insert(
                        TransportKind::WebSocket,
                        Mode::CloseBeforeWelcome(CloseCode::DISCONNECTED),
                    )
                    .map_or((), |_| ())
            },
            "disconnected",
        ),
    ];
    for (setup, code) in cases {
        let mut sim = Sim::one(Config::default());
        setup(&mut sim);
        sim.connect(0, &[]);
        sim.run_for(10_000);
        let reason = sim.tabs[0].events.iter().find_map(|e| match e {
            Event::Error { reason } => Some(reason.clone()),
            _ => None,
        });
        assert_eq!(
            reason.as_ref().map(CloseReason::error_code),
            Some(code),
            "{reason:?}"
        );
    }
    let gave_up = CloseReason::GaveUp { attempts: 3 };
    assert_eq!(gave_up.error_code(), "gave_up");
    assert_eq!(CloseReason::TokenFailed.error_code(), "token_failed");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

    #[test]
    fn the_size_check_matches_the_encoder(room in "[a-z:]{1,20}", payload in "\\PC{0,40}|[\\x00-\\x1f\"\\\\]{0,20}") {
        let id = "0123456789abcdef-17";
        let frame = ClientFrame::Publish { room: room.clone(), id: id.into(), payload: payload.clone() };
        proptest::prop_assert_eq!(send_queue::publish_frame_len(&room, id, &payload), encode_client(&frame).len() as u64);
    }
}

#[test]
fn a_room_the_new_token_no_longer_allows_is_dropped_with_an_error() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(0, &["lobby", "secret"]);
    sim.connect(1, &["lobby", "secret"]);
    assert!(sim.tabs[0].events.contains(&Event::Subscribed {
        room: "secret".into()
    }));
    // Re-authenticated with a token without "secret": the resync subscribe is refused.
    sim.server.forbidden_rooms.insert("secret".into());
    sim.kill(0, None);
    sim.run_for(5_000);
    assert!(sim.tabs[0].is_open());
    let refused = sim.tabs[0].events.iter().find_map(|e| match e {
        Event::SubscribeFailed { room, code, .. } => Some((room.clone(), *code)),
        _ => None,
    });
    assert_eq!(refused, Some(("secret".into(), ErrorCode::Forbidden)));
    assert_eq!(
        sim.publish(0, "secret", "x"),
        Err(SendError::NotSubscribed),
        "the room is gone"
    );
    sim.publish(1, "lobby", "still here").unwrap();
    sim.run_for(100);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1]);
}

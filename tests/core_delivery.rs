#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! Publishes, acks, exactly-once delivery, presence and typing.
mod core_util;
use core_util::*;
use rtlink::core::*;

fn cfg_small_queue() -> Config {
    Config {
        send_queue_capacity: 3,
        ..Default::default()
    }
}

#[test]
fn queue_overflow_is_an_error_not_a_silent_drop() {
    let mut sim = Sim::one(cfg_small_queue());
    sim.input(
        0,
        Input::Subscribe {
            room: "lobby".into(),
            history: 0,
        },
    );
    assert_eq!(sim.publish(0, "nope", "x"), Err(SendError::NotSubscribed));
    let ids: Vec<SendId> = (0..3)
        .map(|i| sim.publish(0, "lobby", &i.to_string()).unwrap())
        .collect();
    assert_eq!(sim.publish(0, "lobby", "3"), Err(SendError::QueueFull));
    // queued while connecting, sent after welcome, all acked in order
    sim.input(0, Input::Connect);
    sim.run_for(200);
    let offsets: Vec<u64> = ids
        .iter()
        .map(|id| sim.tabs[0].acked(*id).unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1, 2, 3]);
    assert!(sim.publish(0, "lobby", "4").is_ok());
}

#[test]
fn resent_after_reconnect_with_the_same_id_and_stored_once() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    // the publish reaches the server, the ack is lost with the transport
    let id = sim.publish(0, "lobby", "hello").unwrap();
    sim.queue.clear();
    sim.kill(0, None);
    sim.run_for(3_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].acked(id), Some(1));
    assert_eq!(sim.server.stored_publishes, 1);
    let wire_ids: Vec<String> = sim.tabs[0]
        .sent
        .iter()
        .filter_map(|(_, f)| match f {
            ClientFrame::Publish { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(wire_ids.len(), 2);
    assert_eq!(wire_ids[0], wire_ids[1]);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1]);
}

#[test]
fn message_ids_are_unique_across_clients_and_sessions() {
    let mut seen = std::collections::BTreeSet::new();
    let mut sim = Sim::new(Config::default(), &["a", "b"]);
    sim.connect(0, &["r"]);
    sim.connect(1, &["r"]);
    for i in 0..10 {
        sim.publish(i % 2, "r", "x").unwrap();
    }
    sim.run_for(100);
    for tab in &sim.tabs {
        for (_, f) in &tab.sent {
            if let ClientFrame::Publish { id, .. } = f {
                assert!(seen.insert(id.clone()), "duplicate id {id}");
            }
        }
    }
    assert_eq!(seen.len(), 10);
}

#[test]
fn ack_timeout_counts_only_while_transmitted() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    // a server that swallows publishes: blackhole, but keep pings flowing manually
    sim.blackhole(0);
    let id = sim.publish(0, "lobby", "lost").unwrap();
    sim.run_for(14_000);
    assert_eq!(sim.tabs[0].failed(id), None);
    sim.run_for(1_100);
    assert_eq!(sim.tabs[0].failed(id), Some(ErrorCode::Timeout));
    assert_eq!(sim.tabs[0].client.pending_sends(), 0);

    // while offline the clock does not run; the publish waits for the next transport
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    sim.input(0, Input::Offline);
    let id = sim.publish(0, "lobby", "later").unwrap();
    sim.run_for(60_000);
    assert_eq!(sim.tabs[0].failed(id), None);
    sim.input(0, Input::Online);
    sim.run_for(200);
    assert_eq!(sim.tabs[0].acked(id), Some(1));
}

#[test]
fn nack_fails_the_publish_and_close_fails_the_rest() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    let id = sim.publish(0, "lobby", "x").unwrap();
    let wire = match &sim.tabs[0].sent.last().unwrap().1 {
        ClientFrame::Publish { id, .. } => id.clone(),
        f => panic!("{f:?}"),
    };
    sim.queue.clear();
    let t = sim.primary(0).unwrap();
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: ServerFrame::Nack {
                id: wire,
                code: ErrorCode::RateLimited,
                reason: "slow".into(),
            },
        },
    );
    assert_eq!(sim.tabs[0].failed(id), Some(ErrorCode::RateLimited));

    sim.input(0, Input::Offline);
    let a = sim.publish(0, "lobby", "a").unwrap();
    let b = sim.publish(0, "lobby", "b").unwrap();
    sim.input(0, Input::Close);
    assert_eq!(sim.tabs[0].failed(a), Some(ErrorCode::Closed));
    assert_eq!(sim.tabs[0].failed(b), Some(ErrorCode::Closed));
    assert_eq!(sim.publish(0, "lobby", "c"), Err(SendError::Closed));
}

#[test]
fn resume_dedupes_replays_and_repairs_gaps() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    for i in 0..5 {
        sim.publish(1, "lobby", &i.to_string()).unwrap();
    }
    sim.run_for(100);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1, 2, 3, 4, 5]);
    // ana drops; bob keeps talking; ana resumes and gets exactly the missing ones
    sim.kill(0, None);
    for i in 5..9 {
        sim.publish(1, "lobby", &i.to_string()).unwrap();
    }
    sim.run_for(3_000);
    assert_eq!(sim.tabs[0].delivered["lobby"], (1..=9).collect::<Vec<_>>());

    // duplicates, reordering and a gap injected straight into the transport
    let t = sim.primary(0).unwrap();
    let msg = |o: u64| ServerFrame::Message {
        room: "lobby".into(),
        offset: o,
        sender: "x".into(),
        name: None,
        payload: String::new(),
    };
    for _ in 0..4 {
        sim.store_only("lobby");
    }
    // server history now has 13 entries; deliver 9 (dup), 3 (dup), 12 (gap), 11 (gap)
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: msg(9),
        },
    );
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: msg(3),
        },
    );
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: msg(12),
        },
    );
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: msg(11),
        },
    );
    let repairs = sim.tabs[0]
        .sent
        .iter()
        .filter(|(_, f)| {
            *f == ClientFrame::Subscribe {
                room: "lobby".into(),
                since: Some(9),
                epoch: Some("e1".into()),
                history: None,
            }
        })
        .count();
    assert!(repairs >= 1);
    sim.run_for(100);
    assert_eq!(sim.tabs[0].delivered["lobby"], (1..=13).collect::<Vec<_>>());
}

#[test]
fn lost_history_means_resync() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.server.history_limit = 3;
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    sim.publish(1, "lobby", "1").unwrap();
    sim.run_for(100);
    sim.kill(0, None);
    for i in 0..10 {
        sim.publish(1, "lobby", &i.to_string()).unwrap();
    }
    sim.run_for(3_000);
    assert!(sim.tabs[0].events.contains(&Event::ResyncNeeded {
        room: "lobby".into()
    }));
    sim.publish(1, "lobby", "after").unwrap();
    sim.run_for(100);
    assert_eq!(sim.tabs[0].delivered["lobby"], [12]);
}

#[test]
fn restarted_in_memory_server_new_epoch_is_delivered_not_dropped_as_duplicates() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    for p in ["a", "b", "c"] {
        sim.publish(1, "lobby", p).unwrap();
    }
    sim.run_for(200);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1, 2, 3]);
    // The server restarts without its history: offsets 1 and 2 of the new epoch would look
    // like duplicates to a client that only compared offsets.
    sim.lose_history();
    let during = [
        sim.publish(1, "lobby", "d").unwrap(),
        sim.publish(1, "lobby", "e").unwrap(),
    ];
    sim.run_for(5_000);
    assert!(
        sim.tabs.iter().all(|t| t.is_open()),
        "both tabs reconnected"
    );
    for id in during {
        assert!(
            sim.tabs[1].acked(id).is_some(),
            "publish made during the outage acked"
        );
    }
    assert!(sim.tabs[0].events.contains(&Event::ResyncNeeded {
        room: "lobby".into()
    }));
    // The harness starts a room's delivery log afresh at a resync.
    assert_eq!(
        sim.tabs[0].delivered["lobby"],
        [1, 2],
        "the new epoch is delivered from offset 1"
    );
    sim.publish(1, "lobby", "f").unwrap();
    sim.run_for(100);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1, 2, 3]);
}

#[test]
fn an_unasked_resync_then_the_answer_to_a_stale_subscribe_deliver_each_offset_once() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    for p in ["a", "b", "c"] {
        sim.publish(1, "lobby", p).unwrap();
    }
    sim.run_for(200);
    assert_eq!(sim.tabs[0].delivered["lobby"], [1, 2, 3]);
    // From here the test plays ana's server, frame by frame (the fake server hears nothing).
    let t = sim.primary(0).unwrap();
    sim.blackhole(0);
    let msg = |o: u64| ServerFrame::Message {
        room: "lobby".into(),
        offset: o,
        sender: "x".into(),
        name: None,
        payload: String::new(),
    };
    let reset = || ServerFrame::Subscribed {
        room: "lobby".into(),
        head: 0,
        recovered: false,
        epoch: "e2".into(),
    };
    // A gap: ana asks for a replay after 3 of epoch e1, which the room is about to leave.
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: msg(5),
        },
    );
    let asked = ClientFrame::Subscribe {
        room: "lobby".into(),
        since: Some(3),
        epoch: Some("e1".into()),
        history: None,
    };
    assert!(sim.tabs[0].sent.iter().any(|(_, f)| *f == asked));
    let before = sim.tabs[0].events.len();
    // The room's offsets restart (Redis lost its data): the server resyncs the subscription
    // unasked, in epoch e2, and replays it from its start ...
    for frame in [reset(), msg(1), msg(2)] {
        sim.input(0, Input::Frame { id: t, frame });
    }
    // ... then answers the subscribe ana sent with e1 the same way (the real server does, in
    // this order, when the resync ran while ana was away: faults_cluster's Redis restart).
    for frame in [reset(), msg(1), msg(2), msg(3)] {
        sim.input(0, Input::Frame { id: t, frame });
    }
    let events = &sim.tabs[0].events[before..];
    let resyncs = events
        .iter()
        .filter(|e| matches!(e, Event::ResyncNeeded { .. }))
        .count();
    let offsets: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            if let Event::Message { offset, .. } = e {
                Some(*offset)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        resyncs, 1,
        "one restart of the room's offsets is one resync: {events:?}"
    );
    assert_eq!(offsets, [1, 2, 3], "each offset of epoch e2 delivered once");
}

#[test]
fn a_late_ack_timer_after_a_throttled_sleep_does_not_fail_an_acked_publish() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    let id = sim
        .publish(0, "lobby", "sent just before the tab slept")
        .unwrap();
    // The tab sleeps for 2 minutes right after sending: the server's ack is queued, and on waking
    // the (late) ack-timeout timer runs before the queued network event.
    sim.tabs[0].paused_until = Some(sim.at(120_000));
    sim.run_for(121_000);
    assert_eq!(
        sim.tabs[0].failed(id),
        None,
        "failed a publish whose ack was waiting in the queue"
    );
    assert!(sim.tabs[0].acked(id).is_some());
}

#[test]
fn an_ack_that_never_comes_still_times_out_after_a_late_timer() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["lobby"]);
    sim.server.drop_acks = true;
    let id = sim.publish(0, "lobby", "lost").unwrap();
    sim.tabs[0].paused_until = Some(sim.at(120_000));
    sim.run_for(121_000);
    assert_eq!(
        sim.tabs[0].failed(id),
        None,
        "deferred by the probe window first"
    );
    sim.run_for(10_000);
    assert_eq!(sim.tabs[0].failed(id), Some(ErrorCode::Timeout));
}

#[test]
fn joining_with_history_delivers_the_newest_messages_then_resumes_without_it() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(1, &["lobby"]);
    for p in ["1", "2", "3", "4", "5"] {
        sim.publish(1, "lobby", p).unwrap();
    }
    sim.run_for(200);
    sim.connect(0, &[]);
    sim.input(
        0,
        Input::Subscribe {
            room: "lobby".into(),
            history: 3,
        },
    );
    sim.run_for(200);
    assert_eq!(
        sim.tabs[0].delivered["lobby"],
        [3, 4, 5],
        "the newest three, in order"
    );
    assert!(!sim.tabs[0].events.contains(&Event::ResyncNeeded {
        room: "lobby".into()
    }));
    // A reconnect resumes from the last offset: nothing is replayed twice.
    sim.kill(0, None);
    sim.publish(1, "lobby", "6").unwrap();
    sim.run_for(3_000);
    assert_eq!(sim.tabs[0].delivered["lobby"], [3, 4, 5, 6]);
    let resubscribes: Vec<_> = sim.tabs[0]
        .sent
        .iter()
        .filter_map(|(_, f)| match f {
            ClientFrame::Subscribe { since, history, .. } => Some((*since, *history)),
            _ => None,
        })
        .collect();
    assert_eq!(resubscribes.first(), Some(&(None, Some(3))));
    assert!(resubscribes[1..]
        .iter()
        .all(|(since, history)| since.is_some() && history.is_none()));
}

#[test]
fn two_tabs_of_one_user_are_one_member() {
    let mut sim = Sim::new(Config::default(), &["ana", "ana", "bob"]);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    sim.connect(2, &["lobby"]);
    sim.input(
        0,
        Input::SetPresence {
            room: "lobby".into(),
            meta: "{\"tab\":0}".into(),
        },
    );
    sim.run_for(50);
    sim.input(
        1,
        Input::SetPresence {
            room: "lobby".into(),
            meta: "{\"tab\":1}".into(),
        },
    );
    sim.run_for(50);
    let members = sim.tabs[2].client.members("lobby");
    assert_eq!(members.len(), 2);
    assert_eq!(
        members[0],
        Member {
            user: "ana".into(),
            name: "ANA".into(),
            meta: "{\"tab\":1}".into(),
            connections: 2
        }
    );
    assert_eq!(members[1].connections, 1);
    // closing one tab is not a leave
    sim.input(1, Input::Close);
    sim.run_for(50);
    let members = sim.tabs[2].client.members("lobby");
    assert_eq!(members[0].user, "ana");
    assert_eq!(members[0].connections, 1);
    assert_eq!(members[0].meta, "{\"tab\":0}");
    // closing the last one is
    sim.input(0, Input::Close);
    sim.run_for(50);
    let members = sim.tabs[2].client.members("lobby");
    assert_eq!(
        members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );
    // a reconnect that loses the session re-announces presence
    sim.server_close(2, CloseCode::SESSION_EXPIRED);
    sim.input(
        2,
        Input::SetPresence {
            room: "lobby".into(),
            meta: "m".into(),
        },
    );
    sim.run_for(6_000);
    let members = sim.tabs[2].client.members("lobby");
    assert_eq!(
        members,
        [Member {
            user: "bob".into(),
            name: "BOB".into(),
            meta: "m".into(),
            connections: 1
        }]
    );
}

#[test]
fn typing_throttle_idle_stop_and_expiry() {
    let mut sim = Sim::new(Config::default(), &["ana", "bob"]);
    sim.connect(0, &["lobby"]);
    sim.connect(1, &["lobby"]);
    let starts = |sim: &Sim| {
        sim.tabs[0]
            .sent
            .iter()
            .filter(|(_, f)| matches!(f, ClientFrame::Typing { active: true, .. }))
            .count()
    };
    let stops = |sim: &Sim| {
        sim.tabs[0]
            .sent
            .iter()
            .filter(|(_, f)| matches!(f, ClientFrame::Typing { active: false, .. }))
            .count()
    };
    // 10 s of a keystroke every 200 ms: a start every 3 s, not 50
    for _ in 0..50 {
        sim.input(
            0,
            Input::Keystroke {
                room: "lobby".into(),
            },
        );
        sim.run_for(200);
    }
    assert_eq!(starts(&sim), 4);
    assert_eq!(stops(&sim), 0);
    let bob_sees = sim.tabs[1].events.iter().filter_map(|e| match e {
        Event::TypingChanged { users, .. } => Some(users.len()),
        _ => None,
    });
    assert_eq!(bob_sees.collect::<Vec<_>>(), [1]);
    // idle for 5 s: automatic stop
    sim.run_for(5_000);
    assert_eq!(stops(&sim), 1);
    assert_eq!(
        sim.tabs[1]
            .events
            .iter()
            .filter(|e| matches!(e, Event::TypingChanged { .. }))
            .count(),
        2
    );
    // publish stops typing
    sim.input(
        0,
        Input::Keystroke {
            room: "lobby".into(),
        },
    );
    sim.publish(0, "lobby", "hi").unwrap();
    assert_eq!(stops(&sim), 2);
    sim.input(
        0,
        Input::Keystroke {
            room: "lobby".into(),
        },
    );
    sim.input(
        0,
        Input::TypingStop {
            room: "lobby".into(),
        },
    );
    assert_eq!(stops(&sim), 3);
    // own typing is never shown to self
    assert!(!sim.tabs[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::TypingChanged { .. })));
    // a lost stop expires after 6 s
    let t = sim.primary(1).unwrap();
    sim.run_for(100);
    let n = sim.tabs[1].events.len();
    sim.input(
        1,
        Input::Frame {
            id: t,
            frame: ServerFrame::Typing {
                room: "lobby".into(),
                user: "carl".into(),
                name: "Carl".into(),
                active: true,
            },
        },
    );
    assert!(
        matches!(&sim.tabs[1].events[n..], [Event::TypingChanged { users, .. }] if users.len() == 1)
    );
    sim.run_for(5_900);
    assert!(sim.tabs[1].events[n + 1..]
        .iter()
        .all(|e| !matches!(e, Event::TypingChanged { .. })));
    sim.run_for(200);
    assert!(sim.tabs[1].events[n + 1..]
        .iter()
        .any(|e| matches!(e, Event::TypingChanged { users, .. } if users.is_empty())));
}

#[test]
fn subscribe_refusals() {
    let mut sim = Sim::one(Config::default());
    sim.connect(0, &["bad room!"]);
    assert!(sim.tabs[0].events.iter().any(|e| matches!(
        e,
        Event::SubscribeFailed {
            code: ErrorCode::InvalidRoom,
            ..
        }
    )));
    sim.input(
        0,
        Input::Subscribe {
            room: "secret".into(),
            history: 0,
        },
    );
    let t = sim.primary(0).unwrap();
    sim.queue.clear();
    sim.input(
        0,
        Input::Frame {
            id: t,
            frame: ServerFrame::Nack {
                id: "secret".into(),
                code: ErrorCode::Forbidden,
                reason: String::new(),
            },
        },
    );
    assert!(sim.tabs[0].events.iter().any(|e| matches!(e, Event::SubscribeFailed { room, code: ErrorCode::Forbidden, .. } if room == "secret")));
    assert_eq!(sim.publish(0, "secret", "x"), Err(SendError::NotSubscribed));
}

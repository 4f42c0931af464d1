#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! Property test: random sequences of app commands, transport events, server frames (including
//! duplicated and reordered messages, stale transport ids) and timeouts never panic and never
//! break the invariants the app relies on.
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rtlink::core::*;
use rtlink_protocol::{Limits, PresenceConn, UserInfo};

const ROOMS: [&str; 3] = ["a", "b", "c"];
const CODES: [u16; 10] = [1000, 1001, 4000, 4005, 4006, 4007, 4008, 4009, 4010, 4999];

#[derive(Clone, Debug)]
enum Op {
    Connect,
    Subscribe(u8),
    Unsubscribe(u8),
    Publish(u8),
    SetPresence(u8),
    Keystroke(u8),
    TypingStop(u8),
    Lifecycle(u8),
    TokenReady,
    TokenFailed(bool),
    Ticket(u8),
    Opened(u8),
    OpenFailed(u8, u8),
    Closed(u8, Option<u8>),
    Welcome(u8, bool),
    Msg(u8, u8, u8),
    Subscribed(u8, u8, u8, bool),
    Ack(u8, u8, u8),
    Nack(u8, u8),
    Ping(u8),
    CloseFrame(u8, u8),
    ReconnectAfter(u8, u16, u16),
    Presence(u8, u8, u8, u8, bool),
    Typing(u8, u8, u8, bool),
    Advance(u16),
    JumpToDeadline,
}

fn op() -> impl Strategy<Value = Op> {
    let x = any::<u8>;
    prop_oneof![
        2 => Just(Op::Connect),
        3 => x().prop_map(Op::Subscribe),
        1 => x().prop_map(Op::Unsubscribe),
        4 => x().prop_map(Op::Publish),
        1 => x().prop_map(Op::SetPresence),
        1 => x().prop_map(Op::Keystroke),
        1 => x().prop_map(Op::TypingStop),
        1 => x().prop_map(Op::Lifecycle),
        4 => Just(Op::TokenReady),
        1 => any::<bool>().prop_map(Op::TokenFailed),
        4 => x().prop_map(Op::Ticket),
        3 => x().prop_map(Op::Opened),
        1 => (x(), x()).prop_map(|(a, b)| Op::OpenFailed(a, b)),
        1 => (x(), proptest::option::of(x())).prop_map(|(a, b)| Op::Closed(a, b)),
        4 => (x(), any::<bool>()).prop_map(|(a, b)| Op::Welcome(a, b)),
        8 => (x(), x(), 0u8..30).prop_map(|(a, b, c)| Op::Msg(a, b, c)),
        3 => (x(), x(), 0u8..30, any::<bool>()).prop_map(|(a, b, c, d)| Op::Subscribed(a, b, c, d)),
        3 => (x(), x(), x()).prop_map(|(a, b, c)| Op::Ack(a, b, c)),
        1 => (x(), x()).prop_map(|(a, b)| Op::Nack(a, b)),
        1 => x().prop_map(Op::Ping),
        1 => (x(), x()).prop_map(|(a, b)| Op::CloseFrame(a, b)),
        1 => (x(), any::<u16>(), any::<u16>()).prop_map(|(a, b, c)| Op::ReconnectAfter(a, b, c)),
        2 => (x(), x(), 0u8..4, 0u8..3, any::<bool>()).prop_map(|(a, b, c, d, e)| Op::Presence(a, b, c, d, e)),
        1 => (x(), x(), 0u8..3, any::<bool>()).prop_map(|(a, b, c, d)| Op::Typing(a, b, c, d)),
        3 => any::<u16>().prop_map(Op::Advance),
        3 => Just(Op::JumpToDeadline),
    ]
}

#[derive(Default)]
struct Watch {
    ids: Vec<TransportId>,
    live: BTreeSet<TransportId>,
    wire_ids: Vec<String>,
    delivered: BTreeMap<String, u64>,
    outcomes: BTreeMap<SendId, u32>,
    published: Vec<SendId>,
}

impl Watch {
    fn drain(&mut self, c: &mut Client) {
        while let Some(out) = c.poll_output() {
            match out {
                Output::FetchTicket { id, .. } => {
                    self.ids.push(id);
                    self.live.insert(id);
                }
                Output::CloseTransport { id, .. } => {
                    self.live.remove(&id);
                }
                Output::Send {
                    frame: ClientFrame::Publish { id, .. },
                    ..
                } => self.wire_ids.push(id),
                Output::Event(Event::Message { room, offset, .. }) => {
                    if let Some(last) = self.delivered.get(&room) {
                        assert_eq!(offset, last + 1, "room {room}: {offset} after {last}");
                    }
                    self.delivered.insert(room, offset);
                }
                Output::Event(
                    Event::ResyncNeeded { room } | Event::SubscribeFailed { room, .. },
                ) => {
                    self.delivered.remove(&room);
                }
                Output::Event(
                    Event::PublishAcked { send_id, .. } | Event::PublishFailed { send_id, .. },
                ) => {
                    let n = self.outcomes.entry(send_id).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "{send_id:?} resolved twice");
                }
                _ => {}
            }
        }
        assert!(self.live.len() <= 2, "transports held: {:?}", self.live);
        if let (Some(p), Some(q)) = (c.primary_transport(), c.probe_transport()) {
            assert_ne!(p.0, q.0);
        }
    }

    fn pick(&self, which: u8) -> TransportId {
        self.ids
            .get(which as usize % self.ids.len().max(1))
            .copied()
            .unwrap_or(TransportId(9_999))
    }
}

fn welcome(resumed: bool) -> ServerFrame {
    ServerFrame::Welcome {
        v: 1,
        session: "s".into(),
        resume_token: "r".into(),
        resumed,
        ping_interval_ms: 20_000,
        user: UserInfo {
            id: "u0".into(),
            name: "U0".into(),
        },
        limits: Limits {
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

fn run(seed: u64, ops: Vec<Op>) {
    let mut now = Instant::from_millis(0);
    let mut c = Client::new(Config::default(), now, seed);
    let mut w = Watch::default();
    for op in ops {
        let room = |r: u8| ROOMS[r as usize % ROOMS.len()].to_owned();
        let frame = |c: &mut Client, now: Instant, id: TransportId, frame: ServerFrame| {
            c.handle_input(now, Input::Frame { id, frame });
        };
        match op {
            Op::Connect => c.handle_input(now, Input::Connect),
            Op::Subscribe(r) => {
                w.delivered.remove(&room(r));
                c.handle_input(
                    now,
                    Input::Subscribe {
                        room: room(r),
                        history: 0,
                    },
                )
            }
            Op::Unsubscribe(r) => {
                w.delivered.remove(&room(r));
                c.handle_input(now, Input::Unsubscribe { room: room(r) })
            }
            Op::Publish(r) => {
                if let Ok(id) = c.publish(now, &room(r), "p".into()) {
                    w.published.push(id);
                }
            }
            Op::SetPresence(r) => c.handle_input(
                now,
                Input::SetPresence {
                    room: room(r),
                    meta: "m".into(),
                },
            ),
            Op::Keystroke(r) => c.handle_input(now, Input::Keystroke { room: room(r) }),
            Op::TypingStop(r) => c.handle_input(now, Input::TypingStop { room: room(r) }),
            Op::Lifecycle(k) => {
                let input = [
                    Input::Online,
                    Input::Offline,
                    Input::Hidden,
                    Input::Visible,
                    Input::Frozen,
                    Input::Resumed,
                ];
                c.handle_input(now, input[k as usize % input.len()].clone())
            }
            Op::TokenReady => c.handle_input(now, Input::TokenReady("t".into())),
            Op::TokenFailed(terminal) => c.handle_input(now, Input::TokenFailed { terminal }),
            Op::Ticket(t) => c.handle_input(
                now,
                Input::TicketIssued {
                    id: w.pick(t),
                    ticket: "k".into(),
                },
            ),
            Op::Opened(t) => c.handle_input(now, Input::TransportOpened { id: w.pick(t) }),
            Op::OpenFailed(t, e) => {
                let errors = [
                    OpenError::Network,
                    OpenError::Unreachable,
                    OpenError::Overloaded {
                        retry_after_ms: Some(1_000),
                    },
                    OpenError::SessionUnknown,
                    OpenError::Unauthorized,
                ];
                let id = w.pick(t);
                w.live.remove(&id);
                c.handle_input(
                    now,
                    Input::OpenFailed {
                        id,
                        error: errors[e as usize % errors.len()],
                    },
                )
            }
            Op::Closed(t, code) => {
                let id = w.pick(t);
                w.live.remove(&id);
                let code = code.map(|i| CloseCode(CODES[i as usize % CODES.len()]));
                c.handle_input(
                    now,
                    Input::TransportClosed {
                        id,
                        code,
                        reason: String::new(),
                    },
                )
            }
            Op::Welcome(t, resumed) => frame(&mut c, now, w.pick(t), welcome(resumed)),
            Op::Msg(t, r, offset) => {
                let f = ServerFrame::Message {
                    room: room(r),
                    offset: offset.into(),
                    sender: "x".into(),
                    name: None,
                    payload: String::new(),
                };
                frame(&mut c, now, w.pick(t), f)
            }
            Op::Subscribed(t, r, head, recovered) => frame(
                &mut c,
                now,
                w.pick(t),
                ServerFrame::Subscribed {
                    room: room(r),
                    head: head.into(),
                    recovered,
                    epoch: String::new(),
                },
            ),
            Op::Ack(t, i, offset) => {
                if let Some(id) = w
                    .wire_ids
                    .get(i as usize % w.wire_ids.len().max(1))
                    .cloned()
                {
                    frame(
                        &mut c,
                        now,
                        w.pick(t),
                        ServerFrame::Ack {
                            id,
                            room: "a".into(),
                            offset: offset.into(),
                        },
                    )
                }
            }
            Op::Nack(t, i) => {
                if let Some(id) = w
                    .wire_ids
                    .get(i as usize % w.wire_ids.len().max(1))
                    .cloned()
                {
                    frame(
                        &mut c,
                        now,
                        w.pick(t),
                        ServerFrame::Nack {
                            id,
                            code: ErrorCode::RateLimited,
                            reason: String::new(),
                        },
                    )
                }
            }
            Op::Ping(t) => frame(&mut c, now, w.pick(t), ServerFrame::Ping),
            Op::CloseFrame(t, code) => {
                let code = CloseCode(CODES[code as usize % CODES.len()]);
                frame(
                    &mut c,
                    now,
                    w.pick(t),
                    ServerFrame::Close {
                        code,
                        reason: String::new(),
                    },
                )
            }
            Op::ReconnectAfter(t, a, b) => frame(
                &mut c,
                now,
                w.pick(t),
                ServerFrame::ReconnectAfter {
                    min_ms: a.into(),
                    max_ms: b.into(),
                },
            ),
            Op::Presence(t, r, session, user, join) => {
                let f = if join {
                    let conn = PresenceConn {
                        session: format!("s{session}"),
                        user: format!("u{user}"),
                        name: "N".into(),
                        meta: String::new(),
                    };
                    ServerFrame::PresenceJoin {
                        room: room(r),
                        conn,
                    }
                } else {
                    ServerFrame::PresenceLeave {
                        room: room(r),
                        session: format!("s{session}"),
                        user: format!("u{user}"),
                    }
                };
                frame(&mut c, now, w.pick(t), f)
            }
            Op::Typing(t, r, user, active) => {
                let f = ServerFrame::Typing {
                    room: room(r),
                    user: format!("u{user}"),
                    name: "N".into(),
                    active,
                };
                frame(&mut c, now, w.pick(t), f)
            }
            Op::Advance(ms) => {
                now = now.plus(ms.into());
                c.handle_timeout(now);
            }
            Op::JumpToDeadline => {
                if let Some(t) = c.poll_timeout() {
                    now = now.max(t);
                    c.handle_timeout(now);
                }
            }
        }
        w.drain(&mut c);
        // a deadline in the past would spin the glue's timer
        if let Some(t) = c.poll_timeout() {
            if t <= now {
                c.handle_timeout(now);
                w.drain(&mut c);
                assert!(
                    !matches!(c.poll_timeout(), Some(t) if t <= now),
                    "deadline not consumed"
                );
            }
        }
    }
    c.handle_input(now, Input::Close);
    w.drain(&mut c);
    assert!(matches!(c.state(), State::Closed { .. }));
    assert_eq!(c.pending_sends(), 0);
    for id in &w.published {
        assert_eq!(w.outcomes.get(id), Some(&1), "{id:?} never resolved");
    }
    assert!(
        w.live.is_empty(),
        "transports left open after close: {:?}",
        w.live
    );
    assert_eq!(c.poll_timeout(), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_inputs_keep_the_invariants(seed in any::<u64>(), ops in proptest::collection::vec(op(), 0..120)) {
        run(seed, ops);
    }
}

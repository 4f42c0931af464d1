//! The client's serde-free codec (`core::wire`, `core::json`) against the server's serde codec:
//! every server frame the server can write decodes to the same value, every client frame encodes
//! to the same bytes, and no input makes either side panic.

#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use rtlink::core::json::{self, Json};
use rtlink::core::wire::{self, DecodeError};
use rtlink_protocol::codec::{decode_client, encode_server};
use rtlink_protocol::{
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo,
    PROTOCOL_VERSION,
};

/// Any string, control characters, quotes, backslashes and astral characters included.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.:-]{0,12}",
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just('\u{1}'),
                Just('é'),
                Just('😀'),
                Just('\u{2028}')
            ],
            0..8
        )
        .prop_map(|cs| cs.into_iter().collect()),
    ]
}

/// Offsets and milliseconds: whole numbers a JS number holds exactly.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![0..1000u64, Just(json::MAX_SAFE), 0..=json::MAX_SAFE]
}

fn conn() -> impl Strategy<Value = PresenceConn> {
    (text(), text(), text(), text()).prop_map(|(session, user, name, meta)| PresenceConn {
        session,
        user,
        name,
        meta,
    })
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let limits = (
        num(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        num(),
        num(),
        num(),
        num(),
        num(),
    )
        .prop_map(
            |(
                max_frame_bytes,
                rate_per_sec,
                burst,
                max_rooms,
                resume_window_ms,
                dedupe_window_ms,
                max_batch_bytes,
                publish_bytes_per_sec,
                publish_bytes_burst,
            )| Limits {
                max_frame_bytes,
                rate_per_sec,
                burst,
                max_rooms,
                resume_window_ms,
                dedupe_window_ms,
                max_batch_bytes,
                publish_bytes_per_sec,
                publish_bytes_burst,
            },
        );
    prop_oneof![
        (text(), text(), any::<bool>(), num(), text(), text(), limits).prop_map(
            |(session, resume_token, resumed, ping_interval_ms, id, name, limits)| {
                ServerFrame::Welcome {
                    v: PROTOCOL_VERSION,
                    session,
                    resume_token,
                    resumed,
                    ping_interval_ms,
                    user: UserInfo { id, name },
                    limits,
                }
            }
        ),
        Just(ServerFrame::Ping),
        Just(ServerFrame::Pong),
        (text(), num(), any::<bool>(), text()).prop_map(|(room, head, recovered, epoch)| {
            ServerFrame::Subscribed {
                room,
                head,
                recovered,
                epoch,
            }
        }),
        text().prop_map(|room| ServerFrame::Unsubscribed { room }),
        (text(), num(), text(), proptest::option::of(text()), text()).prop_map(
            |(room, offset, sender, name, payload)| ServerFrame::Message {
                room,
                offset,
                sender,
                name,
                payload
            }
        ),
        (text(), text(), num()).prop_map(|(id, room, offset)| ServerFrame::Ack {
            id,
            room,
            offset
        }),
        (
            text(),
            proptest::sample::select(ErrorCode::ALL.to_vec()),
            text()
        )
            .prop_map(|(id, code, reason)| ServerFrame::Nack { id, code, reason }),
        (text(), proptest::collection::vec(conn(), 0..4))
            .prop_map(|(room, conns)| ServerFrame::PresenceSnapshot { room, conns }),
        (text(), conn()).prop_map(|(room, conn)| ServerFrame::PresenceJoin { room, conn }),
        (text(), conn()).prop_map(|(room, conn)| ServerFrame::PresenceUpdate { room, conn }),
        (text(), text(), text()).prop_map(|(room, session, user)| ServerFrame::PresenceLeave {
            room,
            session,
            user
        }),
        (
            text(),
            proptest::collection::vec(conn(), 0..3),
            proptest::collection::vec((text(), text()), 0..3)
        )
            .prop_map(|(room, joins, leaves)| ServerFrame::PresenceDiff {
                room,
                joins,
                leaves: leaves
                    .into_iter()
                    .map(|(session, user)| PresenceLeft { session, user })
                    .collect(),
            }),
        (text(), text(), text(), any::<bool>()).prop_map(|(room, user, name, active)| {
            ServerFrame::Typing {
                room,
                user,
                name,
                active,
            }
        }),
        (num(), num()).prop_map(|(min_ms, max_ms)| ServerFrame::ReconnectAfter { min_ms, max_ms }),
        (any::<u16>(), text()).prop_map(|(code, reason)| ServerFrame::Close {
            code: CloseCode(code),
            reason
        }),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        proptest::option::of(text()).prop_map(|resume| ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            resume
        }),
        Just(ClientFrame::Ping),
        Just(ClientFrame::Pong),
        (
            text(),
            proptest::option::of(num()),
            proptest::option::of(text()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(room, since, epoch, history)| ClientFrame::Subscribe {
                room,
                since,
                epoch,
                history
            }),
        text().prop_map(|room| ClientFrame::Unsubscribe { room }),
        (text(), text(), text()).prop_map(|(room, id, payload)| ClientFrame::Publish {
            room,
            id,
            payload
        }),
        (text(), text()).prop_map(|(room, meta)| ClientFrame::Presence { room, meta }),
        (text(), any::<bool>()).prop_map(|(room, active)| ClientFrame::Typing { room, active }),
        Just(ClientFrame::Switch),
        (any::<u16>(), text()).prop_map(|(code, reason)| ClientFrame::Close {
            code: CloseCode(code),
            reason
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_server_frame_decodes_as_the_server_wrote_it(frame in server_frame()) {
        let text = String::from_utf8(encode_server(&frame)).unwrap();
        prop_assert_eq!(wire::decode(&text), Ok(frame.clone()));
        // Pretty-printed (whitespace everywhere JSON allows it) reads the same.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(wire::decode(&serde_json::to_string_pretty(&value).unwrap()), Ok(frame));
    }

    #[test]
    fn every_client_frame_encodes_as_the_server_reads_it(frame in client_frame()) {
        let text = wire::encode(&frame);
        let serde = rtlink_protocol::codec::encode_client(&frame);
        prop_assert_eq!(text.as_bytes(), serde.as_slice());
        prop_assert_eq!(decode_client(text.as_bytes(), usize::MAX), Ok(frame));
    }

    #[test]
    fn any_json_value_reads_as_serde_json_reads_it(value in json_value()) {
        let text = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(json::parse(&text), Some(expected(&value)));
    }

    #[test]
    fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = wire::decode(&text);
        // Whatever serde_json refuses, the reader refuses too (it may refuse more: depth).
        if json::parse(&text).is_some() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "accepted invalid JSON {:?}", text);
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::vec((text(), inner), 0..4)
                .prop_map(|members| serde_json::Value::Object(members.into_iter().collect())),
        ]
    })
}

/// What `json::parse` should make of a serde_json value.
fn expected(v: &serde_json::Value) -> Json {
    match v {
        serde_json::Value::Null => Json::Null,
        serde_json::Value::Bool(b) => Json::Bool(*b),
        serde_json::Value::Number(n) => Json::Num(
            n.as_u64()
                .filter(|n| *n <= json::MAX_SAFE)
                .filter(|_| !n.to_string().contains(['.', 'e', 'E'])),
        ),
        serde_json::Value::String(s) => Json::Str(s.clone()),
        serde_json::Value::Array(items) => Json::Arr(items.iter().map(expected).collect()),
        serde_json::Value::Object(members) => Json::Obj(
            members
                .iter()
                .map(|(k, v)| (k.clone(), expected(v)))
                .collect(),
        ),
    }
}

#[test]
fn what_the_reader_refuses_and_accepts() {
    for bad in [
        "",
        "{",
        "{\"t\":}",
        "[1,]",
        "01",
        "-",
        "1.",
        "1e",
        "\"\u{1}\"",
        "\"\\x\"",
        "nul",
        "{} x",
        "\"\\ud800",
    ] {
        assert_eq!(json::parse(bad), None, "{bad:?}");
    }
    assert_eq!(json::parse(" -0.5e+3 "), Some(Json::Num(None)));
    assert_eq!(json::parse("9007199254740992"), Some(Json::Num(None)));
    assert_eq!(
        json::parse("\"\\ud83d\\ude00 \\ud800x \\u00e9\""),
        Some(Json::Str("😀 \u{fffd}x é".into()))
    );
    let deep = "[".repeat(40) + &"]".repeat(40);
    assert_eq!(json::parse(&deep), None, "nesting is bounded");
    assert_eq!(
        wire::decode("{\"t\":\"message\",\"room\":\"r\"}"),
        Err(DecodeError::Malformed("offset"))
    );
    assert_eq!(wire::decode("[]"), Err(DecodeError::Malformed("")));
    assert_eq!(
        wire::decode("{\"t\":\"later\",\"x\":[1.5,{}]}"),
        Ok(ServerFrame::Unknown)
    );
    let other_version = r#"{"t":"welcome","v":2}"#;
    assert_eq!(
        wire::decode(other_version),
        Err(DecodeError::UnsupportedVersion)
    );
}

/// Fields the client reads as empty when absent, though the server always writes them.
const LENIENT: &[&str] = &[
    "reason",
    "meta",
    "epoch",
    "name",
    "dedupe_window_ms",
    "max_batch_bytes",
];

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// A frame missing one member (nested members included) is refused naming the first field
    /// missing in the order the decoder reads them, or still decodes if that member is optional
    /// (as the server's codec does, or more leniently for the [`LENIENT`] fields).
    #[test]
    fn a_frame_missing_a_member_names_it(frame in server_frame(), pick in any::<prop::sample::Index>()) {
        let mut value: serde_json::Value = serde_json::from_slice(&encode_server(&frame)).expect("the codec writes JSON");
        let mut paths = Vec::new();
        for (k, v) in value.as_object().expect("frames are objects") {
            paths.push((k.clone(), None));
            if let Some(inner) = v.as_object() {
                paths.extend(inner.keys().map(|ik| (k.clone(), Some(ik.clone()))));
            }
        }
        let (key, inner) = paths[pick.index(paths.len())].clone();
        let removed = match &inner {
            None => key.clone(),
            Some(ik) => ik.clone(),
        };
        match &inner {
            None => value.as_object_mut().expect("object").remove(&key),
            Some(ik) => value[&key].as_object_mut().expect("object").remove(ik),
        };
        let text = value.to_string();
        let ours = wire::decode(&text);
        let theirs = rtlink_protocol::codec::decode_server(text.as_bytes(), usize::MAX);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(DecodeError::Malformed(field)), Err(_)) => prop_assert_eq!(*field, removed.as_str()),
            // Where the protocol allows, the client is more lenient than the server's codec.
            (Ok(_), Err(_)) if LENIENT.contains(&removed.as_str()) => {}
            _ => prop_assert!(false, "{text}: ours {ours:?}, serde's {theirs:?}"),
        }
    }
}

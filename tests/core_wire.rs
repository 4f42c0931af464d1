//! The façade's frame codec (`js/wire.js`, run in node) with the module's side of it
//! (`core::wire`), against the server's serde codec: every server frame the server can write
//! reaches the core as the same value, every client frame the core sends is written as the bytes
//! the server's codec writes, a frame missing a member names it, and no input makes either side
//! throw or panic. (The browser reads frames with `JSON.parse` and this code; the module has no
//! JSON reader or writer.)

#![cfg(not(target_arch = "wasm32"))]

use std::io::Write;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rtlink::core::wire::{self, Fields};
use rtlink_protocol::codec::{decode_server, encode_client, encode_server};
use rtlink_protocol::{
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo,
    PROTOCOL_VERSION,
};
use serde_json::{json, Value};

/// The largest number a JS number holds exactly.
const MAX_SAFE: u64 = (1 << 53) - 1;

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
    prop_oneof![0..1000u64, Just(MAX_SAFE), 0..=MAX_SAFE]
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

/// Runs each request through js/wire.js in one node process: `["read", text]` is
/// `read(parse(text))`, `["write", [kind, a, b, c, y]]` is `write(…)`. Strings in the answers are
/// as the module receives them: through `TextEncoder` (a lone surrogate becomes U+FFFD).
fn node(requests: &[Value]) -> Vec<Value> {
    let script = format!(
        r#"import {{ parse, read, write }} from {url};
import {{ createInterface }} from "node:readline";
const utf8 = (v) => typeof v === "string" ? new TextDecoder().decode(new TextEncoder().encode(v))
  : Array.isArray(v) ? v.map(utf8) : v;
const out = [];
for await (const line of createInterface({{ input: process.stdin, crlfDelay: Infinity }})) {{
  const [op, arg] = JSON.parse(line);
  out.push(JSON.stringify(utf8(op === "read" ? read(parse(arg)) : write(...arg))));
}}
process.stdout.write(out.join("\n") + "\n");"#,
        url = json!(format!("file://{}/js/wire.js", env!("CARGO_MANIFEST_DIR")))
    );
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup's npm needs it)");
    let mut input = String::new();
    for r in requests {
        input.push_str(&r.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("node ran");
    writer
        .join()
        .expect("the writer ran")
        .expect("node read its input");
    assert!(output.status.success(), "node failed");
    let answers: Vec<Value> = String::from_utf8(output.stdout)
        .expect("node writes UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("node writes JSON lines"))
        .collect();
    assert_eq!(answers.len(), requests.len());
    answers
}

/// What the façade made of a server frame's text, as the core receives it.
#[derive(Debug, PartialEq)]
enum Read {
    /// The frame, and for a `welcome` the session handed to the upstream: its resume token and
    /// largest body.
    Frame(ServerFrame, Option<(String, u64)>),
    /// Not used: the transport closes with this code and reason.
    Refused(u16, String),
}

fn read_all(texts: &[String]) -> Vec<Read> {
    let requests: Vec<Value> = texts.iter().map(|t| json!(["read", t])).collect();
    node(&requests)
        .into_iter()
        .map(|answer| {
            let kind = answer[0].as_i64().expect("a kind");
            if kind < 0 {
                return Read::Refused(-kind as u16, answer[1].as_str().expect("a reason").into());
            }
            let fields: Vec<&str> = answer[1]
                .as_array()
                .expect("fields")
                .iter()
                .map(|f| f.as_str().expect("fields are strings"))
                .collect();
            let mut reader = Fields(fields.iter().copied());
            let frame = wire::server_frame(kind as u32, &mut reader);
            assert_eq!(reader.0.next(), None, "every field is read: {answer}");
            let session = answer.get(2).map(|s| {
                (
                    s[0].as_str().expect("a token").into(),
                    s[1].as_u64().expect("a size"),
                )
            });
            Read::Frame(frame, session)
        })
        .collect()
}

/// `count` values of a strategy.
/// The seed is random and printed (shown when a test fails); `WIRE_SEED=n` replays it.
fn sample<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let seed = std::env::var("WIRE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("sample seed: WIRE_SEED={seed}");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

const MALFORMED: &str = "malformed frame from server";
const VERSION: &str = "the server speaks another protocol version";

fn malformed(field: &str) -> Read {
    Read::Refused(
        4000,
        format!("{MALFORMED}: missing or invalid field {field}"),
    )
}

/// The session a `welcome` hands to the upstream: its resume token and the largest body (the
/// batch limit, else the frame limit, else 64 KiB).
fn session_of(frame: &ServerFrame) -> Option<(String, u64)> {
    match frame {
        ServerFrame::Welcome {
            resume_token,
            limits,
            ..
        } => {
            let max = [limits.max_batch_bytes, limits.max_frame_bytes, 65_536]
                .into_iter()
                .find(|n| *n >= 1);
            Some((resume_token.clone(), max.unwrap_or(65_536)))
        }
        _ => None,
    }
}

#[test]
fn every_server_frame_reaches_the_core_as_the_server_wrote_it() {
    let frames = sample(server_frame(), 2000);
    let mut texts = Vec::new();
    for frame in &frames {
        let text = String::from_utf8(encode_server(frame)).unwrap();
        // Pretty-printed (whitespace everywhere JSON allows it) reads the same.
        let value: Value = serde_json::from_str(&text).unwrap();
        texts.push(serde_json::to_string_pretty(&value).unwrap());
        texts.push(text);
    }
    for (i, read) in read_all(&texts).into_iter().enumerate() {
        let frame = &frames[i / 2];
        assert_eq!(
            read,
            Read::Frame(frame.clone(), session_of(frame)),
            "{}",
            texts[i]
        );
    }
}

#[test]
fn every_client_frame_is_written_as_the_server_codec_writes_it() {
    let frames = sample(client_frame(), 2000);
    let requests: Vec<Value> = frames
        .iter()
        .map(|f| {
            let r = wire::client_record(f);
            json!(["write", [r.kind, r.a, r.b, r.c, r.y]])
        })
        .collect();
    for (frame, text) in frames.iter().zip(node(&requests)) {
        let text = text.as_str().expect("write gives text");
        assert_eq!(
            text.as_bytes(),
            encode_client(frame).as_slice(),
            "{frame:?}"
        );
    }
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

/// A frame missing one member (nested members included) is refused naming it (the first field
/// missing in the order the façade reads them), or still reaches the core if that member is
/// optional (as in the server's codec, or more leniently for the [`LENIENT`] fields).
#[test]
fn a_frame_missing_a_member_names_it() {
    let cases = sample((server_frame(), any::<prop::sample::Index>()), 1000);
    let mut texts = Vec::new();
    let mut removed = Vec::new();
    for (frame, pick) in &cases {
        let mut value: Value = serde_json::from_slice(&encode_server(frame)).unwrap();
        let mut paths = Vec::new();
        for (k, v) in value.as_object().expect("frames are objects") {
            paths.push((k.clone(), None));
            if let Some(inner) = v.as_object() {
                paths.extend(inner.keys().map(|ik| (k.clone(), Some(ik.clone()))));
            }
        }
        let (key, inner) = paths[pick.index(paths.len())].clone();
        match &inner {
            None => value.as_object_mut().unwrap().remove(&key),
            Some(ik) => value[&key].as_object_mut().unwrap().remove(ik),
        };
        removed.push(inner.unwrap_or(key));
        texts.push(value.to_string());
    }
    for ((text, removed), ours) in texts.iter().zip(&removed).zip(read_all(&texts)) {
        let theirs = decode_server(text.as_bytes(), usize::MAX);
        match (&ours, &theirs) {
            (Read::Frame(a, _), Ok(b)) => assert_eq!(a, b, "{text}"),
            (Read::Refused(..), Err(_)) => assert_eq!(ours, malformed(removed), "{text}"),
            // Where the protocol allows, the client is more lenient than the server's codec.
            (Read::Frame(..), Err(_)) if LENIENT.contains(&removed.as_str()) => {}
            _ => panic!("{text}: ours {ours:?}, serde's {theirs:?}"),
        }
    }
}

#[test]
fn what_the_facade_refuses_and_accepts() {
    let unknown = Read::Frame(ServerFrame::Unknown, None);
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let cases: Vec<(String, Read)> = vec![
        ("".into(), Read::Refused(4000, MALFORMED.into())),
        ("{\"t\":}".into(), Read::Refused(4000, MALFORMED.into())),
        ("[]".into(), Read::Refused(4000, MALFORMED.into())),
        ("null".into(), Read::Refused(4000, MALFORMED.into())),
        ("\"ping\"".into(), Read::Refused(4000, MALFORMED.into())),
        ("{}".into(), malformed("t")),
        ("{\"t\":1}".into(), malformed("t")),
        (r#"{"t":"message","room":"r"}"#.into(), malformed("offset")),
        // Offsets are whole numbers a JS number holds exactly, not negative.
        (
            r#"{"t":"ack","id":"1","room":"r","offset":-0}"#.into(),
            malformed("offset"),
        ),
        (
            r#"{"t":"ack","id":"1","room":"r","offset":1.5}"#.into(),
            malformed("offset"),
        ),
        (
            r#"{"t":"ack","id":"1","room":"r","offset":9007199254740992}"#.into(),
            malformed("offset"),
        ),
        (
            r#"{"t":"ack","id":"1","room":"r","offset":"3"}"#.into(),
            malformed("offset"),
        ),
        (
            r#"{"t":"typing","room":"r","user":"u","name":"n","active":1}"#.into(),
            malformed("active"),
        ),
        // Unknown types, with anything in them, are for the core to ignore.
        (r#"{"t":"later","x":[1.5,{}]}"#.into(), unknown),
        (
            format!(r#"{{"t":"later","x":{deep}}}"#),
            Read::Frame(ServerFrame::Unknown, None),
        ),
        (
            r#"{"t":"welcome","v":2}"#.into(),
            Read::Refused(4002, VERSION.into()),
        ),
        (r#"{"t":"welcome","v":"1"}"#.into(), malformed("v")),
        (
            r#"{"t":"welcome","v":1,"limits":{}}"#.into(),
            malformed("user"),
        ),
        // A present non-array list reads as empty; its elements must be objects.
        (
            r#"{"t":"presence_snapshot","room":"r","conns":null}"#.into(),
            Read::Frame(
                ServerFrame::PresenceSnapshot {
                    room: "r".into(),
                    conns: vec![],
                },
                None,
            ),
        ),
        (
            r#"{"t":"presence_snapshot","room":"r","conns":[1]}"#.into(),
            malformed("session"),
        ),
        (
            r#"{"t":"presence_diff","room":"r","joins":[],"leaves":[{"session":"s"}]}"#.into(),
            malformed("user"),
        ),
        // The last of a repeated key counts, as in `JSON.parse`; escapes and surrogates are
        // read as JSON reads them, a lone surrogate as U+FFFD.
        (
            r#"{"t":"unsubscribed","room":"a","room":"\ud83d\ude00 \ud800x \u00e9\n"}"#.into(),
            Read::Frame(
                ServerFrame::Unsubscribed {
                    room: "😀 \u{fffd}x é\n".into(),
                },
                None,
            ),
        ),
        (
            r#"{"t":"close","code":70000}"#.into(),
            Read::Frame(
                ServerFrame::Close {
                    code: CloseCode(u16::MAX),
                    reason: String::new(),
                },
                None,
            ),
        ),
    ];
    let texts: Vec<String> = cases.iter().map(|(t, _)| t.clone()).collect();
    for ((text, expected), read) in cases.iter().zip(read_all(&texts)) {
        assert_eq!(&read, expected, "{text}");
    }
}

/// Every key the façade reads: a refusal names one of them.
const KEYS: &[&str] = &[
    "t",
    "v",
    "user",
    "limits",
    "session",
    "resume_token",
    "resumed",
    "ping_interval_ms",
    "id",
    "name",
    "max_frame_bytes",
    "rate_per_sec",
    "burst",
    "max_rooms",
    "resume_window_ms",
    "room",
    "head",
    "recovered",
    "offset",
    "sender",
    "payload",
    "code",
    "conns",
    "conn",
    "joins",
    "leaves",
    "active",
    "min_ms",
    "max_ms",
];

#[test]
fn no_input_makes_the_facade_throw_or_the_module_panic() {
    let mut texts: Vec<String> = sample(proptest::collection::vec(any::<u8>(), 0..256), 1000)
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    // Valid JSON of every frame type with fields of random types.
    let field = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        text().prop_map(|s| json!(s)),
        Just(json!([{}, 1])),
        Just(json!({"session": "s", "user": 1})),
    ];
    let types = proptest::sample::select(vec![
        "welcome",
        "subscribed",
        "message",
        "nack",
        "presence_snapshot",
        "presence_join",
        "presence_diff",
        "typing",
        "reconnect_after",
        "close",
    ]);
    let keys = proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), field), 0..12);
    for (t, members) in sample((types, keys), 1000) {
        let mut frame = serde_json::Map::new();
        frame.insert("t".into(), json!(t));
        for (k, v) in members {
            frame.insert(k.into(), v);
        }
        texts.push(Value::Object(frame).to_string());
    }
    for (text, read) in texts.iter().zip(read_all(&texts)) {
        if let Read::Refused(code, reason) = read {
            let field = reason
                .strip_prefix(MALFORMED)
                .map(|r| r.strip_prefix(": missing or invalid field ").unwrap_or(r));
            let known = match code {
                4000 => field.is_some_and(|f| f.is_empty() || KEYS.contains(&f)),
                4002 => text.contains("welcome") && reason == VERSION,
                _ => false,
            };
            assert!(known, "{text}: {code} {reason}");
        }
    }
    // The module's side builds a frame from any fields without panicking.
    for (kind, fields) in sample((0..20u32, proptest::collection::vec(text(), 0..40)), 2000) {
        wire::server_frame(kind, &mut Fields(fields.iter().map(String::as_str)));
    }
}

//! JSON encoding and decoding of frames and envelopes.
//!
//! `decode_*` takes untrusted bytes. It checks the size before parsing, never panics, and says
//! what was wrong with a typed [`DecodeError`], which the server maps to a close code.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::{max_batch_bytes, PollBatch, PollRequest, TicketRequest, UpstreamBatch};
use crate::{ClientFrame, CloseCode, ServerFrame, PROTOCOL_VERSION};

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than the limit; nothing was parsed.
    TooLarge { len: usize, max: usize },
    /// Not JSON, not an object, an unknown `"t"`, or a field of the wrong type.
    Malformed(String),
    /// A `hello` or `welcome` of another protocol version.
    UnsupportedVersion(u32),
}

impl DecodeError {
    /// The close code a server sends for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::TooLarge { .. } => CloseCode::FRAME_TOO_LARGE,
            Self::Malformed(_) => CloseCode::MALFORMED_FRAME,
            Self::UnsupportedVersion(_) => CloseCode::UNSUPPORTED_VERSION,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            Self::Malformed(why) => write!(f, "malformed frame: {why}"),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "protocol version {v} is not supported (this side speaks {PROTOCOL_VERSION})"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {}

fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(alloc::format!("{e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every field is a string, number, bool or a Vec of them.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a frame sent by a client.
pub fn decode_client(bytes: &[u8], max: usize) -> Result<ClientFrame, DecodeError> {
    let frame: ClientFrame = decode(bytes, max)?;
    if let ClientFrame::Hello { v, .. } = frame {
        if v != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
    }
    Ok(frame)
}

/// Decodes a frame sent by a server.
pub fn decode_server(bytes: &[u8], max: usize) -> Result<ServerFrame, DecodeError> {
    let frame: ServerFrame = decode(bytes, max)?;
    if let ServerFrame::Welcome { v, .. } = frame {
        if v != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
    }
    Ok(frame)
}

/// Decodes the body of `POST /v1/send` for a server whose frame limit is `max_frame`: the body
/// may be [`max_batch_bytes`]`(max_frame)` long, and every frame in it is checked like
/// [`decode_client`] (its own encoded size included).
pub fn decode_upstream(bytes: &[u8], max_frame: usize) -> Result<UpstreamBatch, DecodeError> {
    #[derive(serde::Deserialize)]
    struct RawBatch<'a> {
        session: String,
        #[serde(borrow)]
        frames: Vec<&'a serde_json::value::RawValue>,
    }
    let max_body = max_batch_bytes(max_frame);
    if bytes.len() > max_body {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_body,
        });
    }
    let raw: RawBatch<'_> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(alloc::format!("{e}")))?;
    let frames = raw
        .frames
        .iter()
        .map(|f| decode_client(f.get().as_bytes(), max_frame))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UpstreamBatch {
        session: raw.session,
        frames,
    })
}

/// Decodes the optional body of `POST /v1/ticket` (empty means a plain ticket).
pub fn decode_ticket_request(bytes: &[u8], max: usize) -> Result<TicketRequest, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TicketRequest::default());
    }
    decode(bytes, max)
}

/// Decodes the body of `POST /v1/poll`.
pub fn decode_poll_request(bytes: &[u8], max: usize) -> Result<PollRequest, DecodeError> {
    decode(bytes, max)
}

/// Decodes a long-poll response body.
pub fn decode_poll(bytes: &[u8], max: usize) -> Result<PollBatch, DecodeError> {
    decode(bytes, max)
}

pub fn encode_client(frame: &ClientFrame) -> Vec<u8> {
    encode(frame)
}

pub fn encode_server(frame: &ServerFrame) -> Vec<u8> {
    encode(frame)
}

pub fn encode_upstream(batch: &UpstreamBatch) -> Vec<u8> {
    encode(batch)
}

pub fn encode_poll(batch: &PollBatch) -> Vec<u8> {
    encode(batch)
}

/// Renders one SSE event carrying an already encoded frame: `id: <seq>`, `data: <json>`, blank line.
/// The JSON encoder never emits a raw newline, so the frame fits one `data:` line.
pub fn sse_event(seq: u64, frame_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_json.len() + 32);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(alloc::format!("{seq}").as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(frame_json);
    out.extend_from_slice(b"\n\n");
    out
}

/// The SSE keep-alive comment line.
pub const SSE_KEEPALIVE: &[u8] = b": ka\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, Limits, PresenceConn, UserInfo, DEFAULT_MAX_FRAME_BYTES};
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

    fn all_server_frames() -> Vec<ServerFrame> {
        let conn = PresenceConn {
            session: "s1".into(),
            user: "u1".into(),
            name: "Ana".into(),
            meta: "{\"status\":\"away\"}".into(),
        };
        vec![
            ServerFrame::Welcome {
                v: PROTOCOL_VERSION,
                session: "s1".into(),
                resume_token: "r".into(),
                resumed: false,
                ping_interval_ms: 25_000,
                user: UserInfo {
                    id: "u1".into(),
                    name: "Ana".into(),
                },
                limits: Limits {
                    max_frame_bytes: 65_536,
                    rate_per_sec: 20,
                    burst: 40,
                    max_rooms: 100,
                    resume_window_ms: 120_000,
                    dedupe_window_ms: 120_000,
                    max_batch_bytes: 69_632,
                    publish_bytes_per_sec: 131_072,
                    publish_bytes_burst: 2_097_152,
                },
            },
            ServerFrame::Ping,
            ServerFrame::Pong,
            ServerFrame::Subscribed {
                room: "r".into(),
                head: 3,
                recovered: true,
                epoch: "e1".into(),
            },
            ServerFrame::Unsubscribed { room: "r".into() },
            ServerFrame::Message {
                room: "r".into(),
                offset: 4,
                sender: "u1".into(),
                name: Some("Ana".into()),
                payload: "\"hi\\nthere\"".into(),
            },
            ServerFrame::Ack {
                id: "m1".into(),
                room: "r".into(),
                offset: 4,
            },
            ServerFrame::Nack {
                id: "m1".into(),
                code: ErrorCode::RateLimited,
                reason: "slow".into(),
            },
            ServerFrame::PresenceSnapshot {
                room: "r".into(),
                conns: vec![conn.clone()],
            },
            ServerFrame::PresenceJoin {
                room: "r".into(),
                conn: conn.clone(),
            },
            ServerFrame::PresenceUpdate {
                room: "r".into(),
                conn: conn.clone(),
            },
            ServerFrame::PresenceDiff {
                room: "r".into(),
                joins: vec![conn],
                leaves: vec![crate::PresenceLeft {
                    session: "s2".into(),
                    user: "u2".into(),
                }],
            },
            ServerFrame::PresenceLeave {
                room: "r".into(),
                session: "s1".into(),
                user: "u1".into(),
            },
            ServerFrame::Typing {
                room: "r".into(),
                user: "u1".into(),
                name: "Ana".into(),
                active: true,
            },
            ServerFrame::ReconnectAfter {
                min_ms: 0,
                max_ms: 10_000,
            },
            ServerFrame::Close {
                code: CloseCode::SERVER_DRAINING,
                reason: "drain".into(),
            },
        ]
    }

    fn all_client_frames() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Hello {
                v: PROTOCOL_VERSION,
                resume: Some("r".into()),
            },
            ClientFrame::Hello {
                v: PROTOCOL_VERSION,
                resume: None,
            },
            ClientFrame::Ping,
            ClientFrame::Pong,
            ClientFrame::Subscribe {
                room: "r".into(),
                since: Some(7),
                epoch: Some("e1".into()),
                history: None,
            },
            ClientFrame::Subscribe {
                room: "r".into(),
                since: None,
                epoch: None,
                history: None,
            },
            ClientFrame::Unsubscribe { room: "r".into() },
            ClientFrame::Publish {
                room: "r".into(),
                id: "c1".into(),
                payload: "{}".into(),
            },
            ClientFrame::Presence {
                room: "r".into(),
                meta: "{}".into(),
            },
            ClientFrame::Typing {
                room: "r".into(),
                active: false,
            },
            ClientFrame::Close {
                code: CloseCode::NORMAL,
                reason: String::new(),
            },
            ClientFrame::Switch,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all_server_frames() {
            let bytes = encode_server(&f);
            assert_eq!(decode_server(&bytes, MAX), Ok(f));
        }
        for f in all_client_frames() {
            let bytes = encode_client(&f);
            assert_eq!(decode_client(&bytes, MAX), Ok(f));
        }
    }

    #[test]
    fn wire_shape_is_tagged_json() {
        let bytes = encode_client(&ClientFrame::Subscribe {
            room: "lobby".into(),
            since: Some(3),
            epoch: None,
            history: None,
        });
        assert_eq!(bytes, br#"{"t":"subscribe","room":"lobby","since":3}"#);
        assert_eq!(encode_server(&ServerFrame::Ping), br#"{"t":"ping"}"#);
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![b' '; MAX + 1];
        assert_eq!(
            decode_client(&big, MAX),
            Err(DecodeError::TooLarge {
                len: MAX + 1,
                max: MAX
            })
        );
        assert_eq!(
            decode_client(&big, MAX).unwrap_err().close_code(),
            CloseCode::FRAME_TOO_LARGE
        );
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"{\"t\":\"nope\"}",
            b"{\"t\":\"publish\",\"room\":1}",
            b"{\"room\":\"x\"}",
            b"\xff\xfe",
        ] {
            let err = decode_client(bad, MAX).unwrap_err();
            assert!(
                matches!(err, DecodeError::Malformed(_)),
                "{bad:?} gave {err:?}"
            );
            assert_eq!(err.close_code(), CloseCode::MALFORMED_FRAME);
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let err = decode_client(br#"{"t":"hello","v":2}"#, MAX).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion(2));
        assert_eq!(err.close_code(), CloseCode::UNSUPPORTED_VERSION);
        let mut welcome = encode_server(&all_server_frames()[0]);
        let text = String::from_utf8(welcome.clone())
            .unwrap()
            .replace("\"v\":1", "\"v\":9");
        welcome = text.into_bytes();
        assert_eq!(
            decode_server(&welcome, MAX),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let up = br#"{"session":"s","frames":[{"t":"hello","v":3}]}"#;
        assert_eq!(
            decode_upstream(up, MAX),
            Err(DecodeError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn unknown_server_frames_and_codes_are_tolerated() {
        assert_eq!(
            decode_server(br#"{"t":"from_the_future","x":1}"#, MAX),
            Ok(ServerFrame::Unknown)
        );
        let nack = decode_server(
            br#"{"t":"nack","id":"a","code":"new_code","reason":""}"#,
            MAX,
        );
        assert!(matches!(
            nack,
            Ok(ServerFrame::Nack {
                code: ErrorCode::Unknown,
                ..
            })
        ));
    }

    #[test]
    fn envelopes_round_trip() {
        let batch = PollBatch {
            cursor: 9,
            frames: all_server_frames(),
        };
        assert_eq!(decode_poll(&encode_poll(&batch), usize::MAX), Ok(batch));
        let up = UpstreamBatch {
            session: "tok".into(),
            frames: all_client_frames(),
        };
        assert_eq!(decode_upstream(&encode_upstream(&up), MAX), Ok(up));
    }

    #[test]
    fn upstream_bodies_may_exceed_the_frame_limit_but_frames_may_not() {
        let frame = |n: usize| ClientFrame::Publish {
            room: "r".into(),
            id: "i".into(),
            payload: "x".repeat(n),
        };
        let len = |f: &ClientFrame| encode_client(f).len();
        let max = 1000;
        // One frame of exactly the limit fits, with its envelope, in one body.
        let exact = frame(max - len(&frame(0)));
        assert_eq!(len(&exact), max);
        let body = encode_upstream(&UpstreamBatch {
            session: "s".repeat(80),
            frames: vec![exact.clone()],
        });
        assert!(body.len() > max);
        assert_eq!(
            decode_upstream(&body, max).map(|b| b.frames),
            Ok(vec![exact])
        );
        // A frame one byte over is refused even though the body is within the batch limit.
        let over = frame(max + 1 - len(&frame(0)));
        let body = encode_upstream(&UpstreamBatch {
            session: "s".into(),
            frames: vec![over],
        });
        assert_eq!(
            decode_upstream(&body, max),
            Err(DecodeError::TooLarge { len: max + 1, max })
        );
        // Many small frames within the batch limit are fine; past it the body is refused unread.
        let many = UpstreamBatch {
            session: "s".into(),
            frames: vec![frame(10); 60],
        };
        let body = encode_upstream(&many);
        assert!(body.len() > max && body.len() <= max_batch_bytes(max));
        assert_eq!(decode_upstream(&body, max), Ok(many));
        let huge = vec![b' '; max_batch_bytes(max) + 1];
        assert!(matches!(
            decode_upstream(&huge, max),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn ticket_and_poll_requests() {
        assert_eq!(
            decode_ticket_request(b"", MAX),
            Ok(TicketRequest::default())
        );
        assert_eq!(
            decode_ticket_request(b" \n", MAX),
            Ok(TicketRequest::default())
        );
        let req = TicketRequest {
            resume: Some("r".into()),
            probe: true,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"resume":"r","probe":true}"#
        );
        assert_eq!(
            decode_ticket_request(br#"{"resume":"r","probe":true}"#, MAX),
            Ok(req)
        );
        assert_eq!(
            serde_json::to_string(&TicketRequest::default()).unwrap(),
            "{}"
        );
        assert!(decode_ticket_request(b"{", MAX).is_err());
        let poll = PollRequest {
            session: "s".into(),
            cursor: 4,
        };
        assert_eq!(
            decode_poll_request(br#"{"session":"s","cursor":4}"#, MAX),
            Ok(poll)
        );
        assert!(decode_poll_request(br#"{"cursor":4}"#, MAX).is_err());
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let frame = ServerFrame::Message {
            room: "r".into(),
            offset: 1,
            sender: "u".into(),
            name: None,
            payload: "line1\nline2\r\n".into(),
        };
        let ev = sse_event(5, &encode_server(&frame));
        let text = String::from_utf8(ev).unwrap();
        assert!(text.starts_with("id: 5\ndata: {"));
        assert!(text.ends_with("\n\n"));
        assert_eq!(text.matches('\n').count(), 3, "{text}");
        let data = text
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap()
            .to_string();
        assert_eq!(decode_server(data.as_bytes(), MAX), Ok(frame));
    }

    proptest! {
        // A failing case is printed, never written into the tree (*.proptest-regressions).
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client(&bytes, 256);
            let _ = decode_server(&bytes, 256);
            let _ = decode_upstream(&bytes, 256);
            let _ = decode_poll(&bytes, 256);
        }

        #[test]
        fn decoders_never_panic_on_json_like_text(s in r#"\{("t":"[a-z_]{0,12}",?)?("[a-z_]{1,8}":([0-9-]{1,22}|"[^"]{0,8}"|null|true|\[\]|\{\}),?){0,5}\}"#) {
            let _ = decode_client(s.as_bytes(), 1024);
            let _ = decode_server(s.as_bytes(), 1024);
        }
    }
}

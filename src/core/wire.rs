//! Frames to and from their JSON text, without serde: what the browser glue puts on and reads
//! off every transport.
//!
//! The field names and shapes are those of `rtlink-protocol` (the server's serde codec); the
//! tests check both directions against it. Decoding is lenient where the protocol allows
//! (unknown fields and frame types, absent optional fields) and names the first field that is
//! missing or of the wrong type.

use alloc::string::String;
use alloc::vec::Vec;

use rtlink_protocol::{
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo, PROTOCOL_VERSION,
};

use super::json::{self, Json};
use super::text::{push_dec, push_json_str};

/// Why a text is not a server frame this client can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `welcome` of another protocol version: terminal, like close 4002.
    UnsupportedVersion,
    /// Not JSON or not an object (`""`), or this field is missing or of the wrong type.
    Malformed(&'static str),
}

type Field<T> = Result<T, DecodeError>;

fn string(v: &Json, key: &'static str) -> Field<String> {
    v.get(key).and_then(Json::as_str).map(String::from).ok_or(DecodeError::Malformed(key))
}

fn opt_string(v: &Json, key: &str) -> Option<String> {
    v.get(key).and_then(Json::as_str).map(String::from)
}

fn number(v: &Json, key: &'static str) -> Field<u64> {
    v.get(key).and_then(Json::as_u64).ok_or(DecodeError::Malformed(key))
}

/// A `u32` field; larger numbers saturate (limits the client only compares against).
fn number32(v: &Json, key: &'static str) -> Field<u32> {
    number(v, key).map(|n| n.min(u32::MAX.into()) as u32)
}

fn boolean(v: &Json, key: &'static str) -> Field<bool> {
    v.get(key).and_then(Json::as_bool).ok_or(DecodeError::Malformed(key))
}

fn object<'a>(v: &'a Json, key: &'static str) -> Field<&'a Json> {
    v.get(key).filter(|o| matches!(o, Json::Obj(_))).ok_or(DecodeError::Malformed(key))
}

fn conn(v: &Json) -> Field<PresenceConn> {
    Ok(PresenceConn {
        session: string(v, "session")?,
        user: string(v, "user")?,
        name: string(v, "name")?,
        meta: opt_string(v, "meta").unwrap_or_default(),
    })
}

fn conns(v: &Json, key: &'static str) -> Field<Vec<PresenceConn>> {
    v.get(key).ok_or(DecodeError::Malformed(key))?.items().iter().map(conn).collect()
}

/// A server frame from its JSON text.
pub fn decode(text: &str) -> Result<ServerFrame, DecodeError> {
    decode_value(&json::parse(text).ok_or(DecodeError::Malformed(""))?)
}

/// A server frame from a parsed JSON value (a long-poll batch carries several). Unknown frame
/// types decode as [`ServerFrame::Unknown`].
pub fn decode_value(f: &Json) -> Result<ServerFrame, DecodeError> {
    if !matches!(f, Json::Obj(_)) {
        return Err(DecodeError::Malformed(""));
    }
    let t = string(f, "t")?;
    let room = || string(f, "room");
    Ok(match t.as_str() {
        "welcome" => {
            let v = number(f, "v")?;
            if v != u64::from(PROTOCOL_VERSION) {
                return Err(DecodeError::UnsupportedVersion);
            }
            let user = object(f, "user")?;
            let limits = object(f, "limits")?;
            ServerFrame::Welcome {
                v: PROTOCOL_VERSION,
                session: string(f, "session")?,
                resume_token: string(f, "resume_token")?,
                resumed: boolean(f, "resumed")?,
                ping_interval_ms: number(f, "ping_interval_ms")?,
                user: UserInfo { id: string(user, "id")?, name: string(user, "name")? },
                limits: Limits {
                    max_frame_bytes: number(limits, "max_frame_bytes")?,
                    rate_per_sec: number32(limits, "rate_per_sec")?,
                    burst: number32(limits, "burst")?,
                    max_rooms: number32(limits, "max_rooms")?,
                    resume_window_ms: number(limits, "resume_window_ms")?,
                    dedupe_window_ms: number(limits, "dedupe_window_ms").unwrap_or(0),
                    max_batch_bytes: number(limits, "max_batch_bytes").unwrap_or(0),
                },
            }
        }
        "ping" => ServerFrame::Ping,
        "pong" => ServerFrame::Pong,
        "subscribed" => ServerFrame::Subscribed {
            room: room()?,
            head: number(f, "head")?,
            recovered: boolean(f, "recovered")?,
            epoch: opt_string(f, "epoch").unwrap_or_default(),
        },
        "unsubscribed" => ServerFrame::Unsubscribed { room: room()? },
        "message" => ServerFrame::Message {
            room: room()?,
            offset: number(f, "offset")?,
            sender: string(f, "sender")?,
            name: opt_string(f, "name"),
            payload: string(f, "payload")?,
        },
        "ack" => ServerFrame::Ack { id: string(f, "id")?, room: room()?, offset: number(f, "offset")? },
        "nack" => ServerFrame::Nack {
            id: string(f, "id")?,
            code: ErrorCode::from_name(&string(f, "code")?),
            reason: opt_string(f, "reason").unwrap_or_default(),
        },
        "presence_snapshot" => ServerFrame::PresenceSnapshot { room: room()?, conns: conns(f, "conns")? },
        "presence_join" => ServerFrame::PresenceJoin { room: room()?, conn: conn(object(f, "conn")?)? },
        "presence_update" => ServerFrame::PresenceUpdate { room: room()?, conn: conn(object(f, "conn")?)? },
        "presence_leave" => ServerFrame::PresenceLeave {
            room: room()?,
            session: string(f, "session")?,
            user: string(f, "user")?,
        },
        "presence_diff" => ServerFrame::PresenceDiff {
            room: room()?,
            joins: conns(f, "joins")?,
            leaves: f
                .get("leaves")
                .ok_or(DecodeError::Malformed("leaves"))?
                .items()
                .iter()
                .map(|l| Ok(PresenceLeft { session: string(l, "session")?, user: string(l, "user")? }))
                .collect::<Field<_>>()?,
        },
        "typing" => ServerFrame::Typing {
            room: room()?,
            user: string(f, "user")?,
            name: string(f, "name")?,
            active: boolean(f, "active")?,
        },
        "reconnect_after" => ServerFrame::ReconnectAfter { min_ms: number(f, "min_ms")?, max_ms: number(f, "max_ms")? },
        "close" => ServerFrame::Close {
            code: CloseCode(number(f, "code")?.min(u16::MAX.into()) as u16),
            reason: opt_string(f, "reason").unwrap_or_default(),
        },
        _ => ServerFrame::Unknown,
    })
}

/// Builds `{"t":…,…}` one member at a time, in the order the server's serde codec writes them.
struct Writer(String);

impl Writer {
    fn new(t: &str) -> Self {
        let mut w = Writer(String::from("{\"t\":"));
        push_json_str(&mut w.0, t);
        w
    }

    fn key(&mut self, key: &str) -> &mut String {
        self.0.push_str(",\"");
        self.0.push_str(key);
        self.0.push_str("\":");
        &mut self.0
    }

    fn str(mut self, key: &str, value: &str) -> Self {
        push_json_str(self.key(key), value);
        self
    }

    fn num(mut self, key: &str, value: u64) -> Self {
        push_dec(self.key(key), value);
        self
    }

    fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A client frame as its JSON text (byte for byte what the server's codec writes).
pub fn encode(frame: &ClientFrame) -> String {
    match frame {
        ClientFrame::Hello { v, resume } => {
            let w = Writer::new("hello").num("v", (*v).into());
            match resume {
                Some(r) => w.str("resume", r),
                None => w,
            }
        }
        ClientFrame::Ping => Writer::new("ping"),
        ClientFrame::Pong => Writer::new("pong"),
        ClientFrame::Subscribe { room, since, epoch, history } => {
            let mut w = Writer::new("subscribe").str("room", room);
            if let Some(s) = since {
                w = w.num("since", *s);
            }
            if let Some(e) = epoch {
                w = w.str("epoch", e);
            }
            if let Some(h) = history {
                w = w.num("history", (*h).into());
            }
            w
        }
        ClientFrame::Unsubscribe { room } => Writer::new("unsubscribe").str("room", room),
        ClientFrame::Publish { room, id, payload } => {
            Writer::new("publish").str("room", room).str("id", id).str("payload", payload)
        }
        ClientFrame::Presence { room, meta } => Writer::new("presence").str("room", room).str("meta", meta),
        ClientFrame::Typing { room, active } => {
            let mut w = Writer::new("typing").str("room", room);
            w.key("active").push_str(if *active { "true" } else { "false" });
            w
        }
        ClientFrame::Switch => Writer::new("switch"),
        ClientFrame::Close { code, reason } => Writer::new("close").num("code", code.0.into()).str("reason", reason),
    }
    .done()
}

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
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo,
    PROTOCOL_VERSION,
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

/// Reads the fields of a frame. A missing or mistyped field reads as empty (`""`, 0, false, an
/// empty object) and the first such field is remembered: decoding is then straight-line code with
/// one check at the end, instead of an early return (and the drops it needs) after every field.
/// The first field in reading order is the one reported, as with early returns.
struct Fields {
    missing: Option<&'static str>,
}

/// What a missing object reads as.
static EMPTY: Json = Json::Null;

impl Fields {
    fn miss(&mut self, key: &'static str) {
        self.missing.get_or_insert(key);
    }

    fn string(&mut self, v: &Json, key: &'static str) -> String {
        match v.get(key).and_then(Json::as_str) {
            Some(s) => s.into(),
            None => {
                self.miss(key);
                String::new()
            }
        }
    }

    fn number(&mut self, v: &Json, key: &'static str) -> u64 {
        v.get(key).and_then(Json::as_u64).unwrap_or_else(|| {
            self.miss(key);
            0
        })
    }

    /// A `u32` field; larger numbers saturate (limits the client only compares against).
    fn number32(&mut self, v: &Json, key: &'static str) -> u32 {
        self.number(v, key).min(u32::MAX.into()) as u32
    }

    fn boolean(&mut self, v: &Json, key: &'static str) -> bool {
        v.get(key).and_then(Json::as_bool).unwrap_or_else(|| {
            self.miss(key);
            false
        })
    }

    fn object<'a>(&mut self, v: &'a Json, key: &'static str) -> &'a Json {
        match v.get(key) {
            Some(o @ Json::Obj(_)) => o,
            _ => {
                self.miss(key);
                &EMPTY
            }
        }
    }

    /// The elements of an array field; a present non-array reads as none.
    fn items<'a>(&mut self, v: &'a Json, key: &'static str) -> &'a [Json] {
        match v.get(key) {
            Some(a) => a.items(),
            None => {
                self.miss(key);
                &[]
            }
        }
    }

    fn conn(&mut self, v: &Json) -> PresenceConn {
        PresenceConn {
            session: self.string(v, "session"),
            user: self.string(v, "user"),
            name: self.string(v, "name"),
            meta: opt_string(v, "meta").unwrap_or_default(),
        }
    }

    fn conns(&mut self, v: &Json, key: &'static str) -> Vec<PresenceConn> {
        let mut conns = Vec::new();
        for c in self.items(v, key) {
            conns.push(self.conn(c));
        }
        conns
    }
}

fn opt_string(v: &Json, key: &str) -> Option<String> {
    v.get(key).and_then(Json::as_str).map(String::from)
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
    let mut r = Fields { missing: None };
    let t = r.string(f, "t");
    let frame = match t.as_str() {
        "welcome" => {
            let v = r.number(f, "v");
            if r.missing.is_none() && v != u64::from(PROTOCOL_VERSION) {
                return Err(DecodeError::UnsupportedVersion);
            }
            let user = r.object(f, "user");
            let limits = r.object(f, "limits");
            ServerFrame::Welcome {
                v: PROTOCOL_VERSION,
                session: r.string(f, "session"),
                resume_token: r.string(f, "resume_token"),
                resumed: r.boolean(f, "resumed"),
                ping_interval_ms: r.number(f, "ping_interval_ms"),
                user: UserInfo {
                    id: r.string(user, "id"),
                    name: r.string(user, "name"),
                },
                limits: Limits {
                    max_frame_bytes: r.number(limits, "max_frame_bytes"),
                    rate_per_sec: r.number32(limits, "rate_per_sec"),
                    burst: r.number32(limits, "burst"),
                    max_rooms: r.number32(limits, "max_rooms"),
                    resume_window_ms: r.number(limits, "resume_window_ms"),
                    dedupe_window_ms: limits
                        .get("dedupe_window_ms")
                        .and_then(Json::as_u64)
                        .unwrap_or(0),
                    max_batch_bytes: limits
                        .get("max_batch_bytes")
                        .and_then(Json::as_u64)
                        .unwrap_or(0),
                    publish_bytes_per_sec: limits
                        .get("publish_bytes_per_sec")
                        .and_then(Json::as_u64)
                        .unwrap_or(0),
                    publish_bytes_burst: limits
                        .get("publish_bytes_burst")
                        .and_then(Json::as_u64)
                        .unwrap_or(0),
                },
            }
        }
        "ping" => ServerFrame::Ping,
        "pong" => ServerFrame::Pong,
        "subscribed" => ServerFrame::Subscribed {
            room: r.string(f, "room"),
            head: r.number(f, "head"),
            recovered: r.boolean(f, "recovered"),
            epoch: opt_string(f, "epoch").unwrap_or_default(),
        },
        "unsubscribed" => ServerFrame::Unsubscribed {
            room: r.string(f, "room"),
        },
        "message" => ServerFrame::Message {
            room: r.string(f, "room"),
            offset: r.number(f, "offset"),
            sender: r.string(f, "sender"),
            name: opt_string(f, "name"),
            payload: r.string(f, "payload"),
        },
        "ack" => ServerFrame::Ack {
            id: r.string(f, "id"),
            room: r.string(f, "room"),
            offset: r.number(f, "offset"),
        },
        "nack" => ServerFrame::Nack {
            id: r.string(f, "id"),
            code: ErrorCode::from_name(&r.string(f, "code")),
            reason: opt_string(f, "reason").unwrap_or_default(),
        },
        "presence_snapshot" => ServerFrame::PresenceSnapshot {
            room: r.string(f, "room"),
            conns: r.conns(f, "conns"),
        },
        "presence_join" | "presence_update" => {
            let room = r.string(f, "room");
            let conn = r.object(f, "conn");
            let conn = r.conn(conn);
            if t == "presence_join" {
                ServerFrame::PresenceJoin { room, conn }
            } else {
                ServerFrame::PresenceUpdate { room, conn }
            }
        }
        "presence_leave" => ServerFrame::PresenceLeave {
            room: r.string(f, "room"),
            session: r.string(f, "session"),
            user: r.string(f, "user"),
        },
        "presence_diff" => ServerFrame::PresenceDiff {
            room: r.string(f, "room"),
            joins: r.conns(f, "joins"),
            leaves: {
                let mut leaves = Vec::new();
                for l in r.items(f, "leaves") {
                    leaves.push(PresenceLeft {
                        session: r.string(l, "session"),
                        user: r.string(l, "user"),
                    });
                }
                leaves
            },
        },
        "typing" => ServerFrame::Typing {
            room: r.string(f, "room"),
            user: r.string(f, "user"),
            name: r.string(f, "name"),
            active: r.boolean(f, "active"),
        },
        "reconnect_after" => ServerFrame::ReconnectAfter {
            min_ms: r.number(f, "min_ms"),
            max_ms: r.number(f, "max_ms"),
        },
        "close" => ServerFrame::Close {
            code: CloseCode(r.number(f, "code").min(u16::MAX.into()) as u16),
            reason: opt_string(f, "reason").unwrap_or_default(),
        },
        _ => ServerFrame::Unknown,
    };
    match r.missing {
        Some(key) => Err(DecodeError::Malformed(key)),
        None => Ok(frame),
    }
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
        ClientFrame::Subscribe {
            room,
            since,
            epoch,
            history,
        } => {
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
        ClientFrame::Publish { room, id, payload } => Writer::new("publish")
            .str("room", room)
            .str("id", id)
            .str("payload", payload),
        ClientFrame::Presence { room, meta } => {
            Writer::new("presence").str("room", room).str("meta", meta)
        }
        ClientFrame::Typing { room, active } => {
            let mut w = Writer::new("typing").str("room", room);
            w.key("active")
                .push_str(if *active { "true" } else { "false" });
            w
        }
        ClientFrame::Switch => Writer::new("switch"),
        ClientFrame::Close { code, reason } => Writer::new("close")
            .num("code", code.0.into())
            .str("reason", reason),
    }
    .done()
}

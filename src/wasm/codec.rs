//! Frames between the core's typed values and the JS objects the transports carry.
//!
//! JSON text is parsed and printed by the browser (`JSON.parse`/`JSON.stringify`), and the
//! objects are read and built field by field with `Reflect`: no JSON library and no serde code
//! ships in the wasm module, which keeps the package small. The field names are those of
//! `rtlink-protocol` (the server's codec); `tests/browser.rs` round-trips through a real server.

use js_sys::Array;
use rtlink_protocol::{
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo, PROTOCOL_VERSION,
};
use wasm_bindgen::JsValue;

use super::{get as field, new_object, set, set_num, set_str};

/// Why a parsed JSON value is not a server frame this client can use.
pub(crate) enum DecodeError {
    /// A `welcome` of another protocol version: terminal, like close 4002.
    UnsupportedVersion,
    Malformed(String),
}

impl From<String> for DecodeError {
    fn from(why: String) -> Self {
        Self::Malformed(why)
    }
}

fn string(v: &JsValue, key: &str) -> Result<String, String> {
    field(v, key).as_string().ok_or_else(|| missing(key))
}

fn opt_string(v: &JsValue, key: &str) -> Option<String> {
    field(v, key).as_string()
}

fn number(v: &JsValue, key: &str) -> Result<u64, String> {
    match field(v, key).as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 => Ok(n as u64),
        _ => Err(missing(key)),
    }
}

fn boolean(v: &JsValue, key: &str) -> Result<bool, String> {
    field(v, key).as_bool().ok_or_else(|| missing(key))
}

fn missing(key: &str) -> String {
    let mut s = String::from("missing or invalid field ");
    s.push_str(key);
    s
}

fn conn(v: &JsValue) -> Result<PresenceConn, String> {
    Ok(PresenceConn {
        session: string(v, "session")?,
        user: string(v, "user")?,
        name: string(v, "name")?,
        meta: opt_string(v, "meta").unwrap_or_default(),
    })
}

/// A server frame from its parsed JSON. Unknown frame types decode as [`ServerFrame::Unknown`].
pub(crate) fn decode(f: JsValue) -> Result<ServerFrame, DecodeError> {
    if !f.is_object() {
        return Err(DecodeError::Malformed("frame is not an object".into()));
    }
    let t = string(&f, "t")?;
    let room = || string(&f, "room");
    Ok(match t.as_str() {
        "welcome" => {
            let v = number(&f, "v")? as u32;
            if v != PROTOCOL_VERSION {
                return Err(DecodeError::UnsupportedVersion);
            }
            let user = field(&f, "user");
            let limits = field(&f, "limits");
            ServerFrame::Welcome {
                v,
                session: string(&f, "session")?,
                resume_token: string(&f, "resume_token")?,
                resumed: boolean(&f, "resumed")?,
                ping_interval_ms: number(&f, "ping_interval_ms")?,
                user: UserInfo { id: string(&user, "id")?, name: string(&user, "name")? },
                limits: Limits {
                    max_frame_bytes: number(&limits, "max_frame_bytes")?,
                    rate_per_sec: number(&limits, "rate_per_sec")? as u32,
                    burst: number(&limits, "burst")? as u32,
                    max_rooms: number(&limits, "max_rooms")? as u32,
                    resume_window_ms: number(&limits, "resume_window_ms")?,
                    dedupe_window_ms: number(&limits, "dedupe_window_ms").unwrap_or(0),
                    max_batch_bytes: number(&limits, "max_batch_bytes").unwrap_or(0),
                },
            }
        }
        "ping" => ServerFrame::Ping,
        "pong" => ServerFrame::Pong,
        "subscribed" => ServerFrame::Subscribed {
            room: room()?,
            head: number(&f, "head")?,
            recovered: boolean(&f, "recovered")?,
            epoch: opt_string(&f, "epoch").unwrap_or_default(),
        },
        "unsubscribed" => ServerFrame::Unsubscribed { room: room()? },
        "message" => ServerFrame::Message {
            room: room()?,
            offset: number(&f, "offset")?,
            sender: string(&f, "sender")?,
            name: opt_string(&f, "name"),
            payload: string(&f, "payload")?,
        },
        "ack" => ServerFrame::Ack { id: string(&f, "id")?, room: room()?, offset: number(&f, "offset")? },
        "nack" => ServerFrame::Nack {
            id: string(&f, "id")?,
            code: ErrorCode::from_name(&string(&f, "code")?),
            reason: opt_string(&f, "reason").unwrap_or_default(),
        },
        "presence_snapshot" => {
            let conns = Array::from(&field(&f, "conns"));
            ServerFrame::PresenceSnapshot {
                room: room()?,
                conns: conns.iter().map(|c| conn(&c)).collect::<Result<_, _>>()?,
            }
        }
        "presence_join" => ServerFrame::PresenceJoin { room: room()?, conn: conn(&field(&f, "conn"))? },
        "presence_update" => ServerFrame::PresenceUpdate { room: room()?, conn: conn(&field(&f, "conn"))? },
        "presence_leave" => ServerFrame::PresenceLeave {
            room: room()?,
            session: string(&f, "session")?,
            user: string(&f, "user")?,
        },
        "presence_diff" => {
            let joins = Array::from(&field(&f, "joins"));
            let leaves = Array::from(&field(&f, "leaves"));
            ServerFrame::PresenceDiff {
                room: room()?,
                joins: joins.iter().map(|c| conn(&c)).collect::<Result<_, _>>()?,
                leaves: leaves
                    .iter()
                    .map(|l| Ok(PresenceLeft { session: string(&l, "session")?, user: string(&l, "user")? }))
                    .collect::<Result<_, String>>()?,
            }
        }
        "typing" => ServerFrame::Typing {
            room: room()?,
            user: string(&f, "user")?,
            name: string(&f, "name")?,
            active: boolean(&f, "active")?,
        },
        "reconnect_after" => ServerFrame::ReconnectAfter {
            min_ms: number(&f, "min_ms")?,
            max_ms: number(&f, "max_ms")?,
        },
        "close" => ServerFrame::Close {
            code: CloseCode(number(&f, "code")?.min(u16::MAX as u64) as u16),
            reason: opt_string(&f, "reason").unwrap_or_default(),
        },
        _ => ServerFrame::Unknown,
    })
}

/// `{ t }`, the start of every client frame (`t` first, as on the wire).
fn object(t: &str) -> JsValue {
    let o = new_object();
    set_str(&o, "t", t);
    o
}

/// `{ t, room }`.
fn room_object(t: &str, room: &str) -> JsValue {
    let o = object(t);
    set_str(&o, "room", room);
    o
}

/// A client frame as the object `JSON.stringify` turns into the wire form.
pub(crate) fn encode(frame: &ClientFrame) -> JsValue {
    match frame {
        ClientFrame::Hello { v, resume } => {
            let o = object("hello");
            set_num(&o, "v", (*v).into());
            if let Some(r) = resume {
                set_str(&o, "resume", r);
            }
            o
        }
        ClientFrame::Ping => object("ping"),
        ClientFrame::Pong => object("pong"),
        ClientFrame::Subscribe { room, since, epoch, history } => {
            let o = room_object("subscribe", room);
            if let Some(s) = since {
                set_num(&o, "since", *s as f64);
            }
            if let Some(e) = epoch {
                set_str(&o, "epoch", e);
            }
            if let Some(h) = history {
                set_num(&o, "history", f64::from(*h));
            }
            o
        }
        ClientFrame::Unsubscribe { room } => room_object("unsubscribe", room),
        ClientFrame::Publish { room, id, payload } => {
            let o = room_object("publish", room);
            set_str(&o, "id", id);
            set_str(&o, "payload", payload);
            o
        }
        ClientFrame::Presence { room, meta } => {
            let o = room_object("presence", room);
            set_str(&o, "meta", meta);
            o
        }
        ClientFrame::Typing { room, active } => {
            let o = room_object("typing", room);
            set(&o, "active", &(*active).into());
            o
        }
        ClientFrame::Switch => object("switch"),
        ClientFrame::Close { code, reason } => {
            let o = object("close");
            set_num(&o, "code", code.0.into());
            set_str(&o, "reason", reason);
            o
        }
    }
}

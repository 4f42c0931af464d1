//! Frames across the wasm boundary as flat records, for the JS façade's frame codec
//! (`js/wire.js`, which has the same tables).
//!
//! JSON stays out of the module: `JSON.parse` and `JSON.stringify` cost nothing in the browser,
//! while a JSON reader and writer of our own were 3.3 KB of the module (gzip). The façade
//! parses a server frame, checks every field the client reads (the first one missing or of the
//! wrong type makes it malformed, like another protocol version in a `welcome`) and hands the
//! module the frame's kind and its fields as strings in a fixed order: [`server_frame`] builds the
//! frame from them. The other way, [`client_record`] flattens a client frame into a record the
//! façade writes as JSON. tests/core_wire.rs runs `js/wire.js` in node against the server's serde
//! codec, through these two functions.

use alloc::string::String;
use alloc::vec::Vec;

use rtlink_protocol::{
    ClientFrame, CloseCode, ErrorCode, Limits, PresenceConn, PresenceLeft, ServerFrame, UserInfo,
    PROTOCOL_VERSION,
};

use super::text::dec;

/// A server frame's fields, in the order [`server_frame`] reads them: strings as they are,
/// numbers in decimal (digits only), booleans as `"1"` or `""`. A missing field reads as empty.
pub struct Fields<I>(pub I);

impl<'a, I: Iterator<Item = &'a str>> Fields<I> {
    /// The next field as it is.
    pub fn field(&mut self) -> &'a str {
        self.0.next().unwrap_or("")
    }

    fn string(&mut self) -> String {
        self.field().into()
    }

    fn number(&mut self) -> u64 {
        // The façade checked the digits (a whole number below 2^53): no overflow, no other bytes.
        self.field().bytes().fold(0, |n, d| {
            n.wrapping_mul(10)
                .wrapping_add(u64::from(d.wrapping_sub(b'0')))
        })
    }

    /// A `u32` field; larger numbers saturate (limits the client only compares against).
    fn number32(&mut self) -> u32 {
        self.number().min(u32::MAX.into()) as u32
    }

    fn boolean(&mut self) -> bool {
        !self.field().is_empty()
    }

    /// `session`, `user`, `name`, `meta`.
    fn conn(&mut self) -> PresenceConn {
        PresenceConn {
            session: self.string(),
            user: self.string(),
            name: self.string(),
            meta: self.string(),
        }
    }

    /// A count, then that many items (never more than there are fields left: each item takes
    /// at least one).
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let mut items = Vec::new();
        let count = self.number();
        for _ in 0..count.min(self.0.size_hint().1.unwrap_or(0) as u64) {
            items.push(item(self));
        }
        items
    }
}

/// [`ErrorCode::as_str`], kept out of line: each inlined copy brought its own table of the
/// names into the module.
#[inline(never)]
pub fn error_name(code: ErrorCode) -> &'static str {
    code.as_str()
}

/// The server frame of `kind` (its index in js/wire.js `KINDS`; any other number: a frame type
/// this client does not know) from its fields. The façade checked them: this only builds.
pub fn server_frame<'a>(kind: u32, f: &mut Fields<impl Iterator<Item = &'a str>>) -> ServerFrame {
    match kind {
        0 => ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: f.string(),
            resume_token: f.string(),
            resumed: f.boolean(),
            ping_interval_ms: f.number(),
            user: UserInfo {
                id: f.string(),
                name: f.string(),
            },
            limits: Limits {
                max_frame_bytes: f.number(),
                rate_per_sec: f.number32(),
                burst: f.number32(),
                max_rooms: f.number32(),
                resume_window_ms: f.number(),
                dedupe_window_ms: f.number(),
                max_batch_bytes: f.number(),
                publish_bytes_per_sec: f.number(),
                publish_bytes_burst: f.number(),
            },
        },
        1 => ServerFrame::Ping,
        2 => ServerFrame::Pong,
        3 => ServerFrame::Subscribed {
            room: f.string(),
            head: f.number(),
            recovered: f.boolean(),
            epoch: f.string(),
        },
        4 => ServerFrame::Unsubscribed { room: f.string() },
        5 => ServerFrame::Message {
            room: f.string(),
            offset: f.number(),
            sender: f.string(),
            name: {
                let named = f.boolean();
                let name = f.string();
                named.then_some(name)
            },
            payload: f.string(),
        },
        6 => ServerFrame::Ack {
            id: f.string(),
            room: f.string(),
            offset: f.number(),
        },
        7 => ServerFrame::Nack {
            id: f.string(),
            code: {
                // `ErrorCode::from_name`, through the one copy of the names.
                let name = f.field();
                ErrorCode::ALL
                    .into_iter()
                    .find(|c| error_name(*c) == name)
                    .unwrap_or(ErrorCode::Unknown)
            },
            reason: f.string(),
        },
        8 => ServerFrame::PresenceSnapshot {
            room: f.string(),
            conns: f.list(Fields::conn),
        },
        9 => ServerFrame::PresenceJoin {
            room: f.string(),
            conn: f.conn(),
        },
        10 => ServerFrame::PresenceUpdate {
            room: f.string(),
            conn: f.conn(),
        },
        11 => ServerFrame::PresenceLeave {
            room: f.string(),
            session: f.string(),
            user: f.string(),
        },
        12 => ServerFrame::PresenceDiff {
            room: f.string(),
            joins: f.list(Fields::conn),
            leaves: f.list(|f| PresenceLeft {
                session: f.string(),
                user: f.string(),
            }),
        },
        13 => ServerFrame::Typing {
            room: f.string(),
            user: f.string(),
            name: f.string(),
            active: f.boolean(),
        },
        14 => ServerFrame::ReconnectAfter {
            min_ms: f.number(),
            max_ms: f.number(),
        },
        15 => ServerFrame::Close {
            code: CloseCode(f.number().min(u16::MAX.into()) as u16),
            reason: f.string(),
        },
        _ => ServerFrame::Unknown,
    }
}

/// A client frame as js/wire.js `write` takes it.
#[derive(Debug, PartialEq)]
pub struct ClientRecord<'a> {
    /// The frame's index in js/wire.js `CLIENT`, plus 16 when its optional string is present
    /// (`hello.resume`, `subscribe.epoch`) or `typing.active` is true.
    pub kind: u32,
    pub a: &'a str,
    pub b: &'a str,
    /// `publish.payload`; `subscribe.history` in decimal (empty: absent).
    pub c: String,
    /// `hello.v`, `subscribe.since` (-1: absent), `close.code`.
    pub y: f64,
}

/// The record of a client frame (see [`ClientRecord`]).
pub fn client_record(frame: &ClientFrame) -> ClientRecord<'_> {
    let mut r = ClientRecord {
        kind: 0,
        a: "",
        b: "",
        c: String::new(),
        y: -1.0,
    };
    let present = |o: &Option<_>| u32::from(o.is_some()) << 4;
    match frame {
        ClientFrame::Hello { v, resume } => {
            r.y = (*v).into();
            r.a = resume.as_deref().unwrap_or("");
            r.kind = present(resume);
        }
        ClientFrame::Ping => r.kind = 1,
        ClientFrame::Pong => r.kind = 2,
        ClientFrame::Subscribe {
            room,
            since,
            epoch,
            history,
        } => {
            r.kind = 3 | present(epoch);
            r.a = room;
            r.b = epoch.as_deref().unwrap_or("");
            if let Some(h) = history {
                r.c = dec((*h).into());
            }
            if let Some(s) = since {
                r.y = *s as f64;
            }
        }
        ClientFrame::Unsubscribe { room } => {
            r.kind = 4;
            r.a = room;
        }
        ClientFrame::Publish { room, id, payload } => {
            r.kind = 5;
            r.a = room;
            r.b = id;
            r.c = payload.clone();
        }
        ClientFrame::Presence { room, meta } => {
            r.kind = 6;
            r.a = room;
            r.b = meta;
        }
        ClientFrame::Typing { room, active } => {
            r.kind = 7 | u32::from(*active) << 4;
            r.a = room;
        }
        ClientFrame::Switch => r.kind = 8,
        ClientFrame::Close { code, reason } => {
            r.kind = 9;
            r.a = reason;
            r.y = code.0.into();
        }
    }
    r
}

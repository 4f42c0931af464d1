//! What travels through Redis: the JSON of events on a room's Pub/Sub channel, presence
//! entries in the presence hashes, and stream entries of a room's history.
//!
//! The room is never in an event: it is the channel's name. Message events are assembled by the
//! publish script around [`message_tail`] (the script adds the offset and timestamp), presence
//! events embed the stored entry as is, so Lua never has to encode JSON.

use std::sync::Arc;

use redis::Value;
use rtlink_protocol::PresenceConn;
use serde::{Deserialize, Serialize};

use super::super::{RoomEventKind, StoredMessage};

/// A presence entry as stored in a room's hash: the connection, the node that owns it, and the
/// number of its last change (see `scripts.rs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct StoredConn {
    /// Written by the join and update scripts, never by this side; 0 in an entry stored by a
    /// node from before change numbers (a rolling deploy): such entries sort first. Nodes from
    /// before ignore the field.
    #[serde(default, skip_serializing)]
    pub q: u64,
    pub session: String,
    pub user: String,
    pub name: String,
    #[serde(default)]
    pub meta: String,
    pub node: String,
}

impl StoredConn {
    pub(super) fn new(conn: &PresenceConn, node: &str) -> Self {
        Self {
            q: 0,
            session: conn.session.clone(),
            user: conn.user.clone(),
            name: conn.name.clone(),
            meta: conn.meta.clone(),
            node: node.to_owned(),
        }
    }

    /// The entries of a room's presence hash (`HGETALL`, session → JSON) as connections, in
    /// the order of their last change: the order the room's events told them, which a hash
    /// read does not keep. Ties (entries without a number) go by session. Undecodable entries
    /// are skipped.
    pub(super) fn in_change_order(entries: Vec<(String, String)>) -> Vec<PresenceConn> {
        let mut stored: Vec<Self> = entries
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str::<Self>(&json).ok())
            .collect();
        stored.sort_unstable_by(|a, b| (a.q, &a.session).cmp(&(b.q, &b.session)));
        stored.into_iter().map(Self::into_conn).collect()
    }

    pub(super) fn into_conn(self) -> PresenceConn {
        PresenceConn {
            session: self.session,
            user: self.user,
            name: self.name,
            meta: self.meta,
        }
    }
}

/// An event on a room's channel. Short tags and field names: every node parses every event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub(super) enum Wire {
    #[serde(rename = "m")]
    Message {
        o: u64,
        at: u64,
        s: String,
        #[serde(default)]
        n: Option<String>,
        p: String,
        /// The room epoch `o` counts in (absent from an older node's events).
        #[serde(default)]
        e: String,
    },
    #[serde(rename = "pj")]
    Join { c: StoredConn },
    #[serde(rename = "pu")]
    Update { c: StoredConn },
    #[serde(rename = "pl")]
    Leave { c: StoredConn },
    #[serde(rename = "ty")]
    Typing { u: String, n: String, a: bool },
    /// Not a room event: a node recovering from a Pub/Sub outage marks where its presence
    /// snapshot was taken (other nodes ignore it).
    #[serde(rename = "mk")]
    Marker { k: String },
}

impl Wire {
    /// Turns an event of `room` into what the hub sees (encoding the frame happens in
    /// `RoomEvent::new`, once, by the caller); `None` for a marker. `epoch` gives a message
    /// its room epoch (the node's shared copy when it is the known one).
    pub(super) fn into_kind(
        self,
        room: &str,
        epoch: impl FnOnce(String) -> Arc<str>,
    ) -> Option<RoomEventKind> {
        Some(match self {
            Self::Message { o, at, s, n, p, e } => RoomEventKind::Message(Arc::new(
                StoredMessage::new(room.to_owned(), o, s, n, p, at, epoch(e)),
            )),
            Self::Join { c } => RoomEventKind::PresenceJoin(c.into_conn()),
            Self::Update { c } => RoomEventKind::PresenceUpdate(c.into_conn()),
            Self::Leave { c } => RoomEventKind::PresenceLeave {
                session: c.session,
                user: c.user,
            },
            Self::Typing { u, n, a } => RoomEventKind::Typing {
                user: u,
                name: n,
                active: a,
            },
            Self::Marker { .. } => return None,
        })
    }
}

/// The end of a message event, after the `"at":N,"e":"…",` the publish script writes: sender,
/// name and payload encoded here, closing brace included.
pub(super) fn message_tail(sender: &str, name: Option<&str>, payload: &str) -> String {
    #[derive(Serialize)]
    struct Tail<'a> {
        s: &'a str,
        n: Option<&'a str>,
        p: &'a str,
    }
    let json = serde_json::to_string(&Tail {
        s: sender,
        n: name,
        p: payload,
    })
    .unwrap_or_else(|_| String::from("{}"));
    // A serialised struct always starts with `{`.
    json.strip_prefix('{').map(str::to_owned).unwrap_or(json)
}

/// The text of a bulk or simple string reply.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An integer reply (also accepts a numeric string).
pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// One `XRANGE` entry `[id, [field, value, ...]]` of `room`'s history, in `epoch`.
pub(super) fn stored_from_entry(
    room: &str,
    entry: &Value,
    epoch: &Arc<str>,
) -> Option<StoredMessage> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset = text(id)?.split('-').next()?.parse().ok()?;
    let (mut sender, mut name, mut payload, mut at) = (None, None, None, 0);
    for pair in fields.chunks(2) {
        let [k, v] = pair else { continue };
        match text(k)?.as_str() {
            "s" => sender = text(v),
            "n" => name = text(v),
            "p" => payload = text(v),
            "t" => at = int(v).unwrap_or(0),
            _ => {}
        }
    }
    Some(StoredMessage::new(
        room.to_owned(),
        offset,
        sender?,
        name,
        payload?,
        at,
        epoch.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash read comes in no order: sorted by change number, an entry without one (from a
    /// node of an older version) first, and an entry without a node or with other fields still
    /// read.
    #[test]
    fn a_presence_read_is_sorted_by_change_number() {
        let entry = |q: Option<u64>, session: &str| {
            let q = q.map(|q| format!("\"q\":{q},")).unwrap_or_default();
            (
                session.to_owned(),
                format!("{{{q}\"session\":\"{session}\",\"user\":\"u\",\"name\":\"n\",\"node\":\"x\",\"later\":1}}"),
            )
        };
        let read = vec![
            entry(Some(9), "a"),
            entry(Some(3), "b"),
            (String::from("bad"), String::from("{")),
            entry(None, "z"),
            entry(Some(12), "c"),
            entry(None, "y"),
        ];
        let sessions: Vec<String> = StoredConn::in_change_order(read)
            .into_iter()
            .map(|c| c.session)
            .collect();
        assert_eq!(sessions, ["y", "z", "b", "a", "c"]);
        // What the Rust side writes has no number: the script puts it first.
        let json = serde_json::to_string(&StoredConn::new(
            &PresenceConn {
                session: "s".into(),
                user: "u".into(),
                name: "n".into(),
                meta: String::new(),
            },
            "node",
        ))
        .unwrap_or_default();
        assert!(json.starts_with("{\"session\":"), "{json}");
    }

    #[test]
    fn message_tail_completes_a_message_event() {
        let json = format!(
            "{{\"t\":\"m\",\"o\":7,\"at\":9,\"e\":\"E\",{}",
            message_tail("u", None, "{\"x\":\"é\"}")
        );
        let wire: Result<Wire, _> = serde_json::from_str(&json);
        match wire.map(|w| w.into_kind("r", Arc::from)) {
            Ok(Some(RoomEventKind::Message(m))) => {
                assert_eq!((m.offset, m.stored_at_ms, m.name.as_deref()), (7, 9, None));
                assert_eq!(&*m.epoch, "E");
                assert_eq!(m.payload, "{\"x\":\"é\"}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

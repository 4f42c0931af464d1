//! Replays: what a subscription missed (history after `since`, or the newest `history: n`
//! messages), the room's presence, then the live events buffered while history was read.
//!
//! A replay never floods the session: its frames are queued **as the outbox drains**, in pages
//! bounded by bytes and frames (half the outbox), so a room full of large messages or a large
//! presence can be joined by any client that reads, and never trips the asking session's
//! slow-consumer limit (4004). The presence snapshot is one `presence_snapshot` frame of at most
//! [`SNAPSHOT_PAGE_BYTES`] followed by `presence_diff` frames (joins only) of the same size for
//! the connections that did not fit, all before any live event of the room.
//!
//! Live events of the room wait in the subscription's replay buffer (bounded like the outbox)
//! until every replayed frame is queued; a session that cannot keep up with the room while it
//! catches up overflows that buffer and is a slow consumer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rtlink_protocol::{ErrorCode, PresenceConn, ServerFrame};

use crate::broker::{
    encode_frame, Frame, HistoryPage, PresenceEntry, RoomEvent, RoomEventKind, StoredMessage,
};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::session::{other_epoch, Session, SessionState};

/// Largest `presence_snapshot` frame (about; at least one connection is always in it).
pub const SNAPSHOT_PAGE_BYTES: usize = 32 * 1024;

/// A replay in progress on a subscription: live events wait here.
#[derive(Debug, Default)]
pub struct Replay {
    /// Which replay owns the buffer (a newer one takes over).
    pub gen: u64,
    pub buffered: VecDeque<RoomEvent>,
    /// Encoded size of `buffered`, bounded like the outbox.
    pub buffered_bytes: usize,
    /// A `subscribed` frame is owed to the client when the replay finishes.
    pub send_subscribed: bool,
}

/// Where a replay starts ([`Hub::begin_replay`]).
pub(crate) struct ReplayStart {
    /// The replay's generation.
    gen: u64,
    /// The offset to read history after (`None`: from the head).
    from: Option<u64>,
    /// The room epoch `from` counts in, if known.
    epoch: Option<Arc<str>>,
}

/// What a replay read, handed to [`SessionState::start_replay`].
pub struct ReplayResult<'a> {
    pub room: &'a str,
    pub gen: u64,
    pub head: u64,
    pub recovered: bool,
    /// The room's current epoch, told to the client in `subscribed` (and kept, shared, by the
    /// subscription).
    pub epoch: &'a Arc<str>,
    /// Set when the client's epoch was stale: deliver `history` after this offset (and tell
    /// the client to continue from it) instead of after its `since`.
    pub continue_after: Option<u64>,
    pub history: &'a [Arc<StoredMessage>],
    /// The room's presence, in the order the connections last changed.
    pub conns: Vec<Arc<PresenceEntry>>,
    pub own_session: &'a str,
}

/// A frame a replay owes the client.
enum Owed {
    /// `subscribed`: once queued, the client is told the room's epoch.
    Subscribed(Frame, Arc<str>),
    Frame(Frame),
    /// A history message: skipped if the subscription is already past it.
    Message(u64, Frame),
}

impl Owed {
    fn len(&self) -> usize {
        match self {
            Self::Subscribed(f, _) | Self::Frame(f) | Self::Message(_, f) => f.len(),
        }
    }
}

/// The frames of one replay not yet queued.
pub struct ReplayStream {
    room: String,
    gen: u64,
    owed: VecDeque<Owed>,
    /// The snapshot holds this session: its own buffered join is redundant, as long as no
    /// other presence event went out before it (those move their connections after this one
    /// on the client, so the join must follow them to keep the order of the changes).
    self_in_snapshot: bool,
}

/// Where a replay stands after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Everything is queued; the subscription is live.
    Done,
    /// The outbox is full (for a replay): wait for the transport to drain it.
    Blocked,
    /// A newer replay took over, or the subscription is gone.
    Abandoned,
    /// A live message of another epoch is waiting (the room's offsets restarted while this
    /// replay ran): the subscription must be replayed again, in the new epoch.
    Stale,
}

/// The presence of a room as frames: one snapshot of at most about [`SNAPSHOT_PAGE_BYTES`],
/// then `presence_diff` pages (joins only) of the same size for the connections that did not
/// fit. (One `presence_join` per connection that did not fit made joining a room of N members
/// cost O(N) frames per joiner, O(N²) for the room: docs/BENCHMARKS.md, large rooms.) A page is
/// its members' JSON, encoded once when they joined, copied side by side: serde would write
/// the same bytes, for N times the work in a room of N.
fn presence_frames(room: &str, conns: &[Arc<PresenceEntry>]) -> Vec<Frame> {
    let mut pages: Vec<&[Arc<PresenceEntry>]> = Vec::new();
    let (mut start, mut size) = (0, 0usize);
    for (i, entry) in conns.iter().enumerate() {
        // The connection's JSON and its comma.
        let len = entry.json().len() + 1;
        if i > start && size + len > SNAPSHOT_PAGE_BYTES {
            pages.push(&conns[start..i]);
            (start, size) = (i, 0);
        }
        size += len;
    }
    pages.push(&conns[start..]);
    let mut pages = pages.into_iter();
    let first = pages.next().unwrap_or_default();
    let mut frames = vec![list_frame("conns", first, |conns| {
        ServerFrame::PresenceSnapshot {
            room: room.to_owned(),
            conns,
        }
    })];
    frames.extend(pages.map(|page| {
        list_frame("joins", page, |joins| ServerFrame::PresenceDiff {
            room: room.to_owned(),
            joins,
            leaves: Vec::new(),
        })
    }));
    frames
}

/// The frame `build` makes, with `entries` in its list `field`: the same bytes serde writes,
/// from the JSON the entries already hold.
fn list_frame(
    field: &str,
    entries: &[Arc<PresenceEntry>],
    build: impl Fn(Vec<PresenceConn>) -> ServerFrame,
) -> Frame {
    let empty = encode_frame(&build(Vec::new()));
    let key = format!("\"{field}\":[]");
    let Some(at) = empty.find(&key).map(|i| i + key.len() - 1) else {
        // Not reached (the frame has that list): encode it all instead.
        return encode_frame(&build(entries.iter().map(|e| e.conn.clone()).collect()));
    };
    let (head, tail) = empty.split_at(at);
    let len = entries.iter().map(|e| e.json().len() + 1).sum::<usize>();
    let mut out = String::with_capacity(empty.len() + len);
    out.push_str(head);
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(entry.json());
    }
    out.push_str(tail);
    Frame::from(out)
}

impl SessionState {
    /// Starts delivering a replay that read `r`: everything it owes (`subscribed` if owed, the
    /// presence, the history after `last_offset`), queued by [`SessionState::continue_replay`].
    /// `None` if a newer replay took over or the subscription is gone.
    pub fn start_replay(&mut self, r: ReplayResult<'_>) -> Option<ReplayStream> {
        let sub = self.rooms.get_mut(r.room)?;
        let replay = sub.replay.as_ref().filter(|p| p.gen == r.gen)?;
        let mut owed = VecDeque::with_capacity(r.history.len() + 2);
        if replay.send_subscribed || !r.recovered {
            let frame = encode_frame(&ServerFrame::Subscribed {
                room: r.room.to_owned(),
                head: r.continue_after.unwrap_or(r.head),
                recovered: r.recovered,
                epoch: r.epoch.to_string(),
            });
            owed.push_back(Owed::Subscribed(frame, r.epoch.clone()));
        } else {
            // Recovered in the epoch the client holds: nothing to tell.
            sub.epoch = Some(r.epoch.clone());
        }
        let self_in_snapshot = r.conns.iter().any(|e| e.conn.session == r.own_session);
        owed.extend(
            presence_frames(r.room, &r.conns)
                .into_iter()
                .map(Owed::Frame),
        );
        if let Some(start) = r.continue_after {
            sub.last_offset = start;
        }
        if r.recovered || r.continue_after.is_some() {
            owed.extend(
                r.history
                    .iter()
                    .map(|m| Owed::Message(m.offset, m.frame.clone())),
            );
        } else {
            // The client must resync the room anyway; continue live from the head.
            sub.last_offset = r.head;
        }
        Some(ReplayStream {
            room: r.room.to_owned(),
            gen: r.gen,
            owed,
            self_in_snapshot,
        })
    }

    /// Queues as much of the replay as the outbox has room for (replays use half of it), then
    /// the buffered live events; when both are through, the subscription goes live.
    pub fn continue_replay(
        &mut self,
        stream: &mut ReplayStream,
        own_user: &str,
        own_session: &str,
        metrics: &Metrics,
    ) -> Progress {
        loop {
            // The next frame's size, or the end of the replay.
            let next = match self.replay_of(stream) {
                None => return Progress::Abandoned,
                Some(replay) => stream
                    .owed
                    .front()
                    .map(Owed::len)
                    .or_else(|| replay.buffered.front().map(|ev| ev.frame.len())),
            };
            let Some(len) = next else {
                if let Some(sub) = self.rooms.get_mut(&stream.room) {
                    sub.replay = None;
                }
                return Progress::Done;
            };
            if !self.has_replay_room(len) {
                self.wait_for_drain();
                return Progress::Blocked;
            }
            let Some(sub) = self.rooms.get_mut(&stream.room) else {
                return Progress::Abandoned;
            };
            let frame = match stream.owed.pop_front() {
                Some(Owed::Subscribed(f, epoch)) => {
                    sub.epoch = Some(epoch);
                    f
                }
                Some(Owed::Frame(f)) => f,
                Some(Owed::Message(offset, f)) => {
                    if offset <= sub.last_offset {
                        continue;
                    }
                    sub.last_offset = offset;
                    f
                }
                None => {
                    let Some(ev) = sub.replay.as_mut().and_then(|r| {
                        let ev = r.buffered.pop_front()?;
                        r.buffered_bytes = r.buffered_bytes.saturating_sub(ev.frame.len());
                        Some(ev)
                    }) else {
                        continue;
                    };
                    match &ev.kind {
                        RoomEventKind::Message(m)
                            if sub.epoch.as_ref().is_some_and(|e| other_epoch(e, &m.epoch)) =>
                        {
                            if let Some(r) = sub.replay.as_mut() {
                                r.buffered_bytes += ev.frame.len();
                                r.buffered.push_front(ev);
                            }
                            return Progress::Stale;
                        }
                        RoomEventKind::Message(m) => {
                            if m.offset <= sub.last_offset {
                                continue;
                            }
                            sub.last_offset = m.offset;
                        }
                        RoomEventKind::Typing { user, .. } if user == own_user => continue,
                        RoomEventKind::PresenceJoin(c)
                            if stream.self_in_snapshot && c.session == own_session =>
                        {
                            continue
                        }
                        RoomEventKind::PresenceJoin(_)
                        | RoomEventKind::PresenceUpdate(_)
                        | RoomEventKind::PresenceLeave { .. }
                        | RoomEventKind::PresenceDiff { .. } => stream.self_in_snapshot = false,
                        _ => {}
                    }
                    ev.frame
                }
            };
            self.push(frame, metrics);
        }
    }

    /// The subscription's replay if `stream` still owns it.
    fn replay_of(&self, stream: &ReplayStream) -> Option<&Replay> {
        self.rooms
            .get(&stream.room)?
            .replay
            .as_deref()
            .filter(|r| r.gen == stream.gen)
    }
}

impl Hub {
    /// Replays `room` for `session` from `since` (or from the head when `None`, after the last
    /// `recent` messages if asked), then switches the subscription to live. `epoch` is the room
    /// epoch the client's `since` belongs to.
    pub(crate) async fn replay(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        recent: u32,
        send_subscribed: bool,
    ) {
        let start = Self::begin_replay(session, room, since, epoch, send_subscribed);
        if let Some(ReplayStart { gen, from, epoch }) = start {
            self.complete_replay(session, room, gen, from, epoch.as_deref(), recent)
                .await;
        }
    }

    /// First half of a replay, synchronous: from now on live events of the room are buffered.
    /// Returns where to read history from. A resync (`send_subscribed` false, no `since`)
    /// continues from what the client already has.
    ///
    /// A `since` in an epoch other than the one this session already told the client in
    /// `subscribed` predates that frame (a client learns epochs only from `subscribed`, and
    /// frames reach it in order): the client sent it before it read the room's reset. The
    /// reset is already on its way, so the replay continues from what the session queued
    /// instead of resetting the room a second time.
    pub(crate) fn begin_replay(
        session: &Session,
        room: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        send_subscribed: bool,
    ) -> Option<ReplayStart> {
        session.update(|st, _| {
            let gen = st.next_replay_gen();
            let sub = st.rooms.get_mut(room)?;
            let told = sub.epoch.clone();
            let superseded = since.is_some()
                && epoch.is_some_and(|e| !e.is_empty())
                && told.as_deref().is_some_and(|t| Some(t) != epoch);
            let (from, epoch) = match since {
                Some(_) if superseded => (Some(sub.last_offset), told),
                Some(s) => {
                    sub.last_offset = s;
                    (Some(s), epoch.map(Arc::from))
                }
                None if !send_subscribed => (Some(sub.last_offset), told),
                None => (None, None),
            };
            let prev = sub.replay.take();
            let owed = send_subscribed || prev.as_ref().is_some_and(|r| r.send_subscribed);
            let (buffered, buffered_bytes) = prev
                .map(|r| (r.buffered, r.buffered_bytes))
                .unwrap_or_default();
            sub.replay = Some(Box::new(Replay {
                gen,
                buffered,
                buffered_bytes,
                send_subscribed: owed,
            }));
            Some(ReplayStart { gen, from, epoch })
        })
    }

    /// Second half of a replay: reads history and presence, queues them, goes live.
    ///
    /// If the client's `since` belongs to another epoch of the room (offsets restarted), it is
    /// meaningless: the client gets `recovered: false` and everything retained in the current
    /// epoch, continuing after the offset before the oldest retained message. A fresh subscribe
    /// (`from` is `None`) asking for `recent` messages gets the newest ones retained, up to that
    /// many, and continues after the offset before them.
    pub(crate) async fn complete_replay(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: &str,
        gen: u64,
        from: Option<u64>,
        client_epoch: Option<&str>,
        recent: u32,
    ) {
        let limit = self.config.history_max_messages;
        let mut page = match from {
            Some(f) => self.broker.history(room, f, limit).await,
            None => self.broker.history(room, 0, 0).await,
        };
        let epoch_changed = |p: &HistoryPage| {
            from.is_some() && client_epoch.is_some_and(|e| !e.is_empty() && e != &*p.epoch)
        };
        let reset = page.as_ref().is_ok_and(epoch_changed);
        if reset && from != Some(0) {
            page = self.broker.history(room, 0, limit).await;
        }
        let recent = (recent as usize).min(limit);
        let rewind = from.is_none() && recent > 0 && page.as_ref().is_ok_and(|p| p.head > 0);
        if rewind {
            let head = page.as_ref().map_or(0, |p| p.head);
            page = self
                .broker
                .history(room, head.saturating_sub(recent as u64), recent)
                .await;
        }
        let snapshot = self.broker.presence_snapshot(room).await;
        let (page, conns) = match (page, snapshot) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "replay failed");
                session.update(|st, _| {
                    if let Some(sub) = st.rooms.get_mut(room) {
                        sub.replay = None;
                    }
                });
                self.nack(
                    session,
                    room.to_owned(),
                    ErrorCode::Internal,
                    "history unavailable",
                );
                return;
            }
        };
        let recovered = !reset && (from.is_none() || page.complete);
        let continue_after =
            (reset || rewind).then(|| page.messages.first().map_or(page.head, |m| m.offset - 1));
        let stream = session.update(|st, _| {
            if from.is_none() {
                if let Some(sub) = st.rooms.get_mut(room) {
                    sub.last_offset = sub.last_offset.max(page.head);
                }
            }
            st.start_replay(ReplayResult {
                room,
                gen,
                head: page.head,
                recovered,
                epoch: &page.epoch,
                continue_after,
                history: &page.messages,
                conns,
                own_session: &session.id,
            })
        });
        if let Some(stream) = stream {
            self.stream_replay(session, stream).await;
        }
    }

    /// Pushes what a replay owes as fast as the session's outbox drains. The first pages go
    /// out at once; if more remain, a task waits for the transport to drain the outbox and
    /// continues, so the caller (the session's frame handler) is not held up by a slow link.
    async fn stream_replay(self: &Arc<Self>, session: &Arc<Session>, mut stream: ReplayStream) {
        match Self::replay_step(session, &mut stream) {
            Progress::Blocked => {}
            Progress::Stale => return self.resync(session, &stream.room),
            Progress::Done | Progress::Abandoned => return,
        }
        let (hub, session) = (self.clone(), session.clone());
        tokio::spawn(async move {
            loop {
                let drained = session.drained();
                tokio::pin!(drained);
                drained.as_mut().enable();
                match Self::replay_step(&session, &mut stream) {
                    Progress::Blocked => {}
                    Progress::Stale => return hub.resync(&session, &stream.room),
                    Progress::Done | Progress::Abandoned => return,
                }
                // The timeout only re-checks a session whose transport went away (a newer
                // replay or the session's end abandons this one).
                let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
                if session.lock().ended {
                    return;
                }
            }
        });
    }

    /// Replays `room` again from what the client has, in the epoch the client holds: used when
    /// the room's offsets restarted under a new epoch (the client then gets `subscribed
    /// {recovered: false}` and the new epoch's messages), and after the hub lagged. Live events
    /// are buffered from the moment this returns.
    pub(crate) fn resync(self: &Arc<Self>, session: &Arc<Session>, room: &str) {
        let Some(ReplayStart { gen, from, epoch }) =
            Self::begin_replay(session, room, None, None, false)
        else {
            return;
        };
        let (hub, session, room) = (self.clone(), session.clone(), room.to_owned());
        tokio::spawn(async move {
            hub.complete_replay(&session, &room, gen, from, epoch.as_deref(), 0)
                .await
        });
    }

    fn replay_step(session: &Session, stream: &mut ReplayStream) -> Progress {
        session.update(|st, m| st.continue_replay(stream, &session.claims.sub, &session.id, m))
    }
}

#[cfg(test)]
mod tests {
    use rtlink_protocol::codec::decode_server;

    use super::*;

    /// Pages built from the entries' JSON are byte for byte what serde writes for the same
    /// connections (escapes included), hold every connection once in order, and keep to the
    /// page size.
    #[test]
    fn presence_pages_are_the_frames_serde_would_write() {
        let entries: Vec<Arc<PresenceEntry>> = (0..1500)
            .map(|i| {
                PresenceEntry::new(PresenceConn {
                    session: format!("s{i:05}"),
                    user: format!("user \"{i}\""),
                    name: format!("Zoë\\{i}\n"),
                    meta: if i % 7 == 0 {
                        format!(
                            "{{\"status\":\"away\",\"n\":{i},\"pad\":\"{}\"}}",
                            "x".repeat(i % 300)
                        )
                    } else {
                        String::new()
                    },
                })
            })
            .collect();
        let frames = presence_frames("lobby:1", &entries);
        assert!(frames.len() >= 3, "{} frames", frames.len());
        let mut seen = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            assert!(
                frame.len() <= SNAPSHOT_PAGE_BYTES + 200,
                "frame {i}: {} B",
                frame.len()
            );
            let decoded = decode_server(frame.as_bytes(), usize::MAX).expect("a server frame");
            let conns = match (i, decoded) {
                (0, ServerFrame::PresenceSnapshot { room, conns }) if room == "lobby:1" => conns,
                (
                    1..,
                    ServerFrame::PresenceDiff {
                        room,
                        joins,
                        leaves,
                    },
                ) if room == "lobby:1" && leaves.is_empty() => joins,
                (_, other) => panic!("frame {i}: {other:?}"),
            };
            let again = match i {
                0 => ServerFrame::PresenceSnapshot {
                    room: "lobby:1".into(),
                    conns: conns.clone(),
                },
                _ => ServerFrame::PresenceDiff {
                    room: "lobby:1".into(),
                    joins: conns.clone(),
                    leaves: Vec::new(),
                },
            };
            assert_eq!(frame.as_str(), encode_frame(&again).as_str(), "frame {i}");
            seen.extend(conns);
        }
        let want: Vec<PresenceConn> = entries.iter().map(|e| e.conn.clone()).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_empty_presence_is_one_empty_snapshot() {
        let frames = presence_frames("r", &[]);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            frames[0].as_str(),
            r#"{"t":"presence_snapshot","room":"r","conns":[]}"#
        );
    }
}

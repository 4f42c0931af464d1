//! Client frames that act on rooms: subscribe (with replay), unsubscribe, publish; and the
//! dispatch of every inbound frame.
//!
//! Subscribe is race-free: the subscription is registered for live events *first* (they are
//! buffered while the replay runs), then history after `since` is read, then the replay is
//! queued followed by the buffered live events with an offset above the last replayed one.
//! No gap, no duplicate, in order. Re-subscribing a room the session is already in is the
//! resume path: the same replay, no second presence join.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtlink_protocol::{ClientFrame, CloseCode, ErrorCode, PresenceConn, ServerFrame};

use crate::broker::{DedupeKey, HistoryPage, PublishOutcome, PublishRequest};
use crate::hub::{Hub, MembershipRefusal};
use crate::metrics::DropReason;
use crate::session::{Replay, ReplayResult, RoomSub, Session};

/// Publish ids longer than this are refused (`nack too_large`): the dedupe table keeps every
/// id for the dedupe window.
pub const MAX_PUBLISH_ID_BYTES: usize = 128;

/// How far behind its subscribe/unsubscribe budget a session may fall (its frames wait) before
/// further ones are refused.
pub const ROOM_OP_MAX_DELAY: Duration = Duration::from_secs(5);

/// Room names: 1–128 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_room(room: &str) -> bool {
    (1..=128).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// The transport must end with this close code (a `close` frame is already queued).
pub type Flow = Result<(), CloseCode>;

impl Hub {
    /// Handles one frame from the client. `Err(code)` means the transport must close.
    pub async fn handle_frame(
        self: &Arc<Self>,
        session: &Arc<Session>,
        frame: ClientFrame,
    ) -> Flow {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.frames_in.fetch_add(1, Relaxed);
        session.lock().last_inbound = Instant::now();
        let flow = match frame {
            ClientFrame::Hello { .. } => Err(CloseCode::PROTOCOL_VIOLATION),
            ClientFrame::Ping => {
                session.push_frame(&ServerFrame::Pong);
                Ok(())
            }
            ClientFrame::Pong => Ok(()),
            ClientFrame::Subscribe {
                room,
                since,
                epoch,
                history,
            } => {
                let recent = if since.is_none() {
                    history.unwrap_or(0)
                } else {
                    0
                };
                self.subscribe(session, room, since, epoch, recent).await
            }
            ClientFrame::Unsubscribe { room } => self.unsubscribe(session, room).await,
            ClientFrame::Publish { room, id, payload } => {
                self.publish(session, room, id, payload).await
            }
            ClientFrame::Presence { room, meta } => self.set_presence(session, room, meta).await,
            ClientFrame::Typing { room, active } => self.typing(session, room, active).await,
            ClientFrame::Close { .. } => {
                self.end_session(session, CloseCode::NORMAL).await;
                Err(CloseCode::NORMAL)
            }
        };
        if let Err(code) = flow {
            session.close_transport(code, code.name());
        }
        flow
    }

    pub(crate) fn nack(&self, session: &Session, id: String, code: ErrorCode, reason: &str) {
        session.push_frame(&ServerFrame::Nack {
            id,
            code,
            reason: reason.to_owned(),
        });
    }

    /// Takes a token from the session's bucket. Without one: nack `rate_limited`, and after too
    /// many nacks, close 4003.
    fn check_rate(&self, session: &Session, id: &str) -> Result<bool, CloseCode> {
        let now = Instant::now();
        let max_strikes = self.config.rate_strikes;
        let verdict = {
            let mut st = session.lock();
            if st.bucket.try_take(now) {
                None
            } else {
                Some(st.strikes.strike(now, max_strikes))
            }
        };
        match verdict {
            None => Ok(true),
            Some(false) => {
                self.metrics.count_drop(DropReason::RateLimited);
                self.nack(session, id.to_owned(), ErrorCode::RateLimited, "slow down");
                Ok(false)
            }
            Some(true) => {
                self.metrics.count_drop(DropReason::RateLimited);
                Err(CloseCode::RATE_LIMITED)
            }
        }
    }

    /// Takes a token from the session's subscribe/unsubscribe bucket. Over it, the frame waits
    /// for its token (frames of a session are handled in order, so the client is slowed down,
    /// TCP pushes back, and a burst such as re-subscribing every room after a reconnect goes
    /// through); past [`ROOM_OP_MAX_DELAY`] of backlog: nack `rate_limited` (`id` = room), and
    /// after too many nacks, close 4003.
    async fn throttle_room_op(&self, session: &Session, room: &str) -> Result<bool, CloseCode> {
        let now = Instant::now();
        let max_strikes = self.config.rate_strikes;
        let verdict = {
            let mut st = session.lock();
            match st.room_bucket.reserve(now, ROOM_OP_MAX_DELAY) {
                Some(wait) => Ok(wait),
                None => Err(st.strikes.strike(now, max_strikes)),
            }
        };
        match verdict {
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(true)
            }
            Err(false) => {
                self.metrics.count_drop(DropReason::RateLimited);
                self.nack(
                    session,
                    room.to_owned(),
                    ErrorCode::RateLimited,
                    "slow down",
                );
                Ok(false)
            }
            Err(true) => {
                self.metrics.count_drop(DropReason::RateLimited);
                Err(CloseCode::RATE_LIMITED)
            }
        }
    }

    /// The checks before a publish, presence or typing frame is applied: subscribed to `room`
    /// (else nack `not_subscribed`), and within the rate limit (else nack `rate_limited`, or
    /// close 4003 after repeated strikes). `id` is what a nack answers to.
    pub(crate) fn admit_room_op(
        &self,
        session: &Session,
        room: &str,
        id: &str,
    ) -> Result<bool, CloseCode> {
        Ok(self.require_subscribed(session, room, id) && self.check_rate(session, id)?)
    }

    /// True if the session is subscribed to `room`; otherwise nacks `not_subscribed`.
    fn require_subscribed(&self, session: &Session, room: &str, id: &str) -> bool {
        let subscribed = session.lock().rooms.contains_key(room);
        if !subscribed {
            self.nack(
                session,
                id.to_owned(),
                ErrorCode::NotSubscribed,
                "subscribe first",
            );
        }
        subscribed
    }

    pub(crate) fn presence_conn(&self, session: &Session, meta: String) -> PresenceConn {
        PresenceConn {
            session: session.id.clone(),
            user: session.claims.sub.clone(),
            name: session.claims.name.clone(),
            meta,
        }
    }

    async fn subscribe(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
        recent: u32,
    ) -> Flow {
        if !valid_room(&room) {
            self.nack(
                session,
                room,
                ErrorCode::InvalidRoom,
                "room names are 1-128 of [A-Za-z0-9_.:-]",
            );
            return Ok(());
        }
        if !session.claims.may_access(&room) {
            self.nack(
                session,
                room,
                ErrorCode::Forbidden,
                "the token does not allow this room",
            );
            return Ok(());
        }
        if !self.throttle_room_op(session, &room).await? {
            return Ok(());
        }
        let (already, count) = {
            let st = session.lock();
            (st.rooms.contains_key(&room), st.rooms.len())
        };
        if !already {
            if count >= self.config.max_rooms as usize {
                self.nack(
                    session,
                    room,
                    ErrorCode::TooManyRooms,
                    "too many rooms on this session",
                );
                return Ok(());
            }
            if let Err(refusal) = self.add_local_sub(&room, session).await {
                let (code, reason) = match refusal {
                    MembershipRefusal::RoomFull => (ErrorCode::Overloaded, "the room is full"),
                    MembershipRefusal::UserRooms => {
                        (ErrorCode::TooManyRooms, "too many rooms for this user")
                    }
                };
                self.nack(session, room, code, reason);
                return Ok(());
            }
            // Buffer live events from now on; the replay below takes the buffer over. (Frames
            // of one session are handled one at a time, so nobody inserted it meanwhile.)
            session.update(|st, _| {
                st.rooms.insert(
                    room.clone(),
                    RoomSub {
                        last_offset: 0,
                        replay: Some(Replay {
                            send_subscribed: true,
                            ..Replay::default()
                        }),
                        meta: String::new(),
                        typing_gen: 0,
                        typing_active: false,
                    },
                )
            });
            let conn = self.presence_conn(session, String::new());
            if let Err(e) = self.broker.presence_join(&room, conn).await {
                tracing::warn!(error = %e, "presence join failed");
            }
        }
        self.replay(session, &room, since, epoch.as_deref(), recent, true)
            .await;
        Ok(())
    }

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
        if let Some((gen, from)) = Self::begin_replay(session, room, since, send_subscribed) {
            self.complete_replay(session, room, gen, from, epoch, recent)
                .await;
        }
    }

    /// First half of a replay, synchronous: from now on live events of the room are buffered.
    /// Returns the replay's generation and the offset to read history after (`None`: from the
    /// head). A resync (`send_subscribed` false, no `since`) continues from what the client
    /// already has.
    pub(crate) fn begin_replay(
        session: &Session,
        room: &str,
        since: Option<u64>,
        send_subscribed: bool,
    ) -> Option<(u64, Option<u64>)> {
        session.update(|st, _| {
            let gen = st.next_replay_gen();
            let sub = st.rooms.get_mut(room)?;
            let from = match since {
                Some(s) => {
                    sub.last_offset = s;
                    Some(s)
                }
                None if !send_subscribed => Some(sub.last_offset),
                None => None,
            };
            let prev = sub.replay.take();
            let owed = send_subscribed || prev.as_ref().is_some_and(|r| r.send_subscribed);
            let (buffered, buffered_bytes) = prev
                .map(|r| (r.buffered, r.buffered_bytes))
                .unwrap_or_default();
            sub.replay = Some(Replay {
                gen,
                buffered,
                buffered_bytes,
                send_subscribed: owed,
            });
            Some((gen, from))
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
            from.is_some() && client_epoch.is_some_and(|e| !e.is_empty() && e != p.epoch)
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
        session.update(|st, m| {
            if from.is_none() {
                if let Some(sub) = st.rooms.get_mut(room) {
                    sub.last_offset = sub.last_offset.max(page.head);
                }
            }
            let result = ReplayResult {
                room,
                gen,
                head: page.head,
                recovered,
                epoch: &page.epoch,
                continue_after,
                history: &page.messages,
                conns,
                own_user: &session.claims.sub,
                own_session: &session.id,
            };
            st.finish_replay(result, m);
        });
    }

    async fn unsubscribe(self: &Arc<Self>, session: &Arc<Session>, room: String) -> Flow {
        let subscribed = session.lock().rooms.contains_key(&room);
        // Only an effective unsubscribe costs a token: it fans a leave out to the room.
        if subscribed && !self.throttle_room_op(session, &room).await? {
            return Ok(());
        }
        let removed = session.update(|st, _| st.rooms.remove(&room));
        if let Some(sub) = removed {
            self.remove_local_sub(&room, session).await;
            if sub.typing_active {
                let _ = self
                    .broker
                    .typing(&room, &session.claims.sub, &session.claims.name, false)
                    .await;
            }
            if let Err(e) = self.broker.presence_leave(&room, &session.id).await {
                tracing::warn!(error = %e, "presence leave failed");
            }
        }
        session.push_frame(&ServerFrame::Unsubscribed { room });
        Ok(())
    }

    async fn publish(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: String,
        id: String,
        payload: String,
    ) -> Flow {
        if id.len() > MAX_PUBLISH_ID_BYTES {
            self.metrics.count_drop(DropReason::TooLarge);
            let reason = format!("publish ids are at most {MAX_PUBLISH_ID_BYTES} bytes");
            self.nack(session, id, ErrorCode::TooLarge, &reason);
            return Ok(());
        }
        if !self.admit_room_op(session, &room, &id)? {
            return Ok(());
        }
        let req = PublishRequest {
            room: room.clone(),
            sender: session.claims.sub.clone(),
            name: Some(session.claims.name.clone()).filter(|n| !n.is_empty()),
            payload,
            dedupe: (!id.is_empty()).then(|| DedupeKey {
                user: session.claims.sub.clone(),
                id: id.clone(),
            }),
        };
        match self.broker.publish(req).await {
            Ok(outcome) => {
                let (room, offset) = match &outcome {
                    PublishOutcome::Stored(m) => {
                        self.metrics
                            .messages_published
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        (m.room.clone(), m.offset)
                    }
                    PublishOutcome::Duplicate { room, offset } => (room.clone(), *offset),
                };
                session.push_frame(&ServerFrame::Ack { id, room, offset });
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                self.nack(session, id, ErrorCode::Internal, "publish failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_room;

    #[test]
    fn room_names() {
        assert!(valid_room("chat:lobby-1.a_b"));
        assert!(!valid_room(""));
        assert!(!valid_room("has space"));
        assert!(!valid_room("ü"));
        assert!(valid_room(&"a".repeat(128)));
        assert!(!valid_room(&"a".repeat(129)));
    }
}

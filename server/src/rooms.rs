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

use crate::broker::{DedupeKey, PublishOutcome, PublishRequest};
use crate::hub::{Hub, MembershipRefusal};
use crate::metrics::DropReason;
use crate::replay::Replay;
use crate::session::{RoomSub, Session};

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
    ///
    /// The work is a future of about a kilobyte (subscribe, replay, the broker calls): boxed
    /// here, it lives on the heap only while a frame is handled, instead of inline in every
    /// connection's reader, idle or not (docs/BENCHMARKS.md, idle memory).
    pub async fn handle_frame(
        self: &Arc<Self>,
        session: &Arc<Session>,
        frame: ClientFrame,
    ) -> Flow {
        Box::pin(self.apply_frame(session, frame)).await
    }

    async fn apply_frame(self: &Arc<Self>, session: &Arc<Session>, frame: ClientFrame) -> Flow {
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
            ClientFrame::Switch => {
                self.commit_probe(session);
                Ok(())
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

    /// Charges a publish's payload to its user's byte budget (all their sessions on this
    /// node). Over it: nack `rate_limited`, and after too many nacks, close 4003, as for the
    /// frame rate.
    fn check_publish_budget(
        &self,
        session: &Session,
        id: &str,
        bytes: usize,
    ) -> Result<bool, CloseCode> {
        let now = Instant::now();
        if self.publish_budget.charge(&session.claims.sub, bytes, now) {
            return Ok(true);
        }
        self.metrics.count_drop(DropReason::RateLimited);
        if session.lock().strikes.strike(now, self.config.rate_strikes) {
            return Err(CloseCode::RATE_LIMITED);
        }
        self.nack(
            session,
            id.to_owned(),
            ErrorCode::RateLimited,
            "publish byte budget of this user exceeded",
        );
        Ok(false)
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
            name: session.claims.name(),
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
                        replay: Some(Box::new(Replay {
                            send_subscribed: true,
                            ..Replay::default()
                        })),
                        epoch: None,
                        meta: Box::default(),
                        typing_gen: 0,
                        typing_active: false,
                    },
                )
            });
            if self.config.presence_on(&room) {
                let conn = self.presence_conn(session, String::new());
                if let Err(e) = self.broker.presence_join(&room, conn).await {
                    tracing::warn!(error = %e, "presence join failed");
                }
            }
        }
        self.replay(session, &room, since, epoch.as_deref(), recent, true)
            .await;
        Ok(())
    }

    /// After a resume, whose token may be newer: leaves every room the session's claims no
    /// longer allow, telling the client with `nack forbidden` (the room as id) and
    /// `unsubscribed`.
    pub(crate) async fn drop_forbidden_rooms(self: &Arc<Self>, session: &Arc<Session>) {
        let rooms: Vec<String> = session
            .lock()
            .rooms
            .keys()
            .filter(|r| !session.claims.may_access(r))
            .cloned()
            .collect();
        for room in rooms {
            let _serial = session.inbound.lock().await;
            self.nack(
                session,
                room.clone(),
                ErrorCode::Forbidden,
                "the new token does not allow this room",
            );
            let _ = self.unsubscribe(session, room).await;
        }
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
                    .typing(&room, &session.claims.sub, &session.claims.name(), false)
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
        if !self.check_publish_budget(session, &id, payload.len())? {
            return Ok(());
        }
        let req = PublishRequest {
            room: room.clone(),
            sender: session.claims.sub.clone(),
            name: Some(session.claims.name()).filter(|n| !n.is_empty()),
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

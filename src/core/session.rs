//! What happens on an open session: the `welcome` and the resync after it, frames from the
//! server, and the app's room commands.

use alloc::{borrow::ToOwned, string::String, vec::Vec};

use rtlink_protocol::{ClientFrame, ErrorCode, PresenceConn, PresenceLeft, ServerFrame};

use super::connection::{End, Role};
use super::event::{Event, Output, SendError, SendId};
use super::send_queue::SendLimits;
use super::state::{Phase, Probe};
use super::timer::Timer;
use super::{Client, Session};

/// The fields of a `welcome` the core keeps.
struct Welcome {
    session: String,
    resume_token: String,
    resumed: bool,
    ping_interval_ms: u64,
    user_id: String,
    resume_window_ms: u64,
    max_frame_bytes: u64,
    dedupe_window_ms: u64,
}

impl Welcome {
    fn from_frame(frame: ServerFrame) -> Option<Self> {
        match frame {
            ServerFrame::Welcome {
                session,
                resume_token,
                resumed,
                ping_interval_ms,
                user,
                limits,
                ..
            } => Some(Self {
                session,
                resume_token,
                resumed,
                ping_interval_ms,
                user_id: user.id,
                resume_window_ms: limits.resume_window_ms,
                max_frame_bytes: limits.max_frame_bytes,
                dedupe_window_ms: limits.dedupe_window_ms,
            }),
            _ => None,
        }
    }
}

/// Room names the server accepts: 1–128 characters of `[A-Za-z0-9_.:-]`.
fn valid_room(room: &str) -> bool {
    (1..=128).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl Client {
    pub(super) fn on_frame(&mut self, id: super::TransportId, frame: ServerFrame) {
        match self.role(id) {
            Role::Primary => self.on_primary_frame(frame),
            Role::Probe => self.on_probe_frame(frame),
            Role::Stale => {}
        }
    }

    fn on_primary_frame(&mut self, frame: ServerFrame) {
        let id = match &mut self.phase {
            Phase::AwaitingWelcome { slot } | Phase::Open { slot, .. } => {
                slot.got_frame = true;
                slot.id
            }
            _ => return,
        };
        let open = self.is_open();
        if open {
            self.heartbeat.on_frame(self.now);
        }
        match frame {
            ServerFrame::Welcome { .. } if !open => {
                if let Some(welcome) = Welcome::from_frame(frame) {
                    self.on_welcome(welcome);
                }
            }
            ServerFrame::Ping => self.push_out(Output::Send {
                id,
                frame: ClientFrame::Pong,
            }),
            ServerFrame::Close { code, reason } => self.on_primary_end(End::Closed {
                code: Some(code),
                reason,
                reported: false,
            }),
            ServerFrame::ReconnectAfter { min_ms, max_ms } => {
                self.backoff.set_drain_window(min_ms, max_ms)
            }
            other if open => self.on_session_frame(other),
            _ => {}
        }
    }

    fn on_probe_frame(&mut self, frame: ServerFrame) {
        let Phase::Open {
            probe: Some(Probe::Opening { slot: probe }),
            ..
        } = self.phase
        else {
            return;
        };
        match frame {
            ServerFrame::Welcome { .. } => {
                let Some(welcome) = Welcome::from_frame(frame) else {
                    return;
                };
                if self.commit_probe().is_some() {
                    self.on_welcome(welcome);
                }
            }
            ServerFrame::Ping => self.push_out(Output::Send {
                id: probe.id,
                frame: ClientFrame::Pong,
            }),
            ServerFrame::Close { .. } => {
                self.drop_probe(true);
                self.schedule_probe();
            }
            _ => {}
        }
    }

    /// The session is open on the transport in `AwaitingWelcome`: catch up on everything.
    fn on_welcome(&mut self, w: Welcome) {
        let Phase::AwaitingWelcome { slot } = self.phase else {
            return;
        };
        self.timers.stop(Timer::FirstFrame);
        let ping_interval_ms = if w.ping_interval_ms == 0 {
            self.cfg.default_ping_interval_ms
        } else {
            w.ping_interval_ms
        };
        self.session = Some(Session {
            id: w.session,
            resume_token: w.resume_token,
            user_id: w.user_id,
            resume_window_ms: w.resume_window_ms,
            lost_at: None,
        });
        self.send_limits = SendLimits {
            max_frame_bytes: w.max_frame_bytes,
            dedupe_window_ms: w.dedupe_window_ms,
        };
        self.new_session_retry = false;
        self.backoff.clear_drain_window();
        self.endpoints.on_welcome();
        if let Some(kind) = self.ladder.on_welcome(slot.kind) {
            self.emit(Event::TransportRemembered(kind));
        }
        self.heartbeat.start(self.now, ping_interval_ms);
        self.timers
            .set(Timer::Stable, self.now.plus(self.backoff.stable_ms()));
        self.set_phase(Phase::Open { slot, probe: None });
        self.schedule_probe();
        let mut i = 0;
        while let Some((subscribe, presence)) = self.rooms.resync_at(i, w.resumed) {
            self.send(subscribe);
            if let Some(frame) = presence {
                self.send(frame);
            }
            i += 1;
        }
        let failed = self.sends.take_unsendable(self.now, self.send_limits);
        self.fail_sends(failed, "");
        let mut i = 0;
        while let Some(frame) = self.sends.transmit_at(i, self.now) {
            self.send(frame);
            i += 1;
        }
    }

    fn on_session_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Subscribed {
                room,
                head,
                recovered,
                epoch,
            } => {
                let Some(outcome) = self.rooms.on_subscribed(&room, head, recovered, epoch) else {
                    return;
                };
                if outcome.resync {
                    self.emit(Event::ResyncNeeded { room: room.clone() });
                }
                if outcome.first {
                    self.emit(Event::Subscribed { room });
                }
            }
            ServerFrame::Message {
                room,
                offset,
                sender,
                name,
                payload,
            } => match self.rooms.on_message(&room, offset) {
                super::rooms::Delivery::Deliver => self.emit(Event::Message {
                    room,
                    offset,
                    sender,
                    name,
                    payload,
                }),
                super::rooms::Delivery::Gap => {
                    if let Some(frame) = self.rooms.subscribe_frame(&room) {
                        self.send(frame);
                    }
                }
                super::rooms::Delivery::Duplicate | super::rooms::Delivery::Drop => {}
            },
            ServerFrame::Ack { id, offset, .. } => {
                if let Some(send_id) = self.sends.take(&id) {
                    self.emit(Event::PublishAcked { send_id, offset });
                }
            }
            ServerFrame::Nack { id, code, reason } => {
                if let Some(send_id) = self.sends.take(&id) {
                    self.emit(Event::PublishFailed {
                        send_id,
                        code,
                        reason,
                    });
                } else if self.rooms.subscribe_pending(&id) {
                    self.rooms.remove(&id);
                    self.emit(Event::SubscribeFailed {
                        room: id,
                        code,
                        reason,
                    });
                }
            }
            ServerFrame::PresenceSnapshot { room, conns } => {
                self.on_presence(room, true, conns, Vec::new())
            }
            ServerFrame::PresenceJoin { room, conn }
            | ServerFrame::PresenceUpdate { room, conn } => {
                self.on_presence(room, false, alloc::vec![conn], Vec::new())
            }
            ServerFrame::PresenceDiff {
                room,
                joins,
                leaves,
            } => self.on_presence(room, false, joins, leaves),
            ServerFrame::PresenceLeave {
                room,
                session,
                user,
            } => self.on_presence(
                room,
                false,
                Vec::new(),
                alloc::vec![PresenceLeft { session, user }],
            ),
            ServerFrame::Typing {
                room,
                user,
                name,
                active,
            } => {
                if self.session.as_ref().is_some_and(|s| s.user_id == user) {
                    return;
                }
                let (now, expiry_ms) = (self.now, self.cfg.typing_expiry_ms);
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                if let Some(users) = r.typing.on_remote(now, expiry_ms, &user, &name, active) {
                    self.emit(Event::TypingChanged { room, users });
                }
            }
            _ => {}
        }
    }

    /// Every presence frame of a subscribed room (see [`super::presence::RoomPresence::apply`]);
    /// a user none of whose connections is left stops typing there.
    fn on_presence(
        &mut self,
        room: String,
        reset: bool,
        joins: Vec<PresenceConn>,
        leaves: Vec<PresenceLeft>,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Some(members) = r.presence.apply(reset, joins, &leaves) {
            self.emit(Event::PresenceChanged {
                room: room.clone(),
                members,
            });
        }
        for left in &leaves {
            // Looked up again per user: the room's entry cannot stay borrowed across `emit`.
            let Some(r) = self.rooms.get_mut(&room) else {
                return;
            };
            if r.presence.is_present(&left.user) {
                continue;
            }
            if let Some(users) = r.typing.remove_user(&left.user) {
                self.emit(Event::TypingChanged {
                    room: room.clone(),
                    users,
                });
            }
        }
    }

    // The app's room commands take the room name by value: it moves into the frame or event
    // they queue instead of being copied there and dropped.

    pub(super) fn subscribe(&mut self, room: String, history: u32) {
        if !valid_room(&room) {
            let reason = "room names are 1-128 characters of [A-Za-z0-9_.:-]".to_owned();
            self.emit(Event::SubscribeFailed {
                room,
                code: ErrorCode::InvalidRoom,
                reason,
            });
            return;
        }
        if self.rooms.add(&room, history) && self.is_open() {
            if let Some(frame) = self.rooms.subscribe_frame(&room) {
                self.send(frame);
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, room: String) {
        if self.rooms.remove(&room) {
            self.send(ClientFrame::Unsubscribe { room });
        }
    }

    pub(super) fn set_presence(&mut self, room: String, meta: String) {
        let open = self.is_open();
        if let Some(frame) = self.rooms.set_meta(room, meta, open) {
            self.send(frame);
        }
    }

    pub(super) fn keystroke(&mut self, room: String) {
        if !self.is_open() {
            return;
        }
        let (now, throttle_ms, idle_ms) = (
            self.now,
            self.cfg.typing_throttle_ms,
            self.cfg.typing_idle_ms,
        );
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.typing.keystroke(now, throttle_ms, idle_ms) {
            self.send(ClientFrame::Typing { room, active: true });
        }
    }

    pub(super) fn typing_stop(&mut self, room: &str) {
        if self.rooms.get_mut(room).is_some_and(|r| r.typing.stop()) {
            self.send(ClientFrame::Typing {
                room: room.to_owned(),
                active: false,
            });
        }
    }

    pub(super) fn publish_inner(
        &mut self,
        room: &str,
        payload: String,
    ) -> Result<SendId, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if !self.rooms.contains(room) {
            return Err(SendError::NotSubscribed);
        }
        let send_id = self
            .sends
            .push(room.to_owned(), payload, self.send_limits)?;
        if self.is_open() {
            // Publishing ends "typing…" in that room.
            self.typing_stop(room);
            if let Some(frame) = self.sends.transmit(send_id, self.now) {
                self.send(frame);
            }
        }
        Ok(send_id)
    }

    pub(super) fn expire_sends(&mut self) {
        // A timer handled far later than its deadline means the page was throttled or frozen:
        // acks that arrived meanwhile may be queued right behind this call. Give them the probe
        // window instead of failing publishes that probably succeeded. A dead transport is the
        // heartbeat's to find; a resend after reconnect re-arms the deadline anyway.
        let overdue = self
            .sends
            .next_deadline()
            .map_or(0, |d| self.now.millis_since(d));
        if overdue > self.cfg.late_timer_threshold_ms {
            let until = self.now.plus(self.cfg.liveness_probe_window_ms);
            self.sends.defer_overdue(self.now, until);
            return;
        }
        let failed = self.sends.expire(self.now);
        if !failed.is_empty() {
            let reason = super::text::concat(&[
                "no ack within ",
                &super::text::dec(self.cfg.ack_timeout_ms),
                " ms",
            ]);
            self.fail_sends(failed, &reason);
        }
    }

    /// Reports publishes that left the queue without an ack: `reason` says why, except for the
    /// two failures a `welcome`'s limits cause, which say it themselves.
    pub(super) fn fail_sends(&mut self, failed: super::send_queue::Failed, reason: &str) {
        // By reference: a consuming loop compiles `vec::IntoIter`'s drop code for this one use.
        for &(send_id, code) in &failed {
            let reason = match code {
                ErrorCode::TooLarge => {
                    "the encoded frame is larger than the server's max_frame_bytes"
                }
                ErrorCode::Expired => {
                    "first sent longer ago than the server's dedupe window allows a safe resend"
                }
                _ => reason,
            };
            self.emit(Event::PublishFailed {
                send_id,
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// Own typing gone idle (`typing{active: false}`), then others' typing expired, in room
    /// order. Walked by index: a room's entry cannot stay borrowed while output is queued.
    pub(super) fn expire_typing(&mut self) {
        let now = self.now;
        let mut i = 0;
        while let Some((room, r)) = self.rooms.entry_at_mut(i) {
            i += 1;
            if r.typing.expire_own(now) {
                let room = room.clone();
                self.send(ClientFrame::Typing {
                    room,
                    active: false,
                });
            }
        }
        let mut i = 0;
        while let Some((room, r)) = self.rooms.entry_at_mut(i) {
            i += 1;
            if let Some(users) = r.typing.expire_others(now) {
                let room = room.clone();
                self.emit(Event::TypingChanged { room, users });
            }
        }
    }
}

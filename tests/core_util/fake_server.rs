//! The scripted fake server of the harness: room histories with offsets and epochs, publish
//! dedupe by id, presence per connection, resumable sessions, and the ways real networks fail
//! (refused opens, transports dying before or after their first frame, silence).

use std::collections::{BTreeMap, BTreeSet};

use rtlink::core::{ClientFrame, CloseCode, Input, ServerFrame, TransportId, TransportKind};
use rtlink_protocol::{Limits, PresenceConn, UserInfo};

use super::*;

/// How the fake server treats attempts to open a transport kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// The HTTP request fails.
    OpenFail(OpenError),
    /// Opens (101 / headers) and dies before sending a single frame.
    DieBeforeFirstFrame,
    /// Opens and the server closes it with this code before `welcome` (e.g. 1013 when full).
    CloseBeforeWelcome(CloseCode),
    /// Opens and sends a `close` frame with this code instead of `welcome`, then ends: how an SSE
    /// stream or a long-poll batch says it (another protocol version, a session that ended for
    /// good before its client heard).
    CloseFrameBeforeWelcome(CloseCode),
    /// Opens and then nothing ever arrives (a buffering proxy).
    Silent,
    /// A buffering proxy in front of a working server: the server handles the open as usual
    /// (attaches, answers), but nothing it sends reaches the client.
    Buffered,
}

#[derive(Clone, Debug)]
pub struct StoredMsg {
    pub offset: u64,
    pub sender: String,
    pub payload: String,
}

#[derive(Clone, Debug)]
pub struct Sess {
    pub client: usize,
    pub user: String,
    pub resume_token: String,
    pub transport: Option<TransportId>,
    pub rooms: BTreeSet<String>,
    pub meta: BTreeMap<String, String>,
    pub detached_at: Option<Instant>,
    /// The node (endpoint) that holds it.
    pub node: usize,
}

#[derive(Clone, Debug)]
pub struct Conn {
    pub kind: TransportKind,
    pub session: Option<String>,
    pub next_ping: Instant,
    /// Delivers nothing either way (a dead link nobody noticed).
    pub blackholed: bool,
    /// The ticket it was opened with.
    pub ticket: Ticket,
    /// A probe of this session got its `welcome` here; `switch` attaches the session.
    pub probing: Option<String>,
}

/// What a ticket request asked for.
#[derive(Clone, Debug, Default)]
pub struct Ticket {
    pub user: String,
    pub resume: Option<String>,
    pub probe: bool,
    /// The endpoint that issued it (any node redeems it: they share one store, like Redis).
    pub endpoint: usize,
}

#[derive(Debug)]
pub struct FakeServer {
    pub ping_interval_ms: u64,
    pub resume_window_ms: u64,
    pub presence_grace_ms: u64,
    /// Messages kept per room; older ones are gone (subscribe since older → recovered: false).
    pub history_limit: usize,
    pub rooms: BTreeMap<String, Vec<StoredMsg>>,
    /// Incarnation of the room offsets; bumped by [`Sim::lose_history`] (an in-memory server
    /// restarting).
    pub epoch: u64,
    pub sessions: BTreeMap<String, Sess>,
    pub conns: BTreeMap<(usize, TransportId), Conn>,
    pub acks: BTreeMap<(String, String), (String, u64)>,
    /// Store publishes but never answer them (a server that loses its acks).
    pub drop_acks: bool,
    pub modes: BTreeMap<TransportKind, Mode>,
    /// Subscribing to these rooms is refused (`nack forbidden`).
    pub forbidden_rooms: BTreeSet<String>,
    /// The next N ticket steps answer 401.
    pub reject_tokens: u32,
    pub forbidden: bool,
    /// Every ticket step fails this way (e.g. 503 overloaded, or unreachable).
    pub ticket_failure: Option<OpenError>,
    /// Ticket steps get no answer at all (a server that hangs).
    pub ticket_silent: bool,
    /// Nodes (endpoints) that are gone: their ticket steps and opens are refused at the TCP level.
    /// Nodes share rooms and offsets (one Redis); sessions live on one node.
    pub dead_nodes: BTreeSet<usize>,
    /// Every ticket step: when, which tab, which endpoint.
    pub ticket_log: Vec<(Instant, usize, usize)>,
    /// The server is overloaded: every other ticket step answers 503, and the opens that got a
    /// ticket are refused by a hard cap in a race (invisible to a browser: a plain transport
    /// failure).
    pub overloaded_race: bool,
    /// Tickets issued and not yet used.
    pub tickets: BTreeMap<String, Ticket>,
    pub tickets_issued: u64,
    /// The transport a session just left (closed with 4006 after the move).
    superseded: Option<TransportId>,
    pub stored_publishes: u64,
    /// Frames over this many encoded bytes close the transport with 4001 (announced in `welcome`).
    pub max_frame_bytes: usize,
    /// Publish ids are remembered this long (`None`: forever).
    pub dedupe_window_ms: Option<u64>,
    /// When each remembered publish id was stored.
    pub acked_at: BTreeMap<(String, String), Instant>,
    next_sid: u64,
}

impl FakeServer {
    pub(super) fn new() -> Self {
        Self {
            ping_interval_ms: 20_000,
            resume_window_ms: 120_000,
            presence_grace_ms: 5_000,
            history_limit: 1_000,
            rooms: BTreeMap::new(),
            epoch: 1,
            sessions: BTreeMap::new(),
            conns: BTreeMap::new(),
            acks: BTreeMap::new(),
            drop_acks: false,
            modes: BTreeMap::new(),
            reject_tokens: 0,
            forbidden_rooms: BTreeSet::new(),
            forbidden: false,
            ticket_failure: None,
            ticket_silent: false,
            dead_nodes: BTreeSet::new(),
            ticket_log: Vec::new(),
            overloaded_race: false,
            tickets: BTreeMap::new(),
            tickets_issued: 0,
            superseded: None,
            stored_publishes: 0,
            max_frame_bytes: 65_536,
            dedupe_window_ms: None,
            acked_at: BTreeMap::new(),
            next_sid: 0,
        }
    }

    pub fn mode(&self, kind: TransportKind) -> Mode {
        self.modes.get(&kind).copied().unwrap_or(Mode::Normal)
    }

    pub fn head(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .and_then(|h| h.last())
            .map_or(0, |m| m.offset)
    }
}

impl Sim {
    /// The ticket step: `POST /v1/ticket`.
    pub(super) fn fetch_ticket(
        &mut self,
        tab: usize,
        id: TransportId,
        endpoint: usize,
        token: String,
        resume: Option<String>,
        probe: bool,
    ) {
        self.server.ticket_log.push((self.now, tab, endpoint));
        if self.server.dead_nodes.contains(&endpoint) {
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Unreachable,
                },
            );
        }
        if self.server.forbidden {
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Forbidden,
                },
            );
        }
        if self.server.reject_tokens > 0 {
            self.server.reject_tokens -= 1;
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Unauthorized,
                },
            );
        }
        if let Some(error) = self.server.ticket_failure {
            return self.deliver(tab, Input::OpenFailed { id, error });
        }
        if self.server.ticket_silent {
            return;
        }
        self.server.tickets_issued += 1;
        if self.server.overloaded_race && self.server.tickets_issued % 2 == 1 {
            let error = OpenError::Overloaded {
                retry_after_ms: Some(1_000),
            };
            return self.deliver(tab, Input::OpenFailed { id, error });
        }
        let ticket = format!("t{}", self.server.tickets_issued);
        self.server.tickets.insert(
            ticket.clone(),
            Ticket {
                user: token,
                resume,
                probe,
                endpoint,
            },
        );
        self.deliver(tab, Input::TicketIssued { id, ticket });
    }

    /// The transport step, with a ticket.
    pub(super) fn open(
        &mut self,
        tab: usize,
        id: TransportId,
        endpoint: usize,
        kind: TransportKind,
        ticket: String,
    ) {
        if self.server.dead_nodes.contains(&endpoint) {
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Network,
                },
            );
        }
        let Some(mut ticket) = self.server.tickets.remove(&ticket) else {
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Unauthorized,
                },
            );
        };
        // The node this transport reached (tickets work on every node).
        ticket.endpoint = endpoint;
        let far = Instant::from_millis(u64::MAX);
        let conn = |blackholed: bool, ticket: Ticket| Conn {
            kind,
            session: None,
            next_ping: far,
            blackholed,
            ticket,
            probing: None,
        };
        if self.server.overloaded_race {
            // The ticket counted, but a hard cap refuses the open in a race: a browser sees only
            // a failed WebSocket or EventSource.
            return self.deliver(
                tab,
                Input::OpenFailed {
                    id,
                    error: OpenError::Network,
                },
            );
        }
        match self.server.mode(kind) {
            Mode::OpenFail(error) => self.deliver(tab, Input::OpenFailed { id, error }),
            Mode::CloseFrameBeforeWelcome(code) => {
                self.deliver(tab, Input::TransportOpened { id });
                let frame = ServerFrame::Close {
                    code,
                    reason: code.name().into(),
                };
                self.deliver(tab, Input::Frame { id, frame });
                self.deliver(
                    tab,
                    Input::TransportClosed {
                        id,
                        code: None,
                        reason: String::new(),
                    },
                );
            }
            Mode::DieBeforeFirstFrame => {
                self.deliver(tab, Input::TransportOpened { id });
                self.deliver(
                    tab,
                    Input::TransportClosed {
                        id,
                        code: None,
                        reason: "proxy".into(),
                    },
                );
            }
            Mode::CloseBeforeWelcome(code) => {
                self.deliver(tab, Input::TransportOpened { id });
                self.deliver(
                    tab,
                    Input::TransportClosed {
                        id,
                        code: Some(code),
                        reason: "server".into(),
                    },
                );
            }
            Mode::Silent => {
                self.server.conns.insert((tab, id), conn(true, ticket));
                self.deliver(tab, Input::TransportOpened { id });
            }
            Mode::Buffered => {
                // The server handles the open; the proxy holds everything it answers.
                self.server
                    .conns
                    .insert((tab, id), conn(true, ticket.clone()));
                self.deliver(tab, Input::TransportOpened { id });
                if kind != TransportKind::WebSocket {
                    self.attach(tab, id, &ticket.user, ticket.resume, ticket.probe);
                }
            }
            Mode::Normal => {
                self.server
                    .conns
                    .insert((tab, id), conn(false, ticket.clone()));
                self.deliver(tab, Input::TransportOpened { id });
                if kind != TransportKind::WebSocket {
                    self.attach(tab, id, &ticket.user, ticket.resume, ticket.probe);
                }
            }
        }
    }

    /// Opens or resumes a session on transport `id`, or (for a probe) answers `welcome` without
    /// moving the session: `switch` does that ([`Sim::commit_probe`]).
    pub(super) fn attach(
        &mut self,
        tab: usize,
        id: TransportId,
        user: &str,
        resume: Option<String>,
        probe: bool,
    ) {
        let node = self
            .server
            .conns
            .get(&(tab, id))
            .map_or(0, |c| c.ticket.endpoint);
        let existing = resume.and_then(|r| {
            self.server
                .sessions
                .iter()
                .find(|(_, s)| s.resume_token == r)
                .map(|(k, _)| k.clone())
        });
        // Another node's session is not resumed here: a new session (the old one ends), as on a
        // cluster (PROTOCOL.md, "Several nodes").
        let existing = match existing {
            Some(sid) if self.server.sessions[&sid].node != node => {
                self.end_session(&sid);
                None
            }
            other => other,
        };
        if probe {
            let Some(sid) = existing else {
                self.send_to_conn(
                    tab,
                    id,
                    ServerFrame::Close {
                        code: CloseCode::SESSION_EXPIRED,
                        reason: "no such session".into(),
                    },
                );
                self.server.conns.remove(&(tab, id));
                return;
            };
            if let Some(conn) = self.server.conns.get_mut(&(tab, id)) {
                conn.probing = Some(sid.clone());
            }
            let welcome = self.welcome(&sid, true);
            self.send_to_conn(tab, id, welcome);
            return;
        }
        let (sid, resumed) = match existing {
            Some(sid) => (sid, true),
            None => {
                self.server.next_sid += 1;
                let sid = format!("s{}", self.server.next_sid);
                let sess = Sess {
                    client: tab,
                    user: user.to_owned(),
                    resume_token: format!("r-{sid}"),
                    transport: None,
                    rooms: BTreeSet::new(),
                    meta: BTreeMap::new(),
                    detached_at: None,
                    node,
                };
                self.server.sessions.insert(sid.clone(), sess);
                (sid, false)
            }
        };
        let welcome = self.welcome(&sid, resumed);
        self.move_session(tab, id, &sid);
        self.send_to_conn(tab, id, welcome);
        self.supersede_old(tab, id, &sid);
    }

    /// `switch` on a probe: the session moves there now.
    pub(super) fn commit_probe(&mut self, tab: usize, id: TransportId) {
        let Some(sid) = self
            .server
            .conns
            .get_mut(&(tab, id))
            .and_then(|c| c.probing.take())
        else {
            return;
        };
        if !self.server.sessions.contains_key(&sid) {
            return;
        }
        self.move_session(tab, id, &sid);
        self.supersede_old(tab, id, &sid);
    }

    fn move_session(&mut self, tab: usize, id: TransportId, sid: &str) {
        let old = self.server.sessions.get(sid).and_then(|s| s.transport);
        let interval = self.server.ping_interval_ms;
        let now = self.now;
        if let Some(conn) = self.server.conns.get_mut(&(tab, id)) {
            conn.session = Some(sid.to_owned());
            conn.next_ping = now.plus(interval);
        }
        let s = self.server.sessions.get_mut(sid).expect("session");
        s.transport = Some(id);
        s.detached_at = None;
        self.server.superseded = old.filter(|&o| o != id);
    }

    /// The transport the session left gets 4006.
    fn supersede_old(&mut self, tab: usize, _new: TransportId, _sid: &str) {
        if let Some(old) = self.server.superseded.take() {
            self.send_to_conn(
                tab,
                old,
                ServerFrame::Close {
                    code: CloseCode::SUPERSEDED,
                    reason: "superseded".into(),
                },
            );
            self.server.conns.remove(&(tab, old));
            self.deliver(
                tab,
                Input::TransportClosed {
                    id: old,
                    code: Some(CloseCode::SUPERSEDED),
                    reason: String::new(),
                },
            );
        }
    }

    fn welcome(&self, sid: &str, resumed: bool) -> ServerFrame {
        let s = &self.server.sessions[sid];
        ServerFrame::Welcome {
            v: 1,
            session: sid.to_owned(),
            resume_token: s.resume_token.clone(),
            resumed,
            ping_interval_ms: self.server.ping_interval_ms,
            user: UserInfo {
                id: s.user.clone(),
                name: s.user.to_uppercase(),
            },
            limits: Limits {
                max_frame_bytes: self.server.max_frame_bytes as u64,
                rate_per_sec: 100,
                burst: 100,
                max_rooms: 100,
                resume_window_ms: self.server.resume_window_ms,
                dedupe_window_ms: self.server.dedupe_window_ms.unwrap_or(0),
                max_batch_bytes: 0,
                publish_bytes_per_sec: 0,
                publish_bytes_burst: 0,
            },
        }
    }

    /// Sends a frame down a transport (dropped if it is gone or blackholed).
    pub fn send_to_conn(&mut self, tab: usize, id: TransportId, frame: ServerFrame) {
        match self.server.conns.get(&(tab, id)) {
            Some(conn) if !conn.blackholed => self.deliver(tab, Input::Frame { id, frame }),
            _ => {}
        }
    }

    /// Sends a frame to a session's current transport; dropped if detached (the client
    /// recovers it by offset when it re-subscribes).
    pub(super) fn send_to_session(&mut self, sid: &str, frame: ServerFrame) {
        let Some(s) = self.server.sessions.get(sid) else {
            return;
        };
        if let Some(t) = s.transport {
            let tab = s.client;
            self.send_to_conn(tab, t, frame);
        }
    }

    pub(super) fn session_of(&self, tab: usize, id: TransportId) -> Option<String> {
        self.server
            .conns
            .get(&(tab, id))
            .filter(|c| !c.blackholed)
            .and_then(|c| c.session.clone())
    }

    pub(super) fn presence_conn(&self, sid: &str, room: &str) -> Option<PresenceConn> {
        let s = self.server.sessions.get(sid)?;
        Some(PresenceConn {
            session: sid.to_owned(),
            user: s.user.clone(),
            name: s.user.to_uppercase(),
            meta: s.meta.get(room).cloned().unwrap_or_default(),
        })
    }

    pub(super) fn room_members(&self, room: &str) -> Vec<String> {
        self.server
            .sessions
            .iter()
            .filter(|(_, s)| s.rooms.contains(room))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(super) fn on_client_frame(&mut self, tab: usize, id: TransportId, frame: ClientFrame) {
        if let ClientFrame::Hello { resume, .. } = &frame {
            let fresh = self
                .server
                .conns
                .get(&(tab, id))
                .filter(|c| c.session.is_none() && c.probing.is_none() && !c.blackholed);
            if let Some(ticket) = fresh.map(|c| c.ticket.clone()) {
                let resume = resume.clone().or(ticket.resume);
                self.attach(tab, id, &ticket.user, resume, ticket.probe);
            }
            return;
        }
        if frame == ClientFrame::Switch {
            return self.commit_probe(tab, id);
        }
        let Some(sid) = self.session_of(tab, id) else {
            return;
        };
        let user = self.server.sessions[&sid].user.clone();
        if rtlink_protocol::codec::encode_client(&frame).len() > self.server.max_frame_bytes {
            // Like the real server: a frame over the limit closes the transport.
            self.send_to_conn(
                tab,
                id,
                ServerFrame::Close {
                    code: CloseCode::FRAME_TOO_LARGE,
                    reason: "frame too large".into(),
                },
            );
            self.detach(tab, id);
            return;
        }
        match frame {
            ClientFrame::Hello { .. } | ClientFrame::Pong | ClientFrame::Switch => {}
            ClientFrame::Ping => self.send_to_conn(tab, id, ServerFrame::Pong),
            ClientFrame::Subscribe {
                room,
                since,
                epoch,
                history: want_history,
            } => {
                if self.server.forbidden_rooms.contains(&room) {
                    // Like the real server after a resume with a token that no longer allows it.
                    if let Some(s) = self.server.sessions.get_mut(&sid) {
                        s.rooms.remove(&room);
                    }
                    let nack = ServerFrame::Nack {
                        id: room,
                        code: ErrorCode::Forbidden,
                        reason: String::new(),
                    };
                    return self.send_to_conn(tab, id, nack);
                }
                let joined = self
                    .server
                    .sessions
                    .get_mut(&sid)
                    .is_some_and(|s| s.rooms.insert(room.clone()));
                let history = self.server.rooms.get(&room).cloned().unwrap_or_default();
                let current_epoch = format!("e{}", self.server.epoch);
                let mut head = history.last().map_or(0, |m| m.offset);
                let oldest_kept = history.first().map_or(head + 1, |m| m.offset);
                let mut since = since;
                let recovered = if epoch.as_ref().is_some_and(|e| *e != current_epoch) {
                    // Offsets restarted: replay everything retained, continue before it.
                    since = Some(oldest_kept - 1);
                    head = oldest_kept - 1;
                    false
                } else if let (None, Some(n)) = (since, want_history) {
                    // Joining with history: the newest `n` retained, continue before them.
                    let start = head.saturating_sub(u64::from(n)).max(oldest_kept - 1);
                    since = Some(start);
                    head = start;
                    true
                } else {
                    match since {
                        Some(s) => s + 1 >= oldest_kept,
                        None => true,
                    }
                };
                let subscribed = ServerFrame::Subscribed {
                    room: room.clone(),
                    head,
                    recovered,
                    epoch: current_epoch,
                };
                self.send_to_conn(tab, id, subscribed);
                if let Some(since) = since {
                    for m in history.iter().filter(|m| m.offset > since) {
                        let frame = ServerFrame::Message {
                            room: room.clone(),
                            offset: m.offset,
                            sender: m.sender.clone(),
                            name: None,
                            payload: m.payload.clone(),
                        };
                        self.send_to_conn(tab, id, frame);
                    }
                }
                let conns = self
                    .room_members(&room)
                    .iter()
                    .filter_map(|m| self.presence_conn(m, &room))
                    .collect();
                self.send_to_conn(
                    tab,
                    id,
                    ServerFrame::PresenceSnapshot {
                        room: room.clone(),
                        conns,
                    },
                );
                if joined {
                    if let Some(conn) = self.presence_conn(&sid, &room) {
                        for other in self.room_members(&room).into_iter().filter(|o| *o != sid) {
                            self.send_to_session(
                                &other,
                                ServerFrame::PresenceJoin {
                                    room: room.clone(),
                                    conn: conn.clone(),
                                },
                            );
                        }
                    }
                }
            }
            ClientFrame::Unsubscribe { room } => {
                if let Some(s) = self.server.sessions.get_mut(&sid) {
                    s.rooms.remove(&room);
                }
                self.send_to_conn(tab, id, ServerFrame::Unsubscribed { room: room.clone() });
                for other in self.room_members(&room) {
                    let frame = ServerFrame::PresenceLeave {
                        room: room.clone(),
                        session: sid.clone(),
                        user: user.clone(),
                    };
                    self.send_to_session(&other, frame);
                }
            }
            ClientFrame::Publish {
                room,
                id: msg_id,
                payload,
            } => {
                if !self.server.sessions[&sid].rooms.contains(&room) {
                    let nack = ServerFrame::Nack {
                        id: msg_id,
                        code: ErrorCode::NotSubscribed,
                        reason: String::new(),
                    };
                    return self.send_to_conn(tab, id, nack);
                }
                let key = (user.clone(), msg_id.clone());
                if let (Some(window), Some(at)) =
                    (self.server.dedupe_window_ms, self.server.acked_at.get(&key))
                {
                    if self.now.millis_since(*at) >= window {
                        self.server.acks.remove(&key);
                    }
                }
                if let Some((r, offset)) = self
                    .server
                    .acks
                    .get(&(user.clone(), msg_id.clone()))
                    .cloned()
                {
                    if self.server.drop_acks {
                        return;
                    }
                    return self.send_to_conn(
                        tab,
                        id,
                        ServerFrame::Ack {
                            id: msg_id,
                            room: r,
                            offset,
                        },
                    );
                }
                let offset = self.store(&room, &user, &payload);
                self.server
                    .acks
                    .insert((user.clone(), msg_id.clone()), (room.clone(), offset));
                self.server
                    .acked_at
                    .insert((user.clone(), msg_id.clone()), self.now);
                if !self.server.drop_acks {
                    self.send_to_conn(
                        tab,
                        id,
                        ServerFrame::Ack {
                            id: msg_id,
                            room: room.clone(),
                            offset,
                        },
                    );
                }
                self.fan_out(&room, offset, &user, &payload);
            }
            ClientFrame::Presence { room, meta } => {
                if let Some(s) = self.server.sessions.get_mut(&sid) {
                    s.meta.insert(room.clone(), meta);
                }
                if let Some(conn) = self.presence_conn(&sid, &room) {
                    for m in self.room_members(&room) {
                        self.send_to_session(
                            &m,
                            ServerFrame::PresenceUpdate {
                                room: room.clone(),
                                conn: conn.clone(),
                            },
                        );
                    }
                }
            }
            ClientFrame::Typing { room, active } => {
                for m in self.room_members(&room).into_iter().filter(|m| *m != sid) {
                    let frame = ServerFrame::Typing {
                        room: room.clone(),
                        user: user.clone(),
                        name: user.to_uppercase(),
                        active,
                    };
                    self.send_to_session(&m, frame);
                }
            }
            ClientFrame::Close { .. } => self.end_session(&sid),
        }
    }

    pub(super) fn store(&mut self, room: &str, sender: &str, payload: &str) -> u64 {
        self.server.stored_publishes += 1;
        let limit = self.server.history_limit;
        let history = self.server.rooms.entry(room.to_owned()).or_default();
        let offset = history.last().map_or(1, |m| m.offset + 1);
        history.push(StoredMsg {
            offset,
            sender: sender.to_owned(),
            payload: payload.to_owned(),
        });
        if history.len() > limit {
            history.remove(0);
        }
        offset
    }

    pub(super) fn fan_out(&mut self, room: &str, offset: u64, sender: &str, payload: &str) {
        for m in self.room_members(room) {
            let frame = ServerFrame::Message {
                room: room.to_owned(),
                offset,
                sender: sender.to_owned(),
                name: None,
                payload: payload.to_owned(),
            };
            self.send_to_session(&m, frame);
        }
    }

    /// Someone outside the simulated tabs publishes.
    pub fn server_publish(&mut self, room: &str, sender: &str, payload: &str) -> u64 {
        let offset = self.store(room, sender, payload);
        self.fan_out(room, offset, sender, payload);
        offset
    }

    /// Stores a message without delivering it to anyone (a fan-out the network lost).
    pub fn store_only(&mut self, room: &str) -> u64 {
        self.store(room, "ghost", "")
    }

    /// A session ends: everyone in its rooms sees it leave.
    pub fn end_session(&mut self, sid: &str) {
        let Some(s) = self.server.sessions.remove(sid) else {
            return;
        };
        if let Some(t) = s.transport {
            self.server.conns.remove(&(s.client, t));
        }
        for room in &s.rooms {
            for m in self.room_members(room) {
                let frame = ServerFrame::PresenceLeave {
                    room: room.clone(),
                    session: sid.to_owned(),
                    user: s.user.clone(),
                };
                self.send_to_session(&m, frame);
            }
        }
    }

    /// The client closed a transport: its session waits for a resume (presence grace).
    pub(super) fn detach(&mut self, tab: usize, id: TransportId) {
        let Some(conn) = self.server.conns.remove(&(tab, id)) else {
            return;
        };
        let now = self.now;
        if let Some(sid) = conn.session {
            if let Some(s) = self.server.sessions.get_mut(&sid) {
                if s.transport == Some(id) {
                    s.transport = None;
                    s.detached_at = Some(now);
                }
            }
        }
    }

    /// The tab's primary transport as the glue sees it.
    pub fn primary(&self, tab: usize) -> Option<TransportId> {
        self.tabs[tab].client.primary_transport().map(|(id, _)| id)
    }

    /// The network drops the tab's primary transport: both sides see it close.
    pub fn kill(&mut self, tab: usize, code: Option<CloseCode>) {
        let Some(id) = self.primary(tab) else { return };
        self.detach(tab, id);
        self.deliver(
            tab,
            Input::TransportClosed {
                id,
                code,
                reason: "killed".into(),
            },
        );
    }

    /// The server closes the tab's primary transport with a `close` frame.
    pub fn server_close(&mut self, tab: usize, code: CloseCode) {
        let Some(id) = self.primary(tab) else { return };
        self.send_to_conn(
            tab,
            id,
            ServerFrame::Close {
                code,
                reason: code.name().into(),
            },
        );
        self.detach(tab, id);
    }

    /// An in-memory server restarts: every transport drops, sessions and room history are gone,
    /// and room offsets start again from 1 in a new epoch.
    pub fn lose_history(&mut self) {
        for tab in 0..self.tabs.len() {
            self.kill(tab, None);
        }
        self.server.sessions.clear();
        self.server.conns.clear();
        self.server.rooms.clear();
        self.server.epoch += 1;
    }

    /// Node `node` dies: its transports drop (clients see them close), its sessions are gone,
    /// and it refuses connections until [`Sim::revive_node`]. Rooms and offsets survive (Redis).
    pub fn kill_node(&mut self, node: usize) {
        self.server.dead_nodes.insert(node);
        let on_node: Vec<(usize, TransportId)> = self
            .server
            .conns
            .iter()
            .filter(|(_, c)| c.ticket.endpoint == node)
            .map(|(k, _)| *k)
            .collect();
        for (tab, id) in on_node {
            self.server.conns.remove(&(tab, id));
            self.deliver(
                tab,
                Input::TransportClosed {
                    id,
                    code: None,
                    reason: "node died".into(),
                },
            );
        }
        let sessions: Vec<String> = self
            .server
            .sessions
            .iter()
            .filter(|(_, s)| s.node == node)
            .map(|(k, _)| k.clone())
            .collect();
        for sid in sessions {
            self.end_session(&sid);
        }
    }

    pub fn revive_node(&mut self, node: usize) {
        self.server.dead_nodes.remove(&node);
    }

    /// The tab's primary transport silently stops delivering anything, both ways.
    pub fn blackhole(&mut self, tab: usize) {
        let Some(id) = self.primary(tab) else { return };
        if let Some(conn) = self.server.conns.get_mut(&(tab, id)) {
            conn.blackholed = true;
        }
    }
}

//! The hub: this node's sessions, its index of local subscribers per room, and the one task that
//! routes broker events to them.
//!
//! A room event arrives once from the broker with its frame already encoded; the dispatcher
//! hands the same bytes to every local subscriber (no per-subscriber JSON work). If the
//! dispatcher's broadcast receiver lags, that is not a disconnect: every local subscription is
//! resynchronised from history and a fresh presence snapshot.
//!
//! Session lifecycle timers live here too: presence grace and resume window after a transport
//! drops, heartbeats and the periodic sweep.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rtlink_protocol::envelope::max_batch_bytes;
use rtlink_protocol::{CloseAction, CloseCode, Limits, ServerFrame, UserInfo, PROTOCOL_VERSION};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{random_token, Claims};
use crate::broker::{Broker, RoomEvent};
use crate::config::{Config, TransportKind};
use crate::ended_sessions::EndedSessions;
use crate::limits::{ConnGuard, PublishBudget, TokenBucket};
use crate::metrics::{DropReason, Metrics};
use crate::presence_batch::PresenceBatcher;
use crate::session::{Attached, OutboxLimits, Session};
use crate::supervisor::{supervise, Start};
use crate::write_window::Coalescing;

#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Arc<Session>>,
    by_token: HashMap<String, Arc<Session>>,
    /// User id → the user's sessions, oldest first (at most `--max-sessions-per-user`).
    per_user: HashMap<String, Vec<Arc<Session>>>,
    /// Client address → sessions opened from it (each session keeps its own address: no map
    /// from session to address, which cost about 100 bytes per session).
    per_ip: HashMap<IpAddr, usize>,
}

impl Sessions {
    fn insert(&mut self, session: &Arc<Session>) {
        self.by_id.insert(session.id.clone(), session.clone());
        self.by_token
            .insert(session.resume_token.clone(), session.clone());
        self.per_user
            .entry(session.claims.sub.clone())
            .or_default()
            .push(session.clone());
        if let Some(ip) = session.ip {
            *self.per_ip.entry(ip).or_default() += 1;
        }
    }

    fn remove(&mut self, session: &Session) {
        self.by_id.remove(&session.id);
        self.by_token.remove(&session.resume_token);
        if let Some(list) = self.per_user.get_mut(&session.claims.sub) {
            list.retain(|s| s.id != session.id);
            if list.is_empty() {
                self.per_user.remove(&session.claims.sub);
            }
        }
        if let Some(ip) = session.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

pub struct Hub {
    pub config: Arc<Config>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Payload bytes per second of each user (`--publish-bytes-per-sec`).
    pub publish_budget: PublishBudget,
    /// Write windows of every WebSocket and SSE connection (`--write-window`).
    pub coalescing: Arc<Coalescing>,
    sessions: Mutex<Sessions>,
    rooms: Mutex<LocalRooms>,
    /// How sessions ended whose client may not have been told (see [`EndedSessions`]).
    ended_sessions: Mutex<EndedSessions>,
    /// Debug builds only (never the shipped `server` profile): see [`DispatchPanicHook`].
    #[cfg(debug_assertions)]
    panic_hook: DispatchPanicHook,
}

/// Test-only hook of debug builds: with `RTLINK_TEST_PANIC_DISPATCH_ROOM=<room>` in the
/// environment, the dispatcher panics once, on the first event of that room, so the abuse tests
/// can prove that it is restarted (SECURITY.md). Compiled out of release builds.
#[cfg(debug_assertions)]
struct DispatchPanicHook {
    room: Option<String>,
    fired: std::sync::atomic::AtomicBool,
}

#[cfg(debug_assertions)]
impl DispatchPanicHook {
    fn from_env() -> Self {
        Self {
            room: std::env::var("RTLINK_TEST_PANIC_DISPATCH_ROOM").ok(),
            fired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn check(&self, room: &str) {
        if self.room.as_deref() == Some(room) && !self.fired.swap(true, Relaxed) {
            panic!("RTLINK_TEST_PANIC_DISPATCH_ROOM: the dispatcher panics on an event of {room}");
        }
    }
}

/// This node's subscriptions.
#[derive(Default)]
struct LocalRooms {
    /// Room → its local subscribers.
    by_room: HashMap<String, RoomSubs>,
    /// User id → rooms subscribed over all the user's sessions.
    per_user: HashMap<String, usize>,
}

/// The local subscribers of one room.
#[derive(Default)]
struct RoomSubs {
    /// Session id → session.
    by_session: HashMap<String, Arc<Session>>,
    /// The same sessions as a shared list, built by the first event routed after a membership
    /// change and reused by every event until the next one: routing an event to N subscribers
    /// then copies one pointer instead of N (and frees no list afterwards).
    list: Option<Arc<[Arc<Session>]>>,
    /// While the first subscriber's [`Broker::watch`] is in flight (its sender is dropped when
    /// the watch returns): the subscribers that come meanwhile wait for it, so none of them
    /// reads the room's history before the room's live events reach this node. Otherwise a
    /// message published between that read and the watch would reach them by neither.
    watching: Option<tokio::sync::watch::Receiver<()>>,
}

/// What a new local subscriber waits for before it may read the room's history.
enum WatchRole {
    /// The room had no local subscriber: this one starts the broker's watch (and drops the
    /// sender when it returns); the receiver is the one left in [`RoomSubs::watching`].
    First(
        tokio::sync::watch::Sender<()>,
        tokio::sync::watch::Receiver<()>,
    ),
    /// Another subscriber's watch is in flight.
    Wait(tokio::sync::watch::Receiver<()>),
    /// The room is watched.
    Ready,
}

/// Why no session was opened.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// `--max-sessions` in total (503).
    Total,
    /// `--max-sessions-per-ip` from this address (429).
    PerIp,
    /// `--max-sessions-per-user`, every one of them attached to a transport (429).
    PerUser,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// The room has `--max-room-members` subscribers on this node.
    RoomFull,
    /// The user holds `--max-rooms-per-user` subscriptions on this node.
    UserRooms,
}

impl Hub {
    pub fn new(config: Arc<Config>, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Self> {
        let publish_budget = PublishBudget::new(
            config.publish_bytes_per_sec,
            config
                .publish_bytes_burst
                .max(u32::try_from(config.max_frame_bytes).unwrap_or(u32::MAX)),
        );
        // A poll client silent for longer counts as gone (see `beat`): no poll is coming. A
        // detached client may come back to resume until the resume window ends.
        let poll_deadline = config.poll_hold + config.ping_interval + config.heartbeat_grace;
        let keep_ended = poll_deadline.max(config.resume_window);
        let coalescing = Coalescing::new(config.write_window, config.write_window_above_cpu);
        Arc::new(Self {
            config,
            broker,
            metrics,
            publish_budget,
            coalescing,
            sessions: Mutex::new(Sessions::default()),
            rooms: Mutex::new(LocalRooms::default()),
            ended_sessions: Mutex::new(EndedSessions::new(keep_ended)),
            #[cfg(debug_assertions)]
            panic_hook: DispatchPanicHook::from_env(),
        })
    }

    /// Starts the dispatcher and the heartbeat, supervised: restarted (and logged) if they
    /// panic. Both stop when the hub is dropped.
    pub fn start(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        supervise("hub dispatcher", self.metrics.clone(), move |how| {
            let hub = hub.upgrade()?;
            // A new receiver before the resync: an event sent after the resync read its
            // history is routed live, so nothing falls between the two.
            let rx = hub.broker.events();
            if how == Start::Restart {
                // The events between the panic and now (and the one it panicked on) were
                // never routed: every subscription replays from its last offset.
                hub.resync_all();
            }
            Some(dispatch(Arc::downgrade(&hub), rx))
        });
        let hub = Arc::downgrade(self);
        let every = self.config.ping_interval;
        supervise("hub heartbeat", self.metrics.clone(), move |_| {
            Some(heartbeat(hub.clone(), every))
        });
        if self.coalescing.adaptive() {
            let coalescing = Arc::downgrade(&self.coalescing);
            supervise("write window sampler", self.metrics.clone(), move |_| {
                Some(crate::write_window::sample_cpu(coalescing.clone()))
            });
        }
    }

    /// Resumes the session of `resume` if it exists and belongs to this user, else opens a new
    /// one. Returns the session and whether it was resumed. On a cluster node, `node` prefixes
    /// new resume tokens (`{node}.{secret}`) so any node can tell who holds the session.
    ///
    /// Sessions outlive their transport for the resume window, so detached ones count toward
    /// every cap. A user at their cap who opens another session ends their own oldest detached
    /// one (it could only be resumed by that same user); with none detached, it is refused.
    pub fn open_session(
        self: &Arc<Self>,
        claims: Claims,
        resume: Option<&str>,
        node: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(Arc<Session>, bool), SessionRefusal> {
        let mut sessions = self.sessions.lock();
        if let Some(token) = resume {
            if let Some(s) = sessions.by_token.get(token) {
                if s.claims.sub == claims.sub && !s.lock().ended {
                    // The client came back with a (possibly newer) token: from now on the
                    // session acts with its claims (name, rooms, expiry).
                    s.claims.replace(claims);
                    return Ok((s.clone(), true));
                }
            }
        }
        let held = sessions.per_user.get(&claims.sub).map_or(0, Vec::len);
        let evict = if held >= self.config.max_sessions_per_user {
            let oldest_detached = sessions.per_user.get(&claims.sub).and_then(|list| {
                list.iter()
                    .find(|s| s.lock().attached_kind().is_none())
                    .cloned()
            });
            match oldest_detached {
                Some(s) => Some(s),
                None => return Err(SessionRefusal::PerUser),
            }
        } else {
            None
        };
        if evict.is_none() && sessions.by_id.len() >= self.config.max_sessions {
            return Err(SessionRefusal::Total);
        }
        if let Some(ip) = ip {
            let from_ip = sessions.per_ip.get(&ip).copied().unwrap_or(0);
            let freed = evict.as_ref().is_some_and(|e| e.ip == Some(ip));
            if from_ip >= self.config.max_sessions_per_ip && !freed {
                return Err(SessionRefusal::PerIp);
            }
        }
        if let Some(old) = evict {
            if self.retire(&mut sessions, &old, CloseCode::SESSION_EXPIRED) {
                tracing::debug!(session = %old.id, user = %old.claims.sub, "oldest detached session of a user at the cap ended");
                let hub = self.clone();
                tokio::spawn(
                    async move { hub.finish_ending(&old, CloseCode::SESSION_EXPIRED).await },
                );
            }
        }
        let now = Instant::now();
        let secret = random_token(32);
        let resume_token = match node {
            Some(node) => format!("{node}.{secret}"),
            None => secret,
        };
        let session = Arc::new(Session::new(
            random_token(12),
            ip,
            resume_token,
            claims,
            OutboxLimits {
                max_frames: self.config.outbox_max_frames.max(8),
                max_bytes: self
                    .config
                    .outbox_max_bytes
                    .max(self.config.max_frame_bytes * 2),
            },
            TokenBucket::new(self.config.rate_per_sec, self.config.rate_burst, now),
            self.metrics.clone(),
        ));
        sessions.insert(&session);
        self.metrics
            .sessions
            .store(sessions.by_id.len() as u64, Relaxed);
        Ok((session, false))
    }

    /// Marks a session ended with `code` and forgets it (the synchronous half of ending it).
    /// False if it had already ended.
    fn retire(&self, sessions: &mut Sessions, session: &Session, code: CloseCode) -> bool {
        let attached = {
            let mut st = session.lock();
            if st.ended {
                return false;
            }
            st.ended = true;
            st.attached_kind()
        };
        sessions.remove(session);
        // A WebSocket client gets the close on the connection that carries both its directions.
        // A long-polling or SSE one may not have heard (between polls, a send crossing the close
        // on the stream); one with no connection has not, which matters when the close is
        // terminal (a non-terminal one means "new session", as `unknown_session` does).
        // Remembered before the session stops being found, so no request sees neither.
        let unheard = match attached {
            Some(TransportKind::WebSocket) => false,
            Some(_) => true,
            None => code.action() == CloseAction::Terminal,
        };
        if unheard {
            self.ended_sessions.lock().insert(
                &session.resume_token,
                &session.claims.sub,
                code,
                Instant::now(),
            );
        }
        self.metrics
            .sessions
            .store(sessions.by_id.len() as u64, Relaxed);
        true
    }

    pub fn session_by_token(&self, token: &str) -> Option<Arc<Session>> {
        self.sessions.lock().by_token.get(token).cloned()
    }

    /// The close code of the session of `token` if it ended recently while its client may not
    /// have been told: a poll is answered with that close, a send is dropped (the close reaches
    /// the client on its downstream), instead of `unknown_session`.
    pub fn ended_session(&self, token: &str) -> Option<CloseCode> {
        self.ended_sessions
            .lock()
            .get(token, Instant::now())
            .map(|e| e.code)
    }

    /// The terminal close code of `user`'s session of `token` if it ended for good recently
    /// while its client may not have been told: an open that resumes it is answered with that
    /// close instead of a new session (after a 4013 the client must stop, not start over).
    pub fn ended_for_good(&self, token: &str, user: &str) -> Option<CloseCode> {
        let mut ended = self.ended_sessions.lock();
        let e = ended.get(token, Instant::now())?;
        (e.user == user && e.code.action() == CloseAction::Terminal).then_some(e.code)
    }

    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().by_id.values().cloned().collect()
    }

    pub fn welcome(&self, session: &Session, resumed: bool) -> ServerFrame {
        let c = &self.config;
        ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: session.id.clone(),
            resume_token: session.resume_token.clone(),
            resumed,
            ping_interval_ms: c.ping_interval.as_millis() as u64,
            user: UserInfo {
                id: session.claims.sub.clone(),
                name: session.claims.name(),
            },
            limits: Limits {
                max_frame_bytes: c.max_frame_bytes as u64,
                rate_per_sec: c.rate_per_sec,
                burst: c.rate_burst,
                max_rooms: c.max_rooms,
                resume_window_ms: c.resume_window.as_millis() as u64,
                dedupe_window_ms: c.dedupe_window.as_millis() as u64,
                max_batch_bytes: max_batch_bytes(c.max_frame_bytes) as u64,
                publish_bytes_per_sec: u64::from(c.publish_bytes_per_sec),
                publish_bytes_burst: u64::from(self.publish_budget.burst()),
            },
        }
    }

    /// Attaches a transport to a session (superseding the old one) and queues `welcome`. If
    /// the presence grace had run out, the session's presence is restored. A resumed session
    /// leaves the rooms its (possibly newer) claims no longer allow.
    pub fn attach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        kind: TransportKind,
        guard: ConnGuard,
        resumed: bool,
    ) -> Attached {
        let welcome = self.welcome(session, resumed);
        let attached = session.attach(kind, guard, &welcome);
        // Session ids are public; resume tokens and tickets are never logged.
        tracing::debug!(session = %session.id, user = %session.claims.sub, transport = kind.as_str(), resumed, "transport attached");
        self.after_attach(session, resumed);
        attached
    }

    fn after_attach(self: &Arc<Self>, session: &Arc<Session>, resumed: bool) {
        let rejoin = std::mem::take(&mut session.lock().presence_left);
        if rejoin || resumed {
            let hub = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                if resumed {
                    hub.drop_forbidden_rooms(&session).await;
                }
                if rejoin {
                    hub.rejoin_presence(&session).await;
                }
            });
        }
    }

    /// Opens a probe of the session of `resume` (see [`Session::open_probe`]): `welcome` on the
    /// probe, the session stays where it is until `switch`. A probe of a session this node does
    /// not hold (unknown, ended, another user's, or another node's) is refused with the code to
    /// close the probe with; the client tries again later and its session is untouched.
    pub fn open_probe(
        self: &Arc<Self>,
        claims: Claims,
        resume: &str,
        kind: TransportKind,
        guard: ConnGuard,
    ) -> Result<(Arc<Session>, Attached), CloseCode> {
        let session = self
            .session_by_token(resume)
            .filter(|s| s.claims.sub == claims.sub && !s.lock().ended)
            .ok_or(CloseCode::SESSION_EXPIRED)?;
        session.claims.replace(claims);
        let welcome = self.welcome(&session, true);
        let attached = session.open_probe(kind, guard, &welcome);
        tracing::debug!(session = %session.id, transport = kind.as_str(), "probe opened");
        Ok((session, attached))
    }

    /// `switch` on a probe: the session moves to it (see [`Session::commit_probe`]).
    pub fn commit_probe(self: &Arc<Self>, session: &Arc<Session>) {
        if session.commit_probe() {
            tracing::debug!(session = %session.id, "switched to the probe");
            self.after_attach(session, true);
        }
    }

    /// The transport `gen` of `session` ended. Starts the presence grace and resume window.
    pub fn detached(self: &Arc<Self>, session: &Arc<Session>, gen: u64) {
        if !session.detach(gen) {
            return;
        }
        self.schedule_expiry(session, gen);
    }

    /// Closes a session's transport at once with `code` and starts its grace timers.
    pub fn force_close(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        if let Some(gen) = session.force_close(code) {
            self.schedule_expiry(session, gen);
        }
    }

    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, gen: u64) {
        let hub = Arc::downgrade(self);
        let session = session.clone();
        let grace = self.config.presence_grace;
        let window = self.config.resume_window;
        tokio::spawn(async move {
            // Still detached since `gen` ended: no transport attached in the meantime.
            let still_detached = |s: &Session| {
                let st = s.lock();
                st.attached_gen().is_none() && st.attach_gen_is(gen) && !st.ended
            };
            tokio::time::sleep(grace.min(window)).await;
            let Some(h) = hub.upgrade() else { return };
            if !still_detached(&session) {
                return; // resumed (a later detach has its own timer) or ended
            }
            h.leave_presence_all(&session, true).await;
            drop(h);
            tokio::time::sleep(window.saturating_sub(grace)).await;
            let Some(h) = hub.upgrade() else { return };
            if still_detached(&session) {
                h.end_session(&session, CloseCode::SESSION_EXPIRED).await;
            }
        });
    }

    /// Ends a session for good: presence leaves at once, subscriptions go, the resume token
    /// stops working.
    pub async fn end_session(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        let retired = {
            let mut sessions = self.sessions.lock();
            self.retire(&mut sessions, session, code)
        };
        if retired {
            self.finish_ending(session, code).await;
        }
    }

    /// The asynchronous half of ending a session: its transport is closed, presence left,
    /// subscriptions dropped.
    async fn finish_ending(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        tracing::debug!(session = %session.id, code = code.0, "session ended");
        session.close_transport(code, "session ended");
        self.leave_presence_all(session, false).await;
        let rooms: Vec<String> = session.lock().rooms.drain().map(|(r, _)| r).collect();
        for room in rooms {
            self.remove_local_sub(&room, session).await;
        }
    }

    pub async fn end_sessions_of(self: &Arc<Self>, user: &str, code: CloseCode) -> usize {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .by_id
            .values()
            .filter(|s| s.claims.sub == user)
            .cloned()
            .collect();
        for session in &sessions {
            self.end_session(session, code).await;
        }
        sessions.len()
    }

    /// Registers a local subscriber within the room and user caps; the first one of a room
    /// makes this node watch it.
    pub async fn add_local_sub(
        &self,
        room: &str,
        session: &Arc<Session>,
    ) -> Result<(), MembershipRefusal> {
        let role = {
            let mut guard = self.rooms.lock();
            let local = &mut *guard;
            let user = &session.claims.sub;
            let members = local.by_room.get(room).map_or(0, |r| r.by_session.len());
            if members >= self.config.max_room_members {
                return Err(MembershipRefusal::RoomFull);
            }
            let held = local.per_user.get(user).copied().unwrap_or(0);
            if held >= self.config.max_rooms_per_user {
                return Err(MembershipRefusal::UserRooms);
            }
            let subs = local.by_room.entry(room.to_owned()).or_default();
            let role = if subs.by_session.is_empty() {
                let (done, rx) = tokio::sync::watch::channel(());
                subs.watching = Some(rx.clone());
                WatchRole::First(done, rx)
            } else {
                subs.watching
                    .clone()
                    .map_or(WatchRole::Ready, WatchRole::Wait)
            };
            if subs
                .by_session
                .insert(session.id.clone(), session.clone())
                .is_none()
            {
                *local.per_user.entry(user.clone()).or_default() += 1;
            }
            subs.list = None;
            self.metrics
                .local_rooms
                .store(local.by_room.len() as u64, Relaxed);
            role
        };
        match role {
            WatchRole::First(done, mine) => {
                if let Err(e) = self.broker.watch(room).await {
                    tracing::warn!(error = %e, "broker watch failed");
                }
                // Unless the room was left and joined again meanwhile (then the watch in
                // flight is another subscriber's).
                if let Some(subs) = self.rooms.lock().by_room.get_mut(room) {
                    if subs
                        .watching
                        .as_ref()
                        .is_some_and(|w| w.same_channel(&mine))
                    {
                        subs.watching = None;
                    }
                }
                drop(done);
            }
            // Returns once the sender is dropped: when that watch returned, or its subscriber
            // went away before it did (then this one proceeds as before).
            WatchRole::Wait(mut rx) => while rx.changed().await.is_ok() {},
            WatchRole::Ready => {}
        }
        Ok(())
    }

    pub async fn remove_local_sub(&self, room: &str, session: &Session) {
        let last = {
            let mut guard = self.rooms.lock();
            let local = &mut *guard;
            let (removed, last) = match local.by_room.get_mut(room) {
                Some(subs) => {
                    subs.list = None;
                    let removed = subs.by_session.remove(&session.id).is_some();
                    (removed, subs.by_session.is_empty())
                }
                None => (false, false),
            };
            if last {
                local.by_room.remove(room);
            }
            if removed {
                if let Some(n) = local.per_user.get_mut(&session.claims.sub) {
                    *n -= 1;
                    if *n == 0 {
                        local.per_user.remove(&session.claims.sub);
                    }
                }
            }
            self.metrics
                .local_rooms
                .store(local.by_room.len() as u64, Relaxed);
            last
        };
        if last {
            if let Err(e) = self.broker.unwatch(room).await {
                tracing::warn!(error = %e, "broker unwatch failed");
            }
        }
    }

    /// Local subscribers of `room`.
    fn local_members(&self, room: &str) -> usize {
        self.rooms
            .lock()
            .by_room
            .get(room)
            .map_or(0, |r| r.by_session.len())
    }

    /// Routes `ev` to the room's local subscribers; `direct`: idle WebSockets may be written to
    /// from here (no event waits behind this one, see [`Session::deliver`]).
    fn route(self: &Arc<Self>, ev: &RoomEvent, direct: bool) {
        #[cfg(debug_assertions)]
        self.panic_hook.check(&ev.room);
        let subs = {
            let mut rooms = self.rooms.lock();
            let Some(room) = rooms.by_room.get_mut(&*ev.room) else {
                return;
            };
            room.list
                .get_or_insert_with(|| room.by_session.values().cloned().collect())
                .clone()
        };
        // One clock read per event, not per subscriber: the write windows compare against it.
        let direct = direct.then(tokio::time::Instant::now);
        for s in subs.iter() {
            // Written straight to an idle WebSocket's socket when it can be, else queued and
            // its transport woken (Session::deliver).
            if s.deliver(ev, direct) {
                tracing::info!(room = %ev.room, session = %s.id, "the room's offsets restarted under a new epoch: resyncing the subscription");
                self.resync(s, &ev.room);
            }
        }
    }

    /// After the dispatcher lagged: every local subscription replays from its last offset and
    /// gets a fresh presence snapshot. The replays begin (buffer live events) *before* the
    /// dispatcher routes the next event, so nothing slips between history and live.
    fn resync_all(self: &Arc<Self>) {
        let pairs: Vec<(String, Arc<Session>)> = self
            .rooms
            .lock()
            .by_room
            .iter()
            .flat_map(|(room, subs)| {
                subs.by_session
                    .values()
                    .map(move |s| (room.clone(), s.clone()))
            })
            .collect();
        for (room, session) in pairs {
            self.resync(&session, &room);
        }
    }

    /// One heartbeat round: ping every attached transport, close dead WebSockets (4005) and
    /// silent long polls, close transports whose token expired (4009).
    fn beat(self: &Arc<Self>) {
        let now = Instant::now();
        let ws_deadline = self.config.ping_interval + self.config.heartbeat_grace;
        let poll_deadline = self.config.poll_hold + ws_deadline;
        for s in self.all_sessions() {
            let (kind, last_inbound, last_seen) = {
                let st = s.lock();
                (
                    st.attached_kind(),
                    st.last_inbound,
                    st.transport_last_seen(),
                )
            };
            // A probe whose `switch` did not come within a heartbeat deadline is not coming.
            s.expire_probe(ws_deadline);
            let Some(kind) = kind else { continue };
            if s.claims.expired() {
                s.close_transport(CloseCode::TOKEN_EXPIRED, "token expired");
                continue;
            }
            let dead = match kind {
                TransportKind::WebSocket => {
                    now.saturating_duration_since(last_inbound) > ws_deadline
                }
                TransportKind::Poll => {
                    last_seen.is_some_and(|t| now.saturating_duration_since(t) > poll_deadline)
                }
                TransportKind::Sse => false,
            };
            if dead {
                self.metrics.count_drop(DropReason::HeartbeatTimeout);
                self.force_close(&s, CloseCode::HEARTBEAT_TIMEOUT);
                continue;
            }
            s.push_frame(&ServerFrame::Ping);
        }
    }
}

async fn dispatch(hub: Weak<Hub>, mut rx: tokio::sync::broadcast::Receiver<RoomEvent>) {
    let mut batcher = match hub.upgrade() {
        Some(h) => {
            PresenceBatcher::new(h.config.presence_batch, h.config.presence_batch_min_members)
        }
        None => return,
    };
    loop {
        let got = match batcher.due() {
            Some(due) => tokio::select! {
                got = rx.recv() => got,
                _ = tokio::time::sleep_until(due) => {
                    let Some(hub) = hub.upgrade() else { return };
                    for ev in batcher.flush() {
                        hub.route(&ev, false);
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(hub) = hub.upgrade() else { return };
        match got {
            Ok(ev) => {
                if !batcher.absorb(&ev, || hub.local_members(&ev.room)) {
                    hub.route(&ev, rx.is_empty());
                }
            }
            Err(RecvError::Lagged(n)) => {
                for ev in batcher.flush() {
                    hub.route(&ev, false);
                }
                hub.metrics.broker_lagged_events.fetch_add(n, Relaxed);
                tracing::warn!(
                    missed = n,
                    "hub lagged behind the broker; resyncing subscriptions"
                );
                hub.resync_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn heartbeat(hub: Weak<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.beat();
    }
}

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

mod rooms;
mod sessions;

use rooms::LocalRooms;
pub use rooms::MembershipRefusal;
pub use sessions::SessionRefusal;
use sessions::Sessions;

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

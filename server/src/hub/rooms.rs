//! This node's index of local subscribers per room: admission within the room and user caps,
//! the broker watch of a room's first subscriber (which later ones wait for), and leaving.

use super::*;

/// This node's subscriptions.
#[derive(Default)]
pub(super) struct LocalRooms {
    /// Room → its local subscribers.
    pub(super) by_room: HashMap<String, RoomSubs>,
    /// User id → rooms subscribed over all the user's sessions.
    per_user: HashMap<String, usize>,
}

/// The local subscribers of one room.
#[derive(Default)]
pub(super) struct RoomSubs {
    /// Session id → session.
    pub(super) by_session: HashMap<String, Arc<Session>>,
    /// The same sessions as a shared list, built by the first event routed after a membership
    /// change and reused by every event until the next one: routing an event to N subscribers
    /// then copies one pointer instead of N (and frees no list afterwards).
    pub(super) list: Option<Arc<[Arc<Session>]>>,
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

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// The room has `--max-room-members` subscribers on this node.
    RoomFull,
    /// The user holds `--max-rooms-per-user` subscriptions on this node.
    UserRooms,
}

impl Hub {
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
    pub(super) fn local_members(&self, room: &str) -> usize {
        self.rooms
            .lock()
            .by_room
            .get(room)
            .map_or(0, |r| r.by_session.len())
    }
}

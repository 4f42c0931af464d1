//! Typing indicators, both directions.
//!
//! Own typing: a keystroke sends `typing{active: true}` at most once per throttle period (so the
//! server's TTL keeps being refreshed while typing continues, without a frame per key), and
//! `typing{active: false}` after the idle period without keystrokes, on publish in that room, or
//! on an explicit stop. Own typing is never queued: it is meaningless after a reconnect.
//!
//! Others' typing: kept per room with an expiry after their last start, so a lost stop cannot
//! leave someone "typing" forever. The app gets the full sorted list whenever it changes.

use alloc::{borrow::ToOwned, string::String, vec::Vec};

use super::small_map::SmallMap;

use super::event::TypingUser;
use super::time::Instant;

#[derive(Clone, Debug)]
struct Own {
    last_start_sent: Instant,
    idle_deadline: Instant,
}

/// Typing in one room, both directions (one map of rooms for both: a map per direction would
/// be a second instantiation of the map's code and a second lookup).
#[derive(Clone, Debug, Default)]
struct RoomTyping {
    own: Option<Own>,
    /// user → (name, expiry)
    others: SmallMap<(String, Instant)>,
}

#[derive(Clone, Debug)]
pub struct Typing {
    throttle_ms: u64,
    idle_ms: u64,
    expiry_ms: u64,
    rooms: SmallMap<RoomTyping>,
}

/// Work found by [`Typing::expire`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Rooms where own typing went idle: send `typing{active: false}`.
    pub own_stopped: Vec<String>,
    /// Rooms whose list of others changed.
    pub changed: Vec<(String, Vec<TypingUser>)>,
}

impl Typing {
    pub fn new(throttle_ms: u64, idle_ms: u64, expiry_ms: u64) -> Self {
        Self {
            throttle_ms,
            idle_ms,
            expiry_ms,
            rooms: SmallMap::new(),
        }
    }

    /// A keystroke in `room`. Returns true if `typing{active: true}` should be sent now.
    pub fn keystroke(&mut self, now: Instant, room: &str) -> bool {
        let idle_deadline = now.plus(self.idle_ms);
        let throttle_ms = self.throttle_ms;
        let Some(r) = self.rooms.get_or_insert_with(room, Default::default) else {
            return false;
        };
        match &mut r.own {
            Some(own) => {
                own.idle_deadline = idle_deadline;
                if now.millis_since(own.last_start_sent) >= throttle_ms {
                    own.last_start_sent = now;
                    return true;
                }
                false
            }
            None => {
                r.own = Some(Own {
                    last_start_sent: now,
                    idle_deadline,
                });
                true
            }
        }
    }

    /// Explicit stop, publish, or unsubscribe. Returns true if `typing{active: false}` is due.
    pub fn stop(&mut self, room: &str) -> bool {
        self.rooms
            .get_mut(room)
            .and_then(|r| r.own.take())
            .is_some()
    }

    /// The transport dropped: own typing is forgotten (the server times it out).
    pub fn reset_own(&mut self) {
        for r in self.rooms.values_mut() {
            r.own = None;
        }
    }

    /// Someone else's typing frame. Returns the room's new list if it changed.
    pub fn on_remote(
        &mut self,
        now: Instant,
        room: &str,
        user: &str,
        name: &str,
        active: bool,
    ) -> Option<Vec<TypingUser>> {
        let users = &mut self
            .rooms
            .get_or_insert_with(room, Default::default)?
            .others;
        let changed = if active {
            let prev = users.insert(user.to_owned(), (name.to_owned(), now.plus(self.expiry_ms)));
            match prev {
                Some((old_name, _)) => old_name != name,
                None => true,
            }
        } else {
            users.remove(user)
        };
        changed.then(|| list(users))
    }

    /// Forgets a user in a room (their last connection left). Returns the new list if changed.
    pub fn remove_user(&mut self, room: &str, user: &str) -> Option<Vec<TypingUser>> {
        let users = &mut self.rooms.get_mut(room)?.others;
        if !users.remove(user) {
            return None;
        }
        Some(list(users))
    }

    pub fn remove_room(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut out = Expired::default();
        for (room, r) in self.rooms.iter_mut() {
            if r.own.as_ref().is_some_and(|own| own.idle_deadline <= now) {
                r.own = None;
                out.own_stopped.push(room.clone());
            }
            let before = r.others.len();
            r.others.retain(|_, (_, expiry)| *expiry > now);
            if r.others.len() != before {
                out.changed.push((room.clone(), list(&r.others)));
            }
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = None;
        for r in self.rooms.values() {
            next = Instant::earliest(next, r.own.as_ref().map(|own| own.idle_deadline));
            for (_, expiry) in r.others.values() {
                next = Instant::earliest(next, Some(*expiry));
            }
        }
        next
    }
}

fn list(users: &SmallMap<(String, Instant)>) -> Vec<TypingUser> {
    // A push loop: `map(..).collect()` compiles the collecting machinery once per closure.
    let mut list = Vec::new();
    for (user, (name, _)) in users.iter() {
        list.push(TypingUser {
            user: user.clone(),
            name: name.clone(),
        });
    }
    list
}

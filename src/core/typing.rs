//! Typing indicators, both directions.
//!
//! Own typing: a keystroke sends `typing{active: true}` at most once per throttle period (so the
//! server's TTL keeps being refreshed while typing continues, without a frame per key), and
//! `typing{active: false}` after the idle period without keystrokes, on publish in that room, or
//! on an explicit stop. Own typing is never queued: it is meaningless after a reconnect.
//!
//! Others' typing: kept per room with an expiry after their last start, so a lost stop cannot
//! leave someone "typing" forever. The app gets the full sorted list whenever it changes.

use alloc::{string::String, vec::Vec, borrow::ToOwned};

use super::small_map::SmallMap;

use super::event::TypingUser;
use super::time::Instant;

#[derive(Clone, Debug)]
struct Own {
    last_start_sent: Instant,
    idle_deadline: Instant,
}

#[derive(Clone, Debug)]
pub struct Typing {
    throttle_ms: u64,
    idle_ms: u64,
    expiry_ms: u64,
    own: SmallMap<Own>,
    /// room → user → (name, expiry)
    others: SmallMap<SmallMap<(String, Instant)>>,
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
        Self { throttle_ms, idle_ms, expiry_ms, own: SmallMap::new(), others: SmallMap::new() }
    }

    /// A keystroke in `room`. Returns true if `typing{active: true}` should be sent now.
    pub fn keystroke(&mut self, now: Instant, room: &str) -> bool {
        let idle_deadline = now.plus(self.idle_ms);
        match self.own.get_mut(room) {
            Some(own) => {
                own.idle_deadline = idle_deadline;
                if now.millis_since(own.last_start_sent) >= self.throttle_ms {
                    own.last_start_sent = now;
                    return true;
                }
                false
            }
            None => {
                self.own.insert(room.to_owned(), Own { last_start_sent: now, idle_deadline });
                true
            }
        }
    }

    /// Explicit stop, publish, or unsubscribe. Returns true if `typing{active: false}` is due.
    pub fn stop(&mut self, room: &str) -> bool {
        self.own.remove(room)
    }

    /// The transport dropped: own typing is forgotten (the server times it out).
    pub fn reset_own(&mut self) {
        self.own.clear();
    }

    /// Someone else's typing frame. Returns the room's new list if it changed.
    pub fn on_remote(&mut self, now: Instant, room: &str, user: &str, name: &str, active: bool) -> Option<Vec<TypingUser>> {
        let users = self.others.get_or_insert_with(room, Default::default)?;
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
        let users = self.others.get_mut(room)?;
        if !users.remove(user) {
            return None;
        }
        Some(list(users))
    }

    pub fn remove_room(&mut self, room: &str) {
        self.own.remove(room);
        self.others.remove(room);
    }

    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut out = Expired::default();
        self.own.retain(|room, own| {
            let keep = own.idle_deadline > now;
            if !keep {
                out.own_stopped.push(room.clone());
            }
            keep
        });
        for (room, users) in self.others.iter_mut() {
            let before = users.len();
            users.retain(|_, (_, expiry)| *expiry > now);
            if users.len() != before {
                out.changed.push((room.clone(), list(users)));
            }
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = None;
        for own in self.own.values() {
            next = Instant::earliest(next, Some(own.idle_deadline));
        }
        for users in self.others.values() {
            for (_, expiry) in users.values() {
                next = Instant::earliest(next, Some(*expiry));
            }
        }
        next
    }
}

fn list(users: &SmallMap<(String, Instant)>) -> Vec<TypingUser> {
    users.iter().map(|(user, (name, _))| TypingUser { user: user.clone(), name: name.clone() }).collect()
}

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

/// Typing in one room, both directions (kept in the room's entry, see `rooms.rs`). The periods
/// come from [`super::Config`]: `throttle_ms`, `idle_ms` and `expiry_ms` below are its
/// `typing_*` fields.
#[derive(Clone, Debug, Default)]
pub struct RoomTyping {
    own: Option<Own>,
    /// user → (name, expiry)
    others: SmallMap<(String, Instant)>,
}

impl RoomTyping {
    /// A keystroke. Returns true if `typing{active: true}` should be sent now.
    pub fn keystroke(&mut self, now: Instant, throttle_ms: u64, idle_ms: u64) -> bool {
        let idle_deadline = now.plus(idle_ms);
        match &mut self.own {
            Some(own) => {
                own.idle_deadline = idle_deadline;
                if now.millis_since(own.last_start_sent) >= throttle_ms {
                    own.last_start_sent = now;
                    return true;
                }
                false
            }
            None => {
                self.own = Some(Own {
                    last_start_sent: now,
                    idle_deadline,
                });
                true
            }
        }
    }

    /// Explicit stop, publish, or unsubscribe. Returns true if `typing{active: false}` is due.
    pub fn stop(&mut self) -> bool {
        self.own.take().is_some()
    }

    /// The transport dropped: own typing is forgotten (the server times it out).
    pub fn reset_own(&mut self) {
        self.own = None;
    }

    /// Someone else's typing frame. Returns the new list if it changed.
    pub fn on_remote(
        &mut self,
        now: Instant,
        expiry_ms: u64,
        user: &str,
        name: &str,
        active: bool,
    ) -> Option<Vec<TypingUser>> {
        let users = &mut self.others;
        let changed = if active {
            let prev = users.insert(user.to_owned(), (name.to_owned(), now.plus(expiry_ms)));
            match prev {
                Some((old_name, _)) => old_name != name,
                None => true,
            }
        } else {
            users.remove(user)
        };
        changed.then(|| list(users))
    }

    /// Forgets a user (their last connection left). Returns the new list if it changed.
    pub fn remove_user(&mut self, user: &str) -> Option<Vec<TypingUser>> {
        if !self.others.remove(user) {
            return None;
        }
        Some(list(&self.others))
    }

    /// Whether own typing went idle by `now` (then it is forgotten: send `typing{active: false}`).
    pub fn expire_own(&mut self, now: Instant) -> bool {
        if self
            .own
            .as_ref()
            .is_some_and(|own| own.idle_deadline <= now)
        {
            self.own = None;
            return true;
        }
        false
    }

    /// Forgets others whose typing expired by `now`. Returns the new list if it changed.
    pub fn expire_others(&mut self, now: Instant) -> Option<Vec<TypingUser>> {
        let before = self.others.len();
        self.others.retain(|_, (_, expiry)| *expiry > now);
        (self.others.len() != before).then(|| list(&self.others))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.own.as_ref().map(|own| own.idle_deadline);
        for (_, expiry) in self.others.values() {
            next = Instant::earliest(next, Some(*expiry));
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

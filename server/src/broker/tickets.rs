//! Tickets as the broker keeps them: an opaque payload under a random name, for a short time,
//! redeemable once, on any node of the cluster (a load balancer without stickiness sends the
//! ticket request and the transport open to different nodes).
//!
//! The broker neither creates nor reads tickets (that is `crate::auth::tickets`); it stores
//! them and enforces two bounds: live tickets per user (so one token cannot fill the store every
//! user shares) and, for the in-process table, live tickets in total.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A ticket to store.
#[derive(Clone, Debug)]
pub struct TicketGrant {
    /// The ticket itself (random, URL-safe).
    pub ticket: String,
    /// Whose it is: counts toward this user's cap.
    pub user: String,
    /// What redeeming it returns.
    pub payload: String,
    pub ttl: Duration,
    /// Live tickets `user` may hold.
    pub per_user_cap: u32,
}

/// Why a ticket was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketRefusal {
    /// The user holds as many live tickets as allowed (429).
    TooManyForUser,
    /// The table is full of live tickets (503).
    TableFull,
}

/// Tickets held at most by the in-process table.
pub const MAX_LOCAL_TICKETS: usize = 100_000;

struct Entry {
    user: String,
    payload: String,
    expires: Instant,
}

/// The in-process ticket table (one node).
#[derive(Default)]
pub struct LocalTickets {
    by_ticket: HashMap<String, Entry>,
    per_user: HashMap<String, u32>,
}

impl LocalTickets {
    fn forget(per_user: &mut HashMap<String, u32>, user: &str) {
        if let Some(n) = per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }

    pub fn issue(&mut self, grant: TicketGrant, now: Instant) -> Result<(), TicketRefusal> {
        let held = |t: &Self| t.per_user.get(&grant.user).copied().unwrap_or(0);
        if held(self) >= grant.per_user_cap || self.by_ticket.len() >= MAX_LOCAL_TICKETS {
            self.sweep(now);
            if held(self) >= grant.per_user_cap {
                return Err(TicketRefusal::TooManyForUser);
            }
            if self.by_ticket.len() >= MAX_LOCAL_TICKETS {
                return Err(TicketRefusal::TableFull);
            }
        }
        *self.per_user.entry(grant.user.clone()).or_default() += 1;
        let entry = Entry {
            user: grant.user,
            payload: grant.payload,
            expires: now + grant.ttl,
        };
        if let Some(old) = self.by_ticket.insert(grant.ticket, entry) {
            // A repeated random name (practically never): the old one is gone.
            Self::forget(&mut self.per_user, &old.user);
        }
        Ok(())
    }

    /// Removes the ticket; its payload if it had not expired.
    pub fn redeem(&mut self, ticket: &str, now: Instant) -> Option<String> {
        let entry = self.by_ticket.remove(ticket)?;
        Self::forget(&mut self.per_user, &entry.user);
        (entry.expires > now).then_some(entry.payload)
    }

    /// Forgets expired tickets.
    pub fn sweep(&mut self, now: Instant) {
        let per_user = &mut self.per_user;
        self.by_ticket.retain(|_, e| {
            let live = e.expires > now;
            if !live {
                Self::forget(per_user, &e.user);
            }
            live
        });
    }

    pub fn len(&self) -> usize {
        self.by_ticket.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ticket.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ticket: &str, user: &str) -> TicketGrant {
        TicketGrant {
            ticket: ticket.into(),
            user: user.into(),
            payload: format!("p-{ticket}"),
            ttl: Duration::from_secs(30),
            per_user_cap: 2,
        }
    }

    #[test]
    fn single_use_capped_per_user_and_expiring() {
        let now = Instant::now();
        let mut t = LocalTickets::default();
        assert_eq!(t.issue(grant("a", "u"), now), Ok(()));
        assert_eq!(t.issue(grant("b", "u"), now), Ok(()));
        assert_eq!(
            t.issue(grant("c", "u"), now),
            Err(TicketRefusal::TooManyForUser)
        );
        assert_eq!(
            t.issue(grant("d", "v"), now),
            Ok(()),
            "other users are not affected"
        );
        assert_eq!(t.redeem("a", now).as_deref(), Some("p-a"));
        assert_eq!(t.redeem("a", now), None, "single use");
        assert_eq!(
            t.issue(grant("c", "u"), now),
            Ok(()),
            "a redeemed ticket frees a slot"
        );
        let later = now + Duration::from_secs(31);
        assert_eq!(t.redeem("b", later), None, "expired");
        assert_eq!(
            t.issue(grant("e", "u"), later),
            Ok(()),
            "expired tickets free their slots"
        );
        t.sweep(later);
        assert_eq!(t.len(), 1);
    }
}

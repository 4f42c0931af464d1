//! Tickets: single-use, short-lived stand-ins for a token, for the transports that cannot send
//! an `Authorization` header.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{random_token, Auth, Claims};

/// Tickets held at most; past it the oldest expired ones go first, then new tickets are refused.
const MAX_TICKETS: usize = 100_000;
/// Live (issued, not yet used or expired) tickets one user may hold. A client needs one per
/// connection attempt and uses it within moments; the cap stops one token from filling the
/// table that every user shares.
const MAX_TICKETS_PER_USER: u32 = 64;

/// Live tickets, and how many each user holds.
#[derive(Default)]
pub(super) struct Tickets {
    by_ticket: HashMap<String, (Claims, Instant)>,
    per_user: HashMap<String, u32>,
}

impl Tickets {
    fn forget_user_ticket(per_user: &mut HashMap<String, u32>, user: &str) {
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }

    fn remove(&mut self, ticket: &str) -> Option<(Claims, Instant)> {
        let entry = self.by_ticket.remove(ticket)?;
        Self::forget_user_ticket(&mut self.per_user, &entry.0.sub);
        Some(entry)
    }

    fn sweep(&mut self, now: Instant) {
        let per_user = &mut self.per_user;
        self.by_ticket.retain(|_, (claims, exp)| {
            let live = *exp > now;
            if !live {
                Self::forget_user_ticket(per_user, &claims.sub);
            }
            live
        });
    }
}

/// Why no ticket was issued.
#[derive(Debug, PartialEq, Eq)]
pub enum TicketRefusal {
    /// This user holds [`MAX_TICKETS_PER_USER`] unused tickets (429).
    TooManyForUser,
    /// The shared table is full of live tickets (503).
    TableFull,
}

impl Auth {
    /// Issues a single-use ticket for already verified claims, unless the user already holds
    /// too many unused ones or the shared table is full of live tickets.
    pub fn issue_ticket(&self, claims: Claims) -> Result<(String, Duration), TicketRefusal> {
        let now = Instant::now();
        let mut tickets = self.tickets.lock();
        let held = |t: &Tickets| t.per_user.get(&claims.sub).copied().unwrap_or(0);
        if held(&tickets) >= MAX_TICKETS_PER_USER || tickets.by_ticket.len() >= MAX_TICKETS {
            tickets.sweep(now);
            if held(&tickets) >= MAX_TICKETS_PER_USER {
                return Err(TicketRefusal::TooManyForUser);
            }
            if tickets.by_ticket.len() >= MAX_TICKETS {
                return Err(TicketRefusal::TableFull);
            }
        }
        let ticket = random_token(24);
        *tickets.per_user.entry(claims.sub.clone()).or_default() += 1;
        tickets
            .by_ticket
            .insert(ticket.clone(), (claims, now + self.ticket_ttl));
        Ok((ticket, self.ticket_ttl))
    }

    /// Consumes a ticket: the claims if it exists, has not expired and the token inside has
    /// not expired either. A ticket works once.
    pub fn redeem_ticket(&self, ticket: &str) -> Option<Claims> {
        let (claims, exp) = self.tickets.lock().remove(ticket)?;
        (exp > Instant::now() && !claims.expired()).then_some(claims)
    }

    /// Forgets expired tickets (periodic sweep).
    pub fn sweep(&self) {
        self.tickets.lock().sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::now_ms;

    fn auth() -> Auth {
        Auth::new(b"k".to_vec(), Duration::from_secs(30))
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u".into(),
            name: "U".into(),
            rooms: vec!["chat:*".into()],
            exp,
        }
    }

    #[test]
    fn tickets_are_single_use() {
        let a = auth();
        let Ok((t, _)) = a.issue_ticket(claims(now_ms() / 1000 + 60)) else {
            panic!("ticket refused")
        };
        assert!(a.redeem_ticket(&t).is_some());
        assert!(a.redeem_ticket(&t).is_none());
        assert!(a.redeem_ticket("forged").is_none());
    }

    #[test]
    fn one_user_cannot_fill_the_ticket_table() {
        let a = auth();
        let exp = now_ms() / 1000 + 60;
        let mut held = Vec::new();
        for _ in 0..MAX_TICKETS_PER_USER {
            held.push(
                a.issue_ticket(claims(exp))
                    .map(|(t, _)| t)
                    .expect("under the cap"),
            );
        }
        assert_eq!(
            a.issue_ticket(claims(exp)).map(|_| ()),
            Err(TicketRefusal::TooManyForUser)
        );
        let other = Claims {
            sub: "someone-else".into(),
            ..claims(exp)
        };
        assert!(
            a.issue_ticket(other).is_ok(),
            "other users are not affected"
        );
        assert!(a.redeem_ticket(&held[0]).is_some());
        assert!(
            a.issue_ticket(claims(exp)).is_ok(),
            "using a ticket frees a slot"
        );
    }
}

//! Several endpoints (`url: string[]`): which server the next attempt goes to, and when one
//! counts as down.
//!
//! The glue holds the URLs; the core deals in their indices, `0` being the preferred one. This
//! file answers "why did it move to the second URL?".
//!
//! - **Only the ticket step judges an endpoint.** An endpoint *misses* when `POST /v1/ticket`
//!   gets no HTTP answer (connection refused, DNS failure, network error, no answer before the
//!   first-frame deadline) or a 5xx other than `503`. Any other answer — a ticket, `401`, `404`,
//!   and above all `429`/`503` (overloaded, draining, full) — proves the node is there: its
//!   misses are forgotten and the client stays (an overloaded node is waited for with its
//!   jittered `Retry-After`, never fled: a crowd moving on would only overload the next node).
//!   A transport that dies or fails to open after its ticket says nothing about the endpoint
//!   (that is the ladder's business); the next ticket step does.
//! - After [`Config::failover_after`] misses in a row the endpoint is **down** for a jittered
//!   period: uniform in `[d/2, d]` with `d = min(cap, base · 2^(k-1))` for its k-th consecutive
//!   down period ([`Config::endpoint_down_ms`], [`Config::endpoint_down_cap_ms`]). A `4008` drain
//!   close also puts it down: the node is going away (the drain window already spreads the
//!   crowd, so moving on is no storm).
//! - Each attempt goes to the **first endpoint in list order that is not down**: the client moves
//!   on from a dead one and comes back to the preferred one at the first reconnect after its down
//!   period (a live session is never moved just to get back). An endpoint back from a down period
//!   goes down again at its first miss, for twice as long. If every endpoint is down, the attempt
//!   goes to the one back soonest: the general backoff still paces attempts, so a client never
//!   waits longer with several URLs than with one.
//! - A `welcome` from an endpoint clears its record.
//!
//! Moving to another endpoint is an ordinary attempt: the general backoff delay (jittered) comes
//! first, so a node's clients reach the next one spread over the backoff window, and the session's
//! rooms resume from their offsets on the new node (with a shared Redis, offsets are global).
//!
//! [`Config::failover_after`]: super::Config::failover_after
//! [`Config::endpoint_down_ms`]: super::Config::endpoint_down_ms
//! [`Config::endpoint_down_cap_ms`]: super::Config::endpoint_down_cap_ms

use alloc::{vec, vec::Vec};

use super::config::Config;
use super::rng::Rng;
use super::time::Instant;

/// What the client knows about one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Health {
    /// Ticket steps without an answer in a row.
    misses: u32,
    /// Consecutive down periods (reset by a `welcome`).
    downs: u32,
    /// Down until then (the origin: never down).
    down_until: Instant,
}

#[derive(Clone, Debug)]
pub struct Endpoints {
    health: Vec<Health>,
    current: usize,
    failover_after: u32,
    down_ms: u64,
    down_cap_ms: u64,
}

impl Endpoints {
    pub fn new(cfg: &Config) -> Self {
        Self {
            health: vec![Health::default(); cfg.endpoints.max(1)],
            current: 0,
            failover_after: cfg.failover_after.max(1),
            down_ms: cfg.endpoint_down_ms,
            down_cap_ms: cfg.endpoint_down_cap_ms.max(cfg.endpoint_down_ms),
        }
    }

    /// The endpoint of the current (or last) attempt.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Picks the endpoint for the next primary attempt (see the module docs): the first one not
    /// down, else the one back soonest.
    pub fn choose(&mut self, now: Instant) {
        // 0 (not down) orders first; a strict `<` keeps the first of equals.
        let down_until = |h: &Health| {
            if h.down_until > now {
                h.down_until.as_millis()
            } else {
                0
            }
        };
        let (mut pick, mut best) = (0, u64::MAX);
        for (i, h) in self.health.iter().enumerate() {
            if down_until(h) < best {
                (pick, best) = (i, down_until(h));
            }
        }
        self.current = pick;
    }

    /// The current endpoint's entry. Always `Some`: `health` is never empty and `current` is
    /// only set by `choose`, within it. (`get_mut`, not indexing: a bounds-check panic would
    /// bring formatting code into the module.)
    fn current_health(&mut self) -> Option<&mut Health> {
        self.health.get_mut(self.current)
    }

    /// The ticket step got an HTTP answer (a ticket, or any refusal but a 5xx): the node is there.
    pub fn on_answer(&mut self) {
        if let Some(h) = self.current_health() {
            h.misses = 0;
        }
    }

    /// A `welcome` arrived: the endpoint works.
    pub fn on_welcome(&mut self) {
        if let Some(h) = self.current_health() {
            *h = Health::default();
        }
    }

    /// The ticket step got no answer. Returns whether the endpoint is now down.
    pub fn on_unreachable(&mut self, now: Instant, rng: &mut Rng) -> bool {
        let failover_after = self.failover_after;
        if self.health.len() < 2 {
            return false;
        }
        let Some(h) = self.current_health() else {
            return false;
        };
        h.misses += 1;
        let needed = if h.downs > 0 { 1 } else { failover_after };
        if h.misses < needed {
            return false;
        }
        self.put_down(now, rng);
        true
    }

    /// The node closed the session with `4008` (draining): it is going away.
    pub fn on_draining(&mut self, now: Instant, rng: &mut Rng) {
        if self.health.len() >= 2 {
            self.put_down(now, rng);
        }
    }

    fn put_down(&mut self, now: Instant, rng: &mut Rng) {
        let (down_ms, down_cap_ms) = (self.down_ms, self.down_cap_ms);
        let Some(h) = self.current_health() else {
            return;
        };
        h.misses = 0;
        // Doubling stops long before the shift could overflow a delay in milliseconds.
        let envelope = (down_ms << h.downs.min(20)).min(down_cap_ms);
        h.downs += 1;
        h.down_until = now.plus(rng.between(envelope / 2, envelope));
    }
}

//! Admission at the ticket step: `POST /v1/ticket` is where a client asks to connect, and a
//! `fetch` can read the answer (a refused WebSocket upgrade cannot be told apart from a blocked
//! one). So the server turns clients away here, with `429`/`503`, a `Retry-After` and
//! `retry_after_ms`, when it drains, when it is full, or when connection attempts come faster
//! than its **accept-rate budget**: a token bucket per client address and one in total. A
//! transport open with a fresh ticket is never refused for rate: its ticket already counted.
//!
//! The delays are spread: every client refused for rate is given a slot of its own on the
//! budget's timeline (`1/rate` after the previous one, a little jitter), so a reconnect storm
//! comes back at the rate the server accepts instead of all at once after a fixed delay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use parking_lot::Mutex;

use crate::app::AppState;
use crate::http;
use crate::limits::TokenBucket;
use crate::metrics::DropReason;

/// The longest delay the budget hands out; past it, delays are random below it.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// The shortest delay handed out.
const MIN_DELAY: Duration = Duration::from_millis(200);
/// Addresses tracked at most; beyond, idle ones are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

/// One budget: a bucket and the timeline of the slots handed to refused clients.
struct Lane {
    bucket: TokenBucket,
    rate: f64,
    /// When the last refused client was told to come back.
    horizon: Instant,
    last_used: Instant,
}

impl Lane {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::new(rate, burst, now),
            rate: f64::from(rate.max(1)),
            horizon: now,
            last_used: now,
        }
    }

    /// Takes a token, or gives the caller the next free slot on the timeline.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        self.last_used = now;
        if self.bucket.try_take(now) {
            return Ok(());
        }
        Err(self.refuse(now))
    }

    /// Like [`Lane::admit`] without taking the token: whether one is there now.
    fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        if self.bucket.available(now) {
            return Ok(());
        }
        Err(self.refuse(now))
    }

    /// The next free slot on the timeline, handed to a refused client.
    fn refuse(&mut self, now: Instant) -> Duration {
        let slot = Duration::from_secs_f64(1.0 / self.rate);
        let next = self.horizon.max(now) + slot;
        let wait = if next.saturating_duration_since(now) > MAX_DELAY {
            // The timeline is full a minute ahead: random within that minute.
            MAX_DELAY.mul_f64(0.5 + rand::random::<f64>() / 2.0)
        } else {
            self.horizon = next;
            // Jitter within the slot, so two budgets' slots do not line up.
            next.saturating_duration_since(now) + slot.mul_f64(rand::random::<f64>())
        };
        if wait < MIN_DELAY {
            // No backlog: still spread, between the shortest delay and twice it.
            return MIN_DELAY.mul_f64(1.0 + rand::random::<f64>());
        }
        wait.min(MAX_DELAY)
    }

    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) > Duration::from_secs(60)
            && self.horizon <= now
    }
}

/// The accept-rate budget: per client address (IPv6 by /64: one host holds a whole /64) and
/// in total.
pub struct AcceptBudget {
    total: Mutex<Lane>,
    per_ip: Mutex<HashMap<IpAddr, Lane>>,
    ip_rate: u32,
    ip_burst: u32,
}

/// Why the budget refused, and when to come back.
#[derive(Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// This address connects too fast (429).
    Address(Duration),
    /// Everyone together does (503).
    Total(Duration),
}

fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl AcceptBudget {
    pub fn new(rate: u32, burst: u32, ip_rate: u32, ip_burst: u32) -> Self {
        Self {
            total: Mutex::new(Lane::new(rate, burst, Instant::now())),
            per_ip: Mutex::new(HashMap::new()),
            ip_rate,
            ip_burst,
        }
    }

    /// Charges one attempt from `ip` (any attempt, before its token is checked: an address
    /// sending junk only spends its own budget).
    pub fn admit_address(&self, ip: IpAddr, now: Instant) -> Result<(), OverBudget> {
        let mut lanes = self.per_ip.lock();
        if lanes.len() >= MAX_ADDRESSES {
            lanes.retain(|_, lane| !lane.idle(now));
        }
        let key = address_key(ip);
        if lanes.len() >= MAX_ADDRESSES && !lanes.contains_key(&key) {
            // Too many addresses at once to track: only the total budget applies.
            return Ok(());
        }
        lanes
            .entry(key)
            .or_insert_with(|| Lane::new(self.ip_rate, self.ip_burst, now))
            .admit(now)
            .map_err(OverBudget::Address)
    }

    /// Whether the total budget has room now, without charging it: checked before a token is
    /// verified, so a storm is turned away without verifying thousands of tokens, while junk
    /// tokens never spend the budget everyone shares.
    pub fn peek_total(&self, now: Instant) -> Result<(), OverBudget> {
        self.total.lock().peek(now).map_err(OverBudget::Total)
    }

    /// Charges one authenticated attempt to the total budget.
    pub fn admit_total(&self, now: Instant) -> Result<(), OverBudget> {
        self.total.lock().admit(now).map_err(OverBudget::Total)
    }

    /// Forgets addresses idle for a minute (periodic sweep).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.per_ip.lock().retain(|_, lane| !lane.idle(now));
    }

    pub fn tracked_addresses(&self) -> usize {
        self.per_ip.lock().len()
    }
}

fn over_budget(state: &AppState, over: OverBudget) -> Response {
    state.metrics.count_drop(DropReason::AcceptRate);
    match over {
        OverBudget::Address(wait) => http::overloaded_exact(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connection attempts from this address",
            wait,
        ),
        OverBudget::Total(wait) => http::overloaded_exact(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connection attempts",
            wait,
        ),
    }
}

/// The checks of `POST /v1/ticket` before its token is verified (all cheap): not draining
/// (503), the address's accept budget (429), room in the total budget (503).
#[allow(clippy::result_large_err)]
pub fn before_token(state: &AppState, ip: Option<IpAddr>) -> Result<(), Response> {
    if state.is_draining() {
        return Err(http::draining(state));
    }
    let now = Instant::now();
    if let Some(ip) = ip {
        state
            .accept
            .admit_address(ip, now)
            .map_err(|over| over_budget(state, over))?;
    }
    state
        .accept
        .peek_total(now)
        .map_err(|over| over_budget(state, over))
}

/// The checks of `POST /v1/ticket` once its token verified: the server is not full (a new
/// connection would be refused: 503 in total, 429 for this address), and the total accept
/// budget (503).
#[allow(clippy::result_large_err)]
pub fn after_token(state: &AppState, ip: Option<IpAddr>) -> Result<(), Response> {
    if let Err(refusal) = state.limiter.check(ip) {
        state.metrics.count_drop(DropReason::Overloaded);
        return Err(http::connections_refused(&refusal));
    }
    state
        .accept
        .admit_total(Instant::now())
        .map_err(|over| over_budget(state, over))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_clients_get_distinct_slots_at_the_budget_rate() {
        let t0 = Instant::now();
        let mut lane = Lane::new(10, 2, t0);
        assert!(lane.admit(t0).is_ok() && lane.admit(t0).is_ok());
        let waits: Vec<Duration> = (0..20).map(|_| lane.admit(t0).unwrap_err()).collect();
        // The n-th refused client comes back about n/rate later: 20 of them over ~2 s.
        for (n, w) in waits.iter().enumerate() {
            let slot = (n as f64 + 1.0) / 10.0;
            let w = w.as_secs_f64();
            // A slot closer than the shortest delay is a random delay in [200 ms, 400 ms).
            let (low, high) = if slot + 0.1 < 0.2 {
                (0.2, 0.4)
            } else {
                (slot, slot + 0.1)
            };
            assert!(
                w >= low.max(0.2) - 1e-9 && w < high.max(0.4) + 1e-9,
                "client {n}: {w:?}"
            );
        }
        // A minute ahead at most.
        let mut busy = Lane::new(1, 1, t0);
        let _ = busy.admit(t0);
        for _ in 0..500 {
            assert!(busy.admit(t0).unwrap_err() <= MAX_DELAY);
        }
    }

    #[test]
    fn each_address_has_its_own_budget_and_ipv6_counts_by_64() {
        let b = AcceptBudget::new(1000, 1000, 1, 2);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.admit_address(a, t0).is_ok() && b.admit_address(a, t0).is_ok());
        assert!(matches!(
            b.admit_address(a, t0),
            Err(OverBudget::Address(_))
        ));
        assert!(b.admit_address("192.0.2.2".parse().unwrap(), t0).is_ok());
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(b.admit_address(v6a, t0).is_ok() && b.admit_address(v6b, t0).is_ok());
        assert!(b.admit_address(v6a, t0).is_err(), "one /64, one budget");
    }
}

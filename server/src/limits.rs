//! Abuse limits: the per-connection token bucket, the per-user publish budget and connection
//! counting (total and per IP).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::TransportKind;
use crate::metrics::Metrics;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // Callers that read the clock before taking a shared bucket's lock may arrive out of
        // order: time only moves forward, or an interval would be credited twice.
        if now <= self.last {
            return;
        }
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// True if a token is there (none is taken).
    pub fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(now, 1.0)
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take_n(&mut self, now: Instant, n: f64) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens if there are that many; otherwise takes nothing and says how long until
    /// there will be (`None`: never, `n` is over the burst or the rate is zero).
    pub fn take_n_or_wait(&mut self, now: Instant, n: f64) -> Result<(), Option<Duration>> {
        if self.try_take_n(now, n) {
            return Ok(());
        }
        if n > self.burst || self.rate <= 0.0 {
            return Err(None);
        }
        Err(Some(Duration::from_secs_f64((n - self.tokens) / self.rate)))
    }

    /// True once the bucket is full again (it remembers nothing a new one would not).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// Takes one token, borrowing from the future if the bucket is empty: returns how long the
    /// caller must wait before acting (zero when a token was there), or `None` (nothing taken)
    /// when that wait would exceed `max_wait`. Throttles without refusing a short burst.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        if self.rate <= 0.0 {
            return None;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        if wait > max_wait.as_secs_f64() {
            return None;
        }
        self.tokens -= 1.0;
        Some(Duration::from_secs_f64(wait))
    }
}

/// The per-user publish budget: payload bytes per second of one user on this node, over all
/// their sessions, so one account cannot fill the history (and every subscriber's outbox) by
/// opening more connections.
pub struct PublishBudget {
    rate: u32,
    burst: u32,
    users: Mutex<HashMap<String, TokenBucket>>,
}

impl PublishBudget {
    pub fn new(bytes_per_sec: u32, burst: u32) -> Self {
        Self {
            rate: bytes_per_sec,
            burst,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// The burst in payload bytes (what `welcome.limits.publish_bytes_burst` announces).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Charges `bytes` to `user`; false (nothing charged) when over the budget.
    pub fn charge(&self, user: &str, bytes: usize, now: Instant) -> bool {
        self.charge_or_wait(user, bytes, now).is_ok()
    }

    /// Charges `bytes` to `user`, or says how long until the budget holds that many (nothing
    /// is charged then; `None`: never, `bytes` is over the burst).
    pub fn charge_or_wait(
        &self,
        user: &str,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Option<Duration>> {
        let mut users = self.users.lock();
        let bucket = match users.get_mut(user) {
            Some(b) => b,
            None => users
                .entry(user.to_owned())
                .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now)),
        };
        bucket.take_n_or_wait(now, bytes as f64)
    }

    /// Forgets users whose bucket is full again (periodic sweep): the table holds only users
    /// who published recently.
    pub fn sweep(&self, now: Instant) {
        self.users.lock().retain(|_, b| !b.is_full(now));
    }
}

/// Counts rate-limit nacks; too many within a window means the client ignores them.
#[derive(Debug, Default)]
pub struct Strikes {
    count: u32,
    last: Option<Instant>,
}

impl Strikes {
    const WINDOW: Duration = Duration::from_secs(10);

    /// Records a nack; true when the client has now exceeded `max` strikes.
    pub fn strike(&mut self, now: Instant, max: u32) -> bool {
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) > Self::WINDOW)
        {
            self.count = 0;
        }
        self.last = Some(now);
        self.count += 1;
        self.count > max
    }
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many in total (503).
    Total,
    /// Too many from this address (429).
    PerIp,
}

struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    by_transport: HashMap<TransportKind, usize>,
}

/// Counts open transports. A [`ConnGuard`] is one open transport; dropping it releases it.
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts {
                total: 0,
                per_ip: HashMap::new(),
                by_transport: HashMap::new(),
            }),
            metrics,
        })
    }

    /// Reserves a connection slot for `ip`.
    pub fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        kind: TransportKind,
    ) -> Result<ConnGuard, Refusal> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        c.total += 1;
        let n = c.by_transport.entry(kind).or_insert(0);
        *n += 1;
        self.metrics.set_connections(kind, *n as u64);
        Ok(ConnGuard {
            limiter: self.clone(),
            ip,
            kind,
        })
    }

    pub fn total(&self) -> usize {
        self.counts.lock().total
    }

    /// Whether [`ConnectionLimiter::acquire`] would refuse `ip` right now (without taking a
    /// slot): the ticket step refuses early what the open would refuse anyway.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        let c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        match ip.and_then(|ip| c.per_ip.get(&ip)) {
            Some(n) if *n >= self.max_per_ip => Err(Refusal::PerIp),
            _ => Ok(()),
        }
    }
}

/// One open transport; released on drop.
pub struct ConnGuard {
    limiter: Arc<ConnectionLimiter>,
    ip: Option<IpAddr>,
    kind: TransportKind,
}

impl ConnGuard {
    pub fn kind(&self) -> TransportKind {
        self.kind
    }
}

impl std::fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnGuard({})", self.kind.as_str())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.limiter.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
        let n = c.by_transport.entry(self.kind).or_insert(1);
        *n = n.saturating_sub(1);
        let n = *n as u64;
        self.limiter.metrics.set_connections(self.kind, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn late_readings_of_the_clock_credit_nothing_twice() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 1, t0);
        assert!(b.try_take(t0));
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(t1));
        // A caller that read the clock at t0 + 50 ms arrives after the one at t1.
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(!b.try_take(t1), "the 100 ms were credited once");
    }

    #[test]
    fn reserve_delays_a_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert_eq!(b.reserve(t0, Duration::from_secs(1)), Some(Duration::ZERO));
        assert_eq!(b.reserve(t0, Duration::from_secs(1)), Some(Duration::ZERO));
        let waits: Vec<_> = (0..10)
            .map_while(|_| b.reserve(t0, Duration::from_secs(1)))
            .collect();
        assert_eq!(waits.len(), 10, "one second of debt at 10/s");
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
        assert!(waits[9] <= Duration::from_secs(1));
        assert_eq!(b.reserve(t0, Duration::from_secs(1)), None);
        // The debt is paid back by time.
        let later = t0 + Duration::from_millis(1200);
        assert_eq!(b.reserve(later, Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn the_publish_budget_is_per_user_and_forgets_idle_users() {
        let t0 = Instant::now();
        let budget = PublishBudget::new(1000, 2000);
        assert!(budget.charge("a", 1500, t0));
        assert!(!budget.charge("a", 1000, t0), "over the burst");
        assert!(budget.charge("b", 2000, t0), "another user has their own");
        assert!(budget.charge("a", 1000, t0 + Duration::from_millis(500)));
        budget.sweep(t0 + Duration::from_secs(1));
        assert_eq!(budget.users.lock().len(), 2, "both still refilling");
        budget.sweep(t0 + Duration::from_secs(3));
        assert!(budget.users.lock().is_empty());
    }

    #[test]
    fn a_refused_charge_says_when_it_would_pass() {
        let t0 = Instant::now();
        let budget = PublishBudget::new(1000, 2000);
        assert_eq!(budget.charge_or_wait("k", 1500, t0), Ok(()));
        let wait = budget
            .charge_or_wait("k", 1000, t0)
            .expect_err("over the budget");
        assert_eq!(
            wait,
            Some(Duration::from_millis(500)),
            "500 bytes short at 1000/s"
        );
        assert_eq!(
            budget.charge_or_wait("k", 1000, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert_eq!(
            budget.charge_or_wait("k", 2001, t0),
            Err(None),
            "over the burst: never"
        );
    }

    #[test]
    fn limiter_counts_and_releases() {
        let l = ConnectionLimiter::new(3, 2, Arc::new(Metrics::default()));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.acquire(Some(ip), TransportKind::Sse);
        let b = l.acquire(Some(ip), TransportKind::Sse);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            l.acquire(Some(ip), TransportKind::Sse).err(),
            Some(Refusal::PerIp)
        );
        let c = l.acquire(Some([10, 0, 0, 1].into()), TransportKind::Poll);
        assert!(c.is_ok());
        assert_eq!(
            l.acquire(None, TransportKind::Poll).err(),
            Some(Refusal::Total)
        );
        drop(a);
        assert!(l.acquire(Some(ip), TransportKind::Sse).is_ok());
    }
}

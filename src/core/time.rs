//! Time as the core sees it: milliseconds on a clock the caller owns.
//!
//! The core never reads a clock. The browser glue passes `performance.now()` (rounded down to whole
//! milliseconds); tests pass a virtual clock. Durations are plain `u64` milliseconds everywhere
//! (fields end in `_ms`), the unit the wire protocol and the browser already use.

/// A point in time: milliseconds since an arbitrary origin chosen by the caller.
///
/// Only differences between instants mean anything. The core treats a `now` that goes backwards
/// as "no time passed" rather than trusting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Converts a browser `performance.now()` value. NaN and negative values map to the origin.
    pub fn from_f64_millis(ms: f64) -> Self {
        if ms.is_finite() && ms > 0.0 {
            // `as` saturates for floats, so huge values cannot wrap.
            Self(ms as u64)
        } else {
            Self(0)
        }
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This instant plus `ms` milliseconds (saturating: a far-future deadline stays far away).
    pub const fn plus(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// The earlier of two optional deadlines (`None`: not armed). Plain code instead of
    /// `Iterator::min` over chains of adapters, each of which is compiled separately.
    pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b < a { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

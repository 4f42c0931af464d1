//! A tiny seedable random number generator (SplitMix64).
//!
//! The core needs randomness for backoff jitter, probe scheduling and publish ids. It must be
//! reproducible in tests (same seed, same run) and small on wasm, so it is a dozen lines instead
//! of the `rand` crate. The glue seeds it from `crypto.getRandomValues`. Not cryptographic: the
//! ids it makes only need to be unique, not secret.

/// SplitMix64: passes BigCrush, one `u64` of state, any seed (including 0) is fine.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly random value in `[lo, hi]` (inclusive). Returns `lo` when `hi <= lo`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = u128::from(hi - lo) + 1;
        // Multiply-shift instead of `%`: no modulo bias worth mentioning and no division.
        let r = (u128::from(self.next_u64()) * span) >> 64;
        lo + r as u64
    }
}

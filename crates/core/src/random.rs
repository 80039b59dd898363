//! A seeded, lock-free source of uniform numbers, shared by every task of a component.
//!
//! Herd protection draws a random number on hot paths (the cache on every read near expiry,
//! the throttle on every call while it sheds), and the workers draw backoff jitter, from many
//! tasks at once. A `Mutex<StdRng>` would serialize them; this is SplitMix64 over one atomic
//! counter: each draw is a `fetch_add` and a few multiplications, and the same seed replays the
//! same sequence of draws, which is what the lab and the tests need for deterministic runs.
//!
//! `&Random` is a [`rand::Rng`], so it can be handed to [`Backoff::delay`](crate::Backoff::delay):
//!
//! ```
//! use std::time::Duration;
//! use onephase_core::{Backoff, Jitter, Random};
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), Jitter::Full)?;
//! let random = Random::seeded(7);
//! let delay = backoff.delay(3, None, &mut &random);
//! assert!(delay <= Duration::from_millis(800));
//! # Ok::<(), onephase_core::InvalidBackoff>(())
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngExt as _;

/// SplitMix64's increment: the golden ratio in 64 bits.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Uniform random numbers from a seed, usable from many threads at once.
#[derive(Debug)]
pub struct Random {
    state: AtomicU64,
}

impl Random {
    /// A sequence determined by `seed`: the same seed gives the same draws in the same order.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A sequence seeded from the operating system's entropy.
    pub fn from_entropy() -> Self {
        Self::seeded(rand::rng().random())
    }

    /// The next 64 uniform bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 bits of precision.
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.unit() < p)
    }

    /// Uniform in `[0, max]` at nanosecond resolution.
    pub fn duration_up_to(&self, max: std::time::Duration) -> std::time::Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return max;
        }
        std::time::Duration::from_nanos(self.next_u64() % nanos.saturating_add(1).max(1))
    }
}

/// Draws from the shared sequence, so that `&Random` serves wherever a [`rand::Rng`] is taken.
impl rand::TryRng for &Random {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_units_are_in_range() {
        let (a, b) = (Random::seeded(7), Random::seeded(7));
        for _ in 0..1000 {
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u.to_bits(), b.unit().to_bits());
        }
    }

    #[test]
    fn chance_is_roughly_its_probability() {
        let r = Random::seeded(1);
        let hits = (0..100_000).filter(|_| r.chance(0.25)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}

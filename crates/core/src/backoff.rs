use std::time::Duration;

use rand::{Rng, RngExt};

use crate::error::{Classify, ErrorKind};

/// How a [`Backoff`] randomizes its delays.
///
/// The formulas are those of Marc Brooker's *Exponential Backoff And Jitter* (AWS Architecture
/// Blog, 2015), where `expo(n) = min(cap, base * 2^n)`:
///
/// | jitter | delay before retry `n` | range |
/// |---|---|---|
/// | [`None`](Jitter::None) | `expo(n)` | exactly `expo(n)` |
/// | [`Full`](Jitter::Full) | `random(0, expo(n))` | `[0, expo(n)]` |
/// | [`Equal`](Jitter::Equal) | `expo(n)/2 + random(0, expo(n)/2)` | `[expo(n)/2, expo(n)]` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, random(base, previous * 3))` | `[base, cap]` |
///
/// Without jitter, clients that failed together retry together, and the retry wave is as tall
/// as the original spike: that synchronization is the thundering herd. Full jitter spreads
/// the retries best and is the usual choice; equal jitter guarantees a minimum wait;
/// decorrelated jitter grows from the previous delay rather than from the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Jitter {
    /// No randomness: every client waits exactly as long as every other. Only for comparison.
    None,
    /// Uniform in `[0, expo(n)]`.
    #[default]
    Full,
    /// Uniform in `[expo(n)/2, expo(n)]`.
    Equal,
    /// Uniform in `[base, 3 * previous]`, capped.
    Decorrelated,
}

/// A [`Backoff`] could not be built: the base or cap is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backoff: {0}")]
pub struct InvalidBackoff(&'static str);

impl Classify for InvalidBackoff {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Exponential backoff with jitter, as a pure function of the attempt number and an RNG.
///
/// The RNG is an argument, never a global, so that a seeded RNG replays the same schedule: the
/// failure lab uses that to compare a retry storm with and without jitter on identical inputs.
///
/// ```
/// use std::time::Duration;
/// use onephase_core::{Backoff, Jitter};
/// use onephase_core::rand::{SeedableRng, rngs::StdRng};
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), Jitter::Full)?;
/// let delays: Vec<Duration> = backoff.schedule(StdRng::seed_from_u64(42)).take(5).collect();
/// for (n, delay) in delays.iter().enumerate() {
///     assert!(*delay <= backoff.ceiling(n as u32));
/// }
/// # Ok::<(), onephase_core::InvalidBackoff>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    ///
    /// Fails if `base` is zero (the schedule would never grow) or `cap` is below `base`.
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff("base must be greater than zero"));
        }
        if cap < base {
            return Err(InvalidBackoff("cap must be at least base"));
        }
        Ok(Self { base, cap, jitter })
    }

    /// The first delay before jitter.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay this backoff ever returns.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter strategy.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// `min(cap, base * 2^attempt)`: the delay before retry `attempt` (0-based) without jitter,
    /// and the upper bound of every strategy but decorrelated, whose bound is [`cap`](Self::cap).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(0);
        if factor == 0 {
            return self.cap;
        }
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay before retry `attempt` (0-based).
    ///
    /// `previous` is the delay this schedule returned last time; only
    /// [`Jitter::Decorrelated`] uses it, and treats `None` as `base`.
    pub fn delay(&self, attempt: u32, previous: Option<Duration>, rng: &mut impl Rng) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(attempt),
            Jitter::Full => uniform(rng, Duration::ZERO, self.ceiling(attempt)),
            Jitter::Equal => {
                let ceiling = self.ceiling(attempt);
                let half = ceiling / 2;
                half + uniform(rng, Duration::ZERO, ceiling - half)
            }
            Jitter::Decorrelated => {
                let previous = previous.unwrap_or(self.base).max(self.base);
                let upper = previous.saturating_mul(3).min(self.cap);
                uniform(rng, self.base, upper)
            }
        }
    }

    /// The infinite sequence of delays for retries 0, 1, 2, ..., drawn from `rng`. Bound it with
    /// `take(n)` or a retry budget.
    pub fn schedule<R: Rng>(&self, rng: R) -> BackoffSchedule<R> {
        BackoffSchedule {
            backoff: *self,
            rng,
            attempt: 0,
            previous: None,
        }
    }
}

/// Uniform in `[low, high]` at nanosecond resolution; `high` below `low` yields `low`.
fn uniform(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let low_ns = saturating_nanos(low);
    let high_ns = saturating_nanos(high);
    if high_ns <= low_ns {
        return low;
    }
    Duration::from_nanos(rng.random_range(low_ns..=high_ns))
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The delays of a [`Backoff`], one per retry. Created by [`Backoff::schedule`].
#[derive(Debug, Clone)]
pub struct BackoffSchedule<R> {
    backoff: Backoff,
    rng: R,
    attempt: u32,
    previous: Option<Duration>,
}

impl<R> BackoffSchedule<R> {
    /// How many delays this schedule has produced.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from retry 0, as after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = None;
    }
}

impl<R: Rng> Iterator for BackoffSchedule<R> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self
            .backoff
            .delay(self.attempt, self.previous, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        self.previous = Some(delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    /// Base from 1 ns to ~11 days, cap from base up to ~136 years: extremes included on purpose.
    fn backoff() -> impl Strategy<Value = Backoff> {
        (
            1u64..1_000_000_000_000_000,
            0u64..=u32::MAX as u64,
            jitter(),
        )
            .prop_map(|(base_ns, extra_s, jitter)| {
                let base = Duration::from_nanos(base_ns);
                let cap = base + Duration::from_secs(extra_s);
                Backoff::new(base, cap, jitter).expect("cap >= base > 0")
            })
    }

    proptest! {
        #[test]
        fn ceiling_is_min_of_cap_and_doubling(b in backoff(), attempt in 0u32..200) {
            let ceiling = b.ceiling(attempt);
            prop_assert!(ceiling <= b.cap());
            prop_assert!(ceiling >= b.base());
            let doubled = 2f64.powi(attempt as i32) * b.base().as_secs_f64();
            let expected = doubled.min(b.cap().as_secs_f64());
            prop_assert!((ceiling.as_secs_f64() - expected).abs() <= expected * 1e-9 + 1e-9);
            prop_assert!(b.ceiling(attempt.saturating_add(1)) >= ceiling);
        }

        #[test]
        fn every_delay_is_within_its_strategys_bounds(
            b in backoff(), seed: u64, attempts in 1usize..64,
        ) {
            let mut previous: Option<Duration> = None;
            for (n, delay) in b.schedule(StdRng::seed_from_u64(seed)).take(attempts).enumerate() {
                let ceiling = b.ceiling(n as u32);
                match b.jitter() {
                    Jitter::None => prop_assert_eq!(delay, ceiling),
                    Jitter::Full => prop_assert!(delay <= ceiling),
                    Jitter::Equal => {
                        prop_assert!(delay >= ceiling / 2);
                        prop_assert!(delay <= ceiling);
                    }
                    Jitter::Decorrelated => {
                        prop_assert!(delay >= b.base());
                        prop_assert!(delay <= b.cap());
                        let prev = previous.unwrap_or(b.base());
                        prop_assert!(delay <= prev.saturating_mul(3).max(b.base()));
                    }
                }
                previous = Some(delay);
            }
        }

        #[test]
        fn the_same_seed_replays_the_same_schedule(b in backoff(), seed: u64) {
            let first: Vec<_> = b.schedule(StdRng::seed_from_u64(seed)).take(16).collect();
            let second: Vec<_> = b.schedule(StdRng::seed_from_u64(seed)).take(16).collect();
            prop_assert_eq!(first, second);
        }
    }

    #[test]
    fn rejects_zero_base_and_cap_below_base() {
        let one = Duration::from_secs(1);
        assert!(Backoff::new(Duration::ZERO, one, Jitter::Full).is_err());
        assert!(Backoff::new(one * 2, one, Jitter::Full).is_err());
        assert!(Backoff::new(one, one, Jitter::Full).is_ok());
    }

    #[test]
    fn full_jitter_actually_spreads_delays() {
        // 1,000 clients retrying attempt 5 of a 100 ms base: without jitter they all wait
        // 3.2 s; with full jitter the delays must spread across the range.
        let b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(60),
            Jitter::Full,
        )
        .unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(5, None, &mut rng)).collect();
        let buckets = delays.iter().fold([0usize; 4], |mut acc, d| {
            let i = (d.as_secs_f64() / 3.2 * 4.0).floor().min(3.0) as usize;
            acc[i] += 1;
            acc
        });
        assert!(buckets.iter().all(|&n| n > 150), "{buckets:?}");
    }

    #[test]
    fn schedule_reset_starts_over() {
        let b = Backoff::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
            Jitter::None,
        )
        .unwrap();
        let mut schedule = b.schedule(StdRng::seed_from_u64(0));
        let first: Vec<_> = schedule.by_ref().take(3).collect();
        assert_eq!(schedule.attempts(), 3);
        schedule.reset();
        let again: Vec<_> = schedule.take(3).collect();
        assert_eq!(first, again);
        assert_eq!(first[2], Duration::from_millis(40));
    }
}

//! Counts over a sliding window of time, kept in a ring of buckets.
//!
//! The retry budget, the circuit breaker's failure rate and the adaptive throttle all ask
//! "how many in the last `span`?". Keeping every event would cost memory in proportion to the
//! traffic; a ring of `n` buckets of `span / n` each costs a constant, at the price of
//! precision: an event is forgotten when its bucket falls out of the ring, so the window
//! covers between `span - span / n` and `span` of the past.

use std::time::{Duration, Instant};

/// A ring of `n` counters of type `T`, each covering `width` of time.
#[derive(Debug, Clone)]
pub(crate) struct Window<T> {
    origin: Instant,
    width: Duration,
    /// `(bucket index since origin, counts)`; a slot whose index is too old is stale.
    slots: Vec<(u64, T)>,
}

impl<T: Default + Copy + std::ops::AddAssign> Window<T> {
    /// A window of `buckets` buckets spanning `span`, starting at `origin`.
    pub(crate) fn new(origin: Instant, span: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let width = (span / buckets).max(Duration::from_micros(1));
        Self {
            origin,
            width,
            slots: vec![(u64::MAX, T::default()); buckets as usize],
        }
    }

    /// The index of the bucket `now` falls in.
    pub(crate) fn bucket(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos() / self.width.as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Adds `value` to the bucket of `now`.
    pub(crate) fn add(&mut self, now: Instant, value: T) {
        let index = self.bucket(now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(index % len) as usize];
        if slot.0 != index {
            *slot = (index, T::default());
        }
        slot.1 += value;
    }

    /// The sum of the buckets still in the window at `now`.
    pub(crate) fn sum(&self, now: Instant) -> T {
        let index = self.bucket(now);
        let oldest = index.saturating_sub(self.slots.len() as u64 - 1);
        let mut total = T::default();
        for (i, counts) in &self.slots {
            if *i != u64::MAX && *i >= oldest && *i <= index {
                total += *counts;
            }
        }
        total
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            *slot = (u64::MAX, T::default());
        }
    }
}

/// A pair of counts, summed together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pair(pub u64, pub u64);

impl std::ops::AddAssign for Pair {
    fn add_assign(&mut self, other: Self) {
        self.0 += other.0;
        self.1 += other.1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_leave_the_window_with_their_bucket() {
        let t0 = Instant::now();
        let mut w: Window<u64> = Window::new(t0, Duration::from_secs(10), 10);
        w.add(t0, 1);
        w.add(t0 + Duration::from_millis(4_500), 2);
        assert_eq!(w.sum(t0 + Duration::from_millis(9_999)), 3);
        assert_eq!(w.sum(t0 + Duration::from_secs(10)), 2);
        assert_eq!(w.sum(t0 + Duration::from_millis(13_999)), 2);
        assert_eq!(w.sum(t0 + Duration::from_secs(14)), 0);
        w.add(t0 + Duration::from_secs(25), 4);
        assert_eq!(w.sum(t0 + Duration::from_secs(25)), 4);
    }
}

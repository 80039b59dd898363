//! Post 6 of the seed, *The Thundering Herd Problem*: cache stampedes, retry storms and
//! reconnect floods, each run naive and with [`onephase_herd`].

mod reconnect_flood;
mod retry_storm;
mod stampede;

pub use reconnect_flood::reconnect_flood;
pub use retry_storm::retry_storm;
pub use stampede::stampede;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Counts per 100 ms of simulated time.
#[derive(Debug, Default, Clone)]
pub(crate) struct Timeline {
    buckets: Arc<Mutex<Vec<u64>>>,
}

pub(crate) const BUCKET: Duration = Duration::from_millis(100);

impl Timeline {
    pub(crate) fn add(&self, at: Duration) {
        let i = (at.as_millis() / BUCKET.as_millis()) as usize;
        let mut b = lock(&self.buckets);
        if b.len() <= i {
            b.resize(i + 1, 0);
        }
        b[i] += 1;
    }

    /// The largest count in any bucket from `from` on.
    pub(crate) fn peak_from(&self, from: Duration) -> u64 {
        let first = (from.as_millis() / BUCKET.as_millis()) as usize;
        lock(&self.buckets)
            .iter()
            .skip(first)
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The sum of the buckets in `[from, to)`.
    pub(crate) fn sum(&self, from: Duration, to: Duration) -> u64 {
        let (a, z) = (
            (from.as_millis() / BUCKET.as_millis()) as usize,
            (to.as_millis() / BUCKET.as_millis()) as usize,
        );
        lock(&self.buckets)
            .iter()
            .enumerate()
            .filter(|(i, _)| (a..z).contains(i))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every bucket's count, padded with zeros to `len` buckets.
    pub(crate) fn counts(&self, len: usize) -> Vec<f64> {
        let b = lock(&self.buckets);
        (0..len.max(b.len()))
            .map(|i| b.get(i).copied().unwrap_or(0) as f64)
            .collect()
    }

    /// How many buckets hold counts.
    pub(crate) fn len(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// The end of the last non-empty bucket, as a time.
    pub(crate) fn last(&self) -> Duration {
        let b = lock(&self.buckets);
        let last = b.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        BUCKET * last as u32
    }
}

/// Both runs' counts as the report's chart, on a common length.
pub(crate) fn chart(
    report: &mut crate::Report,
    title: &str,
    naive: &Timeline,
    onephase: &Timeline,
) {
    let len = naive.len().max(onephase.len());
    report.chart(title, "", BUCKET, naive.counts(len), onephase.counts(len));
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

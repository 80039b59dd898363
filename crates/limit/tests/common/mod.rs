//! What the multi-node tests check: admissions, timed on the store's clock, against each
//! algorithm's bound.

#![allow(dead_code)]

use anyhow::ensure;
use onephase_limit::Algorithm;

/// The most admissions in any interval of `len` µs (`times` sorted).
pub fn most_within(times: &[i64], len: i64) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= len {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The most admissions in one calendar window of `period` µs.
pub fn most_per_window(times: &[i64], period: i64) -> usize {
    let mut counts = std::collections::HashMap::new();
    for t in times {
        *counts.entry(t.div_euclid(period)).or_insert(0_usize) += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

/// Checks sorted admission `times` (µs) of a policy of `limit` per `period_us` (GCRA's burst
/// being the limit) over at least three periods: enough were admitted, and no interval or
/// window saw more than the algorithm allows.
pub fn check_bounds(
    algorithm: Algorithm,
    times: &[i64],
    period_us: i64,
    limit: usize,
    what: &str,
) -> anyhow::Result<()> {
    check_bounds_within(algorithm, times, period_us, limit, 0, what)
}

/// [`check_bounds`] allowing `slack` more admissions in every interval and window (the
/// hybrid limiter's leases outstanding).
pub fn check_bounds_within(
    algorithm: Algorithm,
    times: &[i64],
    period_us: i64,
    limit: usize,
    slack: usize,
    what: &str,
) -> anyhow::Result<()> {
    let per_window = most_per_window(times, period_us);
    let per_period = most_within(times, period_us);
    eprintln!(
        "{algorithm}: {} admitted {what}, at most {per_window} per window, {per_period} per period",
        times.len()
    );
    ensure!(
        times.len() >= 3 * limit,
        "{algorithm}: only {} admitted",
        times.len()
    );
    match algorithm {
        // Burst (= limit) at once, then one per period/limit.
        Algorithm::Gcra => ensure!(per_period <= 2 * limit + slack, "{algorithm}: {per_period}"),
        Algorithm::FixedWindow => ensure!(per_window <= limit + slack, "{algorithm}: {per_window}"),
        Algorithm::SlidingLog => ensure!(per_period <= limit + slack, "{algorithm}: {per_period}"),
        Algorithm::SlidingWindow => ensure!(
            per_window <= limit + slack && per_period < 2 * limit + slack,
            "{algorithm}: {per_window} per window, {per_period} per period"
        ),
    }
    Ok(())
}

/// A small deterministic generator (xorshift), so that a failure can be replayed.
pub struct Steps(pub u64);

impl Steps {
    /// The next number below `below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

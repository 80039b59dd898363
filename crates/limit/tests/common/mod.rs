//! What the multi-node tests check: admissions, timed on the store's clock, against each
//! algorithm's bound.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use onephase_limit::{Algorithm, Decision, Fallback, Limiter};
use onephase_testkit::FaultProxy;

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

/// The outage scenario every shared store must pass. `open`, `closed` and `error` are one
/// limiter (GCRA, 2 per minute, a short timeout) reaching its store through `proxy`, failing
/// open, closed and with an error: a check goes through, the link is cut, each fails as chosen
/// and quickly, the link is restored, and the fallback admission was not counted.
pub async fn check_outage(
    proxy: &FaultProxy,
    open: &dyn Limiter,
    closed: &dyn Limiter,
    error: &dyn Limiter,
    store: &str,
) -> anyhow::Result<()> {
    let first = open.check("k", 1).await?;
    ensure!(
        first.allowed && first.fallback.is_none() && first.remaining == 1,
        "{first:?}"
    );
    proxy.cut().await;
    let started = std::time::Instant::now();
    let d = open.check("k", 1).await?;
    ensure!(
        d.allowed && d.fallback == Some(Fallback::FailedOpen),
        "{d:?}"
    );
    let d = closed.check("k", 1).await?;
    ensure!(
        !d.allowed && d.fallback == Some(Fallback::FailedClosed),
        "{d:?}"
    );
    ensure!(error.check("k", 1).await.is_err());
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    proxy.restore();
    let mut back = None;
    for _ in 0..100 {
        let d = closed.check("k", 1).await?;
        if d.fallback.is_none() {
            back = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fallback admission was not counted: one unit is left for this check.
    let back =
        back.ok_or_else(|| anyhow::anyhow!("{store} did not come back through the proxy"))?;
    ensure!(back.allowed && back.remaining == 0, "{back:?}");
    let refused = closed.check("k", 1).await?;
    ensure!(
        !refused.allowed && refused.fallback.is_none() && refused.retry_after.is_some(),
        "{refused:?}"
    );
    Ok(())
}

/// When an admission happened, for the bound checks.
#[derive(Clone, Copy)]
pub enum Timing {
    /// The store's clock, as the decision reports it (Redis, PostgreSQL).
    Store,
    /// This machine's clock when the check returned (decisions made in process).
    Wall,
}

impl Timing {
    fn of(self, decision: &Decision) -> anyhow::Result<i64> {
        match self {
            Self::Store => decision.decided_at_us.context("no decision time"),
            Self::Wall => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))),
        }
    }
}

/// Sorted admission times of 16 tasks per node checking one key for `run`.
pub async fn hammer(
    nodes: Vec<Arc<dyn Limiter>>,
    run: Duration,
    timing: Timing,
) -> anyhow::Result<Vec<i64>> {
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..16 {
            let (node, admitted) = (Arc::clone(&node), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                let end = tokio::time::Instant::now() + run;
                while tokio::time::Instant::now() < end {
                    let d = node.check("one-key", 1).await?;
                    if d.allowed {
                        let at = timing.of(&d)?;
                        admitted.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                    }
                    // Some decisions are answered in process: give the other tasks a turn.
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let mut times = admitted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    times.sort_unstable();
    Ok(times)
}

//! What a limit is: an algorithm, a number of units per period, and a burst.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::LimitError;

/// The largest limit (units per period) a policy may set.
pub const MAX_LIMIT: u64 = 1_000_000;
/// The shortest period.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The longest period.
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// How admissions are counted. Each has a known failure, which is the reason to choose it or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The generic cell rate algorithm: a token bucket kept as one timestamp (the theoretical
    /// arrival time). Admits `limit` per `period` evenly, with bursts of up to `burst`. No
    /// boundary effect; state is one number per key.
    Gcra,
    /// A counter per calendar window of `period`. Cheap, but a client can spend a whole window's
    /// limit at its end and the next window's at the start: up to 2 × `limit` within one
    /// `period` across a boundary.
    FixedWindow,
    /// Every admission's time, for the last `period`: exact (never more than `limit` in any
    /// `period`-long interval), at the cost of memory proportional to `limit` per key.
    SlidingLog,
    /// Two fixed-window counters, the previous one weighted by how much of it still overlaps
    /// the sliding window: an estimate. Per calendar window it never admits more than `limit`;
    /// in an arbitrary `period`-long interval it can admit up to (but not including)
    /// 2 × `limit` when the previous window's admissions all came at its end.
    SlidingWindow,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
    ];

    /// Its name in configuration and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gcra => "gcra",
            Self::FixedWindow => "fixed_window",
            Self::SlidingLog => "sliding_log",
            Self::SlidingWindow => "sliding_window",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                LimitError::Invalid(format!(
                    "unknown algorithm {s:?}: use gcra, fixed_window, sliding_log or sliding_window"
                ))
            })
    }
}

/// A rate limit: at most `limit` units per `period`, counted by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    algorithm: Algorithm,
    limit: u64,
    period_us: i64,
    burst: u64,
    /// GCRA's emission interval, in whole µs rounded up: computed once, since a division on
    /// every check was a fifth of a local check's time.
    emission_us: i64,
    /// GCRA's tolerance, `emission × burst` in µs: how far ahead of now the theoretical
    /// arrival time may run. Computed with the emission, not on every check.
    tolerance_us: i64,
}

impl Policy {
    /// `limit` units per `period` (1 to [`MAX_LIMIT`]; 1 ms to 24 h), counted by `algorithm`.
    /// GCRA's burst defaults to `limit`.
    pub fn new(algorithm: Algorithm, limit: u64, period: Duration) -> Result<Self, LimitError> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(LimitError::Invalid(format!(
                "limit {limit} is out of range: use 1 to {MAX_LIMIT}"
            )));
        }
        if period < MIN_PERIOD || period > MAX_PERIOD {
            return Err(LimitError::Invalid(format!(
                "period {} ms is out of range: use 1 ms to 24 h",
                period.as_millis()
            )));
        }
        let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX);
        let whole = i64::try_from(limit).unwrap_or(i64::MAX);
        let emission_us = (period_us + whole - 1) / whole;
        Ok(Self {
            algorithm,
            limit,
            period_us,
            burst: limit,
            emission_us,
            tolerance_us: tolerance(emission_us, limit),
        })
    }

    /// The same policy with GCRA bursts of up to `burst` units (1 to [`MAX_LIMIT`]). Other
    /// algorithms' burst is their limit.
    pub fn with_burst(mut self, burst: u64) -> Result<Self, LimitError> {
        if burst == 0 || burst > MAX_LIMIT {
            return Err(LimitError::Invalid(format!(
                "burst {burst} is out of range: use 1 to {MAX_LIMIT}"
            )));
        }
        if self.algorithm == Algorithm::Gcra {
            self.burst = burst;
            self.tolerance_us = tolerance(self.emission_us, burst);
        }
        Ok(self)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Units per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.period_us).unwrap_or(0))
    }

    /// The largest cost one decision can admit.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    pub(crate) fn period_us(&self) -> i64 {
        self.period_us
    }

    /// GCRA's emission interval: the time one unit takes to come back, in microseconds,
    /// rounded up so that rounding never admits more than the limit.
    pub(crate) fn emission_us(&self) -> i64 {
        self.emission_us
    }

    /// GCRA's tolerance: `emission × burst`, in microseconds.
    pub(crate) fn tolerance_us(&self) -> i64 {
        self.tolerance_us
    }

    /// Checks a cost: at least 1 and at most the burst (a larger one could never be admitted).
    pub(crate) fn check_cost(&self, cost: u64) -> Result<(), LimitError> {
        if cost == 0 || cost > self.burst {
            return Err(LimitError::Invalid(format!(
                "cost {cost} is out of range: use 1 to the policy's burst ({})",
                self.burst
            )));
        }
        Ok(())
    }
}

/// GCRA's tolerance for an emission interval and a burst, saturating.
fn tolerance(emission_us: i64, burst: u64) -> i64 {
    emission_us.saturating_mul(i64::try_from(burst).unwrap_or(i64::MAX))
}

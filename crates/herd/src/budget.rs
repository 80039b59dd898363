//! A retry budget: retries limited to a share of requests, plus a floor.
//!
//! Per-request retry limits do not stop a retry storm: with three retries each, a dependency
//! that fails every call receives four times its normal load at the moment it can least
//! take it. A budget limits retries across all requests instead (Finagle's `RetryBudget`,
//! tower's `TpsBudget`): every request deposits `ratio` of a retry, every retry withdraws
//! one, and deposits expire after `ttl`, so in any `ttl`
//!
//! ```text
//! retries ≤ ratio × requests + min_per_sec × ttl
//! ```
//!
//! The floor (`min_per_sec`) lets a client with little traffic retry at all.
//!
//! **A retry counts from the moment it is decided, not when it is sent.** Envoy's retry budget
//! counts only retries in flight, so retries sleeping in backoff are free, and a storm can
//! queue far more than the budget while every backoff is running. [`Retry`](crate::Retry)
//! withdraws before it sleeps.
//!
//! Counts are kept in ten buckets of `ttl / 10`, so a deposit or withdrawal is forgotten
//! between `0.9 × ttl` and `ttl` after it was made.
//!
//! ```
//! use std::time::Duration;
//! use onephase_herd::RetryBudget;
//!
//! // 20 % of requests may be retried, and at least 10 retries per second.
//! let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2).unwrap();
//! for _ in 0..100 {
//!     budget.deposit();
//! }
//! let granted = (0..1_000).filter(|_| budget.withdraw()).count();
//! assert_eq!(granted, 20 + 10 * 10);
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use onephase_core::{SharedClock, SystemClock};

use crate::window::{Pair, Window};

/// A milli-retry: a request deposits `ratio × 1000` of them, a retry costs 1000.
const UNIT: u64 = 1000;
const BUCKETS: u32 = 10;

/// A [`RetryBudget`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry budget: {0}")]
pub struct InvalidBudget(&'static str);

/// Retries limited to a share of requests plus a floor, over a sliding `ttl`. See the
/// [module docs](self).
#[derive(Debug)]
pub struct RetryBudget {
    clock: SharedClock,
    reserve: u64,
    deposit: u64,
    ttl: Duration,
    /// (deposits, withdrawals), counted in requests and retries.
    window: Mutex<Window<Pair>>,
    metrics: Option<BudgetMetrics>,
}

#[derive(Debug)]
struct BudgetMetrics {
    balance: Gauge,
    exhausted: Counter,
}

impl RetryBudget {
    /// A budget on the system clock: `ratio` retries per request (0.2 = 20 %) and at least
    /// `min_per_sec` retries per second, over `ttl` (1 s to 60 s).
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, InvalidBudget> {
        let clock: SharedClock = std::sync::Arc::new(SystemClock);
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidBudget("ttl must be between 1 s and 60 s"));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(InvalidBudget("ratio must be between 0 and 1000"));
        }
        let now = clock.monotonic();
        Ok(Self {
            reserve: u64::from(min_per_sec) * UNIT * ttl.as_millis() as u64 / 1000,
            deposit: (ratio * UNIT as f64).round() as u64,
            ttl,
            window: Mutex::new(Window::new(now, ttl, BUCKETS)),
            clock,
            metrics: None,
        })
    }

    /// The same budget on `clock`, its window started afresh at its now.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.window = Mutex::new(Window::new(clock.monotonic(), self.ttl, BUCKETS));
        self.clock = clock;
        self
    }

    /// Exports the balance as `onephase_herd_budget_balance{budget}` (in retries) and refusals
    /// as `onephase_herd_budget_exhausted_total{budget}`.
    pub fn named(mut self, name: &str) -> Self {
        self.metrics = Some(BudgetMetrics {
            balance: metrics::gauge!("onephase_herd_budget_balance", "budget" => name.to_owned()),
            exhausted: metrics::counter!("onephase_herd_budget_exhausted_total", "budget" => name.to_owned()),
        });
        self
    }

    /// Records a request (not a retry): it earns `ratio` of a retry for the next `ttl`.
    pub fn deposit(&self) {
        let now = self.clock.monotonic();
        let mut window = self.lock();
        window.add(now, Pair(1, 0));
        self.report(&window, now);
    }

    /// Takes one retry from the budget; false, taking nothing, when it is spent.
    pub fn withdraw(&self) -> bool {
        let now = self.clock.monotonic();
        let mut window = self.lock();
        let granted = self.balance_at(&window, now) >= UNIT as i128;
        if granted {
            window.add(now, Pair(0, 1));
        } else if let Some(m) = &self.metrics {
            m.exhausted.increment(1);
        }
        self.report(&window, now);
        granted
    }

    /// Retries the budget would grant now.
    pub fn balance(&self) -> u64 {
        let now = self.clock.monotonic();
        let window = self.lock();
        u64::try_from(self.balance_at(&window, now) / UNIT as i128).unwrap_or(0)
    }

    /// The span deposits and withdrawals are remembered for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn balance_at(&self, window: &Window<Pair>, now: Instant) -> i128 {
        let Pair(deposits, withdrawals) = window.sum(now);
        self.reserve as i128 + deposits as i128 * self.deposit as i128
            - withdrawals as i128 * UNIT as i128
    }

    fn report(&self, window: &Window<Pair>, now: Instant) {
        if let Some(m) = &self.metrics {
            m.balance
                .set((self.balance_at(window, now) / UNIT as i128).max(0) as f64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window<Pair>> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

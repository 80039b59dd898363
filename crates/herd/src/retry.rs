//! Retries with jittered backoff, a shared budget, and respect for "do not retry".
//!
//! [`Retry::run`] calls an operation until a classifier says it is done, and between
//! attempts waits a delay drawn from a [`Backoff`] (full jitter by default, so clients that
//! failed together do not retry together). Three things stop it early:
//!
//! - **The attempt limit** (`max_attempts`, the first call included).
//! - **The budget.** With a [`RetryBudget`], every run deposits once, and every retry
//!   withdraws one *before* its backoff sleep starts: a retry waiting in backoff already
//!   counts, so a storm cannot queue more retries than the budget while they sleep. When the
//!   budget is spent, the last outcome is returned.
//! - **The server.** An overloaded server can say "do not retry" (Google SRE, *Handling
//!   Overload*): the classifier answers [`Verdict::DoNotRetry`] and the outcome is returned at
//!   once, so that retries do not multiply across layers. [`Verdict::RetryAfter`] carries a
//!   server's pushback: the retry waits at least that long, and a pushback longer than the
//!   backoff's cap ends the run instead of parking the caller.
//!
//! Each run records its attempts in the `onephase_herd_retry_attempts{retry}` histogram:
//! its average is the load amplification retries cause (1.0 when nothing is retried).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use onephase_herd::{Retry, RetryBudget, Verdict};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap());
//! let retry = Retry::new("payments").max_attempts(3).budget(budget).base_delay(Duration::from_millis(1));
//! let outcome: Result<u32, &str> = retry
//!     .run(
//!         |attempt| async move { if attempt < 1 { Err("timeout") } else { Ok(attempt) } },
//!         |result| match result {
//!             Ok(_) => Verdict::Done,
//!             Err(_) => Verdict::Retry,
//!         },
//!     )
//!     .await;
//! assert_eq!(outcome, Ok(1));
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use derive_setters::Setters;
use metrics::{Counter, Histogram};
use onephase_core::rand::SeedableRng as _;
use onephase_core::rand::rngs::StdRng;
use onephase_core::{Backoff, Jitter, SharedClock, SystemClock};

use crate::{Random, RetryBudget};

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Return this outcome: a success, or a failure that retrying cannot fix.
    Done,
    /// Retry after the backoff's delay.
    Retry,
    /// Retry, but not sooner than this (the server's pushback, such as `Retry-After`).
    RetryAfter(Duration),
    /// The server is overloaded and asked not to be retried: return this outcome now.
    DoNotRetry,
}

/// Why a [`Retry::run`] stopped, with how many attempts it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The classifier said [`Verdict::Done`].
    Done,
    /// The classifier said [`Verdict::DoNotRetry`].
    DoNotRetry,
    /// `max_attempts` were made.
    Exhausted,
    /// The budget refused a retry.
    BudgetSpent,
    /// The server's pushback was longer than the backoff's cap.
    PushbackTooLong,
}

/// A run's outcome and how it ended. Returned by [`Retry::run_reported`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<T> {
    /// The last attempt's outcome.
    pub outcome: T,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub stopped: Stopped,
}

/// A retry policy: backoff, attempt limit, optional budget. Cheap to clone; clones share the
/// budget and the random source. See the [module docs](self).
#[derive(Debug, Clone, Setters)]
#[setters(generate = false)]
pub struct Retry {
    /// The backoff between attempts.
    #[setters(generate)]
    backoff: Backoff,
    max_attempts: u32,
    /// Retries only while this budget allows, withdrawing before each backoff sleep.
    #[setters(generate, strip_option)]
    budget: Option<Arc<RetryBudget>>,
    /// Sleeps on this clock (a manual or simulated one for deterministic runs).
    #[setters(generate, rename = "with_clock")]
    clock: SharedClock,
    /// Draws from this source (seeded for deterministic runs).
    #[setters(generate, rename = "with_random", into)]
    random: Arc<Random>,
    metrics: Arc<RetryMetrics>,
}

#[derive(Debug)]
struct RetryMetrics {
    attempts: Histogram,
    do_not_retry: Counter,
    budget_spent: Counter,
}

impl Retry {
    /// Up to 3 attempts, full jitter from 50 ms to 5 s, no budget, on the system clock.
    /// `name` labels its metrics.
    pub fn new(name: &str) -> Self {
        let label = || name.to_owned();
        Self {
            backoff: default_backoff(Duration::from_millis(50)),
            max_attempts: 3,
            budget: None,
            clock: Arc::new(SystemClock),
            random: Arc::new(Random::from_entropy()),
            metrics: Arc::new(RetryMetrics {
                attempts: metrics::histogram!("onephase_herd_retry_attempts", "retry" => label()),
                do_not_retry: metrics::counter!("onephase_herd_retry_do_not_retry_total", "retry" => label()),
                budget_spent: metrics::counter!("onephase_herd_retry_budget_spent_total", "retry" => label()),
            }),
        }
    }

    /// The most attempts per run, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Full jitter from `base`, capped at 100 × `base` (for a different shape, see
    /// [`backoff`](Self::backoff)).
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.backoff = default_backoff(base);
        self
    }

    /// Calls `op(attempt)` (0-based) until `classify` ends the run; returns the last outcome.
    pub async fn run<T, F, Fut>(&self, op: F, classify: impl Fn(&T) -> Verdict) -> T
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_reported(op, classify).await.outcome
    }

    /// [`run`](Self::run), also saying how many attempts were made and why it stopped.
    pub async fn run_reported<T, F, Fut>(
        &self,
        mut op: F,
        classify: impl Fn(&T) -> Verdict,
    ) -> Report<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let mut rng: Option<StdRng> = None;
        let mut previous = None;
        let mut attempt = 0u32;
        loop {
            let outcome = op(attempt).await;
            attempt += 1;
            let verdict = classify(&outcome);
            let stopped = match verdict {
                Verdict::Done => Some(Stopped::Done),
                Verdict::DoNotRetry => {
                    self.metrics.do_not_retry.increment(1);
                    Some(Stopped::DoNotRetry)
                }
                Verdict::Retry | Verdict::RetryAfter(_) if attempt >= self.max_attempts => {
                    Some(Stopped::Exhausted)
                }
                Verdict::RetryAfter(pushback) if pushback > self.backoff.cap() => {
                    Some(Stopped::PushbackTooLong)
                }
                Verdict::Retry | Verdict::RetryAfter(_) => {
                    if self.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        self.metrics.budget_spent.increment(1);
                        Some(Stopped::BudgetSpent)
                    } else {
                        None
                    }
                }
            };
            if let Some(stopped) = stopped {
                self.metrics.attempts.record(f64::from(attempt));
                return Report {
                    outcome,
                    attempts: attempt,
                    stopped,
                };
            }
            drop(outcome);
            let rng = rng.get_or_insert_with(|| StdRng::seed_from_u64(self.random.next_u64()));
            let mut delay = self.backoff.delay(attempt - 1, previous, rng);
            previous = Some(delay);
            if let Verdict::RetryAfter(pushback) = verdict {
                delay = delay.max(pushback);
            }
            self.clock.sleep(delay).await;
        }
    }
}

fn default_backoff(base: Duration) -> Backoff {
    let base = base.max(Duration::from_nanos(1));
    Backoff::new(base, base.saturating_mul(100), Jitter::Full)
        .expect("cap = 100 x base >= base > 0 is a valid backoff")
}

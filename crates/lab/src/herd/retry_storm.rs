use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use onephase_core::{Backoff, Jitter};
use onephase_herd::{Random, Retry, RetryBudget, Verdict};

use super::{BUCKET, Timeline};
use crate::{Report, SimClock};

const RUN: Duration = Duration::from_secs(30);
const DOWN_FROM: Duration = Duration::from_secs(10);
const DOWN_UNTIL: Duration = Duration::from_secs(20);
const REQUEST_EVERY: Duration = Duration::from_millis(1);
/// What the dependency can serve per 100 ms: 1.5 × the steady load.
const CAPACITY: u64 = 150;
const ATTEMPTS: u32 = 4;

/// A retry storm.
///
/// 1,000 requests per second for 30 s to a dependency that is down from 10 s to 20 s and,
/// when up, serves at most 150 attempts per 100 ms (1.5 × the load), refusing the rest as
/// overloaded. Each request makes up to 4 attempts.
///
/// - **Naive**: retry any error after 100, 200, 400 ms (exponential, no jitter, no budget).
/// - **onephase**: [`Retry`] with full jitter from 100 ms, a [`RetryBudget`] of 10 % of
///   requests plus 1 per second over 10 s, and "overloaded" answered with
///   [`Verdict::DoNotRetry`].
pub async fn retry_storm(seed: u64) -> Report {
    let mut report = Report::new(
        "retry-storm",
        seed,
        "1,000 requests/s for 30 s; dependency down 10-20 s, capacity 1.5x load; up to 4 attempts",
    );
    let naive = run(None).await;
    let clock = SimClock::start();
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.1)
        .expect("a valid budget")
        .with_clock(Arc::new(clock))
        .named("lab-retry-storm");
    let backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        Jitter::Full,
    )
    .expect("a valid backoff");
    let retry = Retry::new("lab-retry-storm")
        .max_attempts(ATTEMPTS)
        .backoff(backoff)
        .budget(Arc::new(budget))
        .with_clock(Arc::new(clock))
        .with_random(Random::seeded(seed));
    let onephase = run(Some(retry)).await;

    let outage = |r: &Outcome| {
        r.attempts.sum(DOWN_FROM, DOWN_UNTIL) as f64 / r.requests.sum(DOWN_FROM, DOWN_UNTIL) as f64
    };
    report.row(
        "attempts per request during the outage",
        round2(outage(&naive)),
        round2(outage(&onephase)),
    );
    report.row(
        "attempts in all",
        naive.attempts.sum(Duration::ZERO, RUN * 2) as f64,
        onephase.attempts.sum(Duration::ZERO, RUN * 2) as f64,
    );
    report.row(
        "peak attempts per 100 ms",
        naive.attempts.peak_from(Duration::ZERO) as f64,
        onephase.attempts.peak_from(Duration::ZERO) as f64,
    );
    let recovery = |r: &Outcome| r.failures.last().saturating_sub(DOWN_UNTIL).as_millis() as f64;
    report.row(
        "recovery after the dependency returns, ms",
        recovery(&naive),
        recovery(&onephase),
    );
    report.row(
        "requests failed",
        naive.failed.load(Ordering::SeqCst) as f64,
        onephase.failed.load(Ordering::SeqCst) as f64,
    );
    // The budget's promise: retries are at most 10 % of requests plus 1 a second, over its
    // 10 s window; the outage is one such window.
    let within_budget = |r: &Outcome| {
        let requests = r.requests.sum(DOWN_FROM, DOWN_UNTIL);
        let retries = r
            .attempts
            .sum(DOWN_FROM, DOWN_UNTIL)
            .saturating_sub(requests);
        retries as f64 <= requests as f64 * 0.1 + (DOWN_UNTIL - DOWN_FROM).as_secs_f64()
    };
    report.invariant(
        "during the 10 s outage, retries are at most 10 % of requests plus 1 per second",
        within_budget(&naive),
        within_budget(&onephase),
    );
    super::chart(
        &mut report,
        "attempts per 100 ms",
        &naive.attempts,
        &onephase.attempts,
    );
    report
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Down,
    Overloaded,
}

/// The dependency: down in `[DOWN_FROM, DOWN_UNTIL)`, else at most [`CAPACITY`] per bucket.
#[derive(Debug, Clone)]
struct Dependency {
    clock: SimClock,
    attempts: Timeline,
    failures: Timeline,
    served: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Dependency {
    fn call(&self) -> Result<(), Refused> {
        let now = self.clock.elapsed();
        self.attempts.add(now);
        let refused = if (DOWN_FROM..DOWN_UNTIL).contains(&now) {
            Some(Refused::Down)
        } else {
            let bucket = (now.as_millis() / BUCKET.as_millis()) as usize;
            let mut served = super::lock(&self.served);
            if served.len() <= bucket {
                served.resize(bucket + 1, 0);
            }
            if served[bucket] >= CAPACITY {
                Some(Refused::Overloaded)
            } else {
                served[bucket] += 1;
                None
            }
        };
        match refused {
            Some(r) => {
                self.failures.add(now);
                Err(r)
            }
            None => Ok(()),
        }
    }
}

struct Outcome {
    requests: Timeline,
    attempts: Timeline,
    failures: Timeline,
    failed: Arc<AtomicU64>,
}

async fn run(retry: Option<Retry>) -> Outcome {
    let clock = SimClock::start();
    let dependency = Dependency {
        clock,
        attempts: Timeline::default(),
        failures: Timeline::default(),
        served: Arc::default(),
    };
    let requests = Timeline::default();
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    while clock.elapsed() < RUN {
        requests.add(clock.elapsed());
        let (dependency, retry, failed) = (dependency.clone(), retry.clone(), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let result = match retry {
                Some(retry) => {
                    retry
                        .run(
                            |_| std::future::ready(dependency.call()),
                            |r| match r {
                                Ok(()) => Verdict::Done,
                                Err(Refused::Down) => Verdict::Retry,
                                Err(Refused::Overloaded) => Verdict::DoNotRetry,
                            },
                        )
                        .await
                }
                None => naive(&dependency).await,
            };
            if result.is_err() {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(REQUEST_EVERY).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    Outcome {
        requests,
        attempts: dependency.attempts,
        failures: dependency.failures,
        failed,
    }
}

/// Retries every error after 100, 200, 400 ms.
async fn naive(dependency: &Dependency) -> Result<(), Refused> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let result = dependency.call();
        if result.is_ok() || attempt == ATTEMPTS {
            return result;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

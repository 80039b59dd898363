//! Retries on a manual clock: retries sleeping in backoff already count against the budget,
//! "do not retry" ends a run at once, pushback is honoured, the attempt limit holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use onephase_core::{Backoff, Jitter, ManualClock};
use onephase_herd::{Random, Retry, RetryBudget, Stopped, Verdict};

fn retry(clock: &ManualClock) -> Retry {
    Retry::new("test")
        .max_attempts(4)
        .backoff(
            Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
                Jitter::None,
            )
            .expect("valid"),
        )
        .with_clock(Arc::new(clock.clone()))
        .with_random(Random::seeded(1))
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn retries_waiting_in_backoff_count_against_the_budget() {
    let clock = ManualClock::default();
    // No floor, 5 % of requests: 100 requests earn 5 retries.
    let budget = Arc::new(
        RetryBudget::new(Duration::from_secs(10), 0, 0.05)
            .map(|b| b.with_clock(Arc::new(clock.clone())))
            .expect("valid"),
    );
    let retry = retry(&clock).budget(Arc::clone(&budget));
    let attempts = Arc::new(AtomicU32::new(0));
    let runs: Vec<_> = (0..100)
        .map(|_| {
            let (retry, attempts) = (retry.clone(), Arc::clone(&attempts));
            tokio::spawn(async move {
                retry
                    .run_reported(
                        |_| {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            std::future::ready(Err::<(), _>("down"))
                        },
                        |_| Verdict::Retry,
                    )
                    .await
            })
        })
        .collect();
    settle().await;
    // Every run has made its first attempt; none has retried yet, all retries are asleep.
    assert_eq!(attempts.load(Ordering::SeqCst), 100);
    assert_eq!(clock.sleepers(), 5, "only 5 retries may wait in backoff");
    assert_eq!(
        budget.balance(),
        0,
        "the sleeping retries are already spent"
    );
    clock.advance(Duration::from_secs(1));
    settle().await;
    let reports: Vec<_> = futures_join(runs).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 105);
    let spent = reports
        .iter()
        .filter(|r| r.stopped == Stopped::BudgetSpent)
        .count();
    assert_eq!(spent, 100, "each run ends when the budget refuses it");
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("joined"));
    }
    out
}

#[tokio::test]
async fn do_not_retry_ends_the_run_at_once() {
    let clock = ManualClock::default();
    let report = retry(&clock)
        .run_reported(
            |_| std::future::ready(Err::<(), _>("overloaded")),
            |_| Verdict::DoNotRetry,
        )
        .await;
    assert_eq!((report.attempts, report.stopped), (1, Stopped::DoNotRetry));
}

#[tokio::test]
async fn pushback_delays_the_retry_and_too_long_a_pushback_ends_the_run() {
    let clock = ManualClock::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let run = {
        let (retry, attempts) = (retry(&clock), Arc::clone(&attempts));
        tokio::spawn(async move {
            retry
                .run_reported(
                    |n| {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        std::future::ready(n)
                    },
                    |n| match n {
                        0 => Verdict::RetryAfter(Duration::from_secs(5)),
                        _ => Verdict::RetryAfter(Duration::from_secs(3_600)),
                    },
                )
                .await
        })
    };
    settle().await;
    // The backoff says 1 s; the server said 5 s.
    clock.advance(Duration::from_millis(4_999));
    settle().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(1));
    let report = run.await.expect("joined");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(report.stopped, Stopped::PushbackTooLong);
}

#[tokio::test]
async fn the_attempt_limit_holds_and_done_stops() {
    let clock = ManualClock::default();
    let run = {
        let retry = retry(&clock);
        tokio::spawn(async move {
            retry
                .run_reported(std::future::ready, |_| Verdict::Retry)
                .await
        })
    };
    for _ in 0..10 {
        settle().await;
        clock.advance(Duration::from_secs(60));
    }
    let report = run.await.expect("joined");
    assert_eq!((report.outcome, report.attempts), (3, 4));
    assert_eq!(report.stopped, Stopped::Exhausted);

    let report = retry(&clock)
        .run_reported(std::future::ready, |_| Verdict::Done)
        .await;
    assert_eq!((report.attempts, report.stopped), (1, Stopped::Done));
}

//! Overhead per call: single-flight against moka's own coalescing (`get_with`), and the
//! breaker, budget and throttle against a bare call, in the same run.
//!
//! ```text
//! cargo bench -p onephase-herd --features tower --bench herd
//! ```
//!
//! - **Uncontended**: one task, a new key every call, so every call leads and nothing is
//!   shared: the cost of the coalescing machinery alone. moka's `future::Cache::get_with`
//!   on a new key runs its initializer the same way (and stores the value, which a
//!   single-flight does not).
//! - **64 waiters**: 64 calls for one key polled together in one task (`join_all`); the
//!   call yields once, so 63 join the first. A new key per round for both.
//! - **Hit**: a fresh `HerdCache` entry against `moka::sync::Cache::get` on the same key.
//! - **Guards**: a call that returns at once, bare, then through a breaker (`admit` +
//!   `record`), a budget (`deposit`) and a throttle (`admit` + `record`).
//!
//! Each case runs for about a second on a current-thread runtime. Results go to
//! `bench/results/herd.json` and a Markdown table on stdout.

use std::hint::black_box;
use std::time::{Duration, Instant};

use onephase_herd::{
    AdaptiveThrottle, BreakerConfig, CacheConfig, CircuitBreaker, HerdCache, Outcome, RetryBudget,
    SingleFlight,
};
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const RUN: Duration = Duration::from_secs(1);
const WAITERS: usize = 64;

/// Nanoseconds per call of `batch` (which makes `per_batch` calls), over about [`RUN`].
async fn per_call<F, Fut>(per_batch: u64, mut batch: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Warm up, then measure.
    for i in 0..100 {
        batch(u64::MAX - i).await;
    }
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < RUN {
        for _ in 0..64 {
            batch(round).await;
            round += 1;
        }
    }
    started.elapsed().as_nanos() as f64 / (round * per_batch) as f64
}

struct Row {
    case: &'static str,
    onephase_ns: f64,
    baseline: &'static str,
    baseline_ns: f64,
}

async fn rows() -> Vec<Row> {
    let mut rows = Vec::new();

    // Uncontended.
    let flight: SingleFlight<u64, u64, ()> = SingleFlight::new("bench");
    let onephase = per_call(1, |k| {
        let flight = &flight;
        async move {
            black_box(flight.run(k, || async move { Ok(k) }).await.ok());
        }
    })
    .await;
    let moka_cache: moka::future::Cache<u64, u64> = moka::future::Cache::new(10_000);
    let moka = per_call(1, |k| {
        let cache = &moka_cache;
        async move {
            black_box(cache.get_with(k, async move { k }).await);
        }
    })
    .await;
    rows.push(Row {
        case: "single-flight, uncontended (new key per call)",
        onephase_ns: onephase,
        baseline: "moka future::Cache::get_with, new key per call",
        baseline_ns: moka,
    });
    let bare = per_call(1, |k| async move {
        black_box(async move { Ok::<u64, ()>(k) }.await.ok());
    })
    .await;
    rows.push(Row {
        case: "single-flight, uncontended (new key per call)",
        onephase_ns: onephase,
        baseline: "the bare call",
        baseline_ns: bare,
    });

    // 64 waiters.
    let onephase = per_call(WAITERS as u64, |k| {
        let flight = &flight;
        async move {
            let calls = (0..WAITERS).map(|_| {
                flight.run(k, || async move {
                    tokio::task::yield_now().await;
                    Ok(k)
                })
            });
            black_box(futures::future::join_all(calls).await);
        }
    })
    .await;
    let moka = per_call(WAITERS as u64, |k| {
        let cache = &moka_cache;
        async move {
            let calls = (0..WAITERS).map(|_| {
                cache.get_with(k, async move {
                    tokio::task::yield_now().await;
                    k
                })
            });
            black_box(futures::future::join_all(calls).await);
        }
    })
    .await;
    rows.push(Row {
        case: "single-flight, 64 waiters on one key",
        onephase_ns: onephase,
        baseline: "moka future::Cache::get_with, 64 waiters",
        baseline_ns: moka,
    });

    // Cache hits.
    let cache: HerdCache<u64, u64, ()> = HerdCache::new("bench", CacheConfig::default());
    let _ = cache.get_with(1, || async { Ok(1) }).await;
    let onephase = per_call(1, |_| {
        let cache = &cache;
        async move {
            black_box(cache.get_with(1, || async { Ok(2) }).await.ok());
        }
    })
    .await;
    let sync_moka: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(10_000);
    sync_moka.insert(1, 1);
    let moka = per_call(1, |_| {
        let cache = &sync_moka;
        async move {
            black_box(cache.get(&1));
        }
    })
    .await;
    rows.push(Row {
        case: "HerdCache hit (fresh entry)",
        onephase_ns: onephase,
        baseline: "moka sync::Cache::get",
        baseline_ns: moka,
    });

    // Guards around a call that returns at once.
    let breaker = CircuitBreaker::new("bench", BreakerConfig::default());
    let onephase = per_call(1, |k| {
        let breaker = &breaker;
        async move {
            if let Ok(permit) = breaker.admit() {
                black_box(async move { k }.await);
                breaker.record(permit, Outcome::Success);
            }
        }
    })
    .await;
    rows.push(Row {
        case: "circuit breaker (admit + record)",
        onephase_ns: onephase,
        baseline: "the bare call",
        baseline_ns: bare,
    });
    let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2).expect("a valid budget");
    let onephase = per_call(1, |k| {
        let budget = &budget;
        async move {
            budget.deposit();
            black_box(async move { k }.await);
        }
    })
    .await;
    rows.push(Row {
        case: "retry budget (deposit per request)",
        onephase_ns: onephase,
        baseline: "the bare call",
        baseline_ns: bare,
    });
    let throttle = AdaptiveThrottle::new("bench");
    let onephase = per_call(1, |k| {
        let throttle = &throttle;
        async move {
            if let Ok(ticket) = throttle.admit() {
                black_box(async move { k }.await);
                throttle.record(ticket, true);
            }
        }
    })
    .await;
    rows.push(Row {
        case: "adaptive throttle (admit + record)",
        onephase_ns: onephase,
        baseline: "the bare call",
        baseline_ns: bare,
    });
    rows
}

fn main() -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(rows());
    println!("| case | onephase ns/call | baseline | baseline ns/call | onephase ÷ baseline |");
    println!("|---|---:|---|---:|---:|");
    let mut json_rows: Vec<Value> = Vec::new();
    for r in &rows {
        let ratio = r.onephase_ns / r.baseline_ns;
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.2} |",
            r.case, r.onephase_ns, r.baseline, r.baseline_ns, ratio
        );
        json_rows.push(json!({
            "case": r.case,
            "onephase_ns_per_call": r.onephase_ns,
            "baseline": r.baseline,
            "baseline_ns_per_call": r.baseline_ns,
            "ratio": ratio,
        }));
    }
    let out = json!({
        "bench": "herd protection overhead per call",
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "results": json_rows,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results/herd.json");
    std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("wrote {path}");
    Ok(())
}

//! Routed reads against direct pool reads, and read throughput with the replicas serving
//! reads against the primary alone, in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"      # the primary and replicas of scripts/pg-replica.sh
//! cargo bench -p onephase-replica --bench replica
//! ```
//!
//! - **routed read, one reader**: `Router::route` then a one-row `SELECT` on the pool it
//!   chose, against the same `SELECT` on the two replicas' pools in turn, one after another;
//!   five interleaved rounds, the median of each.
//!   Policies: `BoundedStaleness(10 s)`, and `ReadYourWrites` with a token the replicas have
//!   already replayed (the common case once the monitor has polled).
//! - **read throughput, 16 readers**: reads routed over two replicas with `BoundedStaleness`,
//!   against the same reads all on the primary; 2 s windows, five interleaved rounds, the
//!   median of each. The primary and both replicas share this machine's cores, so the figure
//!   shows the routing's cost more than the replicas' gain.
//!
//! Results go to `bench/results/replica.json` and a Markdown table on stdout.

use std::time::{Duration, Instant};

use onephase_replica::{Policy, Router, RouterConfig, Token};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SEQUENTIAL: u32 = 5_000;
const READERS: usize = 16;
const WINDOW: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;
const QUERY: &str = "SELECT v FROM bench_replica WHERE id = 1";

async fn pool(url: &str, n: u32) -> AnyResult<PgPool> {
    Ok(PgPoolOptions::new().max_connections(n).connect(url).await?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Reads per second, one after another, `route` choosing the pool each time.
async fn sequential<F, Fut>(route: F) -> AnyResult<f64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = AnyResult<PgPool>>,
{
    let start = Instant::now();
    for _ in 0..SEQUENTIAL {
        let pool = route().await?;
        let _: i64 = sqlx::query_scalar(QUERY).fetch_one(&pool).await?;
    }
    Ok(f64::from(SEQUENTIAL) / start.elapsed().as_secs_f64())
}

/// Reads per second by `READERS` tasks for `WINDOW`.
async fn concurrent<F, Fut>(route: F) -> AnyResult<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = AnyResult<PgPool>> + Send,
{
    let deadline = Instant::now() + WINDOW;
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let route = route.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let pool = route().await?;
                    let _: i64 = sqlx::query_scalar(QUERY).fetch_one(&pool).await?;
                    n += 1;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / WINDOW.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    let Ok(urls) = std::env::var("ONEPHASE_TEST_POSTGRES_REPLICAS") else {
        eprintln!(
            "ONEPHASE_TEST_POSTGRES_REPLICAS is not set: run eval \"$(scripts/engines.sh)\" first"
        );
        return Ok(());
    };
    let urls: Vec<&str> = urls.split(',').collect();
    let primary = pool(urls[0], 32).await?;
    let replicas = [pool(urls[1], 32).await?, pool(urls[2], 32).await?];
    for replica in &replicas {
        sqlx::query("ALTER SYSTEM RESET recovery_min_apply_delay")
            .execute(replica)
            .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(replica)
            .await?;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(replica)
            .await?;
    }
    sqlx::query("DROP TABLE IF EXISTS bench_replica")
        .execute(&primary)
        .await?;
    sqlx::query("CREATE TABLE bench_replica (id INT PRIMARY KEY, v BIGINT NOT NULL)")
        .execute(&primary)
        .await?;
    sqlx::query("INSERT INTO bench_replica VALUES (1, 42)")
        .execute(&primary)
        .await?;
    let router = Router::new(
        "bench",
        primary.clone(),
        [
            ("r1".to_owned(), replicas[0].clone()),
            ("r2".to_owned(), replicas[1].clone()),
        ],
    )
    .with_config(RouterConfig::default().with_poll_interval(Duration::from_millis(100)));
    let monitor = router.clone();
    tokio::spawn(async move { monitor.run(std::future::pending()).await });
    let token: Token = router.token().await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while router.status().replicas.iter().any(|r| !r.in_rotation) {
        if Instant::now() > deadline {
            return Err("the replicas did not come into rotation".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm every pool.
    for pool in [&primary, &replicas[0], &replicas[1]] {
        for _ in 0..200 {
            let _: i64 = sqlx::query_scalar(QUERY).fetch_one(pool).await?;
        }
    }

    // Interleaved rounds, the median of each: the machine's noise lands on every case alike.
    let (mut direct, mut bounded, mut ryw) = (Vec::new(), Vec::new(), Vec::new());
    let turn = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..ROUNDS {
        // The baseline spreads its reads over both replicas in turn, as the router does.
        let (pools, turn) = (replicas.clone(), turn.clone());
        direct.push(
            sequential(move || {
                let i = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = pools[i % 2].clone();
                async move { Ok(p) }
            })
            .await?,
        );
        let r = router.clone();
        bounded.push(
            sequential(|| {
                let r = r.clone();
                async move {
                    Ok(r.route(Policy::BoundedStaleness(Duration::from_secs(10)))
                        .await?
                        .pool)
                }
            })
            .await?,
        );
        let r = router.clone();
        ryw.push(
            sequential(|| {
                let r = r.clone();
                async move {
                    let policy = Policy::ReadYourWrites {
                        token: Some(token),
                        wait: Duration::from_secs(1),
                    };
                    Ok(r.route(policy).await?.pool)
                }
            })
            .await?,
        );
    }
    let (direct, bounded, ryw) = (median(direct), median(bounded), median(ryw));
    let (mut primary_alone, mut routed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let p = primary.clone();
        primary_alone.push(
            concurrent(move || {
                let p = p.clone();
                async move { Ok(p) }
            })
            .await?,
        );
        let r = router.clone();
        routed.push(
            concurrent(move || {
                let r = r.clone();
                async move {
                    Ok(r.route(Policy::BoundedStaleness(Duration::from_secs(10)))
                        .await?
                        .pool)
                }
            })
            .await?,
        );
    }
    let (primary_alone, routed) = (median(primary_alone), median(routed));

    let rows = [
        (
            "routed read, BoundedStaleness, one reader",
            bounded,
            "direct reads on the replicas' pools in turn",
            direct,
        ),
        (
            "routed read, ReadYourWrites (replayed token), one reader",
            ryw,
            "direct reads on the replicas' pools in turn",
            direct,
        ),
        (
            "reads over 2 replicas, 16 readers",
            routed,
            "the same reads on the primary alone",
            primary_alone,
        ),
    ];
    println!("| case | onephase (reads/s) | baseline | baseline (reads/s) | ratio |");
    println!("|---|---:|---|---:|---:|");
    for (case, ours, baseline, theirs) in &rows {
        println!(
            "| {case} | {ours:.0} | {baseline} | {theirs:.0} | {:.2} |",
            ours / theirs
        );
    }
    let json = json!({
        "rows": rows.iter().map(|(case, ours, baseline, theirs)| json!({
            "case": case, "onephase": ours, "baseline": baseline, "baseline_value": theirs,
            "ratio": ours / theirs, "unit": "reads/s",
        })).collect::<Vec<_>>(),
    });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/results/replica.json"
    );
    std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    println!("written to bench/results/replica.json");
    sqlx::query("DROP TABLE IF EXISTS bench_replica")
        .execute(&primary)
        .await?;
    Ok(())
}

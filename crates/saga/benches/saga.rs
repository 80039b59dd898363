//! Saga throughput and latency on SQLite and PostgreSQL, with the raw commit baseline measured
//! in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"        # for PostgreSQL; SQLite always runs
//! cargo bench -p onephase-saga --bench saga
//! ```
//!
//! The saga has three steps (two compensatable, then the pivot) whose in-process participants
//! answer at once, so what is measured is the orchestration: claims, one commit per transition,
//! the history and the outbox events.
//!
//! - **Throughput**: N runs are started, then one orchestrator (64 runs at a time) drives them
//!   all to `completed`; sagas/s is N over the time from the first start to the last
//!   completion. The orchestrator counts its durable writes (starts, claims, transitions) and
//!   the database commits they took (fewer on SQLite, where queued transitions share one).
//! - **Raw baseline**: a plain loop making one commit per write, one single-row insert each,
//!   on one connection: the database's commit rate with no orchestration.
//! - **Ratio**: the saga run's writes per second over the raw loop's commits per second.
//! - **Latency**: runs started at a fixed rate (half the measured throughput) for a few
//!   seconds, and again at 10 per second; latency is `finished_at - created_at` of each run.
//!
//! Results go to `bench/results/saga.json` and a Markdown table on stdout.

use std::time::{Duration, Instant};

use onephase_saga::{
    Call, Orchestrator, OrchestratorConfig, RunFilter, RunState, Saga, StartRequest, StepError,
    step,
};
use onephase_store::{Db, Store};
use onephase_testkit::TestDb;
use serde_json::{Value, json};
use tokio::sync::watch;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SAGAS: usize = 3000;

async fn ok(_: Call) -> Result<Value, StepError> {
    Ok(json!({"ok": true}))
}

fn orchestrator(store: &Store, saga: &str) -> AnyResult<Orchestrator> {
    let orchestrator = Orchestrator::new(
        store.clone(),
        OrchestratorConfig {
            concurrency: 64,
            poll_interval: Some(Duration::from_millis(5)),
            ..OrchestratorConfig::default()
        },
    );
    orchestrator.register(
        Saga::builder(saga, 1)
            .step(step::compensatable("reserve", ok, ok))
            .step(step::compensatable("charge", ok, ok))
            .pivot(step::pivot("ship", ok))
            .build()?,
    )?;
    Ok(orchestrator)
}

async fn active(orchestrator: &Orchestrator) -> AnyResult<i64> {
    let counts = orchestrator.admin().counts().await?;
    Ok(counts.get(&RunState::Running).copied().unwrap_or(0)
        + counts.get(&RunState::Compensating).copied().unwrap_or(0))
}

fn spawn(orchestrator: &Orchestrator) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let o = orchestrator.clone();
    let task = tokio::spawn(async move {
        o.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await;
    });
    (stop, task)
}

struct Throughput {
    sagas_per_second: f64,
    writes: u64,
    commits: u64,
    seconds: f64,
}

async fn throughput(store: &Store) -> AnyResult<Throughput> {
    let orchestrator = orchestrator(store, "bench")?;
    let started = Instant::now();
    let (stop, task) = spawn(&orchestrator);
    for i in 0..SAGAS {
        orchestrator
            .start(StartRequest::new("bench", json!({"i": i})))
            .await?;
    }
    while active(&orchestrator).await? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await?;
    let completed = orchestrator.admin().counts().await?;
    let done = completed.get(&RunState::Completed).copied().unwrap_or(0);
    if done != i64::try_from(SAGAS)? {
        return Err(format!("{done} of {SAGAS} runs completed: {completed:?}").into());
    }
    Ok(Throughput {
        sagas_per_second: SAGAS as f64 / seconds,
        writes: orchestrator.stats().writes(),
        commits: orchestrator.stats().commits(),
        seconds,
    })
}

/// The same number of commits by a plain loop: one single-row insert per transaction.
async fn raw_commits(store: &Store, commits: u64) -> AnyResult<f64> {
    let payload = json!({"run": "00000000-0000-0000-0000-000000000000", "event": "step_succeeded"})
        .to_string();
    let started = Instant::now();
    match store.db() {
        Db::Postgres(pool) => {
            sqlx::query(
                "CREATE TABLE raw_commits (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)",
            )
            .execute(pool)
            .await?;
            let started = Instant::now();
            for _ in 0..commits {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO raw_commits (payload) VALUES ($1)")
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            return Ok(commits as f64 / started.elapsed().as_secs_f64());
        }
        Db::Sqlite(s) => {
            sqlx::query(
                "CREATE TABLE raw_commits (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL)",
            )
            .execute(s.writer())
            .await?;
            for _ in 0..commits {
                let mut tx = s.writer().begin().await?;
                sqlx::query("INSERT INTO raw_commits (payload) VALUES (?1)")
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
    }
    Ok(commits as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs started at `rate` per second for `seconds`; returns (p50, p99) latency in ms.
async fn latency(
    store: &Store,
    saga: &str,
    rate: f64,
    seconds: f64,
) -> AnyResult<(f64, f64, usize)> {
    let orchestrator = orchestrator(store, saga)?;
    let (stop, task) = spawn(&orchestrator);
    let count = (rate * seconds).max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let begin = Instant::now();
    for i in 0..count {
        let due = begin + interval * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        orchestrator
            .start(StartRequest::new(saga, json!({"latency": i})))
            .await?;
    }
    while active(&orchestrator).await? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    task.await?;
    let mut latencies = Vec::new();
    let mut before = None;
    loop {
        let page = orchestrator
            .admin()
            .list(&RunFilter {
                saga: Some(saga.to_owned()),
                before,
                limit: 1000,
                ..RunFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for run in &page {
            if let Some(finished) = run.finished_at {
                latencies.push((finished - run.created_at).as_seconds_f64() * 1000.0);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok((
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
    ))
}

async fn bench(name: &str, db: TestDb) -> AnyResult<Value> {
    let store = db.store().clone();
    store
        .migrate(&[onephase_outbox::migrations(), onephase_saga::migrations()])
        .await?;
    let t = throughput(&store).await?;
    let raw = raw_commits(&store, t.writes).await?;
    let saga_writes_per_second = t.writes as f64 / t.seconds;
    let ratio = saga_writes_per_second / raw;
    let (p50, p99, n) = latency(
        &store,
        "half-load",
        (t.sagas_per_second / 2.0).max(1.0),
        4.0,
    )
    .await?;
    let (light_p50, light_p99, light_n) = latency(&store, "light-load", 10.0, 3.0).await?;
    println!(
        "| {name} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {p50:.1} | {p99:.1} | {light_p50:.1} | {light_p99:.1} |",
        t.sagas_per_second,
        t.writes as f64 / SAGAS as f64,
        t.commits as f64 / SAGAS as f64,
        saga_writes_per_second,
        raw,
        ratio
    );
    db.close().await?;
    Ok(json!({
        "backend": name,
        "sagas": SAGAS,
        "sagas_per_second": t.sagas_per_second.round(),
        "writes_per_saga": t.writes as f64 / SAGAS as f64,
        "commits_per_saga": t.commits as f64 / SAGAS as f64,
        "saga_writes_per_second": saga_writes_per_second.round(),
        "raw_commits_per_second": raw.round(),
        "ratio_to_raw_commits": ratio,
        "latency_rate_per_second": (t.sagas_per_second / 2.0).round(),
        "latency_runs": n,
        "latency_ms": {"p50": p50, "p99": p99},
        "light_load_rate_per_second": 10,
        "light_load_runs": light_n,
        "light_load_latency_ms": {"p50": light_p50, "p99": light_p99},
    }))
}

fn main() -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "| backend | sagas/s | writes/saga | commits/saga | saga writes/s | raw commits/s | ratio | p50 ms | p99 ms | p50 ms at 10/s | p99 ms at 10/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let mut results = vec![bench("sqlite", TestDb::sqlite().await?).await?];
        match TestDb::postgres().await {
            Some(db) => results.push(bench("postgres", db).await?),
            None => eprintln!(
                "PostgreSQL skipped: set ONEPHASE_TEST_POSTGRES_URL (eval \"$(scripts/engines.sh)\")"
            ),
        }
        let summary = json!({
            "benchmark": "saga",
            "machine": "2 cores",
            "saga": "3 steps (compensatable, compensatable, pivot), in-process participants",
            "orchestrator_concurrency": 64,
            "results": results,
        });
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results/saga.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
        println!("\nwritten to {}", path.display());
        AnyResult::Ok(())
    })
}

//! Table size and dead tuples of the PostgreSQL outbox under sustained load.
//!
//! ```text
//! eval "$(scripts/engines.sh)"
//! cargo bench -p onephase-outbox --bench bloat            # 1,000,000 events per mode
//! ONEPHASE_BENCH_EVENTS=200000 cargo bench -p onephase-outbox --bench bloat
//! ```
//!
//! Two writers enqueue events (100 per transaction) while one relay publishes them to a
//! publisher that accepts everything at once (the table's churn is the same whatever the
//! broker). Every 10% of the run, and at the end, it records the table's heap and index sizes
//! and PostgreSQL's live and dead tuple estimates. Modes:
//! - `delete on publish` (the default): published rows are deleted by the marking statement,
//!   and the relay vacuums the table once it counts 50,000 dead tuples;
//! - `keep 5 s, batched retention`: rows are marked published, then deleted in batches;
//! - `delete on publish, vacuum left to autovacuum`: the default without the relay's vacuum,
//!   to show what the server's autovacuum setting does (the result records whether it is on);
//! - `mark only` (the baseline many outboxes start with): rows are marked and never deleted.
//!
//! Results go to `bench/results/outbox-bloat.json`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use onephase_core::Envelope;
use onephase_outbox::{Relay, RelayConfig};
use onephase_testkit::TestDb;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{AnyResult, NoBroker};
use tokio::sync::watch;

async fn sample(pool: &PgPool, enqueued: usize) -> AnyResult<Value> {
    let (heap, indexes, live, dead, vacuums): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_relation_size('onephase_outbox'), pg_indexes_size('onephase_outbox'), \
                n_live_tup, n_dead_tup, autovacuum_count \
         FROM pg_stat_user_tables WHERE relname = 'onephase_outbox'",
    )
    .fetch_one(pool)
    .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM onephase_outbox")
        .fetch_one(pool)
        .await?;
    Ok(json!({
        "enqueued": enqueued, "rows": rows, "heap_bytes": heap, "index_bytes": indexes,
        "live_tuples": live, "dead_tuples": dead, "autovacuums": vacuums,
    }))
}

async fn run(mode: &str, events: usize) -> AnyResult<Value> {
    let db = TestDb::postgres()
        .await
        .ok_or("set ONEPHASE_TEST_POSTGRES_URL")?;
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    let pool = store.as_postgres().ok_or("PostgreSQL")?.clone();
    let config = match mode {
        "delete on publish" => RelayConfig::default(),
        "keep 5 s, batched retention" => RelayConfig {
            keep_published: Duration::from_secs(5),
            ..RelayConfig::default()
        },
        "delete on publish, vacuum left to autovacuum" => RelayConfig {
            vacuum_threshold: None,
            ..RelayConfig::default()
        },
        // Keep rows "forever" (longer than the run); no retention, no vacuum.
        _ => RelayConfig {
            vacuum_threshold: None,
            keep_published: Duration::from_secs(365 * 24 * 3600),
            housekeeping_interval: Duration::from_secs(365 * 24 * 3600),
            ..RelayConfig::default()
        },
    };
    let config = RelayConfig {
        batch_size: 1000,
        ..config
    };
    let relay = Relay::new(store.clone(), NoBroker, config);
    let (stop, mut stopped) = watch::channel(false);
    let relay_task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
    });

    let started = Instant::now();
    let mut samples = Vec::new();
    let step = events / 10;
    let mut enqueued = 0;
    while enqueued < events {
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for t in 0..(step / 2 / 100) {
                        let mut tx = pool.begin().await?;
                        for i in 0..100 {
                            let e = Envelope::builder(
                                "bloat.events",
                                format!("{{\"w\":{w},\"t\":{t},\"i\":{i}}}"),
                            )
                            .key(format!("key-{}", (t * 100 + i) % 500))
                            .build()?;
                            onephase_outbox::enqueue(&mut tx, &e).await?;
                        }
                        tx.commit().await?;
                    }
                    AnyResult::Ok(())
                })
            })
            .collect();
        for w in writers {
            w.await??;
        }
        enqueued += step;
        samples.push(sample(&pool, enqueued).await?);
    }
    // Let the relay finish and autovacuum catch up, then sample once more.
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM onephase_outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(15)).await;
    sqlx::query("ANALYZE onephase_outbox")
        .execute(&pool)
        .await?;
    let settled = sample(&pool, enqueued).await?;
    stop.send(true)?;
    relay_task.await?;
    println!(
        "{mode}: {enqueued} events in {:.1} s; at the end {settled}",
        took.as_secs_f64()
    );
    db.close().await?;
    Ok(
        json!({"mode": mode, "events": enqueued, "seconds": took.as_secs_f64(), "samples": samples, "settled_after_15_s": settled}),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    let events: usize = std::env::var("ONEPHASE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut runs = Vec::new();
    for mode in [
        "delete on publish",
        "keep 5 s, batched retention",
        "delete on publish, vacuum left to autovacuum",
        "mark only",
    ] {
        runs.push(run(mode, events).await?);
    }
    let autovacuum = match TestDb::postgres().await {
        Some(db) => {
            let pool = db.store().as_postgres().ok_or("PostgreSQL")?.clone();
            let setting: String = sqlx::query_scalar("SHOW autovacuum")
                .fetch_one(&pool)
                .await?;
            db.close().await?;
            setting
        }
        None => "unknown".to_owned(),
    };
    println!("server autovacuum setting: {autovacuum}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/results/outbox-bloat.json");
    let summary =
        json!({"benchmark": "outbox-bloat", "server_autovacuum": autovacuum, "runs": runs});
    std::fs::write(&out, serde_json::to_string_pretty(&summary)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

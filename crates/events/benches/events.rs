//! Event store throughput on each backend, against the raw engine doing the same work in the
//! same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"        # PostgreSQL; SQLite always runs
//! cargo bench -p onephase-events --bench events
//! ONEPHASE_BENCH_EVENTS=100000 cargo bench -p onephase-events --bench events   # a quicker catch-up
//! ```
//!
//! - **append, single events**: `EventStore::append` of one event per transaction (expected
//!   version checked, id checked for a retry, global position taken in turn) against a raw
//!   `INSERT` of the same row into a table of the same shape, one per transaction.
//! - **append, batches of 100**: the same with 100 events per append, against one multi-row
//!   `INSERT` of 100 rows per transaction.
//! - **read all**: every event in pages of 1,000 through `read_all` (decoded, upcast) against
//!   a raw `SELECT` of the same columns in the same pages.
//! - **projection catch-up**: 1,000,000 events over 1,000 streams (`ONEPHASE_BENCH_EVENTS` to
//!   change it) applied by the `Projector` to a document projection counting events per stream
//!   (checkpoint, lineage and rows in one transaction per batch of 500), against a bare loop
//!   reading the same pages and upserting the same counts in one transaction per page; then a
//!   blue/green rebuild of the same projection to its switch.
//!
//! Results go to `bench/results/events.json` and a Markdown table on stdout.

use std::time::Instant;

use onephase_events::{EventStore, ExpectedVersion, NewEvent, Projections, Projector};
use onephase_store::{Store, on_store};
use onephase_testkit::TestDb;
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SINGLES: u64 = 2_000;
const BATCHES: u64 = 100;
const BATCH: u64 = 100;
const STREAMS: u64 = 1_000;

const RAW_TABLE: &str = "CREATE TABLE raw_events (
    position BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, stream TEXT NOT NULL,
    category TEXT NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL,
    subject TEXT, personal TEXT, recorded_ms BIGINT NOT NULL, UNIQUE (stream, version))";

struct Row {
    backend: &'static str,
    case: String,
    onephase: f64,
    raw: f64,
    unit: &'static str,
}

fn event(n: u64) -> AnyResult<NewEvent> {
    Ok(NewEvent::new(
        "Counted",
        &format!(r#"{{"n":{n},"note":"a typical small event"}}"#),
    )?)
}

/// Raw INSERTs of `rows` rows per transaction, `transactions` times; rows per second.
async fn raw_inserts(store: &Store, transactions: u64, rows: u64) -> AnyResult<f64> {
    on_store!(store.db(), pool => { sqlx::query("DELETE FROM raw_events").execute(pool).await?; });
    let start = Instant::now();
    let mut position = 0i64;
    for t in 0..transactions {
        on_store!(store.db(), pool => {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO raw_events (position, id, stream, category, version, event_type, \
                 schema_version, data, metadata, subject, personal, recorded_ms) ",
            );
            let batch: Vec<i64> = (0..rows as i64).collect();
            q.push_values(&batch, |mut b, i| {
                position += 1;
                b.push_bind(position)
                    .push_bind(uuid::Uuid::now_v7().to_string())
                    .push_bind(format!("raw-{t}"))
                    .push_bind("raw")
                    .push_bind(i + 1)
                    .push_bind("Counted")
                    .push_bind(1i32)
                    .push_bind(format!(r#"{{"n":{position},"note":"a typical small event"}}"#))
                    .push_bind("{}")
                    .push_bind(None::<String>)
                    .push_bind(None::<String>)
                    .push_bind(0i64);
            });
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
        });
    }
    Ok((transactions * rows) as f64 / start.elapsed().as_secs_f64())
}

async fn appends(events: &EventStore, transactions: u64, rows: u64) -> AnyResult<f64> {
    let start = Instant::now();
    for t in 0..transactions {
        let batch = (0..rows)
            .map(|i| event(t * rows + i))
            .collect::<AnyResult<Vec<_>>>()?;
        events
            .append(
                &format!("bench{rows}-{t}"),
                ExpectedVersion::NoStream,
                batch,
            )
            .await?;
    }
    Ok((transactions * rows) as f64 / start.elapsed().as_secs_f64())
}

async fn read_all_rate(events: &EventStore) -> AnyResult<f64> {
    let start = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = events.read_all(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    Ok(read as f64 / start.elapsed().as_secs_f64())
}

/// An event row as a raw `SELECT` returns it.
type RawEvent = (
    i64,
    String,
    String,
    i64,
    String,
    i32,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
);

async fn raw_read_rate(store: &Store) -> AnyResult<f64> {
    let start = Instant::now();
    let (mut after, mut read) = (0i64, 0u64);
    loop {
        let page: Vec<RawEvent> = on_store!(read store.db(), pool => {
            sqlx::query_as(
                "SELECT position, id, stream, version, event_type, schema_version, data, \
                 metadata, subject, personal, recorded_ms FROM onephase_events \
                 WHERE position > $1 ORDER BY position LIMIT 1000",
            )
            .bind(after)
            .fetch_all(pool)
            .await?
        });
        let Some(last) = page.last() else { break };
        after = last.0;
        read += page.len() as u64;
    }
    Ok(read as f64 / start.elapsed().as_secs_f64())
}

/// `n` events over [`STREAMS`] streams, appended 10,000 at a time.
async fn fill(events: &EventStore, n: u64) -> AnyResult<()> {
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(10_000);
        let mut appends = Vec::new();
        let per_stream = chunk.div_ceil(STREAMS);
        for s in 0..STREAMS {
            let batch: Vec<NewEvent> = (0..per_stream)
                .map(|i| event(done + s * per_stream + i))
                .collect::<AnyResult<_>>()?;
            if !batch.is_empty() {
                appends.push(onephase_events::StreamAppend::new(
                    format!("tally-{s}"),
                    ExpectedVersion::Any,
                    batch,
                ));
            }
        }
        events.append_all(&appends).await?;
        done += per_stream * STREAMS;
    }
    Ok(())
}

/// The bare loop: read pages of 500, upsert a count per stream, one transaction per page.
async fn bare_catch_up(store: &Store) -> AnyResult<f64> {
    on_store!(store.db(), pool => {
        sqlx::query("CREATE TABLE bare_counts (key TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            .execute(pool)
            .await?;
    });
    let start = Instant::now();
    let (mut after, mut applied) = (0i64, 0u64);
    loop {
        let page: Vec<(i64, String)> = on_store!(read store.db(), pool => {
            sqlx::query_as("SELECT position, stream FROM onephase_events WHERE position > $1 ORDER BY position LIMIT 500")
                .bind(after)
                .fetch_all(pool)
                .await?
        });
        let Some(last) = page.last() else { break };
        after = last.0;
        applied += page.len() as u64;
        on_store!(store.db(), pool => {
            let mut tx = pool.begin().await?;
            for (_, stream) in &page {
                sqlx::query("INSERT INTO bare_counts (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = bare_counts.n + 1")
                    .bind(stream)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
    }
    Ok(applied as f64 / start.elapsed().as_secs_f64())
}

async fn projector_catch_up(events: &EventStore, n: u64) -> AnyResult<(f64, f64)> {
    let projections = Projections::new(events.clone());
    let definition = serde_json::from_str(r#"{"key":"stream","handlers":{"Counted":"count"}}"#)?;
    projections.define("tally", &definition, "bench").await?;
    let projector = Projector::new(events.clone()).with_documents();
    let start = Instant::now();
    while projector.run_once().await? {}
    let catch_up = n as f64 / start.elapsed().as_secs_f64();
    projections
        .rebuild("tally", "bench", "rebuild time")
        .await?;
    let start = Instant::now();
    while projections.status("tally").await?.len() > 1 {
        projector.run_once().await?;
    }
    Ok((catch_up, start.elapsed().as_secs_f64()))
}

async fn backend(name: &'static str, db: TestDb, n: u64, rows: &mut Vec<Row>) -> AnyResult<()> {
    let store = db.store().clone();
    store.migrate(&[onephase_events::migrations()]).await?;
    on_store!(store.db(), pool => { sqlx::query(RAW_TABLE).execute(pool).await?; });
    let events = EventStore::new(store.clone());
    let mut row = |case: &str, onephase: f64, raw: f64, unit| {
        eprintln!(
            "{name} {case}: {onephase:.0} vs {raw:.0} {unit} ({:.2})",
            onephase / raw
        );
        rows.push(Row {
            backend: name,
            case: case.to_owned(),
            onephase,
            raw,
            unit,
        });
    };
    let raw = raw_inserts(&store, SINGLES, 1).await?;
    let ours = appends(&events, SINGLES, 1).await?;
    row("append, single events", ours, raw, "events/s");
    let raw = raw_inserts(&store, BATCHES, BATCH).await?;
    let ours = appends(&events, BATCHES, BATCH).await?;
    row("append, batches of 100", ours, raw, "events/s");
    let raw = raw_read_rate(&store).await?;
    let ours = read_all_rate(&events).await?;
    row("read all, pages of 1,000", ours, raw, "events/s");
    // A store of its own for the catch-up, so the counts cover exactly `n` events.
    drop(events);
    let db = match name {
        "postgres" => TestDb::postgres().await.ok_or("PostgreSQL went away")?,
        _ => TestDb::sqlite().await?,
    };
    let store = db.store().clone();
    store.migrate(&[onephase_events::migrations()]).await?;
    let events = EventStore::new(store.clone());
    let filled = Instant::now();
    fill(&events, n).await?;
    eprintln!(
        "{name}: {n} events appended in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let bare = bare_catch_up(&store).await?;
    let (ours, rebuild) = projector_catch_up(&events, n).await?;
    row(
        &format!("projection catch-up, {n} events"),
        ours,
        bare,
        "events/s",
    );
    rows.push(Row {
        backend: name,
        case: format!("blue/green rebuild of {n} events, to the switch"),
        onephase: rebuild,
        raw: f64::NAN,
        unit: "s",
    });
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    let n: u64 = std::env::var("ONEPHASE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut rows = Vec::new();
    backend("sqlite", TestDb::sqlite().await?, n, &mut rows).await?;
    if let Some(db) = TestDb::postgres().await {
        backend("postgres", db, n, &mut rows).await?;
    } else {
        eprintln!("PostgreSQL not configured: its rows are missing");
    }
    println!("| backend | case | onephase | baseline | ratio |\n|---|---|---|---|---|");
    for r in &rows {
        if r.raw.is_nan() {
            println!(
                "| {} | {} | {:.1} {} | | |",
                r.backend, r.case, r.onephase, r.unit
            );
        } else {
            println!(
                "| {} | {} | {:.0} {} | {:.0} | {:.2} |",
                r.backend,
                r.case,
                r.onephase,
                r.unit,
                r.raw,
                r.onephase / r.raw
            );
        }
    }
    let json: Vec<Value> = rows
        .iter()
        .map(|r| json!({"backend": r.backend, "case": r.case, "onephase": r.onephase, "baseline": if r.raw.is_nan() { Value::Null } else { json!(r.raw) }, "unit": r.unit}))
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/results/events.json"
    );
    std::fs::write(
        path,
        serde_json::to_string_pretty(&json!({"events": n, "rows": json}))?,
    )?;
    Ok(())
}

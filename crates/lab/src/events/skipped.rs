//! The skipped event: a reader that moves forward by position passes an event whose
//! transaction committed after a later one. Needs PostgreSQL (SQLite has one writer at a time,
//! so nothing commits out of order there).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use onephase_core::Random;
use onephase_events::{EventStore, ExpectedVersion, NewEvent, StreamAppend};
use onephase_store::{Store, redact_url};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};

use crate::report::seconds;
use crate::{Failed, Report};

/// What the scenario needs, said when it cannot run.
pub const NEEDS: &str = "a PostgreSQL server (`--postgres URL`, or ONEPHASE_LAB_POSTGRES_URL)";

const DATABASE: &str = "onephase_lab_events";
const WRITERS: u64 = 4;
const PER_WRITER: u64 = 40;
/// The share of appends whose transaction stays open a while after the insert.
const SLOW: f64 = 0.25;

/// Four writers append 40 events each; a quarter of the appends keep their transaction open
/// 20 to 80 ms after writing. A reader polls every 5 ms for what follows its last position.
///
/// - **Naive**: positions from a sequence (`BIGSERIAL`): a slow transaction's position is
///   handed out early and becomes visible late, after the reader has moved past it.
/// - **onephase**: [`EventStore::read_all`], whose positions become visible in the order they
///   were handed out: nothing is skipped. The cost: an append waits while an earlier one is
///   still open (the longest append shows it).
pub async fn skipped_event(seed: u64, postgres: Option<&str>) -> Report {
    let mut report = Report::new(
        "skipped-event",
        seed,
        "4 writers x 40 events on PostgreSQL, a quarter of the transactions held open 20-80 ms after the insert; a reader polling every 5 ms by position",
    );
    let Some(url) = postgres else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    let Some((naive, onephase)) = report.ran_to_end(run(seed, url).await) else {
        return report;
    };
    report.row(
        "events committed",
        naive.committed as f64,
        onephase.committed as f64,
    );
    report.row(
        "events the reader never saw",
        naive.skipped as f64,
        onephase.skipped as f64,
    );
    report.row("longest append (ms)", naive.longest_ms, onephase.longest_ms);
    report.invariant(
        "a reader moving forward by position sees every committed event",
        naive.skipped == 0,
        onephase.skipped == 0,
    );
    report.chart_by(
        "events the reader never saw, by writer",
        "",
        "a writer",
        naive.per_writer.clone(),
        onephase.per_writer.clone(),
    );
    report
}

struct Outcome {
    committed: u64,
    skipped: u64,
    longest_ms: f64,
    per_writer: Vec<f64>,
}

/// The outcome of a run from what the reader saw (`n` of every event it read).
fn outcome(seen: &BTreeSet<u64>, longest: Duration) -> Outcome {
    let committed = WRITERS * PER_WRITER;
    let per_writer = (0..WRITERS)
        .map(|w| {
            (w * PER_WRITER..(w + 1) * PER_WRITER)
                .filter(|n| !seen.contains(n))
                .count() as f64
        })
        .collect();
    Outcome {
        committed,
        skipped: committed - seen.len() as u64,
        longest_ms: seconds(longest) * 1000.0,
        per_writer,
    }
}

async fn run(seed: u64, url: &str) -> Result<(Outcome, Outcome), Failed> {
    let base = PgConnectOptions::from_str(url).map_err(|e| format!("{}: {e}", redact_url(url)))?;
    let mut admin = sqlx::PgConnection::connect_with(&base).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
        .execute(&mut admin)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(base.clone().database(DATABASE))
        .await?;
    sqlx::query("CREATE TABLE naive_events (position BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let naive = naive_run(seed, &pool).await?;
    pool.close().await;
    let mut events_url =
        reqwest::Url::parse(url).map_err(|e| format!("{}: {e}", redact_url(url)))?;
    events_url.set_path(&format!("/{DATABASE}"));
    let store = Store::connect(events_url.as_str()).await?;
    store.migrate(&[onephase_events::migrations()]).await?;
    let onephase = onephase_run(seed, EventStore::new(store.clone())).await?;
    store.close().await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok((naive, onephase))
}

/// How long writer `w`'s `i`-th append keeps its transaction open.
fn hold(seed: u64, w: u64) -> impl Iterator<Item = Duration> {
    let random = Random::seeded(seed.wrapping_mul(31).wrapping_add(w));
    (0..PER_WRITER).map(move |_| {
        if random.chance(SLOW) {
            Duration::from_millis(20 + random.next_u64() % 61)
        } else {
            Duration::ZERO
        }
    })
}

async fn naive_run(seed: u64, pool: &PgPool) -> Result<Outcome, Failed> {
    let writers = (0..WRITERS).map(|w| {
        let pool = pool.clone();
        async move {
            let mut longest = Duration::ZERO;
            for (i, hold) in hold(seed, w).enumerate() {
                let start = Instant::now();
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO naive_events (n) VALUES ($1)")
                    .bind((w * PER_WRITER + i as u64) as i64)
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(hold).await;
                tx.commit().await?;
                longest = longest.max(start.elapsed());
            }
            Ok::<_, Failed>(longest)
        }
    });
    let (done, finished) = tokio::sync::watch::channel(false);
    let reader = async {
        let mut seen = BTreeSet::new();
        let mut checkpoint = 0_i64;
        loop {
            // Whether the writers were done before this look: then it is the last one.
            let last = *finished.borrow();
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT position, n FROM naive_events WHERE position > $1 ORDER BY position",
            )
            .bind(checkpoint)
            .fetch_all(pool)
            .await?;
            for (position, n) in rows {
                checkpoint = position;
                seen.insert(u64::try_from(n).unwrap_or(u64::MAX));
            }
            if last {
                return Ok::<_, Failed>(seen);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (longest, seen) = together(futures::future::try_join_all(writers), done, reader).await?;
    Ok(outcome(&seen, longest))
}

async fn onephase_run(seed: u64, events: EventStore) -> Result<Outcome, Failed> {
    let Some(pool) = events.store().as_postgres().cloned() else {
        return Err("the store is not PostgreSQL".into());
    };
    let writers = (0..WRITERS).map(|w| {
        let (pool, events) = (pool.clone(), events.clone());
        async move {
            let mut longest = Duration::ZERO;
            for (i, hold) in hold(seed, w).enumerate() {
                let n = w * PER_WRITER + i as u64;
                let event = NewEvent::new("Counted", &format!(r#"{{"n":{n}}}"#))?;
                let start = Instant::now();
                let mut tx = pool.begin().await?;
                events
                    .append_in(
                        &mut tx,
                        &[StreamAppend::new(
                            format!("writer-{w}"),
                            ExpectedVersion::Any,
                            vec![event],
                        )],
                    )
                    .await?;
                tokio::time::sleep(hold).await;
                tx.commit().await?;
                longest = longest.max(start.elapsed());
            }
            Ok::<_, Failed>(longest)
        }
    });
    let (done, finished) = tokio::sync::watch::channel(false);
    let reader = async {
        let mut seen = BTreeSet::new();
        let mut checkpoint = 0;
        loop {
            let last = *finished.borrow();
            for e in events.read_all(checkpoint, 1000).await? {
                checkpoint = e.position;
                seen.insert(e.data.to_value()["n"].as_u64().unwrap_or(u64::MAX));
            }
            if last {
                return Ok::<_, Failed>(seen);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (longest, seen) = together(futures::future::try_join_all(writers), done, reader).await?;
    Ok(outcome(&seen, longest))
}

/// Runs the writers and the reader together; when the writers are done the reader makes one
/// last look (everything has committed by then) and says how many events it saw.
async fn together(
    writers: impl std::future::Future<Output = Result<Vec<Duration>, Failed>>,
    done: tokio::sync::watch::Sender<bool>,
    reader: impl std::future::Future<Output = Result<BTreeSet<u64>, Failed>>,
) -> Result<(Duration, BTreeSet<u64>), Failed> {
    let writers = async {
        let longest = writers.await?.into_iter().max().unwrap_or_default();
        let _ = done.send(true);
        Ok::<_, Failed>(longest)
    };
    tokio::try_join!(writers, reader)
}

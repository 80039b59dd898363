//! Online move throughput: a range of 200,000 rows moved from one PostgreSQL database to
//! another by [`Mover`] (prepare, backfill, catch-up and verify, cutover) while four writers
//! update rows of the range, against a raw `COPY ... TO STDOUT` piped into `COPY ... FROM
//! STDIN` of the same rows between the same databases with the same writers running, in the
//! same run. Three interleaved rounds; the median of each side.
//!
//! ```text
//! eval "$(scripts/engines.sh)"; cargo bench -p onephase-partition --features online --bench move
//! ```
//!
//! Results go to `bench/results/partition-move.json` and a Markdown table on stdout.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use onephase_partition::online::{MemoryMaps, MoveSpec, Mover, admit, install_fences};
use onephase_partition::{MapSpec, PartitionMap, Scheme};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _};

const ROWS: i64 = 200_000;
const ROUNDS: usize = 3;
const WRITERS: i64 = 4;
/// Each writer's pause between writes: about 4 x 500 = 2,000 writes/s offered on both sides.
const WRITE_EVERY: Duration = Duration::from_millis(2);

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn map() -> MapSpec {
    MapSpec {
        name: "orders".into(),
        version: 1,
        scheme: Scheme::Range {
            splits: vec!["0".into()],
        },
        owners: vec!["a".into(), "a".into()],
    }
}

/// Both shards with the table; `ROWS` rows on `a`.
async fn load(a: &PgPool, b: &PgPool) -> AnyResult<()> {
    for pool in [a, b] {
        sqlx::query("DROP TABLE IF EXISTS orders")
            .execute(pool)
            .await?;
        sqlx::query(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL,
              total numeric(20, 2) NOT NULL, note text, updated_at timestamptz)",
        )
        .execute(pool)
        .await?;
        sqlx::query("DROP TABLE IF EXISTS onephase_partition_fences")
            .execute(pool)
            .await?;
        install_fences(pool).await?;
    }
    sqlx::query(
        "INSERT INTO orders SELECT i, 'customer-' || (i % 97), i * 1.5, NULL, now()
           FROM generate_series(0, $1 - 1) i",
    )
    .bind(ROWS)
    .execute(a)
    .await?;
    sqlx::query("VACUUM ANALYZE orders").execute(a).await?;
    Ok(())
}

/// Writers updating random rows of the range until `stop`, routing with `maps` (through the
/// fence) when given, else always on `a`.
fn writers(
    a: &PgPool,
    b: &PgPool,
    maps: Option<Arc<MemoryMaps>>,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<AnyResult<()>>> {
    let writers: i64 = std::env::var("ONEPHASE_BENCH_WRITERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(WRITERS);
    (0..writers)
        .map(|w| {
            let (a, b, maps, stop, writes) = (
                a.clone(),
                b.clone(),
                maps.clone(),
                stop.clone(),
                writes.clone(),
            );
            tokio::spawn(async move {
                let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (w as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % ROWS as u64) as i64;
                    let (pool, route) = match &maps {
                        Some(maps) => {
                            let map =
                                PartitionMap::new(maps.get("orders").ok_or("the map is gone")?)?;
                            let route = map.route(&id.to_string());
                            let pool = if route.owner == "a" { &a } else { &b };
                            (pool, Some((route.partition, route.version)))
                        }
                        None => (&a, None),
                    };
                    let mut tx = pool.begin().await?;
                    if let Some((partition, version)) = route
                        && admit(&mut tx, "orders", partition, version).await.is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let updated = sqlx::query(
                        "UPDATE orders SET total = total + 1, note = 'upd' WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await;
                    match updated {
                        Ok(_) => {
                            tx.commit().await?;
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("OP001") => {}
                        Err(e) => return Err(e.into()),
                    }
                    tokio::time::sleep(WRITE_EVERY).await;
                }
                Ok(())
            })
        })
        .collect()
}

async fn stop_writers(
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<AnyResult<()>>>,
) -> AnyResult<()> {
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// Raw COPY of the range from `a` to `b`: rows/s and writes/s meanwhile.
async fn raw_copy(a: &PgPool, b: &PgPool) -> AnyResult<(f64, f64)> {
    load(a, b).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let handles = writers(a, b, None, stop.clone(), writes.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut from = a.acquire().await?;
    let mut to = b.acquire().await?;
    let mut out = from
        .copy_out_raw("COPY (SELECT * FROM orders WHERE id >= 0) TO STDOUT")
        .await?;
    let mut copy_in = to.copy_in_raw("COPY orders FROM STDIN").await?;
    while let Some(block) = out.try_next().await? {
        copy_in.send(block).await?;
    }
    let rows = copy_in.finish().await?;
    drop(out);
    let elapsed = started.elapsed().as_secs_f64();
    let written = writes.load(Ordering::Relaxed) as f64;
    stop_writers(&stop, handles).await?;
    assert_eq!(rows, ROWS as u64, "the raw copy moved every row");
    Ok((rows as f64 / elapsed, written / elapsed))
}

/// The online move of the range.
async fn online_move(a: &PgPool, b: &PgPool) -> AnyResult<Moved> {
    load(a, b).await?;
    let maps = Arc::new(MemoryMaps::new([map()]));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let handles = writers(a, b, Some(maps.clone()), stop.clone(), writes.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spec = MoveSpec {
        id: uuid::Uuid::now_v7(),
        map: "orders".into(),
        partition: 1,
        table: "orders".into(),
        key: "id".into(),
        lo: Some("0".into()),
        hi: None,
        source: "a".into(),
        target: "b".into(),
        from_version: 1,
        chunk_rows: std::env::var("ONEPHASE_BENCH_CHUNK_ROWS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(10_000),
        rows_per_second: None,
    };
    let started = Instant::now();
    let mover = Mover::new(spec, a.clone(), b.clone(), maps).await?;
    mover.prepare().await?;
    let prepared = started.elapsed().as_secs_f64();
    mover.backfill().await?;
    let backfilled = started.elapsed().as_secs_f64();
    mover.catch_up_and_verify().await?;
    let verified = started.elapsed().as_secs_f64();
    mover.cut_over().await?;
    let switched = started.elapsed().as_secs_f64();
    eprintln!(
        "  prepare {prepared:.2} s, backfill {:.2} s, catch-up and verify {:.2} s, cutover {:.2} s",
        backfilled - prepared,
        verified - backfilled,
        switched - verified
    );
    let backfill_rate = ROWS as f64 / (backfilled - prepared);
    let written = writes.load(Ordering::Relaxed) as f64;
    mover.clean_up().await?;
    let done = started.elapsed().as_secs_f64();
    stop_writers(&stop, handles).await?;
    let status = mover.status().await?;
    eprintln!(
        "  {} chunks verified, {} repaired",
        status.chunks_verified, status.chunks_repaired
    );
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(b)
        .await?;
    assert_eq!(in_b, ROWS, "the move moved every row");
    Ok(Moved {
        to_switch: ROWS as f64 / switched,
        with_clean_up: ROWS as f64 / done,
        backfill: backfill_rate,
        writes: written / switched,
        pause_ms: status.pause_ms.unwrap_or(0),
        phases: [
            prepared,
            backfilled - prepared,
            verified - backfilled,
            switched - verified,
        ],
    })
}

/// One online move's figures.
struct Moved {
    /// Rows per second from the start to the switch.
    to_switch: f64,
    /// Rows per second including the clean-up.
    with_clean_up: f64,
    /// Rows per second of the backfill alone.
    backfill: f64,
    /// Writes per second acknowledged meanwhile.
    writes: f64,
    /// The write pause at the cutover.
    pause_ms: u64,
    /// Seconds in prepare, backfill, catch-up and verify, cutover.
    phases: [f64; 4],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    let url = std::env::var("ONEPHASE_TEST_POSTGRES_URL")
        .map_err(|_| "set ONEPHASE_TEST_POSTGRES_URL (eval \"$(scripts/engines.sh)\")")?;
    let base = PgConnectOptions::from_str(&url)?;
    let mut admin = sqlx::PgConnection::connect_with(&base).await?;
    let mut pools = Vec::new();
    for name in ["onephase_bench_shard_a", "onephase_bench_shard_b"] {
        // Constant names: no injection is possible.
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        pools.push(
            PgPoolOptions::new()
                .max_connections(12)
                .connect_with(base.clone().database(name))
                .await?,
        );
    }
    let (a, b) = (pools[0].clone(), pools[1].clone());
    let (mut raw, mut raw_writes) = (Vec::new(), Vec::new());
    let mut moves: Vec<Moved> = Vec::new();
    for round in 0..ROUNDS {
        let (rows, w) = raw_copy(&a, &b).await?;
        raw.push(rows);
        raw_writes.push(w);
        let moved = online_move(&a, &b).await?;
        eprintln!(
            "round {round}: raw COPY {rows:.0} rows/s; move {:.0} rows/s to the switch (backfill {:.0}), {:.0} with the clean-up, pause {} ms",
            moved.to_switch, moved.backfill, moved.with_clean_up, moved.pause_ms
        );
        moves.push(moved);
    }
    a.close().await;
    b.close().await;
    for name in ["onephase_bench_shard_a", "onephase_bench_shard_b"] {
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    let of = |f: &dyn Fn(&Moved) -> f64| median(moves.iter().map(f).collect());
    let raw = median(raw);
    let (moved, moved_all, backfill) = (
        of(&|m| m.to_switch),
        of(&|m| m.with_clean_up),
        of(&|m| m.backfill),
    );
    let pause = of(&|m| m.pause_ms as f64);
    let phases: Vec<f64> = (0..4).map(|i| of(&|m| m.phases[i])).collect();
    let results = json!({
        "bench": "partition online move",
        "date": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        "rows": ROWS,
        "writers": WRITERS,
        "rounds": ROUNDS,
        "baseline": "raw COPY TO STDOUT piped into COPY FROM STDIN, same rows, same databases, same writers",
        "baseline_rows_per_s": raw,
        "baseline_writes_per_s": median(raw_writes),
        "results": [
            {
                "case": "backfill alone (chunks of 10,000 rows, checkpointed)",
                "onephase_rows_per_s": backfill,
                "ratio": backfill / raw,
            },
            {
                "case": "online move to the switch (prepare, backfill, catch-up and verify, cutover)",
                "onephase_rows_per_s": moved,
                "ratio": moved / raw,
                "writes_per_s": of(&|m| m.writes),
                "pause_ms": pause,
                "phase_seconds": {
                    "prepare": phases[0],
                    "backfill": phases[1],
                    "catch_up_and_verify": phases[2],
                    "cutover": phases[3],
                },
            },
            {
                "case": "online move with the clean-up (the source's rows deleted)",
                "onephase_rows_per_s": moved_all,
                "ratio": moved_all / raw,
            },
        ],
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/results/partition-move.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("| case | onephase | raw COPY | ratio |");
    println!("|---|---|---|---|");
    for (case, rate) in [
        ("backfill alone", backfill),
        ("move to the switch", moved),
        ("move with the clean-up", moved_all),
    ] {
        println!(
            "| {case} | {rate:.0} rows/s | {raw:.0} rows/s | {:.2} |",
            rate / raw
        );
    }
    println!(
        "pause at the cutover {pause:.0} ms; phases (s): prepare {:.2}, backfill {:.2}, catch-up and verify {:.2}, cutover {:.2}",
        phases[0], phases[1], phases[2], phases[3]
    );
    Ok(())
}

//! Post 7 of the seed, *Database Partitioning: The Decision You Can't Undo*: what adding a
//! partition costs, and where a range scheme sends the writes of a growing key, each naive
//! and with [`onephase_partition`]'s schemes, on keys generated from the seed.

use onephase_core::Random;
use onephase_partition::{AnalyzeOptions, Scheme, analyze};

use crate::Report;

const KEYS: usize = 100_000;
const FROM: u32 = 8;
const CHART_UP_TO: u32 = 24;

/// The share of `keys` that changes partition between `a` and `b`.
fn moved(a: &Scheme, b: &Scheme, keys: &[String]) -> f64 {
    let (Ok(a), Ok(b)) = (a.build(), b.build()) else {
        return f64::NAN;
    };
    keys.iter()
        .filter(|k| a.partition(k) != b.partition(k))
        .count() as f64
        / keys.len() as f64
}

/// Adding a partition.
///
/// 100,000 customer ids spread over 8 partitions, and a 9th partition added.
///
/// - **Naive**: `hash(key) mod N`. Going from 8 to 9 changes the partition of almost every
///   key: nearly all the data moves for one more machine.
/// - **onephase**: jump consistent hash, which moves only the keys the new partition takes,
///   about 1/9 (the minimum for an even spread); weighted rendezvous hashing, measured beside.
pub async fn adding_a_node(seed: u64) -> Report {
    let mut report = Report::new(
        "adding-a-node",
        seed,
        "100,000 customer ids on 8 partitions; a 9th partition is added",
    );
    let random = Random::seeded(seed);
    let keys: Vec<String> = (0..KEYS)
        .map(|_| format!("customer-{:016x}", random.next_u64()))
        .collect();
    let modulo = |n| Scheme::Modulo { partitions: n };
    let jump = |n| Scheme::Jump { partitions: n };
    let rendezvous = |n| Scheme::Rendezvous {
        weights: vec![1.0; n as usize],
    };
    let naive = moved(&modulo(FROM), &modulo(FROM + 1), &keys);
    let onephase = moved(&jump(FROM), &jump(FROM + 1), &keys);
    let minimum = 1.0 / f64::from(FROM + 1);
    report.row(
        "keys moved adding a 9th partition, %",
        naive * 100.0,
        onephase * 100.0,
    );
    let by_rendezvous = moved(&rendezvous(FROM), &rendezvous(FROM + 1), &keys);
    report.row(
        "keys moved, rendezvous instead of jump, %",
        naive * 100.0,
        by_rendezvous * 100.0,
    );
    report.row(
        "the least any even spread moves, %",
        minimum * 100.0,
        minimum * 100.0,
    );
    let bound = 1.2 * minimum;
    report.invariant(
        "adding a partition moves at most 1.2 × 1/(N+1) of the keys",
        naive <= bound,
        onephase <= bound && by_rendezvous <= bound,
    );
    let (naive_line, onephase_line): (Vec<f64>, Vec<f64>) = (2..=CHART_UP_TO)
        .map(|n| {
            (
                moved(&modulo(n - 1), &modulo(n), &keys) * 100.0,
                moved(&jump(n - 1), &jump(n), &keys) * 100.0,
            )
        })
        .unzip();
    report.chart_by(
        "keys moved growing N-1 to N, N = 2 to 24",
        "%",
        "one partition added",
        naive_line,
        onephase_line,
    );
    report
}

/// A range scheme on a timestamp key.
///
/// 100,000 orders keyed by their creation time in milliseconds, written over a day. Eight
/// partitions are chosen on the first 80 % of them; the last 20 % are the writes that come
/// after the choice.
///
/// - **Naive**: ranges of the timestamp, split evenly over the data there was. Every new
///   order is later than every split point: all of them land on the last partition.
/// - **onephase**: the analyzer shows it before the choice; jump consistent hash spreads the
///   same writes over all eight.
pub async fn hot_range(seed: u64) -> Report {
    let mut report = Report::new(
        "hot-range",
        seed,
        "100,000 orders keyed by creation time (ms); 8 partitions chosen on the first 80 %",
    );
    let random = Random::seeded(seed);
    let start: i64 = 1_767_225_600_000;
    let mut at = start;
    let keys: Vec<String> = (0..KEYS)
        .map(|_| {
            // About one order per 864 ms, at random gaps.
            at += 1 + (random.unit() * 1_727.0) as i64;
            at.to_string()
        })
        .collect();
    let options = AnalyzeOptions {
        partitions: vec![FROM],
        schemes: vec!["range".into(), "jump".into()],
        new_share: 0.2,
        ..AnalyzeOptions::default()
    };
    let Some(analysis) = report.ran_to_end(analyze(&keys, &options)) else {
        return report;
    };
    let by = |kind: &str| analysis.candidates.iter().find(|c| c.scheme.kind() == kind);
    let (Some(range), Some(jump)) = (by("range"), by("jump")) else {
        report.invariant(
            "the analysis lacked a scheme it was asked for",
            false,
            false,
        );
        return report;
    };
    report.row(
        "new writes on the busiest partition, %",
        range.new_writes_max_share * 100.0,
        jump.new_writes_max_share * 100.0,
    );
    report.row(
        "partitions taking new writes",
        new_write_partitions(&range.scheme, &keys) as f64,
        new_write_partitions(&jump.scheme, &keys) as f64,
    );
    report.row(
        "keys read as increasing (analyzer), %",
        analysis.increasing_share * 100.0,
        analysis.increasing_share * 100.0,
    );
    let bound = 2.0 / f64::from(FROM);
    report.invariant(
        "no partition takes more than 2/N of the new writes",
        range.new_writes_max_share <= bound,
        jump.new_writes_max_share <= bound,
    );
    report.chart_by(
        "share of new writes per partition",
        "%",
        "partition",
        new_write_shares(&range.scheme, &keys),
        new_write_shares(&jump.scheme, &keys),
    );
    report
}

fn newest(keys: &[String]) -> &[String] {
    &keys[keys.len() * 4 / 5..]
}

fn new_write_shares(scheme: &Scheme, keys: &[String]) -> Vec<f64> {
    let Ok(p) = scheme.build() else {
        return Vec::new();
    };
    let newest = newest(keys);
    let mut loads = vec![0.0; p.partitions() as usize];
    for k in newest {
        loads[p.partition(k) as usize] += 100.0 / newest.len() as f64;
    }
    loads
}

fn new_write_partitions(scheme: &Scheme, keys: &[String]) -> usize {
    new_write_shares(scheme, keys)
        .iter()
        .filter(|s| **s > 0.0)
        .count()
}

pub mod online {
    //! The online move under write load, on two PostgreSQL databases (two shards).

    use std::collections::HashMap;
    use std::str::FromStr as _;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use onephase_core::Random;
    use onephase_partition::online::{
        MemoryMaps, MoveError, MoveSpec, Mover, admit, install_fences,
    };
    use onephase_partition::{MapSpec, PartitionMap, Scheme};
    use onephase_store::redact_url;
    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
    use sqlx::{AssertSqlSafe, Connection as _};

    use crate::{Failed, Report};

    /// What the scenario needs, said when it cannot run.
    pub const NEEDS: &str = "a PostgreSQL server (`--postgres URL`, or ONEPHASE_LAB_POSTGRES_URL)";

    const ROWS: i64 = 20_000;
    /// The moving range: from here up.
    const SPLIT: i64 = 10_000;
    const WRITERS: i64 = 4;
    const CHUNK: i64 = 1_000;
    const MAP: &str = "items";

    /// Four writers keep updating and inserting rows of a range while it moves from one
    /// PostgreSQL database to another, 1,000 rows at a time.
    ///
    /// - **Naive**: copy then switch: copy the range, point the writers at the new shard,
    ///   delete the range from the old one. A write that lands on a row already copied is
    ///   lost with the old shard's rows.
    /// - **onephase**: [`Mover`]: the backfill is followed by a change log that the catch-up
    ///   applies, chunk checksums verify, and a short fence lets the last changes drain
    ///   before the map switches; writers refused by the fence fetch the map and retry. The
    ///   cost is that pause, measured.
    pub async fn online_move(seed: u64, postgres: Option<&str>) -> Report {
        let mut report = Report::new(
            "online-move",
            seed,
            "20,000 rows; the 10,000 of the upper range move to a second PostgreSQL database while 4 writers update and insert in it",
        );
        let Some(url) = postgres else {
            report.not_run_for_want_of(NEEDS);
            return report;
        };
        let Some((naive, onephase)) = report.ran_to_end(run(seed, url).await) else {
            return report;
        };
        report.row(
            "writes acknowledged",
            naive.acknowledged as f64,
            onephase.acknowledged as f64,
        );
        report.row("writes lost", naive.lost as f64, onephase.lost as f64);
        report.row(
            "rows in both shards",
            naive.duplicated as f64,
            onephase.duplicated as f64,
        );
        report.row(
            "longest pause between a writer's writes (ms)",
            naive.longest_pause_ms,
            onephase.longest_pause_ms,
        );
        report.invariant(
            "after the move, every acknowledged write is in the new shard, once",
            naive.lost == 0 && naive.duplicated == 0,
            onephase.lost == 0 && onephase.duplicated == 0,
        );
        report.chart_by(
            "writes lost, by writer",
            "",
            "a writer",
            naive.lost_by_writer.clone(),
            onephase.lost_by_writer.clone(),
        );
        report
    }

    struct Outcome {
        acknowledged: u64,
        lost: u64,
        duplicated: u64,
        longest_pause_ms: f64,
        lost_by_writer: Vec<f64>,
    }

    async fn run(seed: u64, url: &str) -> Result<(Outcome, Outcome), Failed> {
        let base =
            PgConnectOptions::from_str(url).map_err(|e| format!("{}: {e}", redact_url(url)))?;
        let mut admin = sqlx::PgConnection::connect_with(&base).await?;
        let mut shards = Vec::new();
        for name in ["onephase_lab_shard_a", "onephase_lab_shard_b"] {
            // The names are constants: no injection is possible.
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
            shards.push(
                PgPoolOptions::new()
                    .max_connections(12)
                    .connect_with(base.clone().database(name))
                    .await?,
            );
        }
        let (a, b) = (shards[0].clone(), shards[1].clone());
        let naive = naive_run(seed, &a, &b).await;
        let onephase = match &naive {
            Ok(_) => onephase_run(seed, &a, &b).await,
            Err(_) => Err("the naive run failed".into()),
        };
        a.close().await;
        b.close().await;
        for name in ["onephase_lab_shard_a", "onephase_lab_shard_b"] {
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
        }
        Ok((naive?, onephase?))
    }

    /// Fresh tables: every row on `a`, none on `b`.
    async fn load(a: &PgPool, b: &PgPool) -> Result<(), Failed> {
        for pool in [a, b] {
            sqlx::query("DROP TABLE IF EXISTS items")
                .execute(pool)
                .await?;
            sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL)")
                .execute(pool)
                .await?;
            install_fences(pool).await?;
        }
        sqlx::query("INSERT INTO items SELECT i, 0 FROM generate_series(0, $1 - 1) i")
            .bind(ROWS)
            .execute(a)
            .await?;
        Ok(())
    }

    /// What the writers were told, per id (each id is one writer's): its value.
    type Ledger = Arc<Mutex<HashMap<i64, i64>>>;

    /// How a writer finds the owner of the range.
    #[derive(Clone)]
    enum Routing {
        /// 0 while the old shard owns it, 1 after the switch; no fence.
        Flag(Arc<AtomicU8>),
        /// The versioned map, presented to the fence.
        Map(Arc<MemoryMaps>),
    }

    /// Writers updating (and inserting above the loaded rows) ids of the moving range until
    /// `stop`; each returns its longest pause between two acknowledged writes.
    fn writers(
        seed: u64,
        a: &PgPool,
        b: &PgPool,
        routing: Routing,
        ledger: Ledger,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Result<Duration, Failed>>> {
        (0..WRITERS)
            .map(|w| {
                let (a, b, routing, ledger, stop) = (
                    a.clone(),
                    b.clone(),
                    routing.clone(),
                    ledger.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let random = Random::seeded(seed ^ (w as u64 + 1));
                    let mut longest = Duration::ZERO;
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let span = (ROWS + ROWS / 5 - SPLIT) / WRITERS;
                        let id = SPLIT + (random.unit() * span as f64) as i64 * WRITERS + w;
                        let (pool, version) = match &routing {
                            Routing::Flag(flag) => (
                                if flag.load(Ordering::Acquire) == 0 {
                                    &a
                                } else {
                                    &b
                                },
                                None,
                            ),
                            Routing::Map(maps) => {
                                let spec = maps.get(MAP).ok_or("the lab's map is gone")?;
                                let map = PartitionMap::new(spec).map_err(|e| e.to_string())?;
                                let route = map.route(&id.to_string());
                                let pool = if route.owner == "a" { &a } else { &b };
                                (pool, Some((route.partition, route.version)))
                            }
                        };
                        let mut tx = pool.begin().await?;
                        if let Some((partition, version)) = version {
                            match admit(&mut tx, MAP, partition, version).await {
                                Ok(()) => {}
                                Err(MoveError::Moved { .. }) => {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                    continue;
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        let written = sqlx::query_scalar::<_, i64>(
                            "INSERT INTO items VALUES ($1, 1)
                             ON CONFLICT (id) DO UPDATE SET v = items.v + 1 RETURNING v",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await;
                        match written {
                            Ok(v) => {
                                tx.commit().await?;
                                ledger
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(id, v);
                                longest = longest.max(last.elapsed());
                                last = Instant::now();
                            }
                            // The source's guard: the range is fenced or gone; route again.
                            Err(sqlx::Error::Database(e))
                                if e.code().as_deref() == Some("OP001") =>
                            {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(e) => return Err(e.into()),
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(longest)
                })
            })
            .collect()
    }

    /// Stops the writers and compares what they were told with what the shards hold.
    async fn outcome(
        a: &PgPool,
        b: &PgPool,
        handles: Vec<tokio::task::JoinHandle<Result<Duration, Failed>>>,
        ledger: &Ledger,
    ) -> Result<Outcome, Failed> {
        let mut longest = Duration::ZERO;
        for handle in handles {
            longest = longest.max(handle.await.map_err(|e| e.to_string())??);
        }
        let rows = |pool: PgPool| async move {
            sqlx::query_as::<_, (i64, i64)>("SELECT id, v FROM items WHERE id >= $1")
                .bind(SPLIT)
                .fetch_all(&pool)
                .await
        };
        let in_b: HashMap<i64, i64> = rows(b.clone()).await?.into_iter().collect();
        let in_a = rows(a.clone()).await?;
        let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut lost_by_writer = vec![0.0; WRITERS as usize];
        let mut lost = 0;
        for (id, v) in &ledger {
            if in_b.get(id) != Some(v) {
                lost += 1;
                lost_by_writer[(id % WRITERS) as usize] += 1.0;
            }
        }
        Ok(Outcome {
            acknowledged: ledger.len() as u64,
            lost,
            duplicated: in_a.iter().filter(|(id, _)| in_b.contains_key(id)).count() as u64,
            longest_pause_ms: longest.as_secs_f64() * 1000.0,
            lost_by_writer,
        })
    }

    /// Copy the range in chunks, switch the writers, delete the range from the old shard.
    async fn naive_run(seed: u64, a: &PgPool, b: &PgPool) -> Result<Outcome, Failed> {
        load(a, b).await?;
        let flag = Arc::new(AtomicU8::new(0));
        let ledger = Ledger::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = writers(
            seed,
            a,
            b,
            Routing::Flag(flag.clone()),
            ledger.clone(),
            stop.clone(),
        );
        let mut from = SPLIT;
        loop {
            let rows: Vec<(i64, i64)> =
                sqlx::query_as("SELECT id, v FROM items WHERE id >= $1 ORDER BY id LIMIT $2")
                    .bind(from)
                    .bind(CHUNK)
                    .fetch_all(a)
                    .await?;
            let Some(&(end, _)) = rows.last() else { break };
            let (ids, values): (Vec<i64>, Vec<i64>) = rows.into_iter().unzip();
            sqlx::query(
                "INSERT INTO items SELECT * FROM unnest($1::bigint[], $2::bigint[])
                 ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
            )
            .bind(&ids)
            .bind(&values)
            .execute(b)
            .await?;
            from = end + 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        flag.store(1, Ordering::Release);
        sqlx::query("DELETE FROM items WHERE id >= $1")
            .bind(SPLIT)
            .execute(a)
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        outcome(a, b, handles, &ledger).await
    }

    /// The same range moved by [`Mover`] at about the same pace.
    async fn onephase_run(seed: u64, a: &PgPool, b: &PgPool) -> Result<Outcome, Failed> {
        load(a, b).await?;
        let maps = Arc::new(MemoryMaps::new([MapSpec {
            name: MAP.into(),
            version: 1,
            scheme: Scheme::Range {
                splits: vec![SPLIT.to_string()],
            },
            owners: vec!["a".into(), "a".into()],
        }]));
        let ledger = Ledger::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = writers(
            seed,
            a,
            b,
            Routing::Map(maps.clone()),
            ledger.clone(),
            stop.clone(),
        );
        let spec = MoveSpec {
            id: uuid::Uuid::now_v7(),
            map: MAP.into(),
            partition: 1,
            table: "items".into(),
            key: "id".into(),
            lo: Some(SPLIT.to_string()),
            hi: None,
            source: "a".into(),
            target: "b".into(),
            from_version: 1,
            chunk_rows: CHUNK as u32,
            rows_per_second: Some(50_000),
        };
        let mover = Mover::new(spec, a.clone(), b.clone(), maps).await?;
        mover.run().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        outcome(a, b, handles, &ledger).await
    }
}

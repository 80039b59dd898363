//! The online move against two real PostgreSQL databases (two shards): writers keep writing
//! while a range moves, the move is interrupted in every phase and resumed, rolled back when
//! the map changes under it, and refused when asked for something it cannot do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use futures::future::BoxFuture;
use onephase_partition::online::{MemoryMaps, MoveError, MoveSpec, Mover, Phase, admit};
use onephase_partition::{MapSpec, PartitionMap, Scheme};
use onephase_testkit::TestDb;
use sqlx::PgPool;
use uuid::Uuid;

const MAP: &str = "orders";
const SPLIT: i64 = 50_000;

/// The tests' map, in memory: both partitions on `a`.
fn new_maps() -> Arc<MemoryMaps> {
    Arc::new(MemoryMaps::new([MapSpec {
        name: MAP.into(),
        version: 1,
        scheme: Scheme::Range {
            splits: vec![SPLIT.to_string()],
        },
        owners: vec!["a".into(), "a".into()],
    }]))
}

/// The current map.
fn current(maps: &MemoryMaps) -> MapSpec {
    maps.get(MAP).expect("the tests' map")
}

struct Shards {
    a: TestDb,
    b: TestDb,
}

impl Shards {
    async fn new(rows: i64) -> anyhow::Result<Option<Self>> {
        let (Some(a), Some(b)) = (TestDb::postgres().await, TestDb::postgres().await) else {
            return Ok(None);
        };
        for db in [&a, &b] {
            sqlx::query(
                "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL,
                  total numeric(20, 2) NOT NULL, note text, updated_at timestamptz)",
            )
            .execute(pool(db))
            .await?;
            // Writers admit through the fence from the start.
            onephase_partition::online::install_fences(pool(db)).await?;
        }
        sqlx::query(
            "INSERT INTO orders SELECT i, 'customer-' || (i % 97), i * 1.5, NULL, now()
               FROM generate_series(0, $1 - 1) i",
        )
        .bind(rows)
        .execute(pool(&a))
        .await?;
        Ok(Some(Self { a, b }))
    }

    fn pool(&self, shard: &str) -> &PgPool {
        if shard == "a" {
            pool(&self.a)
        } else {
            pool(&self.b)
        }
    }
}

fn pool(db: &TestDb) -> &PgPool {
    db.store()
        .as_postgres()
        .expect("a PostgreSQL test database")
}

fn spec(chunk_rows: u32) -> MoveSpec {
    MoveSpec {
        id: Uuid::now_v7(),
        map: MAP.into(),
        partition: 1,
        table: "orders".into(),
        key: "id".into(),
        lo: Some(SPLIT.to_string()),
        hi: None,
        source: "a".into(),
        target: "b".into(),
        from_version: 1,
        chunk_rows,
        rows_per_second: None,
    }
}

/// What writers were told committed, per id: the total it holds, or `None` once deleted.
type Ledger = Arc<Mutex<HashMap<i64, Option<i64>>>>;

/// `writers` tasks writing until `stop`, each to its own ids (id % writers), routing with the
/// map and retrying where the fence refuses; half of them call `admit`, half rely on the
/// trigger alone. Returns the number of writes refused by a fence.
fn spawn_writers(
    shards: Arc<Shards>,
    maps: Arc<MemoryMaps>,
    writers: i64,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<u64>>> {
    (0..writers)
        .map(|w| {
            let (shards, maps, ledger, stop) =
                (shards.clone(), maps.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                let mut n: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Ids on both sides of the split, some new, some existing.
                    let id = ((n * 7_919 + w * 13) % 24_000) * writers + w + 40_000;
                    let delete = n % 10 == 0;
                    let spec = current(&maps);
                    let map = PartitionMap::new(spec).context("map")?;
                    let route = map.route(&id.to_string());
                    let pool = shards.pool(route.owner);
                    let mut tx = pool.begin().await?;
                    if w % 2 == 0 {
                        match admit(&mut tx, MAP, route.partition, route.version).await {
                            Ok(()) => {}
                            Err(MoveError::Moved { .. }) => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let written: Result<Option<i64>, sqlx::Error> = if delete {
                        sqlx::query("DELETE FROM orders WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .map(|_| None)
                    } else {
                        sqlx::query_scalar(
                            "INSERT INTO orders VALUES ($1, 'w', 1, 'new', now())
                             ON CONFLICT (id) DO UPDATE SET total = orders.total + 1, note = 'upd'
                             RETURNING total::bigint",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .map(Some)
                    };
                    match written {
                        Ok(state) => {
                            tx.commit().await?;
                            ledger.lock().expect("ledger").insert(id, state);
                        }
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("OP001") => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(refused)
            })
        })
        .collect()
}

/// Every acknowledged write is where the final map says, and nowhere else; every row of the
/// range is in the target only; nothing else changed.
async fn check_final(
    shards: &Shards,
    maps: &MemoryMaps,
    ledger: &Ledger,
    rows: i64,
) -> anyhow::Result<()> {
    let map = PartitionMap::new(current(maps))?;
    ensure!(
        map.spec().owners[1] == "b",
        "the map names the target: {:?}",
        map.spec()
    );
    let read = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>("SELECT id, total::bigint FROM orders")
                .fetch_all(&pool)
                .await
        }
    };
    let a: HashMap<i64, i64> = read(shards.pool("a")).await?.into_iter().collect();
    let b: HashMap<i64, i64> = read(shards.pool("b")).await?.into_iter().collect();
    ensure!(
        a.keys().all(|id| *id < SPLIT),
        "rows of the range left behind in the source"
    );
    ensure!(
        b.keys().all(|id| *id >= SPLIT),
        "rows outside the range in the target"
    );
    let ledger = ledger.lock().expect("ledger").clone();
    for (id, expected) in &ledger {
        let shard = if *id < SPLIT { &a } else { &b };
        ensure!(
            shard.get(id) == expected.as_ref(),
            "id {id}: acknowledged {expected:?}, found {:?}",
            shard.get(id)
        );
    }
    // Rows no writer touched are the seeded ones.
    for id in 0..rows {
        if ledger.contains_key(&id) {
            continue;
        }
        let shard = if id < SPLIT { &a } else { &b };
        ensure!(
            shard.get(&id) == Some(&((id * 3 + 1) / 2)),
            "untouched id {id}: {:?}",
            shard.get(&id)
        );
    }
    let expected_total = (0..rows).filter(|id| !ledger.contains_key(id)).count()
        + ledger.values().filter(|v| v.is_some()).count();
    ensure!(
        a.len() + b.len() == expected_total,
        "{} + {} rows, expected {expected_total}",
        a.len(),
        b.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_moves_while_writers_write_and_nothing_is_lost() -> anyhow::Result<()> {
    let rows = 100_000;
    let Some(shards) = Shards::new(rows).await? else {
        return Ok(());
    };
    let shards = Arc::new(shards);
    let maps = new_maps();
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(
        shards.clone(),
        maps.clone(),
        4,
        ledger.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mover = Mover::new(
        spec(5_000),
        shards.pool("a").clone(),
        shards.pool("b").clone(),
        maps.clone(),
    )
    .await?;
    mover.run().await?;
    let status = mover.status().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for w in writers {
        refused += w.await??;
    }
    ensure!(status.phase == Phase::Done, "{status:?}");
    ensure!(status.copied_rows >= 50_000, "{status:?}");
    ensure!(status.catch_up_lag == 0, "{status:?}");
    let pause = status.pause_ms.context("a measured pause")?;
    eprintln!(
        "moved {} rows, {} chunks verified, {} repaired, pause {pause} ms, {refused} writes refused and retried, {} acknowledged",
        status.copied_rows,
        status.chunks_verified,
        status.chunks_repaired,
        ledger.lock().expect("ledger").len()
    );
    check_final(&shards, &maps, &ledger, rows).await?;
    // The old owner's guard refuses a write to the range with the old version, with or
    // without `admit`.
    let mut tx = shards.pool("a").begin().await?;
    let stale = admit(&mut tx, MAP, 1, 1).await;
    ensure!(
        matches!(
            stale,
            Err(MoveError::Moved {
                required: 2,
                held: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    drop(tx);
    let direct = sqlx::query("INSERT INTO orders VALUES (60000, 'x', 1, NULL, now())")
        .execute(shards.pool("a"))
        .await;
    let message = direct.expect_err("the guard refuses").to_string();
    ensure!(message.contains("moved to another shard"), "{message}");
    Ok(())
}

/// Runs `phase` on a fresh mover and aborts it after `after`, as a crash would.
async fn interrupt<F>(
    shards: &Shards,
    maps: &Arc<MemoryMaps>,
    spec: &MoveSpec,
    after: Duration,
    phase: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Mover) -> BoxFuture<'static, Result<(), MoveError>>,
{
    let mover = Mover::new(
        spec.clone(),
        shards.pool("a").clone(),
        shards.pool("b").clone(),
        maps.clone(),
    )
    .await?;
    let task = tokio::spawn(phase(mover));
    tokio::time::sleep(after).await;
    task.abort();
    let _ = task.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_interrupted_in_every_phase_resumes_and_completes() -> anyhow::Result<()> {
    let rows = 100_000;
    let Some(shards) = Shards::new(rows).await? else {
        return Ok(());
    };
    let shards = Arc::new(shards);
    let maps = new_maps();
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(
        shards.clone(),
        maps.clone(),
        4,
        ledger.clone(),
        stop.clone(),
    );
    let spec = spec(2_000);
    let interruptions = AtomicU64::new(0);
    for (after, step) in [
        (Duration::from_millis(150), "prepare+backfill"),
        (Duration::from_millis(400), "backfill"),
        (Duration::from_millis(300), "verify"),
        (Duration::from_millis(30), "cut_over"),
    ] {
        interrupt(&shards, &maps, &spec, after, move |m| {
            Box::pin(async move {
                match step {
                    "prepare+backfill" => {
                        m.prepare().await?;
                        m.backfill().await
                    }
                    "backfill" => m.backfill().await,
                    "verify" => m.catch_up_and_verify().await,
                    _ => m.cut_over().await,
                }
            })
        })
        .await?;
        interruptions.fetch_add(1, Ordering::Relaxed);
    }
    let mover = Mover::new(
        spec.clone(),
        shards.pool("a").clone(),
        shards.pool("b").clone(),
        maps.clone(),
    )
    .await?;
    mover.run().await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let status = mover.status().await?;
    ensure!(status.phase == Phase::Done, "{status:?}");
    check_final(&shards, &maps, &ledger, rows).await?;
    ensure!(
        current(&maps).version == 2,
        "one switch: {:?}",
        current(&maps)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_whose_map_changed_rolls_back_and_writers_return_to_the_source() -> anyhow::Result<()>
{
    let Some(shards) = Shards::new(60_000).await? else {
        return Ok(());
    };
    let maps = new_maps();
    let mover = Mover::new(
        spec(5_000),
        shards.pool("a").clone(),
        shards.pool("b").clone(),
        maps.clone(),
    )
    .await?;
    mover.prepare().await?;
    mover.backfill().await?;
    mover.catch_up_and_verify().await?;
    // Someone else publishes a version meanwhile: the switch must not overwrite it.
    let bumped = current(&maps);
    maps.publish(MapSpec {
        version: bumped.version + 1,
        ..bumped
    });
    let err = mover.cut_over().await.expect_err("the map changed");
    ensure!(
        matches!(
            err,
            MoveError::MapChanged {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    mover.roll_back().await?;
    ensure!(mover.status().await?.phase == Phase::RolledBack);
    let in_target: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(shards.pool("b"))
        .await?;
    ensure!(in_target == 0, "the target's copy is gone: {in_target}");
    let in_source: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(shards.pool("a"))
        .await?;
    ensure!(in_source == 60_000);
    // The fence was raised to version 2, which the other change had published with the
    // source still the owner: writers with it write to the source again.
    let map = current(&maps);
    ensure!(map.version == 2 && map.owners[1] == "a", "{map:?}");
    let mut tx = shards.pool("a").begin().await?;
    admit(&mut tx, MAP, 1, 2).await?;
    sqlx::query("UPDATE orders SET total = 0 WHERE id = 55000")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // Rolling back twice is harmless; a rolled-back move does not start again.
    mover.roll_back().await?;
    let again = mover.prepare().await.expect_err("rolled back");
    ensure!(again.to_string().contains("rolled back"), "{again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_moves_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let Some(shards) = Shards::new(60_000).await? else {
        return Ok(());
    };
    let maps = new_maps();
    let (a, b) = (shards.pool("a").clone(), shards.pool("b").clone());
    let refused = |r: Result<Mover, MoveError>| r.expect_err("refused").to_string();

    let mut unknown_table = spec(1_000);
    unknown_table.table = "nope".into();
    ensure!(
        refused(Mover::new(unknown_table, a.clone(), b.clone(), maps.clone()).await)
            .contains("does not exist in the source")
    );
    let mut injected = spec(1_000);
    injected.table = "orders; DROP TABLE orders".into();
    ensure!(
        refused(Mover::new(injected, a.clone(), b.clone(), maps.clone()).await)
            .contains("letters, digits")
    );
    let mut same = spec(1_000);
    same.target = "a".into();
    ensure!(
        refused(Mover::new(same, a.clone(), b.clone(), maps.clone()).await).contains("two shards")
    );
    let mut bad_bound = spec(1_000);
    bad_bound.lo = Some("fifty".into());
    ensure!(
        refused(Mover::new(bad_bound, a.clone(), b.clone(), maps.clone()).await)
            .contains("not an integer")
    );
    let mut empty = spec(1_000);
    empty.hi = Some("10".into());
    ensure!(refused(Mover::new(empty, a.clone(), b.clone(), maps.clone()).await).contains("empty"));

    // A target whose table differs.
    sqlx::query("ALTER TABLE orders ADD COLUMN extra int")
        .execute(&b)
        .await?;
    ensure!(
        refused(Mover::new(spec(1_000), a.clone(), b.clone(), maps.clone()).await)
            .contains("same order")
    );
    sqlx::query("ALTER TABLE orders DROP COLUMN extra")
        .execute(&b)
        .await?;

    // A target that already holds rows of the range.
    sqlx::query("INSERT INTO orders VALUES (50001, 'x', 1, NULL, now())")
        .execute(&b)
        .await?;
    let err = Mover::new(spec(1_000), a.clone(), b.clone(), maps.clone())
        .await?
        .prepare()
        .await
        .expect_err("rows in target");
    ensure!(err.to_string().contains("already holds 1 rows"), "{err}");
    sqlx::query("DELETE FROM orders").execute(&b).await?;

    // A map that is not at the version the move names.
    let mut stale = spec(1_000);
    stale.from_version = 7;
    let err = Mover::new(stale, a.clone(), b.clone(), maps.clone())
        .await?
        .prepare()
        .await
        .expect_err("stale");
    ensure!(matches!(err, MoveError::MapChanged { .. }), "{err}");

    // Nothing of those left a trace: no move, no trigger.
    let triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'onephase_move_%'")
            .fetch_one(&a)
            .await?;
    ensure!(triggers == 0, "{triggers} triggers");

    // A second move of the same partition while the first has not ended.
    let first = Mover::new(spec(1_000), a.clone(), b.clone(), maps.clone()).await?;
    first.prepare().await?;
    let err = Mover::new(spec(1_000), a.clone(), b.clone(), maps.clone())
        .await?
        .prepare()
        .await
        .expect_err("overlap");
    ensure!(
        matches!(err, MoveError::InProgress { .. }) && err.to_string().contains("already moving"),
        "{err}"
    );
    // A shard that does not answer.
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")?;
    let err = refused(Mover::new(spec(1_000), a.clone(), dead, maps.clone()).await);
    ensure!(err.contains("target shard"), "{err}");
    first.roll_back().await?;
    Ok(())
}

/// A difference no logged write explains (a target row changed or deleted behind the move's
/// back, a row the backfill never copied) is found by the chunk checksums and repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_finds_and_repairs_rows_that_differ_for_no_logged_reason() -> anyhow::Result<()>
{
    // The range crosses from five-digit to six-digit keys, where text order and number
    // order part: chunks must follow the number order.
    let rows = 120_000;
    let Some(shards) = Shards::new(rows).await? else {
        return Ok(());
    };
    let maps = new_maps();
    let mover = Mover::new(
        spec(10_000),
        shards.pool("a").clone(),
        shards.pool("b").clone(),
        maps.clone(),
    )
    .await?;
    mover.prepare().await?;
    mover.backfill().await?;
    // Behind the move's back, in the target: one row changed, one deleted, one added.
    sqlx::query("UPDATE orders SET total = -1 WHERE id = 50100")
        .execute(shards.pool("b"))
        .await?;
    sqlx::query("DELETE FROM orders WHERE id = 57000")
        .execute(shards.pool("b"))
        .await?;
    sqlx::query("INSERT INTO orders VALUES (99999999, 'stray', 1, NULL, now())")
        .execute(shards.pool("b"))
        .await?;
    mover.catch_up_and_verify().await?;
    let status = mover.status().await?;
    ensure!(status.chunks_repaired >= 2, "{status:?}");
    // 70,001 rows in chunks of 10,000: seven or eight chunks, none larger.
    let chunks = status.chunks_verified + status.chunks_repaired;
    ensure!((7..=8).contains(&chunks), "{chunks} chunks: {status:?}");
    mover.cut_over().await?;
    mover.clean_up().await?;
    let read = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT id, total::bigint FROM orders WHERE id >= 50000 ORDER BY id",
            )
            .fetch_all(&pool)
            .await
        }
    };
    let b = read(shards.pool("b")).await?;
    let expected: Vec<(i64, i64)> = (SPLIT..rows).map(|id| (id, (id * 3 + 1) / 2)).collect();
    ensure!(
        b == expected,
        "the target differs from the source's range: {} rows, first difference {:?}",
        b.len(),
        b.iter().zip(&expected).find(|(x, y)| x != y)
    );
    Ok(())
}

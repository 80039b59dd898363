//! The history test: 8 clients in separate tasks take the same lease 2,000 times in all, write
//! twice under each grant through the fence, and now and then pause for longer than the TTL
//! between the two writes. Every accepted write is recorded in the resource's own table, in
//! the order the fence admitted it; the history must show tokens that never go down, and each
//! token's writes from one holder only. Against real PostgreSQL and real etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::ensure;
use onephase_lease::{FenceError, LeaseError, Leases, fence, migrations};
use onephase_testkit::TestDb;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::PgPool;

const CLIENTS: usize = 8;
const CYCLES: usize = 2_000;

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    stale: AtomicUsize,
    paused: AtomicUsize,
}

/// Writes one history row under `token`, fenced; `false` if the fence refused it.
async fn write(
    pool: &PgPool,
    token: onephase_lease::FencingToken,
    client: usize,
    step: i32,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    match fence::check(&mut tx, "history", token).await {
        Ok(()) => {}
        Err(FenceError::Stale { .. }) => {
            tx.rollback().await?;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query("INSERT INTO history (token, client, step) VALUES ($1, $2, $3)")
        .bind(i64::try_from(token.get())?)
        .bind(i32::try_from(client)?)
        .bind(step)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// What every client shares.
#[derive(Clone)]
struct Run {
    leases: Leases,
    pool: PgPool,
    ttl: Duration,
    pause: Duration,
    pause_one_in: u32,
    cycles: Arc<AtomicUsize>,
    counts: Arc<Counts>,
}

async fn client(i: usize, run: Run) -> anyhow::Result<()> {
    let Run {
        leases,
        pool,
        ttl,
        pause,
        pause_one_in,
        cycles,
        counts,
    } = run;
    let mut rng = StdRng::seed_from_u64(u64::try_from(i)?);
    let holder = format!("client-{i}");
    while cycles.fetch_add(1, Ordering::Relaxed) < CYCLES {
        let guard = loop {
            match leases.try_acquire("history", &holder, ttl).await {
                Ok(g) => break g,
                Err(LeaseError::Held { .. }) => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..4))).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        for step in 0..2 {
            if step == 1 && rng.random_ratio(1, pause_one_in) {
                counts.paused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
            if write(&pool, guard.token(), i, step).await? {
                counts.accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        match guard.release().await {
            Ok(()) | Err(LeaseError::NotHeld { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn run_history(
    leases: Leases,
    db: &TestDb,
    ttl: Duration,
    pause: Duration,
    pause_one_in: u32,
) -> anyhow::Result<()> {
    db.store().migrate(&[migrations()]).await?;
    let pool = db
        .store()
        .as_postgres()
        .ok_or_else(|| anyhow::anyhow!("PostgreSQL"))?
        .clone();
    sqlx::query(
        "CREATE TABLE history (id BIGSERIAL PRIMARY KEY, token BIGINT NOT NULL, \
         client INTEGER NOT NULL, step INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let counts = Arc::new(Counts::default());
    let run = Run {
        leases,
        pool: pool.clone(),
        ttl,
        pause,
        pause_one_in,
        cycles: Arc::new(AtomicUsize::new(0)),
        counts: Arc::clone(&counts),
    };
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, run.clone())))
        .collect();
    for t in tasks {
        t.await??;
    }
    // The fence row is locked from the check to the commit, so ids are in admission order.
    let rows: Vec<(i64, i32, i32)> =
        sqlx::query_as("SELECT token, client, step FROM history ORDER BY id")
            .fetch_all(&pool)
            .await?;
    let accepted = counts.accepted.load(Ordering::Relaxed);
    let stale = counts.stale.load(Ordering::Relaxed);
    let paused = counts.paused.load(Ordering::Relaxed);
    ensure!(
        rows.len() == accepted,
        "{} rows, {accepted} accepted",
        rows.len()
    );
    ensure!(accepted + stale == 2 * CYCLES, "{accepted} + {stale}");
    let mut owner_of = std::collections::HashMap::new();
    for pair in rows.windows(2) {
        let ((t0, _, _), (t1, _, _)) = (pair[0], pair[1]);
        ensure!(t1 >= t0, "token {t1} accepted after {t0}");
    }
    for (token, client, _) in &rows {
        let owner = owner_of.entry(*token).or_insert(*client);
        ensure!(
            owner == client,
            "token {token} written by clients {owner} and {client}"
        );
    }
    // The pauses must have let someone else in, or the test proved nothing.
    ensure!(paused > 0 && stale > 0, "paused {paused}, stale {stale}");
    eprintln!(
        "history: {CYCLES} grants, {accepted} writes accepted, {stale} stale writes refused after \
         {paused} pauses longer than the TTL"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_history_holds_under_pauses_longer_than_the_ttl() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let leases = Leases::store(db.store().clone());
    run_history(
        leases,
        &db,
        Duration::from_millis(200),
        Duration::from_millis(300),
        40,
    )
    .await?;
    db.close().await?;
    Ok(())
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_history_holds_under_pauses_longer_than_the_ttl() -> anyhow::Result<()> {
    let Some(url) = onephase_testkit::engine_url(onephase_testkit::Engine::Etcd) else {
        return Ok(());
    };
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let client = etcd_client::Client::connect([url], None).await?;
    let prefix = format!("onephase-test/{}/", uuid_like());
    let leases = Leases::new(onephase_lease::EtcdLeases::with_prefix(client, prefix));
    // etcd grants whole seconds, at least its minimum TTL (2 s with default timeouts), so the
    // pause that lets another holder in is longer.
    run_history(
        leases,
        &db,
        Duration::from_secs(1),
        Duration::from_millis(3_500),
        300,
    )
    .await?;
    db.close().await?;
    Ok(())
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_history_holds_under_pauses_longer_than_the_ttl() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Etcd, "onephase-lease", "etcd");
}

#[cfg(feature = "etcd")]
fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

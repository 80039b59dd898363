//! The replica suites' cluster: the primary and two streaming replicas that
//! scripts/pg-replica.sh makes, with helpers that pause, delay and reset replay.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, ensure};
use onephase_replica::{Router, RouterConfig, Thresholds};
use onephase_testkit::{Engine, engine_url};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub struct Cluster {
    pub primary: PgPool,
    /// The replica the lag tests pause and delay (5435).
    pub replica: PgPool,
    /// The replica the failover test promotes (5436).
    pub promote: PgPool,
    pub urls: Vec<String>,
}

async fn pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The cluster with the first replica replaying at full speed, or `None` when the suite is
/// skipped.
pub async fn cluster() -> anyhow::Result<Option<Cluster>> {
    let Some(urls) = engine_url(Engine::PostgresReplicas) else {
        return Ok(None);
    };
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
    ensure!(
        urls.len() == 3,
        "ONEPHASE_TEST_POSTGRES_REPLICAS lists {} URLs; it needs the primary's and two replicas'",
        urls.len()
    );
    let cluster = Cluster {
        primary: pool(&urls[0]).await?,
        replica: pool(&urls[1]).await?,
        promote: pool(&urls[2]).await?,
        urls,
    };
    reset(&cluster.replica).await?;
    Ok(Some(cluster))
}

/// Replays at full speed again: no pause, no delay.
pub async fn reset(replica: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ALTER SYSTEM RESET recovery_min_apply_delay")
        .execute(replica)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(replica)
        .await?;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(replica)
        .await?;
    Ok(())
}

pub async fn pause(replica: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(replica)
        .await?;
    Ok(())
}

pub async fn resume(replica: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(replica)
        .await?;
    Ok(())
}

/// Applies WAL only `ms` after its commit.
pub async fn delay(replica: &PgPool, ms: u64) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'"
    )))
    .execute(replica)
    .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(replica)
        .await?;
    Ok(())
}

/// A router that polls every 50 ms and beats every 100 ms.
pub fn fast(router: Router) -> Router {
    router.with_config(
        RouterConfig::default()
            .with_poll_interval(Duration::from_millis(50))
            .with_heartbeat_interval(Duration::from_millis(100))
            .with_thresholds(Thresholds {
                max_lag: Duration::from_secs(1),
                recover_polls: 3,
                stall_after: Duration::from_secs(2),
            }),
    )
}

/// Runs the router's monitor until the returned guard is dropped.
pub fn monitor(router: &Router) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = router.clone();
    tokio::spawn(async move {
        router
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

/// Waits until `check` holds, polling every 20 ms, for at most `within`.
pub async fn eventually(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A fresh table with one row (`id` 1, `v` 0) on the primary.
pub async fn table(primary: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
        .execute(primary)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (id INT PRIMARY KEY, v BIGINT NOT NULL)"
    )))
    .execute(primary)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {name} VALUES (1, 0)"
    )))
    .execute(primary)
    .await?;
    Ok(())
}

pub async fn write(primary: &PgPool, name: &str, v: i64) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {name} SET v = $1 WHERE id = 1"
    )))
    .bind(v)
    .execute(primary)
    .await?;
    Ok(())
}

pub async fn read(pool: &PgPool, name: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT v FROM {name} WHERE id = 1"
    )))
    .fetch_one(pool)
    .await?)
}

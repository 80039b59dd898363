//! The statements the router and monitor send, in one place.

use std::time::Instant;

use sqlx::PgPool;

use crate::error::ReplicaError;
use crate::health::{PrimarySample, ReplicaSample};
use crate::token::{Lsn, Token};

/// The heartbeat table, made on the primary by the monitor; replicas receive it by
/// replication. One row per cluster: several monitors of one cluster share it.
const CREATE_HEARTBEAT: &str = "CREATE TABLE IF NOT EXISTS onephase_replica_heartbeat (
    id SMALLINT PRIMARY KEY,
    at_us BIGINT NOT NULL
)";

const BEAT: &str = "INSERT INTO onephase_replica_heartbeat (id, at_us)
    VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    ON CONFLICT (id) DO UPDATE SET at_us = GREATEST(onephase_replica_heartbeat.at_us, excluded.at_us)";

/// The primary's clock, insert position, timeline and system identifier. `pg_walfile_name`
/// refuses to run during recovery, so a "primary" that is a standby is an error here.
const PRIMARY: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    lsn::text, substr(pg_walfile_name(lsn), 1, 8),
    (SELECT system_identifier FROM pg_control_system())
    FROM pg_current_wal_insert_lsn() AS lsn";

const REPLICA: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
    (SELECT system_identifier FROM pg_control_system()),
    to_regclass('onephase_replica_heartbeat') IS NOT NULL";

const HEARTBEAT: &str = "SELECT at_us FROM onephase_replica_heartbeat WHERE id = 1";

const REPLAY: &str = "SELECT pg_last_wal_replay_lsn()::text";

fn lsn(text: Option<String>) -> Result<Option<Lsn>, ReplicaError> {
    text.map(|t| t.parse::<Lsn>().map_err(ReplicaError::from))
        .transpose()
}

fn system(id: i64) -> u64 {
    // `system_identifier` is a uint64 that PostgreSQL shows as a signed bigint.
    id as u64
}

fn timeline(hex: &str) -> Result<u32, ReplicaError> {
    u32::from_str_radix(hex, 16).map_err(|_| ReplicaError::Database {
        server: "primary".into(),
        source: sqlx::Error::Protocol(format!("unexpected WAL file timeline {hex:?}")),
    })
}

/// Creates the heartbeat table on the primary.
pub(crate) async fn create_heartbeat(primary: &PgPool) -> Result<(), ReplicaError> {
    sqlx::query(CREATE_HEARTBEAT)
        .execute(primary)
        .await
        .map_err(ReplicaError::db("primary"))?;
    Ok(())
}

/// Writes a heartbeat with the primary's clock.
pub(crate) async fn beat(primary: &PgPool) -> Result<(), ReplicaError> {
    sqlx::query(BEAT)
        .execute(primary)
        .await
        .map_err(ReplicaError::db("primary"))?;
    Ok(())
}

/// Reads the primary, returning the sample and the cluster's system identifier.
pub(crate) async fn read_primary(
    primary: &PgPool,
    now: impl Fn() -> Instant,
) -> Result<(PrimarySample, u64), ReplicaError> {
    let (clock_us, position, tli, id): (i64, String, String, i64) = sqlx::query_as(PRIMARY)
        .fetch_one(primary)
        .await
        .map_err(ReplicaError::db("primary"))?;
    let at = now();
    let position = lsn(Some(position))?.unwrap_or_default();
    Ok((
        PrimarySample {
            at,
            clock_us,
            position,
            timeline: timeline(&tli)?,
        },
        system(id),
    ))
}

/// Reads a replica.
pub(crate) async fn read_replica(
    name: &str,
    pool: &PgPool,
    now: impl Fn() -> Instant,
) -> Result<ReplicaSample, ReplicaError> {
    let (in_recovery, replay, paused, id, has_heartbeat): (bool, Option<String>, bool, i64, bool) =
        sqlx::query_as(REPLICA)
            .fetch_one(pool)
            .await
            .map_err(ReplicaError::db(name))?;
    let heartbeat_us = if has_heartbeat {
        sqlx::query_scalar::<_, i64>(HEARTBEAT)
            .fetch_optional(pool)
            .await
            .map_err(ReplicaError::db(name))?
    } else {
        None
    };
    Ok(ReplicaSample {
        at: now(),
        in_recovery,
        system: system(id),
        replay: lsn(replay)?,
        paused,
        heartbeat_us,
    })
}

/// A replica's replay position now.
pub(crate) async fn replay(name: &str, pool: &PgPool) -> Result<Option<Lsn>, ReplicaError> {
    let text: Option<String> = sqlx::query_scalar(REPLAY)
        .fetch_one(pool)
        .await
        .map_err(ReplicaError::db(name))?;
    lsn(text)
}

/// Takes a consistency token on the primary, on `executor`: call it after the commit whose
/// effects a later reader must see (on the same connection or any other to the primary). The
/// token is at the primary's WAL insert position, at or past every commit that finished before
/// this call, including asynchronous ones.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE accounts SET name = 'Ada' WHERE id = 1").execute(&mut *tx).await?;
/// tx.commit().await?;
/// let token = onephase_replica::take_token(&pool).await?;
/// // send `token.to_string()` in the `consistency-token` header of the response
/// # Ok(()) }
/// ```
pub async fn take_token<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<Token, ReplicaError> {
    let (_, position, tli, id): (i64, String, String, i64) = sqlx::query_as(PRIMARY)
        .fetch_one(executor)
        .await
        .map_err(ReplicaError::db("primary"))?;
    Ok(Token::new(
        system(id),
        timeline(&tli)?,
        lsn(Some(position))?.unwrap_or_default(),
    ))
}

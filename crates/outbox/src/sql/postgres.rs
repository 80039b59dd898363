use std::time::Duration;

use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use onephase_store::convert::duration_ms as millis;

use super::{DeadRow, Failure, OutboxStatus, Row};

/// Claims up to `limit` rows that are due, never a row whose key has an earlier unpublished
/// row outside this claim (held by another relay, backing off, or dead-lettered).
///
/// `FOR UPDATE SKIP LOCKED` lets relays claim side by side without waiting on each other. The
/// order check runs against the statement's snapshot, in which a row another relay claimed
/// or is publishing still exists unpublished, so a concurrent claim can only be more
/// cautious than necessary, never less: the later row waits for the next round.
pub(super) async fn claim(
    pool: &PgPool,
    relay: Uuid,
    limit: u32,
    claim_for: Duration,
    _now: OffsetDateTime,
) -> Result<Vec<Row>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH candidates AS ( \
             SELECT seq, key FROM onephase_outbox \
             WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now() \
               AND (claimed_until IS NULL OR claimed_until < now()) \
             ORDER BY seq LIMIT $1 \
             FOR UPDATE SKIP LOCKED \
         ), eligible AS ( \
             SELECT c.seq FROM candidates c \
             WHERE c.key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM onephase_outbox p \
                 WHERE p.key = c.key AND p.seq < c.seq AND p.published_at IS NULL \
                   AND p.seq NOT IN (SELECT seq FROM candidates)) \
         ) \
         UPDATE onephase_outbox o \
            SET claimed_by = $2, claimed_until = now() + $3 * interval '1 millisecond' \
           FROM eligible e WHERE o.seq = e.seq \
         RETURNING o.seq, o.id::text AS id, o.topic, o.key, o.payload, o.headers::text AS headers, \
                   o.created_at, o.attempts",
    )
    .bind(i64::from(limit))
    .bind(relay)
    .bind(millis(claim_for))
    .fetch_all(pool)
    .await?;
    let mut claimed = rows
        .into_iter()
        .map(|r| {
            Ok(Row {
                seq: r.try_get("seq")?,
                id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                key: r.try_get("key")?,
                payload: r.try_get("payload")?,
                headers: r.try_get("headers")?,
                created_at: r.try_get("created_at")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    claimed.sort_by_key(|r| r.seq);
    Ok(claimed)
}

pub(super) async fn published(
    pool: &PgPool,
    relay: Uuid,
    seqs: &[i64],
    keep: bool,
    _now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let sql = if keep {
        "UPDATE onephase_outbox SET published_at = now(), claimed_by = NULL, claimed_until = NULL, \
                last_error = NULL \
         WHERE seq = ANY($1) AND claimed_by = $2"
    } else {
        "DELETE FROM onephase_outbox WHERE seq = ANY($1) AND claimed_by = $2"
    };
    Ok(sqlx::query(sql)
        .bind(seqs)
        .bind(relay)
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn failed(
    pool: &PgPool,
    relay: Uuid,
    failures: &[Failure],
    _now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
    let delays: Vec<i64> = failures.iter().map(|f| millis(f.retry_in)).collect();
    Ok(sqlx::query(
        "UPDATE onephase_outbox o \
            SET attempts = o.attempts + 1, last_error = f.error, \
                available_at = CASE WHEN f.dead THEN o.available_at \
                                    ELSE now() + f.delay * interval '1 millisecond' END, \
                dead_at = CASE WHEN f.dead THEN now() END, \
                claimed_by = NULL, claimed_until = NULL \
           FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::bigint[]) AS f(seq, error, dead, delay) \
          WHERE o.seq = f.seq AND o.claimed_by = $5",
    )
    .bind(&seqs)
    .bind(&errors)
    .bind(&dead)
    .bind(&delays)
    .bind(relay)
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn release(pool: &PgPool, relay: Uuid, seqs: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE onephase_outbox SET claimed_by = NULL, claimed_until = NULL \
         WHERE seq = ANY($1) AND claimed_by = $2",
    )
    .bind(seqs)
    .bind(relay)
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn prune_published(
    pool: &PgPool,
    keep: Duration,
    limit: u32,
    _now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM onephase_outbox WHERE seq IN ( \
             SELECT seq FROM onephase_outbox \
             WHERE published_at IS NOT NULL \
               AND published_at < now() - $1 * interval '1 millisecond' \
             ORDER BY seq LIMIT $2 \
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(millis(keep))
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn prune_inbox(
    pool: &PgPool,
    older_than: Duration,
    limit: u32,
    _now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM onephase_inbox WHERE (consumer, message_id) IN ( \
             SELECT consumer, message_id FROM onephase_inbox \
             WHERE processed_at < now() - $1 * interval '1 millisecond' \
             ORDER BY processed_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(millis(older_than))
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn status(
    pool: &PgPool,
    _now: OffsetDateTime,
) -> Result<OutboxStatus, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS pending, \
                count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, \
                count(*) FILTER (WHERE published_at IS NOT NULL) AS retained, \
                EXTRACT(EPOCH FROM now() - min(created_at) \
                    FILTER (WHERE published_at IS NULL AND dead_at IS NULL))::float8 AS oldest \
         FROM onephase_outbox",
    )
    .fetch_one(pool)
    .await?;
    let oldest: Option<f64> = row.try_get("oldest")?;
    Ok(OutboxStatus {
        pending: row.try_get("pending")?,
        dead: row.try_get("dead")?,
        published_retained: row.try_get("retained")?,
        oldest_pending_age: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
}

pub(super) async fn dead(
    pool: &PgPool,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query(
        "SELECT seq, id, topic, key, attempts, last_error, created_at, dead_at \
         FROM onephase_outbox WHERE dead_at IS NOT NULL AND seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(DeadRow {
            seq: r.try_get("seq")?,
            id: r.try_get("id")?,
            topic: r.try_get("topic")?,
            key: r.try_get("key")?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
            created_at: r.try_get("created_at")?,
            dead_at: r.try_get("dead_at")?,
        })
    })
    .collect()
}

pub(super) async fn retry(pool: &PgPool, ids: Option<&[Uuid]>) -> Result<u64, sqlx::Error> {
    let query = match ids {
        Some(ids) => sqlx::query(
            "UPDATE onephase_outbox SET dead_at = NULL, attempts = 0, available_at = '-infinity' \
             WHERE dead_at IS NOT NULL AND id = ANY($1)",
        )
        .bind(ids.to_vec()),
        None => sqlx::query(
            "UPDATE onephase_outbox SET dead_at = NULL, attempts = 0, available_at = '-infinity' \
             WHERE dead_at IS NOT NULL",
        ),
    };
    Ok(query.execute(pool).await?.rows_affected())
}

pub(super) async fn discard(pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM onephase_outbox WHERE dead_at IS NOT NULL AND id = ANY($1)")
            .bind(ids.to_vec())
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Vacuums the outbox table when PostgreSQL counts more than `threshold` dead tuples in it;
/// returns the count that triggered it. `SKIP_LOCKED`: when another relay is already
/// vacuuming, this one does not wait.
pub(super) async fn vacuum_if_needed(
    pool: &PgPool,
    threshold: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let dead: Option<i64> = sqlx::query_scalar(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'onephase_outbox'::regclass",
    )
    .fetch_optional(pool)
    .await?;
    match dead {
        Some(dead) if dead > threshold => {
            sqlx::query("VACUUM (SKIP_LOCKED, ANALYZE) onephase_outbox")
                .execute(pool)
                .await?;
            Ok(Some(dead))
        }
        _ => Ok(None),
    }
}

use std::time::Duration;

use sqlx::{Row as _, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use onephase_store::convert::{duration_ms as millis, stored_ms, unix_ms as ms};

use super::{DeadRow, Failure, OutboxStatus, Row};

fn parse_time(text: &str) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Claims like the PostgreSQL version. SQLite runs one writer at a time, so the statement sees
/// every other relay's claims and needs no row locks.
pub(super) async fn claim(
    pool: &SqlitePool,
    relay: Uuid,
    limit: u32,
    claim_for: Duration,
    now: OffsetDateTime,
) -> Result<Vec<Row>, sqlx::Error> {
    let now = ms(now);
    let rows = sqlx::query(
        "WITH candidates AS ( \
             SELECT seq, key FROM onephase_outbox \
             WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= ?1 \
               AND (claimed_until IS NULL OR claimed_until < ?1) \
             ORDER BY seq LIMIT ?2 \
         ) \
         UPDATE onephase_outbox SET claimed_by = ?3, claimed_until = ?1 + ?4 \
         WHERE seq IN ( \
             SELECT c.seq FROM candidates c \
             WHERE c.key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM onephase_outbox p \
                 WHERE p.key = c.key AND p.seq < c.seq AND p.published_at IS NULL \
                   AND p.seq NOT IN (SELECT seq FROM candidates))) \
         RETURNING seq, id, topic, key, payload, headers, created_at, attempts",
    )
    .bind(now)
    .bind(i64::from(limit))
    .bind(relay.to_string())
    .bind(millis(claim_for))
    .fetch_all(pool)
    .await?;
    let mut claimed = rows
        .into_iter()
        .map(|r| {
            let created_at: String = r.try_get("created_at")?;
            Ok(Row {
                seq: r.try_get("seq")?,
                id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                key: r.try_get("key")?,
                payload: r.try_get("payload")?,
                headers: r.try_get("headers")?,
                created_at: parse_time(&created_at)?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    claimed.sort_by_key(|r| r.seq);
    Ok(claimed)
}

fn seq_list(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned())
}

pub(super) async fn published(
    pool: &SqlitePool,
    relay: Uuid,
    seqs: &[i64],
    keep: bool,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let sql = if keep {
        "UPDATE onephase_outbox SET published_at = ?3, claimed_by = NULL, claimed_until = NULL, \
                last_error = NULL \
         WHERE seq IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2"
    } else {
        "DELETE FROM onephase_outbox \
         WHERE seq IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2 AND ?3 IS NOT NULL"
    };
    Ok(sqlx::query(sql)
        .bind(seq_list(seqs))
        .bind(relay.to_string())
        .bind(ms(now))
        .execute(pool)
        .await?
        .rows_affected())
}

pub(super) async fn failed(
    pool: &SqlitePool,
    relay: Uuid,
    failures: &[Failure],
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let now = ms(now);
    let mut tx = pool.begin().await?;
    let mut updated = 0;
    for f in failures {
        updated += sqlx::query(
            "UPDATE onephase_outbox \
                SET attempts = attempts + 1, last_error = ?1, \
                    available_at = CASE WHEN ?2 THEN available_at ELSE ?3 + ?4 END, \
                    dead_at = CASE WHEN ?2 THEN ?3 END, \
                    claimed_by = NULL, claimed_until = NULL \
              WHERE seq = ?5 AND claimed_by = ?6",
        )
        .bind(&f.error)
        .bind(f.dead)
        .bind(now)
        .bind(millis(f.retry_in))
        .bind(f.seq)
        .bind(relay.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(updated)
}

pub(super) async fn release(
    pool: &SqlitePool,
    relay: Uuid,
    seqs: &[i64],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE onephase_outbox SET claimed_by = NULL, claimed_until = NULL \
         WHERE seq IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2",
    )
    .bind(seq_list(seqs))
    .bind(relay.to_string())
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn prune_published(
    pool: &SqlitePool,
    keep: Duration,
    limit: u32,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM onephase_outbox WHERE seq IN ( \
             SELECT seq FROM onephase_outbox \
             WHERE published_at IS NOT NULL AND published_at < ?1 \
             ORDER BY seq LIMIT ?2)",
    )
    .bind(ms(now) - millis(keep))
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn prune_inbox(
    pool: &SqlitePool,
    older_than: Duration,
    limit: u32,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM onephase_inbox WHERE (consumer, message_id) IN ( \
             SELECT consumer, message_id FROM onephase_inbox WHERE processed_at < ?1 \
             ORDER BY processed_at LIMIT ?2)",
    )
    .bind(ms(now) - millis(older_than))
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn status(
    pool: &SqlitePool,
    now: OffsetDateTime,
) -> Result<OutboxStatus, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS pending, \
                count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, \
                count(*) FILTER (WHERE published_at IS NOT NULL) AS retained, \
                min(created_at) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS oldest \
         FROM onephase_outbox",
    )
    .fetch_one(pool)
    .await?;
    let oldest: Option<String> = row.try_get("oldest")?;
    let oldest = match oldest {
        Some(text) => Some(parse_time(&text)?),
        None => None,
    };
    Ok(OutboxStatus {
        pending: row.try_get("pending")?,
        dead: row.try_get("dead")?,
        published_retained: row.try_get("retained")?,
        oldest_pending_age: oldest.map(|at| (now - at).try_into().unwrap_or(Duration::ZERO)),
    })
}

pub(super) async fn dead(
    pool: &SqlitePool,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query(
        "SELECT seq, id, topic, key, attempts, last_error, created_at, dead_at \
         FROM onephase_outbox WHERE dead_at IS NOT NULL AND seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after_seq)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        let id: String = r.try_get("id")?;
        let created_at: String = r.try_get("created_at")?;
        let dead_at: Option<i64> = r.try_get("dead_at")?;
        Ok(DeadRow {
            seq: r.try_get("seq")?,
            id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            topic: r.try_get("topic")?,
            key: r.try_get("key")?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
            created_at: parse_time(&created_at)?,
            dead_at: dead_at.map(|ms| stored_ms("dead_at", ms)).transpose()?,
        })
    })
    .collect()
}

fn id_list(ids: &[Uuid]) -> String {
    serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned())
}

pub(super) async fn retry(pool: &SqlitePool, ids: Option<&[Uuid]>) -> Result<u64, sqlx::Error> {
    let query = match ids {
        Some(ids) => sqlx::query(
            "UPDATE onephase_outbox SET dead_at = NULL, attempts = 0, available_at = 0 \
             WHERE dead_at IS NOT NULL AND id IN (SELECT value FROM json_each(?1))",
        )
        .bind(id_list(ids)),
        None => sqlx::query(
            "UPDATE onephase_outbox SET dead_at = NULL, attempts = 0, available_at = 0 \
             WHERE dead_at IS NOT NULL",
        ),
    };
    Ok(query.execute(pool).await?.rows_affected())
}

pub(super) async fn discard(pool: &SqlitePool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM onephase_outbox WHERE dead_at IS NOT NULL \
           AND id IN (SELECT value FROM json_each(?1))",
    )
    .bind(id_list(ids))
    .execute(pool)
    .await?
    .rows_affected())
}

/// SQLite has no dead tuples (freed pages are reused): nothing to vacuum.
pub(super) async fn vacuum_if_needed(
    _pool: &SqlitePool,
    _threshold: i64,
) -> Result<Option<i64>, sqlx::Error> {
    Ok(None)
}

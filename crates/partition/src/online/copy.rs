//! Backfill, catch-up and verify: the copying before the fence.

use std::time::Duration;

use futures::TryStreamExt as _;
use sqlx::{AssertSqlSafe, PgConnection};

use super::prepare::{bypass, phase, set_phase, version_i64};
use super::sql::{self, ident};
use super::{KeyKind, MoveError, Mover, Phase, cutover, on_source, on_target};

/// Applies changes in batches of this many keys.
pub(crate) const APPLY_BATCH: i64 = 5_000;

/// The key order of the range's rows in SQL.
fn order_by(m: &Mover) -> String {
    match m.kind {
        KeyKind::Integer => ident(&m.spec.key),
        KeyKind::Text => format!("{} COLLATE \"C\"", ident(&m.spec.key)),
    }
}

/// The predicate of the chunk after `after` up to `end` (included), within the range.
fn chunk_predicate(m: &Mover, after: Option<&str>, end: Option<&str>) -> Result<String, MoveError> {
    let key = order_by(m);
    let mut predicate = sql::in_range(&m.spec, m.kind, &ident(&m.spec.key))?;
    if let Some(after) = after {
        predicate.push_str(&format!(" AND {key} > {}", sql::literal(m.kind, after)?));
    }
    if let Some(end) = end {
        predicate.push_str(&format!(" AND {key} <= {}", sql::literal(m.kind, end)?));
    }
    Ok(predicate)
}

/// The last key of the chunk after `after`, or `None` when fewer than a chunk's rows remain.
async fn chunk_end(m: &Mover, after: Option<&str>) -> Result<Option<String>, MoveError> {
    // The output column has another name than the key: a bare `ORDER BY key` would sort by
    // the output column, the key as text, which orders integers as strings.
    let sql = format!(
        "SELECT {}::text AS chunk_end FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
        ident(&m.spec.key),
        ident(&m.spec.table),
        chunk_predicate(m, after, None)?,
        order_by(m),
        m.spec.chunk_rows - 1
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_optional(&m.source)
        .await
        .map_err(on_source)
}

/// Replaces the target's rows of one chunk with the source's, by `COPY` straight into the
/// table, the source's `COPY` piped into the target's as it comes: before the catch-up only
/// the mover writes the range in the target, so deleting the chunk first is all a resumed
/// chunk needs (it may have committed before a crash).
///
/// Both are connections of their own, not pooled ones: a COPY cut short (the task aborted,
/// the process stopping) must not go back to a pool in the middle of it.
async fn copy_chunk(
    m: &Mover,
    source: &mut PgConnection,
    target: &mut PgConnection,
    predicate: &str,
) -> Result<u64, MoveError> {
    let table = ident(&m.spec.table);
    let columns = m
        .columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = sqlx::Connection::begin(target).await.map_err(on_target)?;
    bypass(&mut tx, "target").await?;
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE {predicate}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(on_target)?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
        .await
        .map_err(on_target)?;
    let mut out = source
        .copy_out_raw(&format!(
            "COPY (SELECT {columns} FROM {table} WHERE {predicate}) TO STDOUT"
        ))
        .await
        .map_err(on_source)?;
    while let Some(block) = out.try_next().await.map_err(on_source)? {
        copy.send(block).await.map_err(on_target)?;
    }
    drop(out);
    let rows = copy.finish().await.map_err(on_target)?;
    tx.commit().await.map_err(on_target)?;
    Ok(rows)
}

pub(crate) async fn backfill(m: &Mover) -> Result<(), MoveError> {
    match phase(m).await? {
        Phase::Prepared | Phase::Backfilling => {}
        Phase::RolledBack => return Err(rolled_back(m)),
        _ => return Ok(()),
    }
    set_phase(m, Phase::Backfilling).await?;
    let id = m.spec.id.to_string();
    let mut after: Option<String> =
        sqlx::query_scalar("SELECT copied_after FROM onephase_partition_moves WHERE id = $1")
            .bind(&id)
            .fetch_one(&m.source)
            .await
            .map_err(on_source)?;
    let mut source = m.source.acquire().await.map_err(on_source)?.detach();
    let mut target = m.target.acquire().await.map_err(on_target)?.detach();
    let mut end = chunk_end(m, after.as_deref()).await?;
    loop {
        let started = m.clock.monotonic();
        let predicate = chunk_predicate(m, after.as_deref(), end.as_deref())?;
        // The next chunk's end is looked up while this one copies.
        let next_end = async {
            match &end {
                Some(end) => chunk_end(m, Some(end)).await,
                None => Ok(None),
            }
        };
        let (rows, next_end) = tokio::join!(
            copy_chunk(m, &mut source, &mut target, &predicate),
            next_end
        );
        let (rows, next_end) = (rows?, next_end?);
        let Some(this_end) = end else {
            sqlx::query(
                "UPDATE onephase_partition_moves SET copied_rows = copied_rows + $2,
                        phase = 'catching_up', updated_at = clock_timestamp() WHERE id = $1",
            )
            .bind(&id)
            .bind(version_i64(rows))
            .execute(&m.source)
            .await
            .map_err(on_source)?;
            let _ = sqlx::Connection::close(source).await;
            let _ = sqlx::Connection::close(target).await;
            return Ok(());
        };
        // The checkpoint need not wait for the disk: lost in a crash of the source, it only
        // makes the chunk copy again, which replaces it whole.
        let mut tx = m.source.begin().await.map_err(on_source)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(on_source)?;
        sqlx::query(
            "UPDATE onephase_partition_moves SET copied_after = $2, copied_rows = copied_rows + $3,
                    updated_at = clock_timestamp() WHERE id = $1",
        )
        .bind(&id)
        .bind(&this_end)
        .bind(version_i64(rows))
        .execute(&mut *tx)
        .await
        .map_err(on_source)?;
        tx.commit().await.map_err(on_source)?;
        after = Some(this_end);
        end = next_end;
        if let Some(rate) = m.spec.rows_per_second.filter(|r| *r > 0) {
            let budget = Duration::from_secs_f64(rows as f64 / f64::from(rate));
            m.clock.sleep_until(started + budget).await;
        }
    }
}

fn rolled_back(m: &Mover) -> MoveError {
    MoveError::Invalid(format!(
        "move {} was rolled back; start a new move",
        m.spec.id
    ))
}

/// Applies one batch of logged changes (re-reading each key's row in the source); how many
/// changes it applied.
pub(crate) async fn apply_changes(m: &Mover, limit: i64) -> Result<u64, MoveError> {
    let id = m.spec.id.to_string();
    let pending: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, key FROM onephase_partition_changes
          WHERE move_id = $1 AND applied_round IS NULL ORDER BY seq LIMIT $2",
    )
    .bind(&id)
    .bind(limit.min(APPLY_BATCH))
    .fetch_all(&m.source)
    .await
    .map_err(on_source)?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut keys: Vec<String> = pending.iter().map(|(_, k)| k.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    apply_keys(m, &keys).await?;
    let seqs: Vec<i64> = pending.iter().map(|(s, _)| *s).collect();
    sqlx::query(
        "WITH round AS (UPDATE onephase_partition_moves SET apply_round = apply_round + 1
                         WHERE id = $1 RETURNING apply_round)
         UPDATE onephase_partition_changes SET applied_round = (SELECT apply_round FROM round)
          WHERE seq = ANY($2)",
    )
    .bind(&id)
    .bind(&seqs)
    .execute(&m.source)
    .await
    .map_err(on_source)?;
    Ok(pending.len() as u64)
}

/// Makes the target's rows of `keys` what the source's are now (deleting the ones the source
/// no longer has).
pub(crate) async fn apply_keys(m: &Mover, keys: &[String]) -> Result<(), MoveError> {
    let table = ident(&m.spec.table);
    let key = ident(&m.spec.key);
    let cast = key_array_cast(m);
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT to_jsonb(t) FROM {table} t WHERE {key} = ANY($1::text[]{cast})"
    )))
    .bind(keys)
    .fetch_all(&m.source)
    .await
    .map_err(on_source)?;
    let mut tx = m.target.begin().await.map_err(on_target)?;
    bypass(&mut tx, "target").await?;
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE {key} = ANY($1::text[]{cast})"
    )))
    .bind(keys)
    .execute(&mut *tx)
    .await
    .map_err(on_target)?;
    if !rows.is_empty() {
        let columns: Vec<String> = m.columns.iter().map(|c| ident(c)).collect();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, $1)",
            cols = columns.join(", ")
        )))
        .bind(serde_json::Value::Array(rows))
        .execute(&mut *tx)
        .await
        .map_err(on_target)?;
    }
    tx.commit().await.map_err(on_target)
}

/// Repairs the rows of a chunk that differ between the shards for no logged reason, and
/// returns their keys. A row that differs because of a write the log holds (not yet applied,
/// or applied since the verify began) is explained: the catch-up brings it, and the cutover
/// compares it again under the fence.
async fn unexplained(m: &Mover, predicate: &str) -> Result<Vec<String>, MoveError> {
    let sql = format!(
        "SELECT {key}::text, md5(t::text) FROM {table} t WHERE {predicate}",
        key = ident(&m.spec.key),
        table = ident(&m.spec.table),
    );
    let (source, target) = tokio::join!(
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.as_str())).fetch_all(&m.source),
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.as_str())).fetch_all(&m.target)
    );
    let differing = cutover::differing(source.map_err(on_source)?, target.map_err(on_target)?);
    if differing.is_empty() {
        return Ok(differing);
    }
    let explained: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT c.key FROM onephase_partition_changes c, onephase_partition_moves m
          WHERE m.id = $1 AND c.move_id = m.id AND c.key = ANY($2)
            AND (c.applied_round IS NULL OR c.applied_round >= m.verify_round)",
    )
    .bind(m.spec.id.to_string())
    .bind(&differing)
    .fetch_all(&m.source)
    .await
    .map_err(on_source)?;
    let explained: std::collections::HashSet<String> = explained.into_iter().collect();
    let real: Vec<String> = differing
        .into_iter()
        .filter(|k| !explained.contains(k))
        .collect();
    if !real.is_empty() {
        tracing::warn!(move_id = %m.spec.id, rows = real.len(), first = %real[0], "rows differed with no logged write; copied again");
        apply_keys(m, &real).await?;
    }
    Ok(real)
}

/// The key cast that makes a `text[]` parameter comparable with the key column.
fn key_array_cast(m: &Mover) -> &'static str {
    match m.kind {
        KeyKind::Integer => "::bigint[]",
        KeyKind::Text => "",
    }
}

/// Count and checksum of a chunk's rows, leaving out `except` (keys with a logged write the
/// comparison cannot settle yet). The checksum is the sum of a 64-bit hash of each row's text:
/// independent of order, so neither side sorts, and nothing as long as the chunk is built.
async fn checksum<'c, E>(
    m: &Mover,
    conn: E,
    predicate: &str,
    except: &[String],
) -> Result<(i64, String), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
           FROM {} t WHERE {predicate} AND NOT ({} = ANY($1::text[]{}))",
        ident(&m.spec.table),
        ident(&m.spec.key),
        key_array_cast(m),
    )))
    .bind(except)
    .fetch_one(conn)
    .await
}

/// The keys whose rows may differ for a logged reason: a write not applied yet, or applied
/// since the verify began.
async fn explained_keys<'c, E>(m: &Mover, conn: E) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_scalar(
        "SELECT DISTINCT c.key FROM onephase_partition_changes c, onephase_partition_moves m
          WHERE m.id = $1 AND c.move_id = m.id
            AND (c.applied_round IS NULL OR c.applied_round >= m.verify_round)",
    )
    .bind(m.spec.id.to_string())
    .fetch_all(conn)
    .await
}

/// Whether a chunk's rows agree between the shards, apart from the keys with a logged write.
/// The keys and the source's checksum come from one snapshot, so a write that commits
/// meanwhile is either in both or in neither; the target has no other writer than the move.
async fn chunk_agrees(m: &Mover, predicate: &str) -> Result<bool, MoveError> {
    let mut tx = m.source.begin().await.map_err(on_source)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(on_source)?;
    let except = explained_keys(m, &mut *tx).await.map_err(on_source)?;
    let (source, target) = tokio::join!(
        checksum(m, &mut *tx, predicate, &except),
        checksum(m, &m.target, predicate, &except)
    );
    let (source, target) = (source.map_err(on_source)?, target.map_err(on_target)?);
    tx.commit().await.map_err(on_source)?;
    Ok(source == target)
}

pub(crate) async fn catch_up_and_verify(m: &Mover) -> Result<(), MoveError> {
    match phase(m).await? {
        Phase::CatchingUp => {}
        Phase::RolledBack => return Err(rolled_back(m)),
        Phase::Prepared | Phase::Backfilling => {
            return Err(MoveError::Invalid(format!(
                "move {}: the backfill has not finished",
                m.spec.id
            )));
        }
        _ => return Ok(()),
    }
    m.settle(500, Duration::from_secs(60)).await?;
    let id = m.spec.id.to_string();
    // Keys applied from this round on are checked again under the fence.
    sqlx::query(
        "UPDATE onephase_partition_moves SET verify_round = apply_round + 1,
                chunks_verified = 0, chunks_repaired = 0 WHERE id = $1",
    )
    .bind(&id)
    .execute(&m.source)
    .await
    .map_err(on_source)?;
    let mut after: Option<String> = None;
    loop {
        let end = chunk_end(m, after.as_deref()).await?;
        let predicate = chunk_predicate(m, after.as_deref(), end.as_deref())?;
        let column =
            if chunk_agrees(m, &predicate).await? || unexplained(m, &predicate).await?.is_empty() {
                "chunks_verified"
            } else {
                "chunks_repaired"
            };
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE onephase_partition_moves SET {column} = {column} + 1 WHERE id = $1"
        )))
        .bind(&id)
        .execute(&m.source)
        .await
        .map_err(on_source)?;
        match end {
            Some(end) => after = Some(end),
            None => return Ok(()),
        }
    }
}

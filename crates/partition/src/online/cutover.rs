//! The fence, the switch, the clean-up, and the way back before the switch.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::copy::{self, APPLY_BATCH};
use super::prepare::{bypass, partition_i32, phase, set_phase, version_i64};
use super::sql::{self, ident};
use super::{KeyKind, MoveError, Mover, Phase, on_source, on_target};

/// Rows deleted per statement when a range is cleaned from a shard.
const DELETE_BATCH: u32 = 10_000;

pub(crate) async fn cut_over(m: &Mover) -> Result<(), MoveError> {
    let id = m.spec.id.to_string();
    match phase(m).await? {
        Phase::CatchingUp => {
            let verified: Option<i64> = sqlx::query_scalar(
                "SELECT verify_round FROM onephase_partition_moves WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(&m.source)
            .await
            .map_err(on_source)?;
            if verified.is_none() {
                return Err(MoveError::Invalid(format!(
                    "move {}: not verified yet; catch up and verify first",
                    m.spec.id
                )));
            }
            // Shorten what is left to drain under the fence; briefly, so that the whole
            // cutover fits in a short step timeout (a server killed while fenced leaves the
            // range refused until that timeout lapses and the step is claimed again).
            m.settle(200, Duration::from_secs(5)).await?;
            fence(m).await?;
        }
        Phase::Fenced => {}
        Phase::RolledBack => {
            return Err(MoveError::Invalid(format!(
                "move {} was rolled back",
                m.spec.id
            )));
        }
        Phase::Prepared | Phase::Backfilling => {
            return Err(MoveError::Invalid(format!(
                "move {}: the backfill has not finished",
                m.spec.id
            )));
        }
        Phase::Switched | Phase::Done => return Ok(()),
    }
    // Nothing reaches the range in the source now: drain the log.
    while copy::apply_changes(m, APPLY_BATCH).await? > 0 {}
    check_changed_keys(m).await?;
    // The target accepts the range from the next version on.
    let mut tx = m.target.begin().await.map_err(on_target)?;
    sqlx::query(
        "INSERT INTO onephase_partition_fences (map, partition, version) VALUES ($1, $2, $3)
         ON CONFLICT (map, partition)
         DO UPDATE SET version = greatest(onephase_partition_fences.version, EXCLUDED.version)",
    )
    .bind(&m.spec.map)
    .bind(partition_i32(m.spec.partition)?)
    .bind(version_i64(m.spec.from_version + 1))
    .execute(&mut *tx)
    .await
    .map_err(on_target)?;
    drop_old_guards(m, &mut tx).await?;
    tx.commit().await.map_err(on_target)?;
    switch_map(m).await?;
    sqlx::query(
        "UPDATE onephase_partition_moves SET phase = 'switched',
                switched_at = coalesce(switched_at, clock_timestamp()), updated_at = clock_timestamp()
          WHERE id = $1",
    )
    .bind(&id)
    .execute(&m.source)
    .await
    .map_err(on_source)
    .map(drop)
}

/// Raises the partition's fence in the source. `FOR UPDATE` waits for every write holding the
/// fence row's key-share lock (the trigger's, `admit`'s) to end; every later one sees the new
/// version and is refused.
async fn fence(m: &Mover) -> Result<(), MoveError> {
    let mut tx = m.source.begin().await.map_err(on_source)?;
    sqlx::query(
        "SELECT version FROM onephase_partition_fences WHERE map = $1 AND partition = $2 FOR UPDATE",
    )
    .bind(&m.spec.map)
    .bind(partition_i32(m.spec.partition)?)
    .execute(&mut *tx)
    .await
    .map_err(on_source)?;
    sqlx::query(
        "UPDATE onephase_partition_fences SET version = greatest(version, $3)
          WHERE map = $1 AND partition = $2",
    )
    .bind(&m.spec.map)
    .bind(partition_i32(m.spec.partition)?)
    .bind(version_i64(m.spec.from_version + 1))
    .execute(&mut *tx)
    .await
    .map_err(on_source)?;
    sqlx::query(
        "UPDATE onephase_partition_moves SET phase = 'fenced',
                fenced_at = coalesce(fenced_at, clock_timestamp()), updated_at = clock_timestamp()
          WHERE id = $1",
    )
    .bind(m.spec.id.to_string())
    .execute(&mut *tx)
    .await
    .map_err(on_source)?;
    tx.commit().await.map_err(on_source)
}

/// Compares, row by row, every key applied since the verify began; a difference is applied
/// again, and one that remains is an error (the move then rolls back).
async fn check_changed_keys(m: &Mover) -> Result<(), MoveError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT c.key FROM onephase_partition_changes c, onephase_partition_moves m
          WHERE m.id = $1 AND c.move_id = m.id
            AND (c.applied_round IS NULL OR c.applied_round >= m.verify_round)",
    )
    .bind(m.spec.id.to_string())
    .fetch_all(&m.source)
    .await
    .map_err(on_source)?;
    for batch in keys.chunks(APPLY_BATCH as usize) {
        let differing = differing_keys(m, batch).await?;
        if differing.is_empty() {
            continue;
        }
        copy::apply_keys(m, &differing).await?;
        let still = differing_keys(m, &differing).await?;
        if !still.is_empty() {
            return Err(MoveError::Verify(format!(
                "{} rows still differ between the shards after the fence (first key {:?}): \
                 is something writing to the range in the target?",
                still.len(),
                still[0]
            )));
        }
    }
    Ok(())
}

async fn differing_keys(m: &Mover, keys: &[String]) -> Result<Vec<String>, MoveError> {
    let cast = match m.kind {
        KeyKind::Integer => "::bigint[]",
        KeyKind::Text => "",
    };
    let sql = format!(
        "SELECT {key}::text, md5(t::text) FROM {table} t WHERE {key} = ANY($1::text[]{cast})",
        key = ident(&m.spec.key),
        table = ident(&m.spec.table),
    );
    let (source, target) = tokio::join!(
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.as_str()))
            .bind(keys)
            .fetch_all(&m.source),
        sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.as_str()))
            .bind(keys)
            .fetch_all(&m.target)
    );
    Ok(differing(
        source.map_err(on_source)?,
        target.map_err(on_target)?,
    ))
}

/// The keys whose (key, row digest) pairs differ between two readings.
pub(crate) fn differing(
    mut source: Vec<(String, String)>,
    mut target: Vec<(String, String)>,
) -> Vec<String> {
    source.sort_unstable();
    target.sort_unstable();
    let mut differing: Vec<String> = source
        .iter()
        .filter(|row| target.binary_search(row).is_err())
        .chain(
            target
                .iter()
                .filter(|row| source.binary_search(row).is_err()),
        )
        .map(|(k, _)| k.clone())
        .collect();
    differing.sort_unstable();
    differing.dedup();
    differing
}

/// A range that comes back to a shard it once left meets the guard trigger its earlier move
/// left there; the new owner drops it with the target's fence raised.
async fn drop_old_guards(
    m: &Mover,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), MoveError> {
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT t.tgname::text FROM pg_trigger t
          WHERE t.tgrelid = to_regclass($1) AND t.tgname LIKE 'onephase_move_%'
            AND (string_to_array(encode(t.tgargs, 'escape'), '\\000'))[2] = $2
            AND (string_to_array(encode(t.tgargs, 'escape'), '\\000'))[3] = $3",
    )
    .bind(ident(&m.spec.table))
    .bind(&m.spec.map)
    .bind(m.spec.partition.to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(on_target)?;
    for trigger in triggers {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            ident(&trigger),
            ident(&m.spec.table)
        )))
        .execute(&mut **tx)
        .await
        .map_err(on_target)?;
    }
    Ok(())
}

/// Publishes the map with the partition on the target, one version later.
async fn switch_map(m: &Mover) -> Result<(), MoveError> {
    let spec = &m.spec;
    let current = m.maps.current(&spec.map).await?;
    let owner = current.owners.get(spec.partition as usize);
    if current.version == spec.from_version + 1 && owner == Some(&spec.target) {
        return Ok(());
    }
    if current.version != spec.from_version {
        return Err(MoveError::MapChanged {
            map: spec.map.clone(),
            expected: spec.from_version,
            current: current.version,
        });
    }
    let mut next = current.clone();
    next.version += 1;
    if let Some(slot) = next.owners.get_mut(spec.partition as usize) {
        slot.clone_from(&spec.target);
    }
    if m.maps.compare_and_set(&next).await? {
        Ok(())
    } else {
        let current = m.maps.current(&spec.map).await?;
        Err(MoveError::MapChanged {
            map: spec.map.clone(),
            expected: spec.from_version,
            current: current.version,
        })
    }
}

/// Deletes the range's rows from `pool` in batches, as the mover (the guard lets it through).
async fn delete_range(
    m: &Mover,
    pool: &sqlx::PgPool,
    shard: &'static str,
) -> Result<(), MoveError> {
    let table = ident(&m.spec.table);
    let range = sql::in_range(&m.spec, m.kind, &ident(&m.spec.key))?;
    let err = |source| MoveError::Shard { shard, source };
    loop {
        let mut tx = pool.begin().await.map_err(err)?;
        bypass(&mut tx, shard).await?;
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {range} LIMIT {DELETE_BATCH}))"
        )))
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        tx.commit().await.map_err(err)?;
        if deleted == 0 {
            return Ok(());
        }
    }
}

pub(crate) async fn clean_up(m: &Mover) -> Result<(), MoveError> {
    match phase(m).await? {
        Phase::Switched => {}
        Phase::Done => return Ok(()),
        other => {
            return Err(MoveError::Invalid(format!(
                "move {} is {other:?}: only a switched move is cleaned up",
                m.spec.id
            )));
        }
    }
    // The trigger stays: with the fence raised it refuses every write to the range here.
    delete_range(m, &m.source, "source").await?;
    sqlx::query("DELETE FROM onephase_partition_changes WHERE move_id = $1")
        .bind(m.spec.id.to_string())
        .execute(&m.source)
        .await
        .map_err(on_source)?;
    set_phase(m, Phase::Done).await
}

pub(crate) async fn roll_back(m: &Mover) -> Result<(), MoveError> {
    let spec = &m.spec;
    match phase(m).await {
        Ok(Phase::RolledBack) => return Ok(()),
        Ok(Phase::Switched | Phase::Done) => {
            return Err(MoveError::Invalid(format!(
                "move {} has switched the map: it cannot be rolled back; move the range back \
                 with a new move",
                spec.id
            )));
        }
        Ok(_) => {}
        // Never prepared: nothing to undo.
        Err(MoveError::UnknownMove(_)) => return Ok(()),
        Err(e) => return Err(e),
    }
    sqlx::query(AssertSqlSafe(format!(
        "DROP TRIGGER IF EXISTS {} ON {}",
        ident(&sql::trigger_name(spec)),
        ident(&spec.table)
    )))
    .execute(&m.source)
    .await
    .map_err(on_source)?;
    let fence: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM onephase_partition_fences WHERE map = $1 AND partition = $2",
    )
    .bind(&spec.map)
    .bind(partition_i32(spec.partition)?)
    .fetch_optional(&m.source)
    .await
    .map_err(on_source)?;
    if fence.is_some_and(|f| f > version_i64(spec.from_version)) {
        // Writers were refused at the raised fence: publish the map one version later with
        // the source still the owner, so that they come back.
        let current = m.maps.current(&spec.map).await?;
        let owner = current.owners.get(spec.partition as usize);
        if current.version == spec.from_version + 1 && owner == Some(&spec.target) {
            return Err(MoveError::Invalid(format!(
                "move {}: the map already names the target; it cannot be rolled back",
                spec.id
            )));
        }
        if current.version == spec.from_version {
            let mut next = current.clone();
            next.version += 1;
            m.maps.compare_and_set(&next).await?;
        }
    }
    delete_range(m, &m.target, "target").await?;
    sqlx::query("DELETE FROM onephase_partition_changes WHERE move_id = $1")
        .bind(spec.id.to_string())
        .execute(&m.source)
        .await
        .map_err(on_source)?;
    set_phase(m, Phase::RolledBack).await
}

//! Before anything is copied: both tables checked, the move recorded, the capture trigger
//! installed, in one transaction of the source.

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use super::sql::{self, ident};
use super::{KeyKind, MoveError, MoveSpec, Mover, Phase, on_source, on_target};

/// The key kind and the columns of the table, the same in both shards.
pub(crate) async fn describe(
    spec: &MoveSpec,
    source: &PgPool,
    target: &PgPool,
) -> Result<(KeyKind, Vec<String>), MoveError> {
    let (schema, table) = match spec.table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, spec.table.as_str()),
    };
    let columns_sql = "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2
         ORDER BY ordinal_position";
    let source_columns: Vec<(String, String)> = sqlx::query_as(columns_sql)
        .bind(schema)
        .bind(table)
        .fetch_all(source)
        .await
        .map_err(on_source)?;
    let target_columns: Vec<(String, String)> = sqlx::query_as(columns_sql)
        .bind(schema)
        .bind(table)
        .fetch_all(target)
        .await
        .map_err(on_target)?;
    if source_columns.is_empty() {
        return Err(MoveError::Invalid(format!(
            "table {} does not exist in the source shard {:?}",
            spec.table, spec.source
        )));
    }
    if target_columns != source_columns {
        return Err(MoveError::Invalid(format!(
            "table {} in the target shard {:?} does not have the source's columns in the same \
             order with the same types ({}); create it with the source's definition first",
            spec.table,
            spec.target,
            source_columns
                .iter()
                .map(|(c, t)| format!("{c} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let Some((_, key_type)) = source_columns.iter().find(|(c, _)| *c == spec.key) else {
        return Err(MoveError::Invalid(format!(
            "table {} has no column {:?}",
            spec.table, spec.key
        )));
    };
    let kind = match key_type.as_str() {
        "smallint" | "integer" | "bigint" => KeyKind::Integer,
        "text" | "character varying" => KeyKind::Text,
        other => {
            return Err(MoveError::Invalid(format!(
                "key column {:?} is {other}; a move needs an integer or text key",
                spec.key
            )));
        }
    };
    let unique_sql = "SELECT EXISTS (SELECT 1 FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
          WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1
            AND i.indpred IS NULL AND a.attname = $2)";
    for (shard, pool) in [("source", source), ("target", target)] {
        let unique: bool = sqlx::query_scalar(unique_sql)
            .bind(ident(&spec.table))
            .bind(&spec.key)
            .fetch_one(pool)
            .await
            .map_err(|e| MoveError::Shard { shard, source: e })?;
        if !unique {
            return Err(MoveError::Invalid(format!(
                "{} in the {shard} shard has no unique index on {:?} alone (a primary key will \
                 do); a move copies and replays rows by that key",
                spec.table, spec.key
            )));
        }
    }
    Ok((kind, source_columns.into_iter().map(|(c, _)| c).collect()))
}

/// Marks the transaction as the mover's: the capture trigger lets it through.
pub(crate) async fn bypass(
    tx: &mut Transaction<'_, Postgres>,
    shard: &'static str,
) -> Result<(), MoveError> {
    sqlx::query("SELECT set_config('onephase.partition_bypass', 'on', true)")
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|source| MoveError::Shard { shard, source })
}

/// The move's phase in the source shard.
pub(crate) async fn phase(m: &Mover) -> Result<Phase, MoveError> {
    Ok(super::status(&m.source, m.spec.id).await?.phase)
}

pub(crate) async fn set_phase(m: &Mover, phase: Phase) -> Result<(), MoveError> {
    sqlx::query(
        "UPDATE onephase_partition_moves SET phase = $2, updated_at = clock_timestamp() WHERE id = $1",
    )
    .bind(m.spec.id.to_string())
    .bind(phase.as_str())
    .execute(&m.source)
    .await
    .map(drop)
    .map_err(on_source)
}

/// Runs the DDL of `statements` under one advisory lock, so concurrent moves do not race
/// to create the same tables.
async fn ddl(pool: &PgPool, shard: &'static str, statements: &[&str]) -> Result<(), MoveError> {
    let err = |source| MoveError::Shard { shard, source };
    let mut tx = pool.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('onephase_partition_ddl'))")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    for statement in statements {
        sqlx::query(AssertSqlSafe(*statement))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

pub(crate) async fn prepare(m: &Mover) -> Result<(), MoveError> {
    let spec = &m.spec;
    ddl(&m.target, "target", &[sql::FENCES]).await?;
    let mut statements = vec![sql::FENCES];
    statements.extend_from_slice(sql::MOVES);
    ddl(&m.source, "source", &statements).await?;
    let range = sql::in_range(spec, m.kind, &ident(&spec.key))?;
    let table = ident(&spec.table);
    let mut tx = m.source.begin().await.map_err(on_source)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('onephase_partition_moves'))")
        .execute(&mut *tx)
        .await
        .map_err(on_source)?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT phase FROM onephase_partition_moves WHERE id = $1")
            .bind(spec.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(on_source)?;
    if let Some(phase) = existing {
        return match Phase::parse(&phase) {
            Some(Phase::RolledBack) => Err(MoveError::Invalid(format!(
                "move {} was rolled back; start a new move",
                spec.id
            ))),
            _ => Ok(()),
        };
    }
    let other: Option<String> = sqlx::query_scalar(
        "SELECT id FROM onephase_partition_moves
          WHERE map = $1 AND partition = $2 AND phase NOT IN ('done', 'rolled_back')",
    )
    .bind(&spec.map)
    .bind(partition_i32(spec.partition)?)
    .fetch_optional(&mut *tx)
    .await
    .map_err(on_source)?;
    if let Some(other) = other {
        return Err(MoveError::InProgress {
            map: spec.map.clone(),
            partition: spec.partition,
            id: other.parse().unwrap_or_default(),
        });
    }
    check_map(m).await?;
    refuse_unmovable(m, &mut tx).await?;
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE {range}"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(on_source)?;
    sqlx::query(
        "INSERT INTO onephase_partition_fences (map, partition, version) VALUES ($1, $2, $3)
         ON CONFLICT (map, partition) DO NOTHING",
    )
    .bind(&spec.map)
    .bind(partition_i32(spec.partition)?)
    .bind(version_i64(spec.from_version))
    .execute(&mut *tx)
    .await
    .map_err(on_source)?;
    sqlx::query(
        "INSERT INTO onephase_partition_moves (id, map, partition, spec, phase, total_rows)
         VALUES ($1, $2, $3, $4, 'prepared', $5)",
    )
    .bind(spec.id.to_string())
    .bind(&spec.map)
    .bind(partition_i32(spec.partition)?)
    .bind(sqlx::types::Json(spec))
    .bind(total)
    .execute(&mut *tx)
    .await
    .map_err(on_source)?;
    // The trigger is in the same transaction as the move's row: a move that exists always
    // captures.
    sqlx::query(AssertSqlSafe(sql::create_trigger(spec, m.kind)?))
        .execute(&mut *tx)
        .await
        .map_err(on_source)?;
    tx.commit().await.map_err(on_source)
}

/// Refuses a move the source does not own at its version, a text key column holding keys
/// that read as integers, and a target that already holds rows of the range.
async fn refuse_unmovable(m: &Mover, tx: &mut Transaction<'_, Postgres>) -> Result<(), MoveError> {
    let spec = &m.spec;
    let range = sql::in_range(spec, m.kind, &ident(&spec.key))?;
    let table = ident(&spec.table);
    let fence: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM onephase_partition_fences WHERE map = $1 AND partition = $2",
    )
    .bind(&spec.map)
    .bind(partition_i32(spec.partition)?)
    .fetch_optional(&mut **tx)
    .await
    .map_err(on_source)?;
    if fence.is_some_and(|f| f > version_i64(spec.from_version)) {
        return Err(MoveError::Invalid(format!(
            "the source shard's fence for partition {} is above map version {}: the source \
             does not own it at that version",
            spec.partition, spec.from_version
        )));
    }
    if m.kind == KeyKind::Text {
        let integers: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {} ~ '^(0|-?[1-9][0-9]{{0,18}})$'",
            ident(&spec.key)
        )))
        .fetch_one(&mut **tx)
        .await
        .map_err(on_source)?;
        if integers > 0 {
            return Err(MoveError::Invalid(format!(
                "{integers} keys of {} look like integers: a range map orders those \
                 numerically, before text, which SQL's text order cannot follow; move a table \
                 whose text keys are not integers, or key it by an integer column",
                spec.table
            )));
        }
    }
    let already: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE {range}"
    )))
    .fetch_one(&m.target)
    .await
    .map_err(on_target)?;
    if already > 0 {
        return Err(MoveError::Invalid(format!(
            "the target shard {:?} already holds {already} rows of the range in {}; a move \
             copies into an empty range (delete them, or choose another target)",
            spec.target, spec.table
        )));
    }
    Ok(())
}

/// Refuses a move whose map is not at `from_version` with the source owning the partition.
async fn check_map(m: &Mover) -> Result<(), MoveError> {
    let spec = &m.spec;
    let map = m.maps.current(&spec.map).await?;
    if map.version != spec.from_version {
        return Err(MoveError::MapChanged {
            map: spec.map.clone(),
            expected: spec.from_version,
            current: map.version,
        });
    }
    match map.owners.get(spec.partition as usize) {
        Some(owner) if *owner == spec.source => Ok(()),
        Some(owner) => Err(MoveError::Invalid(format!(
            "partition {} of map {:?} is owned by {owner:?}, not by the source {:?}",
            spec.partition, spec.map, spec.source
        ))),
        None => Err(MoveError::Invalid(format!(
            "map {:?} has no partition {}",
            spec.map, spec.partition
        ))),
    }
}

pub(crate) fn partition_i32(p: u32) -> Result<i32, MoveError> {
    i32::try_from(p).map_err(|_| MoveError::Invalid(format!("partition {p} is too large")))
}

pub(crate) fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

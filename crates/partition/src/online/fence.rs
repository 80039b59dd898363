//! The writer's side of the fence: check, in the writer's own transaction, that the map
//! version it routed with is still good for the partition in this shard.

use sqlx::PgConnection;

use super::MoveError;
use super::prepare::{partition_i32, version_i64};

/// Admits a write to `partition` of `map` by a writer that routed with map version
/// `version`, inside the writer's transaction on the shard it writes to.
///
/// It takes the fence row's key-share lock until the transaction ends, so a cutover waits for
/// this write to commit before it raises the fence, and refuses the write with
/// [`MoveError::Moved`] once the fence is above `version`: the writer fetches the map again and
/// writes to the partition's new owner. A shard without a fence row for the partition admits
/// every version. The fence table must exist in the shard ([`install_fences`]; a move creates
/// it in both of its shards).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// onephase_partition::online::admit(&mut tx, "orders", 3, 7).await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES (42, 10)").execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn admit(
    conn: &mut PgConnection,
    map: &str,
    partition: u32,
    version: u64,
) -> Result<(), MoveError> {
    let fence: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM onephase_partition_fences WHERE map = $1 AND partition = $2
           FOR KEY SHARE",
    )
    .bind(map)
    .bind(partition_i32(partition)?)
    .fetch_optional(conn)
    .await
    .map_err(|source| MoveError::Shard {
        shard: "writer's",
        source,
    })?;
    match fence {
        Some(required) if required > version_i64(version) => Err(MoveError::Moved {
            map: map.to_owned(),
            partition,
            required: u64::try_from(required).unwrap_or(0),
            held: version,
        }),
        _ => Ok(()),
    }
}

/// Creates the fence table in a shard if it is missing, so that writers can [`admit`] before
/// any move.
pub async fn install_fences(pool: &sqlx::PgPool) -> Result<(), MoveError> {
    sqlx::query(super::sql::FENCES)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|source| MoveError::Shard {
            shard: "writer's",
            source,
        })
}

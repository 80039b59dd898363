//! Partition maps kept in the onephase store (SQLite or PostgreSQL): the current version of
//! each map, every version it had, and the index of moves started through the server.
//!
//! A map changes only by compare-and-set on its version, so two changes made at once cannot
//! both win, and versions only rise.

use futures::future::BoxFuture;
use onephase_store::{Migrations, Store, on_store};
use uuid::Uuid;

use crate::online::{MapStore, MoveError, MoveSpec};
use crate::{MapSpec, PartitionError, PartitionMap};

/// The partition component's migrations (maps, their history, the move index).
pub fn migrations() -> Migrations {
    Migrations::new(
        "partition",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

/// A change to a map was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The map is not valid.
    #[error(transparent)]
    Invalid(#[from] PartitionError),
    /// No such map.
    #[error("no partition map {0:?}; create it with PUT /v1/partitions/{0}")]
    Unknown(String),
    /// The version given is not the current one plus one.
    #[error(
        "map {name:?} is at version {current}; a change must give version {} (the current \
         one plus one): fetch it, change it, send it back",
        current + 1
    )]
    Conflict {
        /// The map.
        name: String,
        /// Its current version (0: it does not exist).
        current: u64,
    },
    /// The store failed.
    #[error("partition store: {0}")]
    Store(sqlx::Error),
}

impl From<sqlx::Error> for MapError {
    fn from(e: sqlx::Error) -> Self {
        MapError::Store(e)
    }
}

impl onephase_core::Classify for MapError {
    fn kind(&self) -> onephase_core::ErrorKind {
        use onephase_core::ErrorKind;
        match self {
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::Unknown(_) => ErrorKind::NotFound,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Store(_) => ErrorKind::Unavailable,
        }
    }
}

/// One version of a map and when it was published.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MapVersion {
    /// The map at that version.
    pub spec: MapSpec,
    /// When it was published, in Unix milliseconds.
    pub published_ms: i64,
}

/// A move started through the server.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMove {
    /// The move.
    pub spec: MoveSpec,
    /// The saga run that drives it.
    pub saga_run: Option<Uuid>,
    /// When it was started, in Unix milliseconds.
    pub created_ms: i64,
    /// Whether it ended (done or rolled back).
    pub ended: bool,
}

/// Maps in the onephase store.
#[derive(Debug, Clone)]
pub struct StoreMaps {
    store: Store,
}

impl StoreMaps {
    /// Maps in `store` (migrated with [`migrations`]).
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The current version of `name`.
    pub async fn get(&self, name: &str) -> Result<MapSpec, MapError> {
        let spec: Option<String> = on_store!(read self.store.db(), pool => {
            sqlx::query_scalar("SELECT spec FROM onephase_partition_maps WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        let spec = spec.ok_or_else(|| MapError::Unknown(name.to_owned()))?;
        decode(&spec)
    }

    /// Every map's current version, by name.
    pub async fn list(&self) -> Result<Vec<MapSpec>, MapError> {
        let specs: Vec<String> = on_store!(read self.store.db(), pool => {
            sqlx::query_scalar("SELECT spec FROM onephase_partition_maps ORDER BY name")
                .fetch_all(pool)
                .await?
        });
        specs.iter().map(|s| decode(s)).collect()
    }

    /// Every version of `name`, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<MapVersion>, MapError> {
        let rows: Vec<(String, i64)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(
                "SELECT spec, created_ms FROM onephase_partition_map_history
                  WHERE name = $1 ORDER BY version",
            )
            .bind(name)
            .fetch_all(pool)
            .await?
        });
        rows.iter()
            .map(|(s, at)| {
                Ok(MapVersion {
                    spec: decode(s)?,
                    published_ms: *at,
                })
            })
            .collect()
    }

    /// Publishes `spec` if its version is the current one plus one (1 for a new map);
    /// `Ok(false)` when another version won. Publishing the current version again is a
    /// repeat and succeeds.
    pub async fn publish(&self, spec: &MapSpec, now_ms: i64) -> Result<bool, MapError> {
        PartitionMap::new(spec.clone())?;
        let text =
            serde_json::to_string(spec).map_err(|e| PartitionError::InvalidMap(e.to_string()))?;
        let version = i64::try_from(spec.version).map_err(|_| {
            PartitionError::InvalidMap(format!("version {} is too large", spec.version))
        })?;
        let published: bool = on_store!(self.store.db(), pool => {
            let mut tx = pool.begin().await?;
            let changed = if version == 1 {
                sqlx::query(
                    "INSERT INTO onephase_partition_maps (name, version, spec, updated_ms)
                     VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&spec.name)
                .bind(&text)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE onephase_partition_maps SET version = $2, spec = $3, updated_ms = $4
                      WHERE name = $1 AND version = $2 - 1",
                )
                .bind(&spec.name)
                .bind(version)
                .bind(&text)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if changed == 1 {
                sqlx::query(
                    "INSERT INTO onephase_partition_map_history (name, version, spec, created_ms)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&spec.name)
                .bind(version)
                .bind(&text)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            changed == 1
        });
        if published {
            return Ok(true);
        }
        match self.get(&spec.name).await {
            Ok(current) => Ok(current == *spec),
            Err(MapError::Unknown(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`publish`](Self::publish), with a refusal as [`MapError::Conflict`].
    pub async fn put(&self, spec: &MapSpec, now_ms: i64) -> Result<(), MapError> {
        if self.publish(spec, now_ms).await? {
            return Ok(());
        }
        let current = match self.get(&spec.name).await {
            Ok(current) => current.version,
            Err(MapError::Unknown(_)) => 0,
            Err(e) => return Err(e),
        };
        Err(MapError::Conflict {
            name: spec.name.clone(),
            current,
        })
    }

    /// Records a move started through the server; `Ok(false)` when the map already has a move
    /// that has not ended (moves of one map run one at a time).
    pub async fn index_move(&self, spec: &MoveSpec, now_ms: i64) -> Result<bool, MapError> {
        let text =
            serde_json::to_string(spec).map_err(|e| PartitionError::InvalidMap(e.to_string()))?;
        let inserted = on_store!(self.store.db(), pool => {
            sqlx::query(
                "INSERT INTO onephase_partition_move_index
                   (id, map, partition, source, spec, created_ms, ended)
                 VALUES ($1, $2, $3, $4, $5, $6, 0) ON CONFLICT DO NOTHING",
            )
            .bind(spec.id.to_string())
            .bind(&spec.map)
            .bind(i64::from(spec.partition))
            .bind(&spec.source)
            .bind(&text)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Links a move to the saga run that drives it.
    pub async fn set_saga_run(&self, id: Uuid, run: Uuid) -> Result<(), MapError> {
        on_store!(self.store.db(), pool => {
            sqlx::query("UPDATE onephase_partition_move_index SET saga_run = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(run.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Marks a move ended (done or rolled back), freeing its partition for another.
    pub async fn end_move(&self, id: Uuid) -> Result<(), MapError> {
        on_store!(self.store.db(), pool => {
            sqlx::query("UPDATE onephase_partition_move_index SET ended = 1 WHERE id = $1")
                .bind(id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets a move that never started (its saga could not be started).
    pub async fn unindex_move(&self, id: Uuid) -> Result<(), MapError> {
        on_store!(self.store.db(), pool => {
            sqlx::query("DELETE FROM onephase_partition_move_index WHERE id = $1")
                .bind(id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The moves of `map` (every map when `None`), newest first, at most `limit`.
    pub async fn moves(&self, map: Option<&str>, limit: i64) -> Result<Vec<IndexedMove>, MapError> {
        let rows: Vec<(String, Option<String>, i64, i64)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(
                "SELECT spec, saga_run, created_ms, ended FROM onephase_partition_move_index
                  WHERE ($1 IS NULL OR map = $1) ORDER BY created_ms DESC, id DESC LIMIT $2",
            )
            .bind(map)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(spec, run, created_ms, ended)| {
                Ok(IndexedMove {
                    spec: serde_json::from_str(&spec)
                        .map_err(|e| PartitionError::InvalidMap(format!("stored move: {e}")))?,
                    saga_run: run.and_then(|r| r.parse().ok()),
                    created_ms,
                    ended: ended != 0,
                })
            })
            .collect()
    }

    /// One move by id.
    pub async fn find_move(&self, id: Uuid) -> Result<Option<IndexedMove>, MapError> {
        let rows: Vec<(String, Option<String>, i64, i64)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(
                "SELECT spec, saga_run, created_ms, ended FROM onephase_partition_move_index
                  WHERE id = $1",
            )
            .bind(id.to_string())
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .next()
            .and_then(|(spec, run, created_ms, ended)| {
                Some(IndexedMove {
                    spec: serde_json::from_str(&spec).ok()?,
                    saga_run: run.and_then(|r| r.parse().ok()),
                    created_ms,
                    ended: ended != 0,
                })
            }))
    }
}

fn decode(text: &str) -> Result<MapSpec, MapError> {
    serde_json::from_str(text)
        .map_err(|e| MapError::Invalid(PartitionError::InvalidMap(format!("stored map: {e}"))))
}

/// The store's maps as the mover's [`MapStore`], publishing on the wall clock of `now`.
#[derive(Debug, Clone)]
pub struct StoreMapStore {
    maps: StoreMaps,
    clock: onephase_core::SharedClock,
}

impl StoreMapStore {
    /// `maps`, timed by `clock`.
    pub fn new(maps: StoreMaps, clock: onephase_core::SharedClock) -> Self {
        Self { maps, clock }
    }
}

impl MapStore for StoreMapStore {
    fn compare_and_set(&self, next: &MapSpec) -> BoxFuture<'_, Result<bool, MoveError>> {
        let next = next.clone();
        Box::pin(async move {
            let now = onephase_store::convert::unix_ms(self.clock.now());
            self.maps
                .publish(&next, now)
                .await
                .map_err(|e| MoveError::MapStore(e.to_string()))
        })
    }

    fn current(&self, map: &str) -> BoxFuture<'_, Result<MapSpec, MoveError>> {
        let map = map.to_owned();
        Box::pin(async move {
            self.maps
                .get(&map)
                .await
                .map_err(|e| MoveError::MapStore(e.to_string()))
        })
    }
}

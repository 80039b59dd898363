//! The online move: a key range of a table taken from one PostgreSQL database (a shard) to
//! another while the application keeps writing, with a short fenced pause at the switch.
//!
//! # Phases
//!
//! 1. **Prepare**: check both tables (same columns in the same order, a unique key column of
//!    an integer or text type), create the fence table in both shards and the move's tables in
//!    the source, raise nothing yet, and install a trigger on the source table that records the
//!    key of every write to the moving range in a change log (`onephase_partition_changes`).
//!    A trigger rather than logical decoding: it needs no `wal_level = logical`, no
//!    replication slot that holds WAL if the mover dies, and no superuser; it costs each write
//!    of the table one `to_jsonb` and, inside the range, one insert.
//! 2. **Backfill**: copy the range in chunks in key order, the source's `COPY ... TO STDOUT`
//!    piped into the target's `COPY ... FROM STDIN`, optionally throttled; the last copied key
//!    is the checkpoint. Until the catch-up only the mover writes the range in the target, so
//!    a chunk resumed after a crash deletes what it may have committed and copies again.
//! 3. **Catch up**: for each logged key, read the source row now and write it to the target
//!    (or delete it there): replaying a key twice is harmless, so a crash between applying and
//!    checkpointing loses nothing. Then **verify**: per chunk, the count and the sum of a
//!    64-bit hash of every row on both sides, leaving out the keys with a logged write not yet
//!    settled (read in the same snapshot as the source's sum); a chunk that differs is compared
//!    row by row and the rows that differ for no logged reason are copied again.
//! 4. **Cut over**: raise the partition's fence in the source to the next map version (the
//!    trigger then refuses every write to the range, whoever makes it, and waits for the writes
//!    in flight to commit), drain the change log, compare each key changed since the verify,
//!    raise the fence in the target, and switch the map (compare-and-set on its version). The
//!    pause writers see lasts from the fence to the switch, measured on the source's clock.
//! 5. **Clean up**: delete the range from the source in chunks and the move's log. The trigger
//!    stays, as the range's guard: with the fence raised it refuses any later write to the
//!    range in the source, from a writer that never fetched the map again.
//!
//! A move that fails before the switch is **rolled back**: trigger dropped, the target's copy
//! deleted, and, if the fence was raised, the map republished one version later with the same
//! owner, so writers return to the source. Every phase is idempotent and resumes from its
//! checkpoint, which is what lets a saga drive it across crashes.
//!
//! # What writers do
//!
//! Route with the map, write in a transaction, and call [`admit`] in it first (or rely on the
//! trigger, which refuses the same writes later in the transaction): a [`MoveError::Moved`]
//! means "fetch the map again and write to the new owner".

mod copy;
mod cutover;
mod fence;
mod memory;
mod prepare;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use onephase_core::{Classify, ErrorKind, SharedClock, SystemClock};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::MapSpec;

pub use fence::{admit, install_fences};
pub use memory::MemoryMaps;

/// What a move takes and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MoveSpec {
    /// The move's id.
    pub id: Uuid,
    /// The map whose partition moves.
    pub map: String,
    /// The partition.
    pub partition: u32,
    /// The table (`name` or `schema.name`), the same in both shards.
    pub table: String,
    /// Its key column: unique, of an integer or text type.
    pub key: String,
    /// The range's first key (included); `None` from the lowest.
    pub lo: Option<String>,
    /// The range's end (excluded); `None` to the highest.
    pub hi: Option<String>,
    /// The source shard's name (the partition's owner at `from_version`).
    pub source: String,
    /// The target shard's name.
    pub target: String,
    /// The map version the move starts from; the switch publishes `from_version + 1`.
    pub from_version: u64,
    /// Rows per chunk.
    pub chunk_rows: u32,
    /// At most this many rows per second while copying; `None` for no limit.
    pub rows_per_second: Option<u32>,
}

/// How a key column is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `smallint`, `integer`, `bigint`: numerically.
    Integer,
    /// `text`, `varchar`: by bytes (`COLLATE "C"`).
    Text,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Text => "text",
        }
    }
}

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Trigger installed, nothing copied yet.
    Prepared,
    /// Copying the range.
    Backfilling,
    /// Applying logged changes and verifying.
    CatchingUp,
    /// Fenced: writes to the range are refused until the switch.
    Fenced,
    /// The map names the target; the source still holds the old rows.
    Switched,
    /// Done: the source's rows, trigger and log are gone.
    Done,
    /// Undone before the switch: the source owns the range, the target's copy is gone.
    RolledBack,
}

impl Phase {
    fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Backfilling => "backfilling",
            Self::CatchingUp => "catching_up",
            Self::Fenced => "fenced",
            Self::Switched => "switched",
            Self::Done => "done",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Whether the move has ended (done or rolled back).
    pub fn ended(self) -> bool {
        matches!(self, Self::Done | Self::RolledBack)
    }
}

/// A move's progress, as the source shard records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MoveStatus {
    /// What moves.
    pub spec: MoveSpec,
    /// Where it is.
    pub phase: Phase,
    /// Rows copied by the backfill.
    pub copied_rows: u64,
    /// Rows in the range when the backfill started.
    pub total_rows: u64,
    /// Logged changes not yet applied to the target.
    pub catch_up_lag: u64,
    /// Chunks whose checksums matched.
    pub chunks_verified: u64,
    /// Chunks that differed and were copied again.
    pub chunks_repaired: u64,
    /// How long writes to the range were refused, in milliseconds (fence to switch, on the
    /// source's clock); while fenced, how long so far.
    pub pause_ms: Option<u64>,
    /// The last error, if the move failed or is being retried.
    pub error: Option<String>,
}

/// Publishes a new version of a map; what the switch and a rollback call.
pub trait MapStore: Send + Sync {
    /// Makes `next` the current version of its map if the current version is
    /// `next.version - 1`; `Ok(true)` also when `next` is already current (a repeat).
    fn compare_and_set(
        &self,
        next: &MapSpec,
    ) -> futures::future::BoxFuture<'_, Result<bool, MoveError>>;

    /// The map's current version.
    fn current(&self, map: &str) -> futures::future::BoxFuture<'_, Result<MapSpec, MoveError>>;
}

/// A move failed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoveError {
    /// The request cannot be carried out as given; nothing was changed.
    #[error("invalid move: {0}")]
    Invalid(String),
    /// Another move of the same partition has not ended.
    #[error(
        "partition {partition} of map {map:?} is already moving (move {id}); wait for it to end"
    )]
    InProgress {
        /// The map.
        map: String,
        /// The partition.
        partition: u32,
        /// The move in progress.
        id: Uuid,
    },
    /// No such move in the source shard.
    #[error("no move {0} in the source shard")]
    UnknownMove(Uuid),
    /// A writer holds an older map version than the partition's fence: fetch the map again.
    #[error(
        "partition {partition} of map {map:?} needs map version {required} or later, the writer holds {held}: fetch the map again"
    )]
    Moved {
        /// The map.
        map: String,
        /// The partition.
        partition: u32,
        /// The fence's version.
        required: u64,
        /// The writer's.
        held: u64,
    },
    /// The map changed under the move (another change was published).
    #[error(
        "map {map:?} is at version {current}, the move started from {expected}: it was changed meanwhile; the move is rolled back"
    )]
    MapChanged {
        /// The map.
        map: String,
        /// The version the move needs.
        expected: u64,
        /// The current one.
        current: u64,
    },
    /// Verification kept finding differences after repairs.
    #[error("{0}")]
    Verify(String),
    /// A shard did not answer or refused a statement.
    #[error("{shard} shard: {source}")]
    Shard {
        /// `source` or `target`.
        shard: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The map store failed.
    #[error("map store: {0}")]
    MapStore(String),
}

impl Classify for MoveError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::InProgress { .. } | Self::Moved { .. } | Self::MapChanged { .. } => {
                ErrorKind::Conflict
            }
            Self::UnknownMove(_) => ErrorKind::NotFound,
            Self::Verify(_) | Self::MapStore(_) => ErrorKind::Internal,
            Self::Shard { .. } => ErrorKind::Unavailable,
        }
    }
}

/// An error of the source shard.
fn on_source(source: sqlx::Error) -> MoveError {
    MoveError::Shard {
        shard: "source",
        source,
    }
}

/// An error of the target shard.
fn on_target(source: sqlx::Error) -> MoveError {
    MoveError::Shard {
        shard: "target",
        source,
    }
}

/// Carries out one move's phases over the two shards.
#[derive(Clone, derive_more::Debug)]
pub struct Mover {
    spec: MoveSpec,
    #[debug(skip)]
    source: PgPool,
    #[debug(skip)]
    target: PgPool,
    #[debug(skip)]
    maps: Arc<dyn MapStore>,
    #[debug(skip)]
    clock: SharedClock,
    kind: KeyKind,
    /// The table's columns, in order.
    columns: Vec<String>,
}

impl Mover {
    /// Checks the spec and both tables, and loads what the phases need; changes nothing.
    pub async fn new(
        spec: MoveSpec,
        source: PgPool,
        target: PgPool,
        maps: Arc<dyn MapStore>,
    ) -> Result<Self, MoveError> {
        crate::map::validate_name(&spec.map).map_err(|e| MoveError::Invalid(e.to_string()))?;
        sql::check_ident("table", &spec.table, 2)?;
        sql::check_ident("key column", &spec.key, 1)?;
        if spec.source == spec.target {
            return Err(MoveError::Invalid(format!(
                "source and target are both {:?}: a move needs two shards",
                spec.source
            )));
        }
        if spec.chunk_rows == 0 || spec.chunk_rows > 1_000_000 {
            return Err(MoveError::Invalid(
                "chunk_rows must be 1 to 1,000,000".into(),
            ));
        }
        let (kind, columns) = prepare::describe(&spec, &source, &target).await?;
        if let (Some(lo), Some(hi)) = (&spec.lo, &spec.hi) {
            let ordered = match kind {
                KeyKind::Integer => {
                    sql::literal(kind, lo)?.parse::<i64>().ok()
                        < sql::literal(kind, hi)?.parse::<i64>().ok()
                }
                KeyKind::Text => lo.as_bytes() < hi.as_bytes(),
            };
            if !ordered {
                return Err(MoveError::Invalid(format!(
                    "the range [{lo:?}, {hi:?}) is empty"
                )));
            }
        }
        sql::in_range(&spec, kind, "k")?;
        Ok(Self {
            spec,
            source,
            target,
            maps,
            clock: Arc::new(SystemClock),
            kind,
            columns,
        })
    }

    /// The clock the throttle sleeps on.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The move.
    pub fn spec(&self) -> &MoveSpec {
        &self.spec
    }

    /// Creates the fence tables, records the move (refusing one that overlaps a move of the
    /// same partition that has not ended) and installs the capture trigger. Idempotent.
    pub async fn prepare(&self) -> Result<(), MoveError> {
        prepare::prepare(self).await
    }

    /// Copies the range from the last checkpoint to the end. Idempotent.
    pub async fn backfill(&self) -> Result<(), MoveError> {
        copy::backfill(self).await
    }

    /// Applies the change log, then verifies every chunk by checksum; a chunk that differs is
    /// copied again (writes after that copy are logged and checked at the cutover).
    /// Idempotent.
    pub async fn catch_up_and_verify(&self) -> Result<(), MoveError> {
        copy::catch_up_and_verify(self).await
    }

    /// Fences the range, drains, checks what changed since the verify, switches the map.
    /// Idempotent; after it the move cannot be rolled back.
    pub async fn cut_over(&self) -> Result<(), MoveError> {
        cutover::cut_over(self).await
    }

    /// Deletes the range from the source, drops the trigger and the log. Idempotent.
    pub async fn clean_up(&self) -> Result<(), MoveError> {
        cutover::clean_up(self).await
    }

    /// Undoes a move that has not switched. Idempotent; refused after the switch.
    pub async fn roll_back(&self) -> Result<(), MoveError> {
        cutover::roll_back(self).await
    }

    /// Every phase in turn, from wherever the move is.
    pub async fn run(&self) -> Result<(), MoveError> {
        self.prepare().await?;
        self.backfill().await?;
        self.catch_up_and_verify().await?;
        self.cut_over().await?;
        self.clean_up().await
    }

    /// The move's progress.
    pub async fn status(&self) -> Result<MoveStatus, MoveError> {
        status(&self.source, self.spec.id).await
    }

    /// Applies logged changes until fewer than `threshold` wait or `budget` has passed.
    async fn settle(&self, threshold: u64, budget: Duration) -> Result<(), MoveError> {
        let deadline = self.clock.monotonic() + budget;
        loop {
            let applied = copy::apply_changes(self, 10_000).await?;
            if applied < threshold || self.clock.monotonic() >= deadline {
                return Ok(());
            }
        }
    }
}

/// A move's progress, read from the source shard.
pub async fn status(source: &PgPool, id: Uuid) -> Result<MoveStatus, MoveError> {
    type Row = (
        sqlx::types::Json<MoveSpec>,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<f64>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT m.spec, m.phase, m.copied_rows, m.total_rows,
                (SELECT count(*) FROM onephase_partition_changes c
                  WHERE c.move_id = m.id AND c.applied_round IS NULL),
                m.chunks_verified, m.chunks_repaired,
                extract(epoch FROM coalesce(m.switched_at, clock_timestamp()) - m.fenced_at)::float8 * 1000,
                m.error
           FROM onephase_partition_moves m WHERE m.id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(source)
    .await
    .map_err(on_source)?;
    let Some((spec, phase, copied, total, lag, verified, repaired, pause, error)) = row else {
        return Err(MoveError::UnknownMove(id));
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(MoveStatus {
        spec: spec.0,
        phase: Phase::parse(&phase).ok_or_else(|| {
            MoveError::Invalid(format!("move {id} has an unknown phase {phase:?}"))
        })?,
        copied_rows: count(copied),
        total_rows: count(total),
        catch_up_lag: count(lag),
        chunks_verified: count(verified),
        chunks_repaired: count(repaired),
        pause_ms: pause.map(|p| p.max(0.0).round() as u64),
        error,
    })
}

//! Reading: one stream, a category, everything after a position; as of a position or a time.

use onephase_store::{Db, on_store};
use sqlx::AssertSqlSafe;
use time::OffsetDateTime;

use crate::sql::{EVENT_COLUMNS, EventRow, stored};
use crate::{EventStore, EventsError, RecordedEvent};

/// The most events one read returns.
pub const MAX_READ: u32 = 10_000;

/// Where a read stops: everything, or the store as it was at a position or a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AsOf {
    /// Everything committed.
    #[default]
    Now,
    /// Events at or before this global position.
    Position(u64),
    /// Events recorded at or before this time.
    Time(OffsetDateTime),
}

impl AsOf {
    fn bound(self) -> (i64, i64) {
        match self {
            AsOf::Now => (i64::MAX, i64::MAX),
            AsOf::Position(p) => (i64::try_from(p).unwrap_or(i64::MAX), i64::MAX),
            AsOf::Time(t) => (i64::MAX, onephase_store::convert::unix_ms(t)),
        }
    }
}

/// Recent appends to one stream category.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CategoryActivity {
    /// The category (`order` for `order-42`).
    pub category: String,
    /// Events appended to it among the recent ones.
    pub events: u64,
    /// When its last one was appended.
    pub last_at: OffsetDateTime,
}

impl EventStore {
    /// Up to `limit` events of `stream` after version `after` (0: from the start), in order.
    /// [`EventsError::NoStream`] if nothing was ever appended to it.
    pub async fn read_stream(
        &self,
        stream: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        self.read_stream_as_of(stream, after, limit, AsOf::Now)
            .await
    }

    /// [`read_stream`](Self::read_stream) as the stream was at `as_of` (time travel).
    pub async fn read_stream_as_of(
        &self,
        stream: &str,
        after: u64,
        limit: u32,
        as_of: AsOf,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        let (max_position, max_ms) = as_of.bound();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM onephase_events WHERE stream = $1 AND version > $2 \
             AND position <= $3 AND recorded_ms <= $4 ORDER BY version LIMIT $5"
        );
        let rows: Vec<EventRow> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(stream)
                .bind(stored(after)?)
                .bind(max_position)
                .bind(max_ms)
                .bind(i64::from(limit.min(MAX_READ)))
                .fetch_all(pool)
                .await?
        });
        if rows.is_empty() && self.stream_version(stream).await?.is_none() {
            return Err(EventsError::NoStream(stream.to_owned()));
        }
        self.decode(rows).await
    }

    /// The version of `stream` (its number of events), or `None` if it does not exist.
    pub async fn stream_version(&self, stream: &str) -> Result<Option<u64>, EventsError> {
        let version: Option<i64> = on_store!(read self.store.db(), pool => {
            sqlx::query_scalar("SELECT version FROM onephase_events_streams WHERE stream = $1")
                .bind(stream)
                .fetch_optional(pool)
                .await?
        });
        version.map(crate::sql::position).transpose()
    }

    /// Up to `limit` events of every stream after global position `after`, in order. Never
    /// skips an event that commits late: positions become visible in the order they were
    /// handed out.
    pub async fn read_all(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        let rows = self.rows_after(after, limit, None).await?;
        self.decode(rows).await
    }

    /// Up to `limit` events of the streams of `category` (`order` for `order-42`) after
    /// global position `after`, in order.
    pub async fn read_category(
        &self,
        category: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        let rows = self.rows_after(after, limit, Some(category)).await?;
        self.decode(rows).await
    }

    pub(crate) async fn rows_after(
        &self,
        after: u64,
        limit: u32,
        category: Option<&str>,
    ) -> Result<Vec<EventRow>, EventsError> {
        let filter = if category.is_some() {
            "AND category = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM onephase_events WHERE position > $1 {filter} \
             ORDER BY position LIMIT $2"
        );
        let limit = i64::from(limit.min(MAX_READ));
        let rows = on_store!(read self.store.db(), pool => {
            let mut q = sqlx::query_as(AssertSqlSafe(sql)).bind(stored(after)?).bind(limit);
            if let Some(category) = category {
                q = q.bind(category);
            }
            q.fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// How many of the last `window` events each stream category received, and when its last
    /// one was appended: the busiest first, at most 20.
    pub async fn recent_categories(
        &self,
        window: u64,
    ) -> Result<Vec<CategoryActivity>, EventsError> {
        let head = self.head().await?;
        let from = stored(head.saturating_sub(window))?;
        let rows: Vec<(String, i64, i64)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(
                "SELECT category, COUNT(*), MAX(recorded_ms) FROM onephase_events \
                 WHERE position > $1 GROUP BY category ORDER BY COUNT(*) DESC, category LIMIT 20",
            )
            .bind(from)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(category, events, last)| {
                Ok(CategoryActivity {
                    category,
                    events: crate::sql::position(events)?,
                    last_at: onephase_store::convert::from_unix_ms(last)
                        .map_err(|e| EventsError::corrupt("recorded_ms", e))?,
                })
            })
            .collect()
    }

    /// The events at `positions`, in order of position.
    pub async fn read_positions(
        &self,
        positions: &[u64],
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        let mut rows = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(500) {
            let found: Vec<EventRow> = on_store!(read self.store.db(), pool => {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "SELECT {EVENT_COLUMNS} FROM onephase_events WHERE position IN ("
                ));
                let mut list = q.separated(", ");
                for p in chunk {
                    list.push_bind(stored(*p)?);
                }
                q.push(") ORDER BY position");
                q.build_query_as().fetch_all(pool).await?
            });
            rows.extend(found);
        }
        rows.sort_by_key(|r| r.position);
        self.decode(rows).await
    }

    /// Forgets `subject`: deletes its key, so that its personal fields read as `null` from now
    /// on in every event, and deletes the snapshots of streams holding its events (they may
    /// hold the plaintext). Document projections' rows built from its events are rebuilt
    /// from the redacted events. Further appends of personal data for it are refused.
    /// Returns how many events held its personal data.
    pub async fn forget(&self, subject: &str) -> Result<u64, EventsError> {
        let now = self.now_ms();
        let events: i64 = on_store!(self.store.db(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO onephase_events_subjects (subject, key, created_ms, forgotten_ms) \
                 VALUES ($1, NULL, $2, $2) ON CONFLICT (subject) DO UPDATE \
                 SET key = NULL, forgotten_ms = COALESCE(onephase_events_subjects.forgotten_ms, $2)",
            )
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM onephase_events_snapshots WHERE stream IN \
                 (SELECT stream FROM onephase_events WHERE subject = $1)",
            )
            .bind(subject)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query_scalar(
                "SELECT COUNT(*) FROM onephase_events WHERE subject = $1 AND personal IS NOT NULL",
            )
            .bind(subject)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            n
        });
        crate::projection::document::refresh_subject(self, subject).await?;
        self.scrub().await?;
        crate::sql::position(events)
    }

    /// Overwrites what deleted rows left behind, so a forgotten key is not in the files: on
    /// SQLite the WAL is checkpointed into the database (freed space is zeroed, see
    /// `secure_delete` in the store's pragmas); on PostgreSQL the tables are vacuumed.
    async fn scrub(&self) -> Result<(), EventsError> {
        match self.store.db() {
            Db::Sqlite(lite) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(lite.writer())
                    .await?;
            }
            Db::Postgres(pool) => {
                for table in [
                    "onephase_events_subjects",
                    "onephase_events_snapshots",
                    "onephase_events_documents",
                ] {
                    sqlx::query(AssertSqlSafe(format!("VACUUM {table}")))
                        .execute(pool)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

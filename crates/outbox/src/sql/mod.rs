//! The relay's SQL, once per backend. Both modules offer the same functions; [`Backend`]
//! dispatches on the store.

mod postgres;
mod sqlite;

use std::time::Duration;

use onephase_store::{Db, Store, on_store};
use time::OffsetDateTime;
use uuid::Uuid;

/// A claimed outbox row, as read (not yet validated as an envelope).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub seq: i64,
    pub id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: String,
    pub created_at: OffsetDateTime,
    pub attempts: i32,
}

/// A failed publish, to record.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub seq: i64,
    pub error: String,
    pub dead: bool,
    pub retry_in: Duration,
}

/// One dead-lettered row, for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = DeadRowView))]
pub struct DeadRow {
    /// Position in the outbox (page with `after`).
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The topic.
    pub topic: String,
    /// The key, if any.
    pub key: Option<String>,
    /// Publish attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was dead-lettered.
    #[serde(with = "time::serde::rfc3339::option")]
    pub dead_at: Option<OffsetDateTime>,
}

/// Counts over the outbox, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OutboxStatus {
    /// Rows waiting to be published (including ones backing off after a failure).
    pub pending: i64,
    /// Rows in the dead-letter state.
    pub dead: i64,
    /// Published rows still kept for the retention period.
    pub published_retained: i64,
    /// Age of the oldest pending row: the relay's lag.
    #[serde(serialize_with = "secs")]
    pub oldest_pending_age: Option<Duration>,
}

fn secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// The relay's and the admin's statements, on whichever backend the store has. PostgreSQL
/// times claims and retention on its own clock and ignores `now`; SQLite uses `now`.
pub(crate) struct Sql<'a> {
    db: Db<'a>,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { db: store.db() }
    }

    pub(crate) async fn claim(
        &self,
        relay: Uuid,
        limit: u32,
        claim_for: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<Row>, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::claim(pool, relay, limit, claim_for, now).await)
    }

    /// Marks rows published (deleting them when `keep` is false); returns how many were still
    /// claimed by `relay`.
    pub(crate) async fn published(
        &self,
        relay: Uuid,
        seqs: &[i64],
        keep: bool,
        now: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::published(pool, relay, seqs, keep, now).await)
    }

    pub(crate) async fn failed(
        &self,
        relay: Uuid,
        failures: &[Failure],
        now: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::failed(pool, relay, failures, now).await)
    }

    pub(crate) async fn release(&self, relay: Uuid, seqs: &[i64]) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::release(pool, relay, seqs).await)
    }

    /// Deletes up to `limit` published rows older than `keep`; returns how many.
    pub(crate) async fn prune_published(
        &self,
        keep: Duration,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::prune_published(pool, keep, limit, now).await)
    }

    pub(crate) async fn prune_inbox(
        &self,
        older_than: Duration,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::prune_inbox(pool, older_than, limit, now).await)
    }

    /// PostgreSQL: vacuums the outbox when its dead tuples exceed `threshold`. SQLite has no
    /// dead tuples (freed pages are reused), so nothing to do.
    pub(crate) async fn vacuum_if_needed(
        &self,
        threshold: u64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let threshold = i64::try_from(threshold).unwrap_or(i64::MAX);
        on_store!(self.db, pool, sql: postgres | sqlite => sql::vacuum_if_needed(pool, threshold).await)
    }

    pub(crate) async fn status(&self, now: OffsetDateTime) -> Result<OutboxStatus, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::status(pool, now).await)
    }

    pub(crate) async fn dead(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<DeadRow>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::dead(pool, after_seq, limit).await)
    }

    /// Returns dead rows to pending with a fresh attempt count: the named ones, or all.
    pub(crate) async fn retry(&self, ids: Option<&[Uuid]>) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::retry(pool, ids).await)
    }

    /// Deletes the named dead rows.
    pub(crate) async fn discard(&self, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::discard(pool, ids).await)
    }
}

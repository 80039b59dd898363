//! The embedded log: durable topics inside the onephase store, so that `onephase serve` and
//! the outbox relay work with no broker at all.
//!
//! Each topic is one ordered sequence of records with increasing **positions**; each consumer
//! group remembers the position it has committed. Three properties make it safe to read by
//! position:
//!
//! - **No skipped late commits.** In PostgreSQL, sequence values are not visible in the order
//!   they were handed out: a transaction holding position 10 can commit after one holding 11,
//!   and a reader that already moved past 11 would never see 10. Here a position is taken from
//!   the topic's row with `UPDATE ... RETURNING`, which locks that row until the appending
//!   transaction commits. The next appender to the same topic waits for the lock, so positions
//!   of a topic become visible strictly in order. (SQLite has one writer at a time, which gives
//!   the same order.) The cost: appends to one topic are serialized, one commit at a time; a
//!   batch takes one lock for all its records.
//! - **Idempotent appends.** A record's id is unique within its topic; appending an envelope
//!   whose id is already there is absorbed, so a relay that publishes a batch twice leaves one
//!   copy. Positions skipped by absorbed records leave harmless gaps.
//! - **Committed positions only move forward**, and only past records every earlier one of
//!   which was acknowledged, so an unacknowledged record is delivered again after a restart.
//!
//! Readers wake on PostgreSQL `LISTEN/NOTIFY` (channel `onephase_log`), on an in-process signal
//! when the appender shares this [`EmbeddedLog`], and otherwise poll.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use derive_setters::Setters;
use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::{Envelope, SharedClock, SystemClock};
use onephase_store::{Conn, Connection, Db, Migrations, Store, sqlx};
use sqlx::Row;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::ack::AckTracker;
use crate::wire::format_time;
use crate::{Acknowledge, BrokerError, Delivery, Publisher, Subscriber};

const TRANSPORT: &str = "log";
const CHANNEL: &str = "onephase_log";

/// The tables of the embedded log, to pass to [`Store::migrate`].
pub fn migrations() -> Migrations {
    Migrations::new(
        "log",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

/// A handle on the embedded log in a store. Cheap to clone; clones share the in-process wake-up.
#[derive(Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct EmbeddedLog {
    store: Store,
    appended: Arc<Notify>,
    /// How often readers look for records appended by other processes when no notification
    /// arrives (default 250 ms; PostgreSQL readers are normally woken by `NOTIFY` first).
    #[setters(generate)]
    poll_interval: Duration,
    /// Stamps records and group commits on SQLite with this clock's time (PostgreSQL uses
    /// its own).
    #[setters(generate)]
    clock: SharedClock,
}

/// One record of the log, as [`EmbeddedLog::read`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The record's position in its topic.
    pub position: i64,
    /// The envelope.
    pub envelope: Envelope,
    /// When the log accepted it.
    pub appended_at: OffsetDateTime,
}

impl EmbeddedLog {
    /// The log in `store`, whose [`migrations`] must have run.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            appended: Arc::new(Notify::new()),
            poll_interval: Duration::from_millis(250),
            clock: Arc::new(SystemClock),
        }
    }

    /// Appends `batch` in one transaction and returns each envelope's position (for an
    /// envelope already in its topic, the position it had).
    pub async fn append(&self, batch: &[Envelope]) -> Result<Vec<i64>, BrokerError> {
        Ok(self
            .append_placed(batch)
            .await?
            .into_iter()
            .map(|p| p.position)
            .collect())
    }

    /// Appends `batch` in one transaction and says, for each envelope, where it is and
    /// whether it was new or a repeat of its id (and if so, whether the record holds the same
    /// key, payload and headers).
    pub async fn append_placed(&self, batch: &[Envelope]) -> Result<Vec<Placed>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // One lock per topic, taken in name order so concurrent appenders cannot deadlock.
        let mut by_topic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, envelope) in batch.iter().enumerate() {
            by_topic.entry(envelope.topic()).or_default().push(i);
        }
        let mut positions = vec![
            Placed {
                position: 0,
                new: true,
                same: true,
            };
            batch.len()
        ];
        match self.store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(db_error)?;
                for (topic, indexes) in &by_topic {
                    let first = reserve(&mut *tx, topic, indexes.len()).await?;
                    for (n, &i) in indexes.iter().enumerate() {
                        positions[i] = place_pg(&mut tx, &batch[i], first + n as i64).await?;
                    }
                }
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
            }
            Db::Sqlite(sqlite) => {
                let mut tx = sqlite.writer().begin().await.map_err(db_error)?;
                let now = format_time(self.clock.now());
                for (topic, indexes) in &by_topic {
                    let first = reserve(&mut *tx, topic, indexes.len()).await?;
                    for (n, &i) in indexes.iter().enumerate() {
                        let position = first + n as i64;
                        positions[i] = place_sqlite(&mut tx, &batch[i], position, &now).await?;
                    }
                }
                tx.commit().await.map_err(db_error)?;
            }
        }
        self.appended.notify_waiters();
        Ok(positions)
    }

    /// Up to `limit` records of `topic` after position `after`, in order. Fails if any of
    /// them is not a valid envelope (possible only if the table was edited by hand).
    pub async fn read(
        &self,
        topic: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogRecord>, BrokerError> {
        self.read_each(topic, after, limit)
            .await?
            .into_iter()
            .map(|(_, record)| record)
            .collect()
    }

    /// Like [`read`](Self::read), with each record's position beside its own result, so that
    /// one bad record does not hide the others.
    async fn read_each(
        &self,
        topic: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Result<LogRecord, BrokerError>)>, BrokerError> {
        let rows = match self.store.db() {
            Db::Postgres(pool) => sqlx::query(
                "SELECT position, id::text AS id, key, payload, headers::text AS headers, \
                        created_at, appended_at \
                 FROM onephase_log_records WHERE topic = $1 AND position > $2 \
                 ORDER BY position LIMIT $3",
            )
            .bind(topic)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|row| {
                Ok::<_, sqlx::Error>(RawRecord {
                    position: row.try_get("position")?,
                    id: row.try_get("id")?,
                    key: row.try_get("key")?,
                    payload: row.try_get("payload")?,
                    headers: row.try_get("headers")?,
                    created_at: format_time(row.try_get("created_at")?),
                    appended_at: row.try_get("appended_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?,
            Db::Sqlite(sqlite) => sqlx::query(
                "SELECT position, id, key, payload, headers, created_at, appended_at \
                 FROM onephase_log_records WHERE topic = ?1 AND position > ?2 \
                 ORDER BY position LIMIT ?3",
            )
            .bind(topic)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(sqlite.reader())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|row| {
                let appended: String = row.try_get("appended_at")?;
                Ok::<_, sqlx::Error>(RawRecord {
                    position: row.try_get("position")?,
                    id: row.try_get("id")?,
                    key: row.try_get("key")?,
                    payload: row.try_get("payload")?,
                    headers: row.try_get("headers")?,
                    created_at: row.try_get("created_at")?,
                    appended_at: OffsetDateTime::parse(
                        &appended,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?,
        };
        Ok(rows
            .into_iter()
            .map(|raw| (raw.position, raw.into_record(topic)))
            .collect())
    }

    /// The position group `group` has committed on `topic` (0 before its first commit).
    pub async fn committed(&self, topic: &str, group: &str) -> Result<i64, BrokerError> {
        let committed: Option<i64> = match self.store.db() {
            Db::Postgres(pool) => sqlx::query_scalar(
                "SELECT committed FROM onephase_log_groups WHERE group_name = $1 AND topic = $2",
            )
            .bind(group)
            .bind(topic)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?,
            Db::Sqlite(sqlite) => sqlx::query_scalar(
                "SELECT committed FROM onephase_log_groups WHERE group_name = ?1 AND topic = ?2",
            )
            .bind(group)
            .bind(topic)
            .fetch_optional(sqlite.reader())
            .await
            .map_err(db_error)?,
        };
        Ok(committed.unwrap_or(0))
    }

    /// Records that `group` has handled everything on `topic` up to `position`. Never moves a
    /// group's position backwards.
    pub async fn commit(&self, topic: &str, group: &str, position: i64) -> Result<(), BrokerError> {
        match self.store.db() {
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO onephase_log_groups (group_name, topic, committed) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_name, topic) DO UPDATE \
                   SET committed = GREATEST(onephase_log_groups.committed, EXCLUDED.committed), \
                       updated_at = now()",
            )
            .bind(group)
            .bind(topic)
            .bind(position)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected(),
            Db::Sqlite(sqlite) => sqlx::query(
                "INSERT INTO onephase_log_groups (group_name, topic, committed, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (group_name, topic) DO UPDATE \
                   SET committed = MAX(committed, excluded.committed), updated_at = excluded.updated_at",
            )
            .bind(group)
            .bind(topic)
            .bind(position)
            .bind(format_time(self.clock.now()))
            .execute(sqlite.writer())
            .await
            .map_err(db_error)?
            .rows_affected(),
        };
        Ok(())
    }

    /// A publisher appending to this log.
    pub fn publisher(&self) -> LogPublisher {
        LogPublisher { log: self.clone() }
    }

    /// A subscriber of consumer group `group` on `topic`, starting after the group's committed
    /// position.
    pub async fn subscribe(&self, topic: &str, group: &str) -> Result<LogSubscriber, BrokerError> {
        let cursor = self.committed(topic, group).await?;
        let listener = match self.store.db() {
            Db::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await.map_err(db_error)?;
                listener.listen(CHANNEL).await.map_err(db_error)?;
                Some(listener)
            }
            Db::Sqlite(_) => None,
        };
        Ok(LogSubscriber {
            log: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            cursor,
            buffered: VecDeque::new(),
            acks: Arc::new(Mutex::new(AckTracker::new(cursor))),
            listener,
        })
    }
}

/// Raises `topic`'s next position by `$2` and returns the last reserved one; the same text
/// on both backends.
const RESERVE: &str = "INSERT INTO onephase_log_topics (topic, next_position) VALUES ($1, $2 + 1) \
     ON CONFLICT (topic) DO UPDATE SET next_position = onephase_log_topics.next_position + $2 \
     RETURNING next_position - 1";

/// Reserves `count` positions in `topic`; returns the first.
async fn reserve(
    tx: &mut (impl Connection + ?Sized),
    topic: &str,
    count: usize,
) -> Result<i64, BrokerError> {
    let count = count as i64;
    let last: i64 = match tx.connection() {
        Conn::Postgres(c) => {
            let query = sqlx::query_scalar(RESERVE).bind(topic).bind(count);
            query.fetch_one(c).await
        }
        Conn::Sqlite(c) => {
            let query = sqlx::query_scalar(RESERVE).bind(topic).bind(count);
            query.fetch_one(c).await
        }
    }
    .map_err(db_error)?;
    Ok(last - count + 1)
}

/// Writes `e` at `position`, or finds where its id already is.
async fn place_pg(
    tx: &mut PgConnection,
    e: &Envelope,
    position: i64,
) -> Result<Placed, BrokerError> {
    let placed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO onephase_log_records \
           (topic, position, id, key, payload, headers, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (topic, id) DO NOTHING RETURNING position",
    )
    .bind(e.topic())
    .bind(position)
    .bind(e.id().as_uuid())
    .bind(e.key())
    .bind(e.payload().as_ref())
    .bind(sqlx::types::Json(e.headers()))
    .bind(e.created_at())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    if let Some(p) = placed {
        return Ok(Placed::new(p));
    }
    let (p, key, payload, headers): (i64, Option<String>, Vec<u8>, String) = sqlx::query_as(
        "SELECT position, key, payload, headers::text \
         FROM onephase_log_records WHERE topic = $1 AND id = $2",
    )
    .bind(e.topic())
    .bind(e.id().as_uuid())
    .fetch_one(tx)
    .await
    .map_err(db_error)?;
    Ok(Placed::repeat(p, e, key, &payload, &headers))
}

/// Writes `e` at `position`, appended at `now`, or finds where its id already is.
async fn place_sqlite(
    tx: &mut SqliteConnection,
    e: &Envelope,
    position: i64,
    now: &str,
) -> Result<Placed, BrokerError> {
    let headers =
        serde_json::to_string(e.headers()).map_err(|err| BrokerError::rejected(TRANSPORT, err))?;
    let placed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO onephase_log_records \
           (topic, position, id, key, payload, headers, created_at, appended_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (topic, id) DO NOTHING RETURNING position",
    )
    .bind(e.topic())
    .bind(position)
    .bind(e.id().to_string())
    .bind(e.key())
    .bind(e.payload().as_ref())
    .bind(headers)
    .bind(format_time(e.created_at()))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    if let Some(p) = placed {
        return Ok(Placed::new(p));
    }
    let (p, key, payload, headers): (i64, Option<String>, Vec<u8>, String) = sqlx::query_as(
        "SELECT position, key, payload, headers \
         FROM onephase_log_records WHERE topic = ?1 AND id = ?2",
    )
    .bind(e.topic())
    .bind(e.id().to_string())
    .fetch_one(tx)
    .await
    .map_err(db_error)?;
    Ok(Placed::repeat(p, e, key, &payload, &headers))
}

/// Where [`EmbeddedLog::append_placed`] put an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Its position in its topic.
    pub position: i64,
    /// False when its id was already in the topic: nothing was appended.
    pub new: bool,
    /// For a repeat, whether the record there has the same key, payload and headers.
    pub same: bool,
}

impl Placed {
    fn new(position: i64) -> Self {
        Self {
            position,
            new: true,
            same: true,
        }
    }

    fn repeat(
        position: i64,
        e: &Envelope,
        key: Option<String>,
        payload: &[u8],
        headers: &str,
    ) -> Self {
        let headers: Option<BTreeMap<String, String>> = serde_json::from_str(headers).ok();
        Self {
            position,
            new: false,
            same: key.as_deref() == e.key()
                && payload == e.payload().as_ref()
                && headers.as_ref() == Some(e.headers()),
        }
    }
}

struct RawRecord {
    position: i64,
    id: String,
    key: Option<String>,
    payload: Vec<u8>,
    headers: String,
    created_at: String,
    appended_at: OffsetDateTime,
}

impl RawRecord {
    fn into_record(self, topic: &str) -> Result<LogRecord, BrokerError> {
        let locator = format!("{topic}@{}", self.position);
        let headers: BTreeMap<String, String> = serde_json::from_str(&self.headers)
            .map_err(|e| BrokerError::rejected(TRANSPORT, format!("{locator}: headers: {e}")))?;
        let envelope = crate::wire::Parts {
            topic: topic.to_owned(),
            id: Some(self.id),
            key: self.key,
            payload: Bytes::from(self.payload),
            created_at: Some(self.created_at),
            headers: headers.into_iter().collect(),
        }
        .into_envelope(TRANSPORT, &locator)?;
        Ok(LogRecord {
            position: self.position,
            envelope,
            appended_at: self.appended_at,
        })
    }
}

fn db_error(e: sqlx::Error) -> BrokerError {
    BrokerError::new(
        onephase_store::classify_sqlx(&e),
        TRANSPORT,
        format!("embedded log: {e}"),
    )
}

/// Publishes to the [`EmbeddedLog`]: a batch is one transaction, so its results are all `Ok`
/// or all the same error.
#[derive(Clone)]
pub struct LogPublisher {
    log: EmbeddedLog,
}

impl Publisher for LogPublisher {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            match self.log.append(batch).await {
                Ok(_) => vec![Ok(()); batch.len()],
                Err(e) => vec![Err(e); batch.len()],
            }
        }
        .boxed()
    }
}

/// A consumer group's reader of one topic of the [`EmbeddedLog`].
pub struct LogSubscriber {
    log: EmbeddedLog,
    topic: String,
    group: String,
    cursor: i64,
    buffered: VecDeque<(i64, Result<LogRecord, BrokerError>)>,
    acks: Arc<Mutex<AckTracker>>,
    listener: Option<PgListener>,
}

impl LogSubscriber {
    /// Waits until `appended` fires, a notification arrives, or the poll interval passes.
    async fn wait_for_more(
        &mut self,
        appended: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) {
        let poll = tokio::time::sleep(self.log.poll_interval);
        match &mut self.listener {
            Some(listener) => {
                tokio::select! {
                    _ = appended => {}
                    _ = poll => {}
                    // A lost listener connection is re-established by sqlx on the next call;
                    // until then the poll interval bounds the delay.
                    _ = listener.recv() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = appended => {}
                    _ = poll => {}
                }
            }
        }
    }
}

impl Subscriber for LogSubscriber {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>> {
        async move {
            loop {
                if let Some((position, record)) = self.buffered.pop_front() {
                    self.cursor = position;
                    if let Ok(mut acks) = self.acks.lock() {
                        acks.delivered(position);
                    }
                    let acker = LogAck {
                        log: self.log.clone(),
                        topic: self.topic.clone(),
                        group: self.group.clone(),
                        position,
                        acks: Arc::clone(&self.acks),
                    };
                    return match record {
                        Ok(record) => Ok(Delivery::new(record.envelope, false, Box::new(acker))),
                        Err(e) => {
                            // Not deliverable: acknowledge it so the group moves past it.
                            Box::new(acker).ack().await?;
                            Err(e)
                        }
                    };
                }
                // Register for the in-process signal before reading, so an append between the
                // read and the wait is not missed.
                let signal = Arc::clone(&self.log.appended);
                let appended = signal.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                let records = self.log.read_each(&self.topic, self.cursor, 256).await?;
                if records.is_empty() {
                    self.wait_for_more(appended).await;
                }
                self.buffered.extend(records);
            }
        }
        .boxed()
    }
}

struct LogAck {
    log: EmbeddedLog,
    topic: String,
    group: String,
    position: i64,
    acks: Arc<Mutex<AckTracker>>,
}

impl Acknowledge for LogAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        async move {
            let to_commit = self
                .acks
                .lock()
                .map_err(|_| {
                    BrokerError::new(
                        onephase_core::ErrorKind::Internal,
                        TRANSPORT,
                        "ack tracker poisoned",
                    )
                })?
                .ack(self.position);
            if let Some(position) = to_commit {
                self.log.commit(&self.topic, &self.group, position).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

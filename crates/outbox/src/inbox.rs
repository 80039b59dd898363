use futures::future::BoxFuture;
use onephase_core::{Envelope, MessageId};
use onephase_store::{Conn, Store};
use std::time::Duration;

use crate::OutboxError;
use crate::sql::Sql;

/// A connection or transaction the inbox can record in: the store's one connection bound,
/// as for [`OutboxConnection`](crate::OutboxConnection).
pub use onephase_store::Connection as InboxConnection;

/// Records `id` for `consumer` unless it is there; `true` when it was new.
const RECORD_PG: &str = "INSERT INTO onephase_inbox (consumer, message_id) VALUES ($1, $2) \
     ON CONFLICT DO NOTHING";
const RECORD_SQLITE: &str = "INSERT OR IGNORE INTO onephase_inbox \
     (consumer, message_id, processed_at) \
     VALUES (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))";

/// What [`Inbox::process`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time this consumer saw the id: the handler ran and returned this.
    Applied(T),
    /// The id was already recorded: the handler did not run.
    Duplicate,
}

/// An idempotent consumer: applies each message id's effect once per consumer name.
///
/// The id is recorded in the consumer's own transaction, beside the effect. If the
/// transaction commits, both are there and a redelivery is recognised; if it rolls back (or the
/// process dies first), neither is, and the redelivery is applied. That is what turns a
/// broker's at-least-once into an effect exactly once — for effects inside that database.
/// An effect outside it (an email, an HTTP call) is not covered: make it idempotent itself.
///
/// On PostgreSQL two transactions recording the same id at once do not both proceed: the
/// second waits on the first's uncommitted row, then sees a duplicate (or, if the first rolled
/// back, applies).
#[derive(Debug, Clone)]
pub struct Inbox {
    consumer: String,
}

impl Inbox {
    /// The inbox of consumer `consumer` (a stable name: ids are de-duplicated per consumer).
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
        }
    }

    /// Records `id` in `tx`; `true` the first time, `false` for a duplicate.
    pub async fn record<C: InboxConnection + ?Sized>(
        &self,
        tx: &mut C,
        id: MessageId,
    ) -> Result<bool, OutboxError> {
        let consumer = self.consumer.as_str();
        let inserted = match tx.connection() {
            Conn::Postgres(c) => {
                let query = sqlx::query(RECORD_PG).bind(consumer).bind(id.as_uuid());
                query.execute(c).await?.rows_affected()
            }
            Conn::Sqlite(c) => {
                let query = sqlx::query(RECORD_SQLITE)
                    .bind(consumer)
                    .bind(id.to_string());
                query.execute(c).await?.rows_affected()
            }
        };
        Ok(inserted == 1)
    }

    /// Runs `handler` in `tx` if `envelope`'s id is new to this consumer, and records the id.
    /// Commit `tx` afterwards (and only then acknowledge the message to the broker).
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, envelope: onephase_core::Envelope) -> Result<(), onephase_outbox::OutboxError> {
    /// use futures::FutureExt;
    /// use onephase_outbox::{Inbox, Processed};
    ///
    /// let inbox = Inbox::new("billing");
    /// let mut tx = pool.begin().await?;
    /// let outcome = inbox
    ///     .process(&mut tx, &envelope, |tx| {
    ///         async move {
    ///             sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 7")
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             Ok::<_, onephase_outbox::OutboxError>(())
    ///         }
    ///         .boxed()
    ///     })
    ///     .await?;
    /// tx.commit().await?;
    /// assert!(matches!(outcome, Processed::Applied(()) | Processed::Duplicate));
    /// # Ok(()) }
    /// ```
    pub async fn process<C, T, E, F>(
        &self,
        tx: &mut C,
        envelope: &Envelope,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        C: InboxConnection + ?Sized,
        E: From<OutboxError>,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, E>>,
    {
        self.process_id(tx, envelope.id(), handler).await
    }

    /// [`process`](Self::process) for a message known by its id alone (a webhook's, say).
    pub async fn process_id<C, T, E, F>(
        &self,
        tx: &mut C,
        id: MessageId,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        C: InboxConnection + ?Sized,
        E: From<OutboxError>,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, E>>,
    {
        if !self.record(tx, id).await? {
            return Ok(Processed::Duplicate);
        }
        handler(tx).await.map(Processed::Applied)
    }

    /// Deletes up to `limit` inbox rows (of every consumer) recorded more than `older_than` ago;
    /// returns how many. Keep rows longer than any redelivery can arrive (the broker's
    /// retention, the relay's longest retry): a redelivery after its row is gone is applied
    /// again. `now` is the time ages are measured from on SQLite (PostgreSQL uses its own
    /// clock): pass your clock's `now()`.
    pub async fn prune(
        store: &Store,
        older_than: Duration,
        limit: u32,
        now: time::OffsetDateTime,
    ) -> Result<u64, OutboxError> {
        Ok(Sql::new(store).prune_inbox(older_than, limit, now).await?)
    }
}

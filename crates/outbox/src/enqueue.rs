use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::{Envelope, MessageId};
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};

use crate::OutboxError;

/// The largest payload [`enqueue`] accepts by default: 1 MiB, the default message limit of
/// Kafka and NATS. Use [`enqueue_with_limit`] for another.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A connection or transaction the outbox can write to: PostgreSQL or SQLite, a bare
/// connection or a [`Transaction`]. Sealed; implemented for sqlx's types.
pub trait OutboxConnection: sealed::Sealed + Send {
    #[doc(hidden)]
    fn insert<'a>(&'a mut self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    #[doc(hidden)]
    fn record_inbox<'a>(
        &'a mut self,
        consumer: &'a str,
        id: MessageId,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::PgConnection {}
    impl Sealed for sqlx::SqliteConnection {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Postgres> {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Sqlite> {}
}

/// Writes `envelope` to the outbox as part of the caller's transaction.
///
/// The row commits or rolls back with everything else in `tx`: if the business change
/// commits, the event will be published (at least once); if it rolls back, the event never
/// existed. Nothing is sent here; a [`Relay`](crate::Relay) publishes after commit.
///
/// Fails, writing nothing, when the payload is over [`DEFAULT_MAX_PAYLOAD`] or the id is
/// already in the outbox (a unique violation, which also aborts a PostgreSQL transaction).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use onephase_core::{Envelope, MessageId};
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)")
///     .bind(42_i64)
///     .bind(1999_i64)
///     .execute(&mut *tx)
///     .await?;
/// let event = Envelope::builder("orders.created", r#"{"order":42}"#).key("order-42").build()?;
/// onephase_outbox::enqueue(&mut tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue<C: OutboxConnection + ?Sized>(
    tx: &mut C,
    envelope: &Envelope,
) -> Result<(), OutboxError> {
    enqueue_with_limit(tx, envelope, DEFAULT_MAX_PAYLOAD).await
}

/// [`enqueue`] with a payload limit of `max_payload` bytes.
pub async fn enqueue_with_limit<C: OutboxConnection + ?Sized>(
    tx: &mut C,
    envelope: &Envelope,
    max_payload: usize,
) -> Result<(), OutboxError> {
    let size = envelope.payload().len();
    if size > max_payload {
        return Err(OutboxError::PayloadTooLarge {
            size,
            limit: max_payload,
        });
    }
    tx.insert(envelope).await?;
    crate::wake::enqueued();
    Ok(())
}

fn insert_pg<'a>(
    conn: &'a mut PgConnection,
    e: &'a Envelope,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    async move {
        sqlx::query(
            "INSERT INTO onephase_outbox (id, topic, key, payload, headers, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.id().as_uuid())
        .bind(e.topic())
        .bind(e.key())
        .bind(e.payload().as_ref())
        .bind(sqlx::types::Json(e.headers()))
        .bind(e.created_at())
        .execute(conn)
        .await
        .map(drop)
    }
    .boxed()
}

fn insert_sqlite<'a>(
    conn: &'a mut SqliteConnection,
    e: &'a Envelope,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    async move {
        let headers =
            serde_json::to_string(e.headers()).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
        sqlx::query(
            "INSERT INTO onephase_outbox (id, topic, key, payload, headers, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(e.id().to_string())
        .bind(e.topic())
        .bind(e.key())
        .bind(e.payload().as_ref())
        .bind(headers)
        .bind(onephase_broker::wire::format_time(e.created_at()))
        .execute(conn)
        .await
        .map(drop)
    }
    .boxed()
}

/// Both backends' statements, for each connection and transaction type of that backend.
macro_rules! outbox_connection {
    ($($ty:ty => $insert:ident, $record:ident;)*) => {$(
        impl OutboxConnection for $ty {
            fn insert<'a>(&'a mut self, e: &'a Envelope) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                $insert(self, e)
            }

            fn record_inbox<'a>(
                &'a mut self,
                consumer: &'a str,
                id: MessageId,
            ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
                crate::inbox::$record(self, consumer, id)
            }
        }
    )*};
}

outbox_connection! {
    PgConnection => insert_pg, record_pg;
    SqliteConnection => insert_sqlite, record_sqlite;
    Transaction<'_, Postgres> => insert_pg, record_pg;
    Transaction<'_, Sqlite> => insert_sqlite, record_sqlite;
}

use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::Envelope;
use onephase_store::Conn;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection};

use crate::OutboxError;

/// The largest payload [`enqueue`] accepts by default: 1 MiB, the default message limit of
/// Kafka and NATS. Use [`enqueue_with_limit`] for another.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A connection or transaction the outbox can write to: PostgreSQL or SQLite, a bare
/// connection or a [`Transaction`](sqlx::Transaction). The store's one connection bound,
/// under the name this crate's documentation has always used.
pub use onephase_store::Connection as OutboxConnection;

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
    enqueue_all_with_limit(tx, std::slice::from_ref(envelope), max_payload).await
}

/// [`enqueue`] for several envelopes, in one statement per thousand: cheaper than one
/// [`enqueue`] each when a transaction emits several events. All or nothing: if one is over
/// the payload limit, none is written.
pub async fn enqueue_all<C: OutboxConnection + ?Sized>(
    tx: &mut C,
    envelopes: &[Envelope],
) -> Result<(), OutboxError> {
    enqueue_all_with_limit(tx, envelopes, DEFAULT_MAX_PAYLOAD).await
}

/// [`enqueue_all`] with a payload limit of `max_payload` bytes.
pub async fn enqueue_all_with_limit<C: OutboxConnection + ?Sized>(
    tx: &mut C,
    envelopes: &[Envelope],
    max_payload: usize,
) -> Result<(), OutboxError> {
    if let Some(size) = envelopes
        .iter()
        .map(|e| e.payload().len())
        .find(|size| *size > max_payload)
    {
        return Err(OutboxError::PayloadTooLarge {
            size,
            limit: max_payload,
        });
    }
    for chunk in envelopes.chunks(1000) {
        match tx.connection() {
            Conn::Postgres(c) => insert_pg(c, chunk).await?,
            Conn::Sqlite(c) => insert_sqlite(c, chunk).await?,
        }
    }
    if !envelopes.is_empty() {
        crate::wake::enqueued();
    }
    Ok(())
}

fn insert_pg<'a>(
    conn: &'a mut PgConnection,
    envelopes: &'a [Envelope],
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    async move {
        let mut query = sqlx::QueryBuilder::<Postgres>::new(
            "INSERT INTO onephase_outbox (id, topic, key, payload, headers, created_at) ",
        );
        query.push_values(envelopes, |mut row, e| {
            row.push_bind(e.id().as_uuid())
                .push_bind(e.topic())
                .push_bind(e.key())
                .push_bind(e.payload().as_ref())
                .push_bind(sqlx::types::Json(e.headers()))
                .push_bind(e.created_at());
        });
        query.build().execute(conn).await.map(drop)
    }
    .boxed()
}

fn insert_sqlite<'a>(
    conn: &'a mut SqliteConnection,
    envelopes: &'a [Envelope],
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    async move {
        let headers = envelopes
            .iter()
            .map(|e| serde_json::to_string(e.headers()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
        let mut query = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO onephase_outbox (id, topic, key, payload, headers, created_at) ",
        );
        query.push_values(envelopes.iter().zip(headers), |mut row, (e, headers)| {
            row.push_bind(e.id().to_string())
                .push_bind(e.topic())
                .push_bind(e.key())
                .push_bind(e.payload().as_ref())
                .push_bind(headers)
                .push_bind(onephase_broker::wire::format_time(e.created_at()));
        });
        query.build().execute(conn).await.map(drop)
    }
    .boxed()
}

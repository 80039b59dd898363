//! Projections: read models built from the events, that can be operated and debugged.
//!
//! A projection applies events in global order to tables of its own. What makes one operable:
//!
//! - **Effects once.** Its checkpoint (the last position applied) is written in the same
//!   transaction as its writes, so a crash (even `kill -9`) between the two cannot happen: a
//!   batch is applied and checkpointed, or neither.
//! - **A poison event parks it.** An event it fails on (its own error, an unknown type, an
//!   upcaster failing) stops it *at that event* with the error stored, and the events before it
//!   are applied. An operator retries it (after a fix) or skips the event; both are audited.
//!   Nothing is skipped silently.
//! - **Blue/green rebuilds.** A rebuild starts a new generation from position 0 beside the live
//!   one; readers keep reading the live one. When the new one has caught up with the live one,
//!   one transaction makes it live and drops the old generation's rows.
//! - **Read your writes.** An append returns its position; [`Projections::wait_for`] waits
//!   (bounded) until the live generation has applied it, and answers clearly if it has not.
//! - **Why does this row say that?** Every row key a projection touches is recorded with the
//!   event's position ([`ProjectionTx::touched`]), so [`Projections::explain`] lists the events
//!   that built a row, in order.
//!
//! A Rust projection implements [`Projection`]; services in other languages define
//! [`DocumentDefinition`]s (JSON rows merged from event data) through the server.

pub(crate) mod admin;
pub(crate) mod document;
mod runner;

use futures::future::BoxFuture;
use onephase_store::Conn;
use sqlx::{Postgres, Sqlite, Transaction};

use crate::RecordedEvent;

pub use admin::{Explanation, ProjectionStatus, Projections};
pub use document::{Document, DocumentAction, DocumentDefinition, DocumentKey, DocumentProjection};
pub use runner::Projector;

/// What a projection's `apply` returns on failure: any error, shown to the operator.
pub type ProjectionError = Box<dyn std::error::Error + Send + Sync>;

/// A read model built from events. See the [module documentation](self).
///
/// ```
/// use futures::future::BoxFuture;
/// use onephase_events::{Projection, ProjectionError, ProjectionTx, RecordedEvent};
/// use onephase_store::Conn;
///
/// /// Orders per customer, in a table with a generation column for blue/green rebuilds.
/// struct OrdersPerCustomer;
///
/// impl Projection for OrdersPerCustomer {
///     fn name(&self) -> &str { "orders-per-customer" }
///     fn apply<'a>(&'a self, tx: &'a mut ProjectionTx, event: &'a RecordedEvent)
///         -> BoxFuture<'a, Result<(), ProjectionError>> {
///         Box::pin(async move {
///             if event.event_type != "OrderPlaced" { return Ok(()); }
///             let customer: String = serde_json::from_str::<serde_json::Value>(event.data.get())?
///                 ["customer"].as_str().unwrap_or_default().to_owned();
///             let (generation, position) = (tx.generation() as i64, event.position as i64);
///             let sql = "INSERT INTO orders_per_customer (generation, customer, orders, position) \
///                        VALUES ($1, $2, 1, $3) ON CONFLICT (generation, customer) \
///                        DO UPDATE SET orders = orders_per_customer.orders + 1, position = $3";
///             match tx.connection() {
///                 Conn::Postgres(c) => { sqlx::query(sql).bind(generation).bind(&customer).bind(position).execute(c).await?; }
///                 Conn::Sqlite(c) => { sqlx::query(sql).bind(generation).bind(&customer).bind(position).execute(c).await?; }
///             }
///             tx.touched(customer);
///             Ok(())
///         })
///     }
///     fn drop_generation<'a>(&'a self, tx: &'a mut ProjectionTx, generation: u64)
///         -> BoxFuture<'a, Result<(), ProjectionError>> {
///         Box::pin(async move {
///             let sql = "DELETE FROM orders_per_customer WHERE generation = $1";
///             match tx.connection() {
///                 Conn::Postgres(c) => { sqlx::query(sql).bind(generation as i64).execute(c).await?; }
///                 Conn::Sqlite(c) => { sqlx::query(sql).bind(generation as i64).execute(c).await?; }
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// Its name: the key of its checkpoint. 1 to 200 letters, digits and `-_.:@`.
    fn name(&self) -> &str;

    /// Applies one event, writing through `tx` (the transaction that also records the
    /// checkpoint). Events arrive in global order, each once per generation. An error parks
    /// the projection at this event.
    fn apply<'a>(
        &'a self,
        tx: &'a mut ProjectionTx,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Writes what `apply` kept back during the batch, just before the checkpoint moves in the
    /// same transaction. The default writes nothing (`apply` wrote as it went).
    fn flush<'a>(&'a self, tx: &'a mut ProjectionTx) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let _ = tx;
        Box::pin(async { Ok(()) })
    }

    /// Deletes the rows of `generation`, which a rebuild has replaced.
    fn drop_generation<'a>(
        &'a self,
        tx: &'a mut ProjectionTx,
        generation: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

pub(crate) enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// The transaction a projection writes its rows in: the same one that moves its checkpoint.
#[derive(derive_more::Debug)]
pub struct ProjectionTx {
    #[debug(skip)]
    pub(crate) tx: Tx,
    pub(crate) generation: u64,
    pub(crate) position: u64,
    #[debug(skip)]
    pub(crate) touched: Vec<(String, u64)>,
    /// Document rows changed in this batch and not yet written: a row changed by many events
    /// of a batch is read once and written once ([`Projection::flush`]).
    #[debug(skip)]
    pub(crate) documents: std::collections::HashMap<String, Option<document::PendingRow>>,
}

impl ProjectionTx {
    /// The connection of the transaction, by backend.
    pub fn connection(&mut self) -> Conn<'_> {
        match &mut self.tx {
            Tx::Postgres(tx) => Conn::Postgres(tx),
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    /// The generation being written: live, or a rebuild beside it. Rows of different
    /// generations must not collide (a generation column, or a table per generation).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The global position of the event being applied (store it on the rows it changes).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records that the event being applied changed the row `key`, for
    /// [`Projections::explain`].
    pub fn touched(&mut self, key: impl Into<String>) {
        self.touched.push((key.into(), self.position));
    }
}

//! The transactional outbox, its relay, and the inbox.
//!
//! A service that changes its database and must tell another system about it cannot do both
//! atomically: the broker is not in the transaction. The outbox puts the message *in* the
//! transaction instead. [`enqueue`] inserts the envelope into the `onephase_outbox` table with
//! the caller's own sqlx transaction; the message exists if and only if the business change
//! committed. A [`Relay`] then publishes committed rows to any
//! [`Publisher`](onephase_broker::Publisher) and records the outcome. On the receiving side,
//! an [`Inbox`] records each message id in the consumer's transaction, so a redelivered message
//! has its effect once.
//!
//! # Guarantees
//!
//! - **At least once.** A row is deleted (or marked published) only after the broker
//!   acknowledged it. A relay that dies between the acknowledgement and the mark publishes it
//!   again after its claim expires: duplicates are possible, losses are not.
//! - **Order per key.** No row is published before every earlier row (by `seq`) of its key
//!   has been acknowledged by the broker. Three mechanisms together:
//!   1. *Claims.* A relay claims only rows that have no earlier unpublished row of the same
//!      key outside its own claim: not one held by another relay, not one backing off after a
//!      failure, not a dead-lettered one. PostgreSQL relays claim with `FOR UPDATE SKIP LOCKED`
//!      and check against the statement's snapshot, in which another relay's rows are still
//!      unpublished, so a race can only hold a row back for a round, never let it through.
//!   2. *Waves.* Within a claim, the n-th row of each key is published in wave n, and wave
//!      n+1 starts only after every acknowledgement of wave n. Two rows of one key are never in
//!      flight together, so a broker failure cannot reorder them.
//!   3. *Failure holds the key.* When a row fails, the later rows of its key in the same claim
//!      are released unsent; they stay behind it while it backs off, and behind it if it is
//!      dead-lettered, until an operator retries or discards it.
//!
//!   What `seq` order means: the order in which rows were inserted, which is commit order for
//!   writers that serialize on the key, as any two transactions updating the same entity do
//!   (a row lock on the entity). Two transactions that insert rows for one key concurrently,
//!   without such a lock, get an arbitrary order between them. Rows without a key are
//!   unordered. Order on the wire then depends on the broker keeping a key in one
//!   partition (Kafka) or one stream (the others).
//!
//!   What breaks order: a relay stalled for longer than the claim timeout, whose claim was
//!   taken over, may still publish a stale copy of a row *after* a later row of its key
//!   (a duplicate of a row already delivered, which an inbox drops); and an operator
//!   discarding a dead row.
//! - **Poison rows stay contained.** A row that cannot be published (an invalid topic or
//!   header written by plain SQL, a payload over the limit, a broker that keeps refusing it)
//!   is dead-lettered with its last error, visible through [`OutboxAdmin`]. It holds back only
//!   the later rows of its own key; every other key flows.
//! - **No skipped late commits.** Sequence values are handed out before commit, so a row with
//!   a smaller `seq` can become visible after a larger one. The relay never reads by position:
//!   every round claims whatever is unpublished, so a late row is claimed in the next round.
//!   The embedded log, which consumers *do* read by position, hands out positions under a
//!   per-topic lock instead (see `onephase_broker::log`).
//!
//! # Retention
//!
//! By default a published row is deleted by the same bounded statement that would mark it
//! (`DELETE ... WHERE seq = ANY(batch)`), so the table holds only unpublished rows.
//! With [`RelayConfig::keep_published`], rows are marked and later deleted in batches of
//! [`RelayConfig::retention_batch`]; never by one unbounded `DELETE`. The PostgreSQL table is
//! created with aggressive autovacuum settings so the dead tuples of a high-churn queue table
//! are reclaimed early.
//!
//! # The table is a contract
//!
//! Services in any language can insert with plain SQL in their own transaction; see
//! `docs/outbox.md` for the columns. A row the relay cannot turn into a valid envelope is
//! dead-lettered with the reason, never silently dropped.

mod enqueue;
mod error;
mod inbox;
mod metrics;
mod operator;
mod relay;
mod sql;
mod wake;

use onephase_store::{Migrations, sqlx};

pub use enqueue::{
    DEFAULT_MAX_PAYLOAD, OutboxConnection, enqueue, enqueue_all, enqueue_all_with_limit,
    enqueue_with_limit,
};
pub use error::OutboxError;
pub use inbox::{Inbox, InboxConnection, Processed};
pub use operator::OutboxAdmin;
pub use relay::{Relay, RelayConfig, RelayStats, RoundReport};
pub use sql::{DeadRow, OutboxStatus};

/// The outbox and inbox tables, to pass to [`Store::migrate`](onephase_store::Store::migrate)
/// or to run against an application's own database.
///
/// An outbox table the application created itself (from the shipped SQL, with Flyway,
/// Alembic or by hand) is adopted: if it has every column of the contract, what else the first
/// migration creates (indexes, the inbox, on PostgreSQL the wake-up trigger) is added and the
/// migration recorded as applied; if it lacks a column, the error names it.
pub fn migrations() -> Migrations {
    Migrations::new(
        "outbox",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
    .adopting(onephase_store::Adoption {
        version: 1,
        table: "onephase_outbox",
        columns: &[
            "seq",
            "id",
            "topic",
            "key",
            "payload",
            "headers",
            "created_at",
            "attempts",
            "available_at",
            "claimed_by",
            "claimed_until",
            "last_error",
            "published_at",
            "dead_at",
        ],
        sqlite: include_str!("../adopt/sqlite.sql"),
        postgres: include_str!("../adopt/postgres.sql"),
    })
}

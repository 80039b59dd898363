//! An event store on SQLite and PostgreSQL, with read models that can be operated and debugged.
//!
//! Event sourcing keeps every change as an immutable event and derives the current state and
//! the read models from them. Its promise holds only if the hard parts are handled: two writers
//! deciding on the same stale state, a reader skipping an event that committed late, old events
//! after a schema change, personal data in an immutable log, read models that lag, break on one
//! event, need rebuilding, and cannot say why they hold what they hold. This crate handles each:
//!
//! | problem | what this crate does |
//! |---|---|
//! | lost update | appends carry an [`ExpectedVersion`], checked atomically ([`EventStore::append_in`]) |
//! | a retried append | idempotent on event ids |
//! | a reader skipping a late commit | positions become visible in the order handed out ([`EventStore::read_all`]) |
//! | old events, new code | versioned types and [`Upcasters`] on read; an unknown version is an error |
//! | erasure vs immutability | crypto-shredding ([`NewEvent::with_personal_data`], [`EventStore::forget`]) |
//! | a read model crash | its checkpoint commits with its writes ([`Projector`]) |
//! | one bad event | the projection parks on it; retry or skip, audited ([`Projections`]) |
//! | a new read-model shape | blue/green rebuild, switched when caught up ([`Projections::rebuild`]) |
//! | stale reads after a write | the append's position as a token ([`Projections::wait_for`]) |
//! | "why does this row say that?" | lineage per row ([`Projections::explain`]) and time travel ([`AsOf`]) |
//!
//! Streams are named `<category>-<id>` (`order-42`); versions count a stream's events from 1;
//! global positions order all events. Events are appended in the caller's transaction, so
//! business rows, events and outbox rows commit together. See `docs/events.md` for the
//! guarantees, the failure modes and the limits.

mod aggregate;
mod append;
mod error;
mod event;
pub mod projection;
mod read;
mod seal;
mod sql;
mod store;
pub mod upcast;

use onephase_store::{Migrations, sqlx};

pub use aggregate::{Aggregate, Loaded, MAX_ATTEMPTS, Snapshots, typed};
pub use error::EventsError;
pub use event::{
    Appended, ExpectedVersion, MAX_NAME, Metadata, NewEvent, RecordedEvent, StreamAppend,
    StreamVersion, category_of,
};
pub use projection::admin::AuditEntry;
pub use projection::{
    Document, DocumentAction, DocumentDefinition, DocumentKey, DocumentProjection, Explanation,
    Projection, ProjectionError, ProjectionStatus, ProjectionTx, Projections, Projector,
};
pub use read::{AsOf, CategoryActivity, MAX_READ};
pub use store::{DEFAULT_MAX_EVENT_SIZE, EventStore, MAX_EVENTS_PER_APPEND, appended_here};
pub use upcast::{Upcaster, Upcasters};

/// The examples of `docs/events.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/events.md")]
pub struct DocsEvents;

/// The event store's tables, to pass to [`Store::migrate`](onephase_store::Store::migrate).
pub fn migrations() -> Migrations {
    Migrations::new(
        "events",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

//! The caller's connection or transaction, whichever backend it is on.
//!
//! APIs that must commit with the caller's business data (enqueue into the outbox, record in
//! the inbox, send a webhook, check a fence) take the caller's transaction. [`Connection`] is
//! the one bound they all use: it is implemented for sqlx's connections and transactions of
//! both backends (and sealed, so that nothing else can claim to be one), and
//! [`Connection::connection`] says which backend it is, as [`Conn`], for the caller to run that
//! backend's SQL:
//!
//! ```
//! use onephase_store::{Conn, Connection};
//!
//! async fn count_rows(tx: &mut impl Connection) -> Result<i64, sqlx::Error> {
//!     let sql = "SELECT COUNT(*) FROM onephase_outbox";
//!     match tx.connection() {
//!         Conn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
//!         Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
//!     }
//! }
//! ```

use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};

/// A connection of one backend, borrowed from a [`Connection`].
#[derive(Debug)]
pub enum Conn<'a> {
    /// A PostgreSQL connection (or the one a transaction runs on).
    Postgres(&'a mut PgConnection),
    /// A SQLite connection (or the one a transaction runs on).
    Sqlite(&'a mut SqliteConnection),
}

/// A connection or transaction of either backend. Sealed: implemented for sqlx's connections
/// and transactions of both backends.
pub trait Connection: sealed::Sealed + Send {
    /// The underlying connection, by backend. Statements run through it are part of the
    /// transaction, if this is one.
    fn connection(&mut self) -> Conn<'_>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::PgConnection {}
    impl Sealed for sqlx::SqliteConnection {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Postgres> {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Sqlite> {}
}

impl Connection for PgConnection {
    fn connection(&mut self) -> Conn<'_> {
        Conn::Postgres(self)
    }
}

impl Connection for SqliteConnection {
    fn connection(&mut self) -> Conn<'_> {
        Conn::Sqlite(self)
    }
}

impl Connection for Transaction<'_, Postgres> {
    fn connection(&mut self) -> Conn<'_> {
        Conn::Postgres(self)
    }
}

impl Connection for Transaction<'_, Sqlite> {
    fn connection(&mut self) -> Conn<'_> {
        Conn::Sqlite(self)
    }
}

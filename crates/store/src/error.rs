use onephase_core::{Classify, ErrorKind};

use crate::Backend;

/// Why a store could not be opened, migrated or queried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no backend onephase supports, or cannot be parsed.
    #[error("store URL {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The SQLite file does not exist and [`StoreOptions::create_if_missing`](crate::StoreOptions)
    /// is off.
    #[error(
        "no store at {path} (from {url}): point --store or ONEPHASE_STORE at the server's store, \
         run the command in the folder it serves from, or create one with `onephase migrate`"
    )]
    Missing {
        /// The URL, password redacted.
        url: String,
        /// The file it names, as the process sees it.
        path: String,
    },
    /// The database did not accept a connection.
    #[error("cannot connect to {backend} at {url}: {source}{}", hint(source))]
    Connect {
        /// Which backend.
        backend: Backend,
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A component's migrations could not be applied.
    #[error("migrating {component} failed: {message}")]
    Migrate {
        /// The component whose migrations failed.
        component: &'static str,
        /// What went wrong and what to do about it.
        message: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// An existing table does not have the shape a component needs.
    #[error("migrating {component} failed: {message}")]
    Schema {
        /// The component whose table it is.
        component: &'static str,
        /// What is wrong and what to do about it.
        message: String,
    },
    /// A query failed.
    #[error("{what} failed: {source}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// What the usual cause of a connection error is, where the driver's words do not say.
fn hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            " (nothing listens at that address: is the database running, and is the port right?)"
        }
        sqlx::Error::Database(e) if e.code().as_deref() == Some("14") => {
            " (SQLite cannot open or create the file: check that its directory exists and that this user may write there)"
        }
        sqlx::Error::PoolTimedOut => " (no connection within the timeout)",
        _ => "",
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidUrl { .. } => ErrorKind::InvalidInput,
            StoreError::Connect { .. } => ErrorKind::Unavailable,
            StoreError::Missing { .. } => ErrorKind::NotFound,
            StoreError::Migrate { .. } => ErrorKind::Internal,
            StoreError::Schema { .. } => ErrorKind::InvalidInput,
            StoreError::Query { source, .. } => classify_sqlx(source),
        }
    }
}

/// The [`ErrorKind`] of a driver error: connection trouble is transient, the rest is not.
pub fn classify_sqlx(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorKind::Unavailable
        }
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

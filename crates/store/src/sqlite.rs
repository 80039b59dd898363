use std::fmt;
use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::{Backend, StoreError, StoreOptions, redact_url};

/// The two pools of a SQLite store: one writer, several readers.
///
/// SQLite serializes writers on the database file. Funnelling every write through one
/// connection turns that into a queue inside the process (fair, with the pool's acquire
/// timeout) instead of `SQLITE_BUSY` errors, and avoids the deadlock where two read
/// transactions both try to upgrade to write. Begin write transactions on
/// [`writer`](Self::writer); run reads on [`reader`](Self::reader).
///
/// An in-memory database (`sqlite::memory:`) exists only inside one connection, so there the
/// writer and the reader are the same single connection.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        let connect_error = |source| StoreError::Connect {
            backend: Backend::Sqlite,
            url: redact_url(url),
            source,
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let base = base
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            .synchronous(SqliteSynchronous::Full)
            // Deleted content is overwritten, not left in free pages: a forgotten subject's
            // key (crypto-shredding) must not survive in the file.
            .pragma("secure_delete", "ON");

        if !in_memory && !options.create_if_missing {
            let path = base.get_filename();
            if !path.exists() {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
                return Err(StoreError::Missing {
                    url: redact_url(url),
                    path: path.display().to_string(),
                });
            }
        }
        if in_memory {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base)
                .await
                .map_err(connect_error)?;
            return Ok(Self {
                writer: pool.clone(),
                reader: pool,
            });
        }

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(connect_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(connect_error)?;
        Ok(Self { writer, reader })
    }

    /// The single connection every write goes through.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The pool for reads; its connections are read-only.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("writer", &self.writer.size())
            .field("reader", &self.reader.size())
            .finish()
    }
}

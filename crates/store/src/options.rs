use std::time::Duration;

/// How a [`Store`](crate::Store) opens its connections. The defaults suit a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Most connections in the PostgreSQL pool, or in the SQLite reader pool. Default 10.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing. Default 5 s.
    pub acquire_timeout: Duration,
    /// SQLite only: how long a connection waits on a locked database file before failing with
    /// `SQLITE_BUSY`. Matters when another process holds the file. Default 5 s.
    pub busy_timeout: Duration,
    /// PostgreSQL only: the `application_name` shown in `pg_stat_activity`. Default `onephase`.
    pub application_name: String,
    /// SQLite only: create the database file when it does not exist. Default true. Commands
    /// that work on an existing store turn it off, so that running one in the wrong folder
    /// fails with [`StoreError::Missing`](crate::StoreError::Missing) instead of creating an
    /// empty store there.
    pub create_if_missing: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            application_name: "onephase".to_owned(),
            create_if_missing: true,
        }
    }
}

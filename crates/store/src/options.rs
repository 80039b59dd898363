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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            application_name: "onephase".to_owned(),
        }
    }
}

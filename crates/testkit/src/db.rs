use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onephase_store::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use onephase_store::{Store, StoreError};
use tempfile::TempDir;
use uuid::Uuid;

use crate::engine::{Engine, engine_url};

/// Every test database this harness creates on PostgreSQL starts with this prefix.
const PG_PREFIX: &str = "onephase_t_";

/// Test databases older than this are left over from a killed run and are dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Why a test database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    /// The temporary directory for a SQLite file could not be created.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    /// The store refused to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The administrative PostgreSQL connection failed.
    #[error("PostgreSQL at {url}: {source}")]
    Admin {
        /// The administrative URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// A store that belongs to one test: a SQLite file in its own temporary directory, or a
/// PostgreSQL database created for it. Dropping it removes the file or drops the database.
///
/// PostgreSQL test databases are named `onephase_t_<uuidv7>`; the UUID's timestamp lets the
/// next run drop databases that a killed run left behind (older than an hour).
#[derive(Debug)]
pub struct TestDb {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] TempDir),
    Postgres { admin_url: String, database: String },
    Done,
}

impl TestDb {
    /// A fresh SQLite database in a new temporary directory. Always available.
    pub async fn sqlite() -> Result<Self, TestDbError> {
        let dir = tempfile::Builder::new()
            .prefix("onephase-test-")
            .tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url).await?;
        Ok(Self {
            store,
            url,
            cleanup: Cleanup::Sqlite(dir),
        })
    }

    /// A fresh PostgreSQL database, or `None` when the PostgreSQL suite is skipped (see
    /// [`engine_url`]).
    ///
    /// # Panics
    ///
    /// When PostgreSQL is configured but the database cannot be created: that is a broken
    /// environment, not a reason to skip.
    pub async fn postgres() -> Option<Self> {
        let admin_url = engine_url(Engine::Postgres)?;
        match Self::create_postgres(&admin_url).await {
            Ok(db) => Some(db),
            Err(e) => panic!("cannot create a PostgreSQL test database: {e}"),
        }
    }

    async fn create_postgres(admin_url: &str) -> Result<Self, TestDbError> {
        let admin_error = admin_error(admin_url);
        let mut admin = PgConnection::connect(admin_url)
            .await
            .map_err(&admin_error)?;
        drop_stale_databases(&mut admin).await;
        let database = format!("{PG_PREFIX}{}", Uuid::now_v7().simple());
        // The name is generated here from a UUID: no injection is possible.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .map_err(&admin_error)?;
        let _ = admin.close().await;
        let url = with_database(admin_url, &database);
        let store = Store::connect(&url).await?;
        Ok(Self {
            store,
            url,
            cleanup: Cleanup::Postgres {
                admin_url: admin_url.to_owned(),
                database,
            },
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The URL the store was opened from, for tests that start a server or a second process on
    /// the same database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the store and removes the database now, reporting failures. Dropping does the
    /// same, but can only log them.
    pub async fn close(mut self) -> Result<(), TestDbError> {
        self.store.close().await;
        let cleanup = std::mem::replace(&mut self.cleanup, Cleanup::Done);
        if let Cleanup::Postgres {
            admin_url,
            database,
        } = cleanup
        {
            drop_database(&admin_url, &database).await?;
        }
        Ok(())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres {
            admin_url,
            database,
        } = std::mem::replace(&mut self.cleanup, Cleanup::Done)
        else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived thread
        // with its own runtime drops the database.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(drop_database(&admin_url, &database))
                .map_err(std::io::Error::other)
        })
        .join();
        if let Ok(Err(e)) = result {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("warning: test database not dropped: {e}\n"),
            );
        }
    }
}

/// Wraps a driver error on the administrative connection to `admin_url`.
fn admin_error(admin_url: &str) -> impl Fn(sqlx::Error) -> TestDbError {
    let url = onephase_store::redact_url(admin_url);
    move |source| TestDbError::Admin {
        url: url.clone(),
        source,
    }
}

async fn drop_database(admin_url: &str, database: &str) -> Result<(), TestDbError> {
    let admin_error = admin_error(admin_url);
    let mut admin = PgConnection::connect(admin_url)
        .await
        .map_err(&admin_error)?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .map_err(&admin_error)?;
    let _ = admin.close().await;
    Ok(())
}

/// Drops test databases whose UUIDv7 says they are older than [`STALE_AFTER`]: leftovers of a
/// run that was killed before its `Drop`s ran. Failures are ignored; another run may be
/// dropping the same database.
async fn drop_stale_databases(admin: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'onephase\\_t\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for name in names {
        let Some(created_ms) = name
            .strip_prefix(PG_PREFIX)
            .and_then(|id| Uuid::try_parse(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                u128::from(secs) * 1000 + u128::from(nanos) / 1_000_000
            })
        else {
            continue;
        };
        if now_ms.saturating_sub(created_ms) > STALE_AFTER.as_millis() {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

impl From<std::io::Error> for TestDbError {
    fn from(e: std::io::Error) -> Self {
        Self::TempDir(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/test?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}

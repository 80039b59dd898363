//! Where onephase keeps its state: SQLite by default, PostgreSQL at scale, through `sqlx`.
//!
//! A [`Store`] is opened from one URL:
//!
//! - `sqlite://onephase.db` (relative to the working directory), `sqlite:///var/lib/x.db`
//!   (absolute) or `sqlite::memory:`. The file is created if missing and opened in WAL mode with
//!   a busy timeout, foreign keys on and `synchronous = FULL`, so a committed transaction
//!   survives a power cut, not only a process crash. Writes go through a single writer
//!   connection ([`SqliteStore::writer`]), because SQLite allows one writer at a time and a
//!   second one would only wait on the file lock or fail with `SQLITE_BUSY`; reads use a pool of
//!   readers that WAL lets run beside the writer.
//! - `postgres://user:password@host/db` (or `postgresql://`): a connection pool; concurrency is
//!   PostgreSQL's business.
//!
//! There is no `Any` driver on purpose: every crate writes the SQL each backend is best at, and
//! matches on [`Store::backend`] or takes the concrete pool.
//!
//! # Migrations
//!
//! Each crate that owns tables ships one [`Migrations`] value: a component name and a `sqlx`
//! migrator per backend (from `migrations/sqlite` and `migrations/postgres` in that crate). Each
//! component records its versions in its own table, `_onephase_<component>_migrations`, so that
//! crates number their migrations independently and a user who links only some crates gets only
//! their tables. [`Store::migrate`] applies them; on PostgreSQL, `sqlx` holds an advisory lock
//! while it does, so several servers starting at once migrate once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), onephase_store::StoreError> {
//! use onephase_store::{Backend, Store};
//!
//! let store = Store::connect("sqlite://onephase.db").await?;
//! assert_eq!(store.backend(), Backend::Sqlite);
//! store.ping().await?;
//! # Ok(()) }
//! ```

mod connection;
pub mod convert;
pub mod dispatch;
mod error;
mod migrate;
mod options;
mod postgres;
mod sqlite;
pub mod worker;

use std::fmt;

pub use connection::{Conn, Connection};
pub use error::{StoreError, classify_sqlx};
pub use migrate::{Adoption, Migrations};
pub use options::StoreOptions;
pub use sqlite::SqliteStore;

/// Re-exported so that every crate uses the same `sqlx`.
pub use sqlx;

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Embedded SQLite: one file, one writer.
    Sqlite,
    /// PostgreSQL: a server shared by any number of onephase processes.
    Postgres,
}

impl Backend {
    /// `"sqlite"` or `"postgres"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Which backend a store URL names, from its scheme.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::InvalidUrl {
                url: redact_url(url),
                reason: "the scheme must be sqlite: (for example sqlite://onephase.db) or \
                         postgres:// (for example postgres://user@host/db)"
                    .into(),
            })
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pools of a [`Store`], by backend. Returned by [`Store::db`].
#[derive(Debug, Clone, Copy)]
pub enum Db<'a> {
    /// A SQLite store's writer and reader pools.
    Sqlite(&'a SqliteStore),
    /// A PostgreSQL store's pool.
    Postgres(&'a sqlx::PgPool),
}

/// An open store: the SQLite pools or the PostgreSQL pool, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: StoreInner,
    url: String,
}

#[derive(Clone)]
enum StoreInner {
    Sqlite(SqliteStore),
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Opens the store at `url` with default [`StoreOptions`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// Opens the store at `url`.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let inner = match Backend::from_url(url)? {
            Backend::Sqlite => StoreInner::Sqlite(SqliteStore::connect(url, options).await?),
            Backend::Postgres => StoreInner::Postgres(postgres::connect(url, options).await?),
        };
        Ok(Self {
            inner,
            url: redact_url(url),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            StoreInner::Sqlite(_) => Backend::Sqlite,
            StoreInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL this store was opened from, with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pools, by backend, for code that runs each backend's own SQL:
    ///
    /// ```no_run
    /// # async fn demo(store: &onephase_store::Store) -> Result<i64, onephase_store::sqlx::Error> {
    /// use onephase_store::{Db, sqlx};
    ///
    /// let sql = "SELECT COUNT(*) FROM onephase_api_tokens";
    /// match store.db() {
    ///     Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await,
    ///     Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    /// }
    /// # }
    /// ```
    pub fn db(&self) -> Db<'_> {
        match &self.inner {
            StoreInner::Sqlite(s) => Db::Sqlite(s),
            StoreInner::Postgres(p) => Db::Postgres(p),
        }
    }

    /// The SQLite pools, if this is a SQLite store.
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match &self.inner {
            StoreInner::Sqlite(s) => Some(s),
            StoreInner::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if this is a PostgreSQL store.
    pub fn as_postgres(&self) -> Option<&sqlx::PgPool> {
        match &self.inner {
            StoreInner::Postgres(p) => Some(p),
            StoreInner::Sqlite(_) => None,
        }
    }

    /// Applies every pending migration of each component, in the order given.
    ///
    /// Fails without applying anything further if a component's applied migrations were
    /// edited since, or if the database holds a migration this binary does not know (it was
    /// migrated by a newer onephase).
    pub async fn migrate(&self, components: &[Migrations]) -> Result<(), StoreError> {
        for component in components {
            match &self.inner {
                StoreInner::Sqlite(s) => component.run_sqlite(s.writer()).await?,
                StoreInner::Postgres(p) => component.run_postgres(p).await?,
            }
        }
        Ok(())
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let result = match &self.inner {
            StoreInner::Sqlite(s) => sqlx::query("SELECT 1").execute(s.reader()).await.map(drop),
            StoreInner::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        };
        result.map_err(|source| StoreError::Query {
            what: "ping",
            source,
        })
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.inner {
            StoreInner::Sqlite(s) => s.close().await,
            StoreInner::Postgres(p) => p.close().await,
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("url", &self.url)
            .finish()
    }
}

/// Query parameters whose values are secrets, in the URLs of the engines onephase connects to
/// (PostgreSQL's `password` and `sslpassword`, and the names other drivers use).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "sslpassword",
    "pass",
    "pwd",
    "secret",
    "token",
    "access_token",
    "auth_token",
    "sasl_password",
    "api_key",
];

/// `url` with every credential it carries (the password of its user info, and the values of
/// query parameters such as `password` or `token`) replaced by `***`: what logs, error
/// messages, the dashboard and the API show of a database or broker URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if SECRET_PARAMS.contains(&name.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}{fragment}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The password in `url`'s user info, if it has one (to redact it from text that quotes it).
pub fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_comes_from_the_scheme() {
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        let err = Backend::from_url("mysql://root:secret@h/db").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sqlite:") && text.contains("postgres://"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://onephase.db"), "sqlite://onephase.db");
        assert_eq!(
            redact_url("postgres://a:b@c@host/x"),
            "postgres://a:***@host/x"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=app&password=s3cret&sslmode=require"),
            "postgres://db/x?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("nats://host:4222?token=abc#frag"),
            "nats://host:4222?token=***#frag"
        );
        assert_eq!(
            url_password("amqp://guest:guest@h/"),
            Some("guest".to_owned())
        );
        assert_eq!(url_password("redis://h:6379"), None);
    }
}

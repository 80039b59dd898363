//! The fence in a SQL transaction.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};

use crate::{FenceError, FencingToken};

/// Raises the resource's fence to `$2` unless it is already higher; returns a row only if it
/// did. On PostgreSQL the conflicting row is locked and re-read, so of two concurrent writers
/// the older token is judged against the newer one once that commits.
const ADVANCE: &str = "INSERT INTO onephase_fences (resource, token) VALUES ($1, $2) \
     ON CONFLICT (resource) DO UPDATE SET token = excluded.token \
     WHERE onephase_fences.token <= excluded.token \
     RETURNING token";

const HIGHEST: &str = "SELECT token FROM onephase_fences WHERE resource = $1";

/// A PostgreSQL or SQLite connection or transaction the fence can be checked on. Sealed;
/// implemented for sqlx's types.
pub trait FenceConnection: sealed::Sealed + Send {
    #[doc(hidden)]
    fn advance<'a>(
        &'a mut self,
        resource: &'a str,
        token: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;
    #[doc(hidden)]
    fn highest<'a>(
        &'a mut self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::PgConnection {}
    impl Sealed for sqlx::SqliteConnection {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Postgres> {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Sqlite> {}
}

macro_rules! fence_connection {
    ($($ty:ty => $conn:ty;)*) => {$(
        impl FenceConnection for $ty {
            fn advance<'a>(
                &'a mut self,
                resource: &'a str,
                token: i64,
            ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
                async move {
                    let conn: &mut $conn = &mut *self;
                    sqlx::query_scalar(ADVANCE)
                        .bind(resource)
                        .bind(token)
                        .fetch_optional(conn)
                        .await
                }
                .boxed()
            }

            fn highest<'a>(
                &'a mut self,
                resource: &'a str,
            ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
                async move {
                    let conn: &mut $conn = &mut *self;
                    sqlx::query_scalar(HIGHEST).bind(resource).fetch_optional(conn).await
                }
                .boxed()
            }
        }
    )*};
}

fence_connection! {
    PgConnection => PgConnection;
    SqliteConnection => SqliteConnection;
    Transaction<'_, Postgres> => PgConnection;
    Transaction<'_, Sqlite> => SqliteConnection;
}

/// Admits `token` to `resource` in the caller's transaction: records it as the resource's
/// highest and returns `Ok`, or returns [`FenceError::Stale`] if a newer token was accepted
/// before. Make the write in the same transaction, after this call, and commit; roll back on
/// an error. Needs the `onephase_fences` table ([`migrations`](crate::migrations)) in the
/// resource's database.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use onephase_lease::{FencingToken, fence, migrations};
/// use onephase_store::Store;
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate(&[migrations()]).await?;
/// let pool = store.as_sqlite().expect("sqlite").writer();
///
/// let mut tx = pool.begin().await?;
/// fence::check(&mut tx, "invoice-42", FencingToken::new(12)).await?;
/// // ... the write itself, in `tx` ...
/// tx.commit().await?;
///
/// let mut tx = pool.begin().await?;
/// let stale = fence::check(&mut tx, "invoice-42", FencingToken::new(11)).await;
/// assert!(matches!(stale, Err(fence::FenceError::Stale { .. })));
/// # Ok(()) }
/// ```
pub async fn check<C: FenceConnection + ?Sized>(
    conn: &mut C,
    resource: &str,
    token: FencingToken,
) -> Result<(), FenceError> {
    let value = token.as_i64().ok_or(FenceError::OutOfRange(token))?;
    if conn.advance(resource, value).await?.is_some() {
        return Ok(());
    }
    let highest = conn.highest(resource).await?.unwrap_or(value);
    Err(FenceError::Stale {
        resource: resource.to_owned(),
        token,
        highest: FencingToken::from_i64(highest),
    })
}

/// The highest token `resource` has accepted, if any.
pub async fn highest<C: FenceConnection + ?Sized>(
    conn: &mut C,
    resource: &str,
) -> Result<Option<FencingToken>, FenceError> {
    Ok(conn.highest(resource).await?.map(FencingToken::from_i64))
}

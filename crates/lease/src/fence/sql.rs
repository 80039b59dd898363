//! The fence in a SQL transaction.

use onephase_store::Conn;

use crate::{FenceError, FencingToken};

/// Raises the resource's fence to `$2` unless it is already higher; returns a row only if it
/// did. On PostgreSQL the conflicting row is locked and re-read, so of two concurrent writers
/// the older token is judged against the newer one once that commits.
const ADVANCE: &str = "INSERT INTO onephase_fences (resource, token) VALUES ($1, $2) \
     ON CONFLICT (resource) DO UPDATE SET token = excluded.token \
     WHERE onephase_fences.token <= excluded.token \
     RETURNING token";

const HIGHEST: &str = "SELECT token FROM onephase_fences WHERE resource = $1";

/// A PostgreSQL or SQLite connection or transaction the fence can be checked on: the
/// store's one connection bound.
pub use onephase_store::Connection as FenceConnection;

/// Raises the fence; `Some` when it did.
async fn advance<C: FenceConnection + ?Sized>(
    conn: &mut C,
    resource: &str,
    token: i64,
) -> Result<Option<i64>, sqlx::Error> {
    match conn.connection() {
        Conn::Postgres(c) => {
            let query = sqlx::query_scalar(ADVANCE).bind(resource).bind(token);
            query.fetch_optional(c).await
        }
        Conn::Sqlite(c) => {
            let query = sqlx::query_scalar(ADVANCE).bind(resource).bind(token);
            query.fetch_optional(c).await
        }
    }
}

/// The resource's highest accepted token.
async fn read_highest<C: FenceConnection + ?Sized>(
    conn: &mut C,
    resource: &str,
) -> Result<Option<i64>, sqlx::Error> {
    match conn.connection() {
        Conn::Postgres(c) => {
            sqlx::query_scalar(HIGHEST)
                .bind(resource)
                .fetch_optional(c)
                .await
        }
        Conn::Sqlite(c) => {
            sqlx::query_scalar(HIGHEST)
                .bind(resource)
                .fetch_optional(c)
                .await
        }
    }
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
    if advance(conn, resource, value).await?.is_some() {
        return Ok(());
    }
    let highest = read_highest(conn, resource).await?.unwrap_or(value);
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
    Ok(read_highest(conn, resource)
        .await?
        .map(FencingToken::from_i64))
}

//! Running one piece of code on whichever backend a [`Store`](crate::Store) has.
//!
//! Every crate writes its SQL per backend and picks the text at run time. The picking is one
//! macro, [`on_store!`](crate::on_store), so that no crate writes the `match` over [`Db`](crate::Db),
//! the choice of SQLite's writer or reader pool, or a facade of forwarding methods again:
//!
//! - `on_store!(db, pool => body)`: `body` runs with `pool` bound to the PostgreSQL pool, or
//!   to SQLite's single writer. Use it for anything that writes.
//! - `on_store!(read db, pool => body)`: the same with SQLite's reader pool, for queries that
//!   only read (they then run beside the writer).
//! - `on_store!(db, pool, backend => body)`: also binds `backend` ([`Backend`](crate::Backend)),
//!   for the few statements whose text differs between the dialects.
//! - `on_store!(db, pool, sql: postgres | sqlite => body)`: also makes `sql` name the first
//!   module on PostgreSQL and the second on SQLite, so that `sql::claim(pool, ..)` calls the
//!   backend's own function. Each module offers the same functions with the same arguments.
//!
//! `db` is a [`Db`](crate::Db) (what [`Store::db`](crate::Store::db) returns). `body` is
//! compiled once per backend, so the compiler checks both.
//!
//! ```
//! # async fn demo() -> Result<(), sqlx::Error> {
//! use onephase_store::{Store, on_store};
//!
//! let store = Store::connect("sqlite::memory:").await.expect("store");
//! let one: i64 = on_store!(read store.db(), pool => {
//!     sqlx::query_scalar("SELECT 1").fetch_one(pool).await?
//! });
//! assert_eq!(one, 1);
//! # Ok(()) }
//! ```

/// Runs its body on the store's backend; see the [module documentation](crate::dispatch).
#[macro_export]
macro_rules! on_store {
    (@match $side:ident, $db:expr, $pool:ident, $backend:ident,
     [$($sql:ident, $pg:ident, $lite:ident)?], $body:expr) => {
        match $db {
            $crate::Db::Postgres($pool) => {
                $(use $pg as $sql;)?
                let $backend = $crate::Backend::Postgres;
                $body
            }
            $crate::Db::Sqlite(store) => {
                $(use $lite as $sql;)?
                let $pool = store.$side();
                let $backend = $crate::Backend::Sqlite;
                $body
            }
        }
    };
    (read $db:expr, $pool:ident, $sql:ident : $pg:ident | $lite:ident => $body:expr) => {
        $crate::on_store!(@match reader, $db, $pool, _backend, [$sql, $pg, $lite], $body)
    };
    ($db:expr, $pool:ident, $sql:ident : $pg:ident | $lite:ident => $body:expr) => {
        $crate::on_store!(@match writer, $db, $pool, _backend, [$sql, $pg, $lite], $body)
    };
    (read $db:expr, $pool:ident, $backend:ident => $body:expr) => {
        $crate::on_store!(@match reader, $db, $pool, $backend, [], $body)
    };
    ($db:expr, $pool:ident, $backend:ident => $body:expr) => {
        $crate::on_store!(@match writer, $db, $pool, $backend, [], $body)
    };
    (read $db:expr, $pool:ident => $body:expr) => {
        $crate::on_store!(@match reader, $db, $pool, _backend, [], $body)
    };
    ($db:expr, $pool:ident => $body:expr) => {
        $crate::on_store!(@match writer, $db, $pool, _backend, [], $body)
    };
}

//! One test per backend: [`per_backend!`](crate::per_backend!) turns a test written against a
//! [`TestDb`](crate::TestDb) into a module with one test for SQLite and one for PostgreSQL, so
//! that a failure on one backend never hides the other's result and the runner names which one
//! failed (`outbox_survives_a_crash::sqlite`, `outbox_survives_a_crash::postgres`), as
//! `#[sqlx::test]` does for its databases.
//!
//! ```
//! onephase_testkit::per_backend! {
//!     /// The store answers on every backend.
//!     #[tokio::test]
//!     async fn the_store_answers(db) -> anyhow::Result<()> {
//!         db.store().ping().await?;
//!         Ok(())
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! The attributes (the test attribute with its flavor, doc comments) go to both tests.
//! The PostgreSQL test passes without running when its suite is skipped (see
//! [`engine_url`](crate::engine_url)); with `ONEPHASE_REQUIRE_ENGINES=1` it fails instead.

/// Defines one test per backend; see the [module documentation](mod@crate::per_backend).
#[macro_export]
macro_rules! per_backend {
    () => {};
    (
        $(#[$attr:meta])*
        async fn $name:ident($db:ident) -> $ret:ty $body:block
        $($rest:tt)*
    ) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            // A test's body: it may unwrap, as tests may (clippy.toml).
            #[allow(clippy::unwrap_used, clippy::expect_used)]
            async fn body($db: $crate::TestDb) -> $ret $body

            $(#[$attr])*
            async fn sqlite() -> $ret {
                body($crate::per_backend::sqlite().await).await
            }

            $(#[$attr])*
            async fn postgres() -> $ret {
                match $crate::TestDb::postgres().await {
                    Some(db) => body(db).await,
                    None => Ok(()),
                }
            }
        }
        $crate::per_backend!($($rest)*);
    };
    (
        $(#[$attr:meta])*
        async fn $name:ident($db:ident) $body:block
        $($rest:tt)*
    ) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(clippy::unwrap_used, clippy::expect_used)]
            async fn body($db: $crate::TestDb) $body

            $(#[$attr])*
            async fn sqlite() {
                body($crate::per_backend::sqlite().await).await
            }

            $(#[$attr])*
            async fn postgres() {
                if let Some(db) = $crate::TestDb::postgres().await {
                    body(db).await
                }
            }
        }
        $crate::per_backend!($($rest)*);
    };
}

/// A fresh SQLite test database.
///
/// # Panics
///
/// When it cannot be created: a broken environment, not a reason to skip.
#[doc(hidden)]
pub async fn sqlite() -> crate::TestDb {
    crate::TestDb::sqlite()
        .await
        .unwrap_or_else(|e| panic!("cannot create a SQLite test database: {e}"))
}

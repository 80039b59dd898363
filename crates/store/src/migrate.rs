use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgPool, SqlitePool};

use crate::StoreError;

/// One component's migrations, for both backends.
///
/// A crate that owns tables builds one with `sqlx::migrate!` pointed at its own
/// `migrations/sqlite` and `migrations/postgres` directories:
///
/// ```
/// use onephase_store::{Migrations, sqlx};
///
/// // In a capability crate the paths are its own `migrations/sqlite` and `migrations/postgres`.
/// pub fn migrations() -> Migrations {
///     Migrations::new(
///         "widgets",
///         sqlx::migrate!("tests/migrations/sqlite"),
///         sqlx::migrate!("tests/migrations/postgres"),
///     )
/// }
/// assert_eq!(migrations().table(), "_onephase_widgets_migrations");
/// ```
///
/// Versions are recorded in `_onephase_<component>_migrations`, so each component numbers its
/// migrations from 1 without colliding with another's.
#[derive(Debug)]
pub struct Migrations {
    component: &'static str,
    sqlite: Migrator,
    postgres: Migrator,
}

impl Migrations {
    /// The migrations of `component` (lowercase letters, digits and `_`).
    ///
    /// # Panics
    ///
    /// If `component` is not a valid table-name fragment: it is a constant in the calling
    /// crate, so this is a programming error caught by that crate's first test.
    pub fn new(component: &'static str, mut sqlite: Migrator, mut postgres: Migrator) -> Self {
        assert!(
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "component name {component:?} must be lowercase letters, digits and '_'"
        );
        let table = format!("_onephase_{component}_migrations");
        sqlite.dangerous_set_table_name(table.clone());
        postgres.dangerous_set_table_name(table);
        Self {
            component,
            sqlite,
            postgres,
        }
    }

    /// The component name.
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The table this component's applied versions are recorded in.
    pub fn table(&self) -> String {
        format!("_onephase_{}_migrations", self.component)
    }

    pub(crate) async fn run_sqlite(&self, pool: &SqlitePool) -> Result<(), StoreError> {
        self.sqlite.run(pool).await.map_err(|e| self.explain(e))?;
        tracing::debug!(component = self.component, "sqlite migrations applied");
        Ok(())
    }

    pub(crate) async fn run_postgres(&self, pool: &PgPool) -> Result<(), StoreError> {
        self.postgres.run(pool).await.map_err(|e| self.explain(e))?;
        tracing::debug!(component = self.component, "postgres migrations applied");
        Ok(())
    }

    fn explain(&self, source: MigrateError) -> StoreError {
        let table = self.table();
        let message = match &source {
            MigrateError::VersionMissing(v) => format!(
                "the database has migration {v} in {table}, which this binary does not know: \
                 it was migrated by a newer onephase. Run that version, or restore a backup \
                 taken before the upgrade"
            ),
            MigrateError::VersionMismatch(v) => format!(
                "migration {v} in {table} was applied with different SQL than this binary \
                 carries. Applied migrations must never be edited; add a new one instead"
            ),
            MigrateError::Dirty(v) => format!(
                "migration {v} in {table} failed part-way earlier; repair the schema by hand, \
                 then delete its row from {table}"
            ),
            other => other.to_string(),
        };
        StoreError::Migrate {
            component: self.component,
            message,
            source,
        }
    }
}

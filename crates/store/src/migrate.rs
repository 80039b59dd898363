use derive_setters::Setters;
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{PgPool, SqlitePool};

use crate::StoreError;

/// A table that applications may create themselves, from the SQL a component ships (with
/// Flyway, Alembic, or by hand), which the component then adopts instead of failing on
/// "relation already exists".
///
/// When the component's migrations table does not record `version` yet and `table` already
/// exists with every one of `columns`, [`Store::migrate`](crate::Store::migrate) runs the
/// backend's `complete` SQL (which must be idempotent: `IF NOT EXISTS`, `OR REPLACE`) to add
/// whatever else the migration creates, and records the migration as applied. A table missing
/// a column is refused with the list of what is missing.
#[derive(Debug, Clone, Copy)]
pub struct Adoption {
    /// The migration that creates `table`.
    pub version: i64,
    /// The table.
    pub table: &'static str,
    /// The columns the component needs.
    pub columns: &'static [&'static str],
    /// What the migration creates besides the table, idempotent, on SQLite.
    pub sqlite: &'static str,
    /// The same on PostgreSQL.
    pub postgres: &'static str,
}

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
#[derive(Debug, Setters)]
#[setters(generate = false)]
pub struct Migrations {
    component: &'static str,
    sqlite: Migrator,
    postgres: Migrator,
    /// The same migrations, adopting a table an application created itself (see [`Adoption`]).
    #[setters(generate, strip_option, rename = "adopting")]
    adoption: Option<Adoption>,
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
            adoption: None,
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
        if let Some(adoption) = self.adoption {
            let mut conn = pool.acquire().await.map_err(|e| self.explain(e.into()))?;
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
            )
            .bind(adoption.table)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.explain(e.into()))?;
            if exists {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                        .bind(adoption.table)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(|e| self.explain(e.into()))?;
                if let Some(migration) = self
                    .to_adopt(&mut *conn, &adoption, &columns, &self.sqlite)
                    .await?
                {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(adoption.sqlite))
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| self.explain(e.into()))?;
                    self.adopted(&mut *conn, &adoption, migration).await?;
                }
            }
        }
        self.sqlite.run(pool).await.map_err(|e| self.explain(e))?;
        tracing::debug!(component = self.component, "sqlite migrations applied");
        Ok(())
    }

    pub(crate) async fn run_postgres(&self, pool: &PgPool) -> Result<(), StoreError> {
        if let Some(adoption) = self.adoption {
            let mut conn = pool.acquire().await.map_err(|e| self.explain(e.into()))?;
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(adoption.table)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.explain(e.into()))?;
            if exists {
                let columns: Vec<String> = sqlx::query_scalar(
                    "SELECT attname::text FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                )
                .bind(adoption.table)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| self.explain(e.into()))?;
                // Several servers starting at once adopt once.
                conn.lock().await.map_err(|e| self.explain(e))?;
                let adopted = async {
                    if let Some(migration) = self
                        .to_adopt(&mut *conn, &adoption, &columns, &self.postgres)
                        .await?
                    {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(adoption.postgres))
                            .execute(&mut *conn)
                            .await
                            .map_err(|e| self.explain(e.into()))?;
                        self.adopted(&mut *conn, &adoption, migration).await?;
                    }
                    Ok::<_, StoreError>(())
                }
                .await;
                conn.unlock().await.map_err(|e| self.explain(e))?;
                adopted?;
            }
        }
        self.postgres.run(pool).await.map_err(|e| self.explain(e))?;
        tracing::debug!(component = self.component, "postgres migrations applied");
        Ok(())
    }

    /// The migration to record as adopted, if `adoption`'s is not recorded yet, after checking
    /// `columns` (the existing table's). The caller runs the completion SQL, then
    /// [`adopted`](Self::adopted).
    async fn to_adopt<'m, C: Migrate + Send>(
        &self,
        conn: &mut C,
        adoption: &Adoption,
        columns: &[String],
        migrator: &'m Migrator,
    ) -> Result<Option<&'m sqlx::migrate::Migration>, StoreError> {
        let table = self.table();
        conn.ensure_migrations_table(&table)
            .await
            .map_err(|e| self.explain(e))?;
        let applied = conn
            .list_applied_migrations(&table)
            .await
            .map_err(|e| self.explain(e))?;
        if applied.iter().any(|m| m.version == adoption.version) {
            return Ok(None);
        }
        let missing: Vec<&str> = adoption
            .columns
            .iter()
            .copied()
            .filter(|c| !columns.iter().any(|have| have == c))
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Schema {
                component: self.component,
                message: format!(
                    "table {} exists but lacks the column(s) {} that onephase needs. Create it from \
                     the SQL onephase ships (crates/{}/migrations/<backend>/), or drop it and let \
                     `onephase migrate --outbox <url>` create it",
                    adoption.table,
                    missing.join(", "),
                    self.component
                ),
            });
        }
        Ok(migrator.iter().find(|m| m.version == adoption.version))
    }

    /// Records `migration` as applied without running it.
    async fn adopted<C: Migrate + Send>(
        &self,
        conn: &mut C,
        adoption: &Adoption,
        migration: &sqlx::migrate::Migration,
    ) -> Result<(), StoreError> {
        conn.skip(&self.table(), migration)
            .await
            .map_err(|e| self.explain(e))?;
        tracing::info!(
            component = self.component,
            table = adoption.table,
            "adopted a table the application created; its migration {} is recorded as applied",
            adoption.version
        );
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
            other if other.to_string().contains("already exists") => format!(
                "{other}. A table of this component exists but {table} does not record the \
                 migration that creates it: it was made outside onephase. Let onephase create \
                 its tables (`onephase migrate`, or `onephase migrate --outbox <url>` for an \
                 application's outbox), or create them with exactly the SQL onephase ships"
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

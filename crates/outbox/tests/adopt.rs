//! An outbox table the application created itself, from the SQL onephase ships (as a team
//! using Flyway or Alembic would): onephase adopts it instead of failing on "already exists",
//! and refuses, naming the column, a table that does not match the contract.

use anyhow::ensure;
use onephase_broker::log::{self as embedded, EmbeddedLog};
use onephase_core::Envelope;
use onephase_outbox::{OutboxAdmin, Relay, RelayConfig};
use onephase_store::{Db, Store};
use onephase_testkit::per_backend;

/// Runs the shipped migration's SQL as the application's own migration tool would.
async fn create_as_the_application(store: &Store, sql: &str) -> anyhow::Result<()> {
    match store.db() {
        Db::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await?;
        }
        Db::Sqlite(s) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(s.writer())
                .await?;
        }
    }
    Ok(())
}

fn shipped(store: &Store) -> &'static str {
    match store.db() {
        Db::Postgres(_) => include_str!("../migrations/postgres/1_outbox.sql"),
        Db::Sqlite(_) => include_str!("../migrations/sqlite/1_outbox.sql"),
    }
}

per_backend! {
    #[tokio::test]
    async fn a_table_made_from_the_shipped_sql_is_adopted_and_relayed(db) -> anyhow::Result<()> {
        let store = db.store().clone();
        create_as_the_application(&store, shipped(&store)).await?;
        // Twice: the second run finds the migration recorded and does nothing.
        for _ in 0..2 {
            store
                .migrate(&[onephase_outbox::migrations(), embedded::migrations()])
                .await?;
        }
        if let Db::Postgres(pool) = store.db() {
            let trigger: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'onephase_outbox_notify'",
            )
            .fetch_one(pool)
            .await?;
            ensure!(trigger == 1, "the wake-up trigger is there once: {trigger}");
        }
        let envelope = Envelope::builder("adopted", "{}").key("k").build()?;
        match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                onephase_outbox::enqueue(&mut tx, &envelope).await?;
                tx.commit().await?;
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                onephase_outbox::enqueue(&mut tx, &envelope).await?;
                tx.commit().await?;
            }
        }
        let log = EmbeddedLog::new(store.clone());
        let relay = Relay::new(store.clone(), log.publisher(), RelayConfig::default());
        let report = relay.run_once().await?;
        ensure!(report.published == 1, "{report:?}");
        ensure!(OutboxAdmin::new(store.clone()).status().await?.pending == 0);
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_table_that_breaks_the_contract_is_refused_with_what_it_lacks(db) -> anyhow::Result<()> {
        let store = db.store().clone();
        let sql = match store.db() {
            Db::Postgres(_) => {
                "CREATE TABLE onephase_outbox (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 id UUID NOT NULL, topic TEXT NOT NULL, key TEXT, payload BYTEA NOT NULL)"
            }
            Db::Sqlite(_) => {
                "CREATE TABLE onephase_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 id TEXT NOT NULL, topic TEXT NOT NULL, key TEXT, payload BLOB NOT NULL)"
            }
        };
        create_as_the_application(&store, sql).await?;
        let err = store
            .migrate(&[onephase_outbox::migrations()])
            .await
            .expect_err("a table without the relay's columns");
        let text = err.to_string();
        ensure!(
            text.contains("lacks the column(s) headers, created_at, attempts"),
            "{text}"
        );
        ensure!(text.contains("onephase migrate --outbox"), "{text}");
        // Nothing was recorded or added: a fixed table is adopted on the next run.
        let inbox: bool = match store.db() {
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass('onephase_inbox') IS NOT NULL")
                    .fetch_one(pool)
                    .await?
            }
            Db::Sqlite(s) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'onephase_inbox')",
                )
                .fetch_one(s.reader())
                .await?
            }
        };
        ensure!(!inbox, "a refused adoption created the inbox");
        db.close().await?;
        Ok(())
    }
}

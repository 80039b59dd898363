//! The store against real databases: SQLite files always, PostgreSQL when configured.

use onephase_store::sqlx::{self, Row};
use onephase_store::{Db, Migrations, Store, StoreError};
use onephase_testkit::TestDb;
use onephase_testkit::per_backend;

fn widgets_v1() -> Migrations {
    Migrations::new(
        "widgets",
        sqlx::migrate!("tests/migrations/sqlite"),
        sqlx::migrate!("tests/migrations/postgres"),
    )
}

fn widgets_v2() -> Migrations {
    Migrations::new(
        "widgets",
        sqlx::migrate!("tests/migrations_v2/sqlite"),
        sqlx::migrate!("tests/migrations_v2/postgres"),
    )
}

async fn count_widgets(store: &Store) -> i64 {
    let sql = "SELECT COUNT(*) FROM widgets";
    let count = match store.db() {
        Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await,
        Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    };
    count.expect("widgets can be counted")
}

async fn insert_widget(store: &Store, name: &str) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO widgets (name) VALUES ($1)";
    match store.db() {
        Db::Sqlite(s) => sqlx::query(sql)
            .bind(name)
            .execute(s.writer())
            .await
            .map(drop),
        Db::Postgres(p) => sqlx::query(sql).bind(name).execute(p).await.map(drop),
    }
}

per_backend! {
    #[tokio::test]
    async fn migrations_apply_once_and_upgrade_in_place(db) {
        let store = db.store();
        store.ping().await.unwrap();
        store.migrate(&[widgets_v1()]).await.unwrap();
        insert_widget(store, "a").await.unwrap();
        // Running again is a no-op, not an error.
        store.migrate(&[widgets_v1()]).await.unwrap();
        store.migrate(&[widgets_v2()]).await.unwrap();
        assert_eq!(count_widgets(store).await, 1, "{}", store.backend());
        db.close().await.unwrap();
    }
}

per_backend! {
    #[tokio::test]
    async fn a_database_migrated_by_a_newer_binary_is_refused_with_advice(db) {
        let store = db.store();
        store.migrate(&[widgets_v2()]).await.unwrap();
        let err = store.migrate(&[widgets_v1()]).await.unwrap_err();
        assert!(matches!(
            err,
            StoreError::Migrate {
                component: "widgets",
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("migration 2") && text.contains("newer onephase"),
            "{text}"
        );
        db.close().await.unwrap();
    }
}

per_backend! {
    #[tokio::test]
    async fn components_record_versions_in_their_own_tables(db) {
        let store = db.store();
        let other = Migrations::new(
            "gadgets",
            sqlx::migrate!("tests/migrations/sqlite"),
            sqlx::migrate!("tests/migrations/postgres"),
        );
        store.migrate(&[widgets_v2()]).await.unwrap();
        // Same version numbers, another component: tracked separately. Its SQL fails because
        // the table exists, which proves it was not mistaken for already applied.
        let err = store.migrate(&[other]).await.unwrap_err();
        assert!(err.to_string().contains("gadgets"), "{err}");
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn sqlite_is_wal_with_foreign_keys_and_a_read_only_reader() {
    let db = TestDb::sqlite().await.unwrap();
    let sqlite = db.store().as_sqlite().unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(sqlite.writer())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(sqlite.reader())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(sqlite.writer())
        .await
        .unwrap();
    assert_eq!(busy, 5000);
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(sqlite.writer())
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous must be FULL");

    db.store().migrate(&[widgets_v2()]).await.unwrap();
    let err = sqlx::query("INSERT INTO widgets (name) VALUES ('x')")
        .execute(sqlite.reader())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    let err = sqlx::query("INSERT INTO parts (widget_id) VALUES (999)")
        .execute(sqlite.writer())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

#[tokio::test]
async fn sqlite_writes_from_many_tasks_queue_instead_of_failing_busy() {
    let db = TestDb::sqlite().await.unwrap();
    db.store().migrate(&[widgets_v1()]).await.unwrap();
    let store = db.store().clone();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let writer = store.as_sqlite().unwrap().writer();
                let mut tx = writer.begin().await?;
                sqlx::query("INSERT INTO widgets (name) VALUES ($1)")
                    .bind(format!("w{i}"))
                    .execute(&mut *tx)
                    .await?;
                tokio::task::yield_now().await;
                tx.commit().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(count_widgets(&store).await, 64);
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_in_one_connection() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate(&[widgets_v1()]).await.unwrap();
    insert_widget(&store, "m").await.unwrap();
    assert_eq!(count_widgets(&store).await, 1);
}

#[tokio::test]
async fn bad_urls_say_what_is_accepted() {
    let err = Store::connect("mysql://root@localhost/x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sqlite:"), "{err}");

    let err = Store::connect("sqlite:///nonexistent-dir/sub/x.db")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");

    // A port nothing listens on: refused quickly, reported as unavailable, password hidden.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/x");
    let err = Store::connect(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot connect to postgres"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(
        onephase_core_kind(&err),
        onephase_core::ErrorKind::Unavailable
    );
}

fn onephase_core_kind(err: &StoreError) -> onephase_core::ErrorKind {
    use onephase_core::Classify;
    err.kind()
}

#[tokio::test]
async fn postgres_test_databases_are_isolated_and_dropped() {
    let Some(a) = TestDb::postgres().await else {
        return;
    };
    let b = TestDb::postgres()
        .await
        .expect("configured once, configured twice");
    assert_ne!(a.url(), b.url());
    a.store().migrate(&[widgets_v1()]).await.unwrap();
    // b has no widgets table: the databases are separate.
    let missing = sqlx::query("SELECT 1 FROM widgets")
        .fetch_optional(b.store().as_postgres().unwrap())
        .await;
    assert!(missing.is_err());

    let name: String = sqlx::query("SELECT current_database()")
        .fetch_one(a.store().as_postgres().unwrap())
        .await
        .unwrap()
        .get(0);
    let admin = std::env::var("ONEPHASE_TEST_POSTGRES_URL").unwrap();
    a.close().await.unwrap();
    drop(b);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_store_that_must_exist_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let url = format!("sqlite://{}", path.display());
    let mut options = onephase_store::StoreOptions::default();
    options.create_if_missing = false;
    let err = Store::connect_with(&url, &options).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Missing { path: p, .. } if p == &path.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("onephase migrate"), "{err}");
    assert!(!path.exists(), "the store was created");

    // Once it exists, the same options open it.
    Store::connect(&url).await.unwrap().close().await;
    Store::connect_with(&url, &options)
        .await
        .unwrap()
        .close()
        .await;
}

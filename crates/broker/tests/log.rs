//! The embedded log's reading-by-position guarantee under a deliberately slow appender.

use std::time::Duration;

use anyhow::{Context, ensure};
use onephase_broker::Subscriber;
use onephase_broker::log::{self, EmbeddedLog};
use onephase_core::Envelope;
use onephase_testkit::TestDb;

/// A transaction takes position 1 and stays open; a second append to the same topic must wait
/// for it rather than commit position 2 first, so a reader moving forward by position never
/// passes a position that is still to appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_append_is_never_skipped_by_a_reader() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let store = db.store().clone();
    store.migrate(&[log::migrations()]).await?;
    let pool = store.as_postgres().context("postgres")?.clone();
    let log = EmbeddedLog::new(store.clone()).with_poll_interval(Duration::from_millis(20));
    let topic = "slow.append";
    let slow = Envelope::builder(topic, "slow").build()?;
    let fast = Envelope::builder(topic, "fast").build()?;

    // The slow appender: the same statements `append` runs, in a transaction left open.
    let mut tx = pool.begin().await?;
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO onephase_log_topics (topic, next_position) VALUES ($1, 2) \
         ON CONFLICT (topic) DO UPDATE SET next_position = onephase_log_topics.next_position + 1 \
         RETURNING next_position - 1",
    )
    .bind(topic)
    .fetch_one(&mut *tx)
    .await?;
    ensure!(position == 1);
    sqlx::query(
        "INSERT INTO onephase_log_records (topic, position, id, key, payload, headers, created_at) \
         VALUES ($1, 1, $2, NULL, $3, '{}', now())",
    )
    .bind(topic)
    .bind(slow.id().as_uuid())
    .bind(slow.payload().as_ref())
    .execute(&mut *tx)
    .await?;

    let mut reader = log.subscribe(topic, "reader").await?;
    let fast_append = {
        let log = log.clone();
        let fast = fast.clone();
        tokio::spawn(async move { log.append(std::slice::from_ref(&fast)).await })
    };
    // While the slow transaction is open, the fast append cannot commit and nothing is
    // readable. Seen in the database rather than waited for: the append's backend is waiting
    // on the slow transaction's lock.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await?;
        if waiting > 0 {
            break;
        }
        ensure!(
            !fast_append.is_finished(),
            "the second append committed past an open position"
        );
        ensure!(
            std::time::Instant::now() < give_up,
            "the second append never waited on the open position"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        !fast_append.is_finished(),
        "the second append committed past an open position"
    );
    ensure!(
        tokio::time::timeout(Duration::from_millis(200), reader.next())
            .await
            .is_err(),
        "the reader saw a record while position 1 was still open"
    );
    tx.commit().await?;
    let positions = fast_append.await??;
    ensure!(positions == [2], "{positions:?}");
    let first = tokio::time::timeout(Duration::from_secs(5), reader.next()).await??;
    let second = tokio::time::timeout(Duration::from_secs(5), reader.next()).await??;
    ensure!(
        first.envelope().id() == slow.id(),
        "the slow record was skipped"
    );
    ensure!(second.envelope().id() == fast.id());
    drop((first, second, reader));
    db.close().await?;
    Ok(())
}

/// A record that is not a valid envelope (the table edited by hand) is reported once, with
/// where it is, and passed over: the group moves on to the next record.
#[tokio::test]
async fn a_corrupt_record_is_reported_and_passed_over() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let store = db.store().clone();
    store.migrate(&[log::migrations()]).await?;
    let log = EmbeddedLog::new(store.clone());
    let good = Envelope::builder("t", "good").build()?;
    log.append(&[Envelope::builder("t", "bad").build()?, good.clone()])
        .await?;
    let sqlite = store.as_sqlite().context("sqlite")?;
    sqlx::query("UPDATE onephase_log_records SET headers = 'not json' WHERE position = 1")
        .execute(sqlite.writer())
        .await?;

    let mut reader = log.subscribe("t", "g").await?;
    let err = reader.next().await.expect_err("the corrupt record");
    ensure!(
        err.kind() == onephase_core::ErrorKind::InvalidInput && err.message().contains("t@1"),
        "{err}"
    );
    let delivery = reader.next().await?;
    ensure!(delivery.envelope().id() == good.id());
    delivery.ack().await?;
    ensure!(
        log.committed("t", "g").await? == 2,
        "the group did not move past the bad record"
    );
    db.close().await?;
    Ok(())
}

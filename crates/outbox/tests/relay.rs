//! The relay against real stores and brokers: delivery, order per key with many relays,
//! poison rows, late commits, bad input, retention and the inbox.

mod common;

use onephase_testkit::per_backend;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::*;
use onephase_broker::log::{self as embedded, EmbeddedLog};
use onephase_broker::{Publisher, Subscriber};
use onephase_core::{Classify, Envelope, ErrorKind};
use onephase_outbox::{OutboxAdmin, OutboxError, Relay, RelayConfig};
use onephase_store::{Db, Store};
use onephase_testkit::{Engine, TestDb, engine_url};
use tokio::sync::watch;
use uuid::Uuid;

async fn migrated(db: &TestDb) -> anyhow::Result<Store> {
    let store = db.store().clone();
    store
        .migrate(&[onephase_outbox::migrations(), embedded::migrations()])
        .await?;
    Ok(store)
}

fn fast_config() -> RelayConfig {
    RelayConfig {
        poll_interval: Some(Duration::from_millis(20)),
        backoff: onephase_core::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            onephase_core::Jitter::Full,
        )
        .expect("valid backoff"),
        ..RelayConfig::default()
    }
}

/// Runs `relays` relays until the returned sender is told to stop.
fn spawn_relays<P: Publisher + Clone + 'static>(
    store: &Store,
    publisher: P,
    relays: usize,
    config: RelayConfig,
) -> (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop, stopped) = watch::channel(false);
    let handles = (0..relays)
        .map(|_| {
            let relay = Relay::new(store.clone(), publisher.clone(), config.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                relay
                    .run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            })
        })
        .collect();
    (stop, handles)
}

async fn stop(
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    stop.send(true)?;
    for h in handles {
        h.await?;
    }
    Ok(())
}

per_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_events_arrive_once_in_key_order_and_rolled_back_ones_never(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        create_effects(&store).await?;
        let log = EmbeddedLog::new(store.clone()).with_poll_interval(Duration::from_millis(20));
        let topic = "orders.created";
        let events = workload(topic, 600, 20);

        // A rolled-back transaction leaves nothing behind.
        let ghost = Envelope::builder(topic, "ghost").key("key-0").build()?;
        match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                onephase_outbox::enqueue(&mut tx, &ghost).await?;
                tx.rollback().await?;
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                onephase_outbox::enqueue(&mut tx, &ghost).await?;
                tx.rollback().await?;
            }
        }

        let mut sub = log.subscribe(topic, "checker").await?;
        let (stopper, handles) = spawn_relays(&store, log.publisher(), 1, fast_config());
        enqueue_all(&store, &events, 7).await?;
        let consumed =
            consume_and_apply(&mut sub, &store, &events, Duration::from_secs(60)).await?;
        stop(stopper, handles).await?;
        // The subscriber holds a pooled connection for LISTEN; closing the store waits for it.
        drop(sub);
        assert_effects_once(&store, &events).await?;
        let all = log.read(topic, 0, 10_000).await?;
        ensure!(
            all.len() == events.len(),
            "{} records in the log for {} events",
            all.len(),
            events.len()
        );
        ensure!(
            all.iter().all(|r| r.envelope.id() != ghost.id()),
            "a rolled-back event was published"
        );
        let status = OutboxAdmin::new(store.clone()).status().await?;
        ensure!(status.pending == 0 && status.dead == 0, "{status:?}");
        ensure!(
            status.published_retained == 0,
            "published rows were kept: {status:?}"
        );
        ensure!(consumed.deliveries >= events.len());
        db.close().await?;
        Ok(())
    }
}

/// Four relays on one PostgreSQL outbox, publishing to NATS JetStream: all events arrive, each
/// key in order, effects once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_on_postgres_keep_order_per_key() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let store = migrated(&db).await?;
    create_effects(&store).await?;
    let NatsChecker { mut sub, stream } =
        NatsChecker::start(&nats, "multi", Duration::from_secs(120)).await?;
    let (topic, publisher) = (&stream.topic, &stream.publisher);
    let events = workload(topic, 5_000, 100);
    let config = RelayConfig {
        batch_size: 200,
        ..fast_config()
    };
    let (stopper, handles) = spawn_relays(&store, publisher.clone(), 4, config);
    // Enqueue while the relays run, from two writers at once, each owning half the keys (as
    // writers that serialize on an entity do).
    let (a, b): (Vec<Envelope>, Vec<Envelope>) = events.iter().cloned().partition(|e| {
        e.key()
            .and_then(|k| k.strip_prefix("key-"))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < 50)
    });
    let (ra, rb) = tokio::join!(enqueue_all(&store, &a, 10), enqueue_all(&store, &b, 25));
    ra?;
    rb?;
    consume_and_apply(&mut sub, &store, &events, Duration::from_secs(120)).await?;
    stop(stopper, handles).await?;
    assert_effects_once(&store, &events).await?;
    stream.delete().await?;
    db.close().await?;
    Ok(())
}

per_backend! {
    /// A row inserted by plain SQL with a topic no transport accepts, one with headers that are
    /// not strings, an oversized payload and a NULL key: the bad rows are dead-lettered with the
    /// reason, the NULL-key row is published unordered, and no other key is held up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_rows_are_dead_lettered_without_blocking_other_keys(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let log = EmbeddedLog::new(store.clone());
        let topic = "bad.input";
        let insert = |id: Uuid,
                      topic: &'static str,
                      key: Option<&'static str>,
                      payload: Vec<u8>,
                      headers: &'static str| {
            let store = store.clone();
            async move {
                match store.db() {
                    Db::Postgres(pool) => {
                        sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5::jsonb)")
                            .bind(id).bind(topic).bind(key).bind(payload).bind(headers)
                            .execute(pool).await?;
                    }
                    Db::Sqlite(s) => {
                        sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload, headers) VALUES (?1, ?2, ?3, ?4, ?5)")
                            .bind(id.to_string()).bind(topic).bind(key).bind(payload).bind(headers)
                            .execute(s.writer()).await?;
                    }
                }
                anyhow::Ok(())
            }
        };
        let bad_topic = Uuid::now_v7();
        let bad_headers = Uuid::now_v7();
        let too_big = Uuid::now_v7();
        let unkeyed = Uuid::now_v7();
        let held = Uuid::now_v7();
        let fine = Uuid::now_v7();
        insert(
            bad_topic,
            "orders created!",
            Some("poisoned"),
            b"{}".to_vec(),
            "{}",
        )
        .await?;
        insert(
            bad_headers,
            topic,
            Some("k2"),
            b"{}".to_vec(),
            r#"{"n": 7}"#,
        )
        .await?;
        insert(too_big, topic, Some("k3"), vec![b'x'; 2048], "{}").await?;
        // Headers in onephase's own namespace would overwrite or travel beside the envelope's
        // key and id on the wire.
        let reserved_key = Uuid::now_v7();
        let reserved_id = Uuid::now_v7();
        insert(
            reserved_key,
            topic,
            Some("k5"),
            b"{}".to_vec(),
            r#"{"onephase-key": "other"}"#,
        )
        .await?;
        insert(
            reserved_id,
            topic,
            Some("k6"),
            b"{}".to_vec(),
            r#"{"Onephase-Id": "0190c0de-0000-7000-8000-000000000000"}"#,
        )
        .await?;
        insert(unkeyed, topic, None, b"{}".to_vec(), "{}").await?;
        insert(held, topic, Some("poisoned"), b"{}".to_vec(), "{}").await?;
        insert(fine, topic, Some("k4"), b"{}".to_vec(), r#"{"x-a": "b"}"#).await?;

        let config = RelayConfig {
            max_payload: 1024,
            ..fast_config()
        };
        let relay = Relay::new(store.clone(), log.publisher(), config);
        let report = relay.run_once().await?;
        ensure!(report.dead_lettered == 5, "{report:?}");
        ensure!(report.published == 2, "{report:?}");
        let published: Vec<Uuid> = log
            .read(topic, 0, 100)
            .await?
            .into_iter()
            .map(|r| r.envelope.id().as_uuid())
            .collect();
        ensure!(published == vec![unkeyed, fine], "published {published:?}");

        let admin = OutboxAdmin::new(store.clone());
        let dead = admin.dead(0, 100).await?;
        let reasons: Vec<(Uuid, String)> = dead
            .iter()
            .map(|d| (d.id, d.last_error.clone().unwrap_or_default()))
            .collect();
        ensure!(dead.len() == 5, "{reasons:?}");
        ensure!(
            reasons[0].0 == bad_topic && reasons[0].1.contains("topic"),
            "{reasons:?}"
        );
        ensure!(
            reasons[1].0 == bad_headers && reasons[1].1.contains("headers"),
            "{reasons:?}"
        );
        ensure!(
            reasons[2].0 == too_big && reasons[2].1.contains("2048 bytes"),
            "{reasons:?}"
        );
        for (i, id) in [(3, reserved_key), (4, reserved_id)] {
            ensure!(
                reasons[i].0 == id && reasons[i].1.contains("is reserved"),
                "{reasons:?}"
            );
        }

        // The poisoned key's later row waits behind its dead row...
        let again = relay.run_once().await?;
        ensure!(again.claimed == 0, "the held row was claimed: {again:?}");
        // ...until the operator discards the dead one.
        admin.discard(bad_topic).await?;
        let released = relay.run_once().await?;
        ensure!(released.published == 1, "{released:?}");
        let err = admin.retry(Uuid::now_v7()).await.expect_err("unknown id");
        ensure!(err.kind() == ErrorKind::NotFound, "{err}");
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn oversized_payloads_are_refused_at_enqueue_and_nothing_is_written(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let big =
            Envelope::builder("t", vec![0_u8; onephase_outbox::DEFAULT_MAX_PAYLOAD + 1]).build()?;
        let small = Envelope::builder("t", "ok").build()?;
        let err = match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let err = onephase_outbox::enqueue(&mut tx, &big)
                    .await
                    .expect_err("too big");
                onephase_outbox::enqueue(&mut tx, &small).await?;
                tx.commit().await?;
                err
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                let err = onephase_outbox::enqueue(&mut tx, &big)
                    .await
                    .expect_err("too big");
                onephase_outbox::enqueue(&mut tx, &small).await?;
                tx.commit().await?;
                err
            }
        };
        ensure!(matches!(err, OutboxError::PayloadTooLarge { .. }), "{err}");
        ensure!(err.kind() == ErrorKind::TooLarge);
        let status = OutboxAdmin::new(store.clone()).status().await?;
        ensure!(status.pending == 1, "{status:?}");
        // A batch is all or nothing: one oversized envelope keeps the others out too.
        let batch = [small.clone(), big.clone()];
        let fine: Vec<Envelope> = (0..3)
            .map(|i| Envelope::builder("t", format!("{i}")).build())
            .collect::<Result<_, _>>()?;
        match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                ensure!(onephase_outbox::enqueue_all(&mut tx, &batch).await.is_err());
                onephase_outbox::enqueue_all(&mut tx, &fine).await?;
                tx.commit().await?;
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                ensure!(onephase_outbox::enqueue_all(&mut tx, &batch).await.is_err());
                onephase_outbox::enqueue_all(&mut tx, &fine).await?;
                tx.commit().await?;
            }
        }
        let status = OutboxAdmin::new(store.clone()).status().await?;
        ensure!(status.pending == 4, "{status:?}");
        db.close().await?;
        Ok(())
    }
}

/// The broker refuses one topic (RabbitMQ: no queue bound for it). That row retries with
/// backoff, then is dead-lettered; later rows of its key wait; other keys flow. Once a queue
/// is bound, retrying the dead row delivers it and then the rows behind it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_keeps_refusing_holds_only_its_own_key() -> anyhow::Result<()> {
    use onephase_broker::amqp::{AmqpPublisher, AmqpSubscriber};
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(amqp) = engine_url(Engine::RabbitMq) else {
        return Ok(());
    };
    let store = migrated(&db).await?;
    let suffix = Uuid::now_v7().simple().to_string();
    let exchange = format!("onephase.test.{suffix}");
    let routed = format!("routed.t{suffix}");
    let unrouted = format!("unrouted.t{suffix}");
    let mut routed_sub =
        AmqpSubscriber::subscribe(&amqp, &exchange, &format!("q.{routed}"), &routed, 100).await?;
    let publisher = Arc::new(AmqpPublisher::connect(&amqp, &exchange).await?);

    let first = Envelope::builder(&unrouted, "1").key("stuck").build()?;
    let second = Envelope::builder(&routed, "2").key("stuck").build()?;
    let other = Envelope::builder(&routed, "3").key("free").build()?;
    enqueue_all(&store, &[first.clone(), second.clone(), other.clone()], 3).await?;

    let config = RelayConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let relay = Relay::new(store.clone(), Arc::clone(&publisher), config);
    let mut dead = 0;
    for _ in 0..50 {
        let report = relay.run_once().await?;
        dead += report.dead_lettered;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    ensure!(dead == 1, "the refused row was not dead-lettered");
    let delivery = tokio::time::timeout(Duration::from_secs(10), routed_sub.next()).await??;
    ensure!(
        delivery.envelope().id() == other.id(),
        "the free key's event did not flow"
    );
    delivery.ack().await?;

    let admin = OutboxAdmin::new(store.clone());
    let rows = admin.dead(0, 10).await?;
    ensure!(
        rows.len() == 1 && rows[0].id == first.id().as_uuid() && rows[0].attempts == 3,
        "{rows:?}"
    );
    ensure!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no queue is bound"),
        "{rows:?}"
    );
    let status = admin.status().await?;
    ensure!(status.pending == 1 && status.dead == 1, "{status:?}");

    // Bind a queue for the refused topic, retry, and both rows of the key flow in order.
    let mut unrouted_sub =
        AmqpSubscriber::subscribe(&amqp, &exchange, &format!("q.{unrouted}"), &unrouted, 100)
            .await?;
    admin.retry(first.id().as_uuid()).await?;
    let mut published = 0;
    for _ in 0..20 {
        published += relay.run_once().await?.published;
        if published == 2 {
            break;
        }
    }
    ensure!(published == 2, "published {published} after the retry");
    let d1 = tokio::time::timeout(Duration::from_secs(10), unrouted_sub.next()).await??;
    ensure!(d1.envelope().id() == first.id());
    d1.ack().await?;
    let d2 = tokio::time::timeout(Duration::from_secs(10), routed_sub.next()).await??;
    ensure!(d2.envelope().id() == second.id());
    d2.ack().await?;
    db.close().await?;
    Ok(())
}

/// A transaction that took its sequence value first but commits last is not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_transaction_is_still_published() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let store = migrated(&db).await?;
    let pool = store.as_postgres().context("postgres")?.clone();
    let log = EmbeddedLog::new(store.clone());
    let topic = "late.commit";
    let slow_event = Envelope::builder(topic, "slow").build()?;
    let mut slow = pool.begin().await?;
    onephase_outbox::enqueue(&mut slow, &slow_event).await?;
    let fast: Vec<Envelope> = (0..5)
        .map(|i| Envelope::builder(topic, format!("fast-{i}")).build())
        .collect::<Result<_, _>>()?;
    enqueue_all(&store, &fast, 1).await?;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM onephase_outbox ORDER BY seq")
        .fetch_all(&pool)
        .await?;
    ensure!(seqs.len() == 5, "the slow row is visible before commit");

    let relay = Relay::new(store.clone(), log.publisher(), fast_config());
    ensure!(relay.run_once().await?.published == 5);
    slow.commit().await?;
    let report = relay.run_once().await?;
    ensure!(
        report.published == 1,
        "the late row was skipped: {report:?}"
    );
    let ids: Vec<_> = log
        .read(topic, 0, 10)
        .await?
        .into_iter()
        .map(|r| r.envelope.id())
        .collect();
    ensure!(ids.contains(&slow_event.id()) && ids.len() == 6);
    db.close().await?;
    Ok(())
}

per_backend! {
    /// With `keep_published`, rows are marked, kept, and deleted in bounded batches once old.
    #[tokio::test]
    async fn retention_deletes_published_rows_in_batches(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let log = EmbeddedLog::new(store.clone());
        let events = workload("retained", 120, 3);
        enqueue_all(&store, &events, 40).await?;
        let config = RelayConfig {
            keep_published: Duration::from_millis(200),
            retention_batch: 50,
            batch_size: 1000,
            ..fast_config()
        };
        let relay = Relay::new(store.clone(), log.publisher(), config);
        ensure!(relay.run_once().await?.published == 120);
        let admin = OutboxAdmin::new(store.clone());
        ensure!(admin.status().await?.published_retained == 120);
        ensure!(
            relay.prune().await? == 0,
            "rows deleted before their retention ended"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        ensure!(relay.prune().await? == 120);
        let status = admin.status().await?;
        ensure!(
            status.published_retained == 0 && status.pending == 0,
            "{status:?}"
        );
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inbox_applies_a_redelivered_message_once(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        create_effects(&store).await?;
        let events = workload("inbox", 3, 1);
        let log = EmbeddedLog::new(store.clone());
        log.append(&events).await?;
        // The same messages delivered twice to the same consumer group name.
        for _ in 0..2 {
            let mut sub = EmbeddedLog::new(store.clone())
                .subscribe("inbox", &format!("g{}", Uuid::now_v7()))
                .await?;
            consume_and_apply(&mut sub, &store, &events, Duration::from_secs(10)).await?;
        }
        assert_effects_once(&store, &events).await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn inbox_rows_are_pruned_by_age_in_bounded_batches(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        create_effects(&store).await?;
        let events = workload("pruned", 3, 1);
        let log = EmbeddedLog::new(store.clone());
        log.append(&events).await?;
        let mut sub = log.subscribe("pruned", "g").await?;
        consume_and_apply(&mut sub, &store, &events, Duration::from_secs(10)).await?;
        drop(sub);
        let now = time::OffsetDateTime::now_utc;
        let prune = |older_than, limit| onephase_outbox::Inbox::prune(&store, older_than, limit, now());
        ensure!(prune(Duration::from_secs(3600), 10).await? == 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        ensure!(prune(Duration::ZERO, 2).await? == 2);
        ensure!(prune(Duration::ZERO, 2).await? == 1);
        ensure!(prune(Duration::ZERO, 2).await? == 0);
        db.close().await?;
        Ok(())
    }
}

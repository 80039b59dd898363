//! Fault test: a relay process publishing a steady stream is killed with SIGKILL at random
//! moments and restarted. Afterwards every event was published at least once, each key's
//! events arrived in order, and a consumer using the inbox applied every event exactly once.
//!
//! The relay runs in a child process: this same test binary, re-run with `--ignored --exact
//! crash_child_relay` and told what to do through `ONEPHASE_CRASH_*` variables.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::*;
use onephase_core::rand::RngExt;
use onephase_outbox::{OutboxAdmin, Relay, RelayConfig};
use onephase_store::Store;
use onephase_testkit::{Engine, TestDb, engine_url};
use uuid::Uuid;

const EVENTS: usize = 20_000;
const KEYS: usize = 500;
const KILLS: usize = 10;

/// Which broker the child relay publishes to.
#[derive(Clone, Copy, Debug)]
enum Sink {
    Nats,
    #[cfg(feature = "kafka-tests")]
    Kafka,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::Nats => "nats",
            #[cfg(feature = "kafka-tests")]
            Sink::Kafka => "kafka",
        }
    }
}

fn child_config() -> RelayConfig {
    RelayConfig {
        batch_size: 200,
        // Short, so the rows a killed relay held come back quickly.
        claim_timeout: Duration::from_secs(2),
        poll_interval: Some(Duration::from_millis(50)),
        ..RelayConfig::default()
    }
}

/// The relay process. Ignored so that it runs only when a crash test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by the crash tests as a child process"]
async fn crash_child_relay() -> anyhow::Result<()> {
    let url = std::env::var("ONEPHASE_CRASH_DB")?;
    let sink = std::env::var("ONEPHASE_CRASH_SINK")?;
    let target = std::env::var("ONEPHASE_CRASH_TARGET")?;
    let store = Store::connect(&url).await?;
    let forever = std::future::pending::<()>();
    match sink.as_str() {
        "nats" => {
            let publisher = onephase_broker::nats::NatsPublisher::connect(&target).await?;
            Relay::new(store, publisher, child_config())
                .run(forever)
                .await;
        }
        #[cfg(feature = "kafka-tests")]
        "kafka" => {
            let publisher =
                onephase_broker::kafka::KafkaPublisher::connect(&target, Duration::from_secs(30))?;
            Relay::new(store, publisher, child_config())
                .run(forever)
                .await;
        }
        other => anyhow::bail!("unknown sink {other}"),
    }
    Ok(())
}

fn spawn_child(db_url: &str, sink: Sink, target: &str) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    Ok(tokio::process::Command::new(exe)
        .args(["crash_child_relay", "--exact", "--ignored", "--nocapture"])
        .env("ONEPHASE_CRASH_DB", db_url)
        .env("ONEPHASE_CRASH_SINK", sink.name())
        .env("ONEPHASE_CRASH_TARGET", target)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

async fn crash_and_restart(
    db: TestDb,
    sink: Sink,
    target: &str,
    mut sub: Box<dyn onephase_broker::Subscriber>,
    topic: &str,
) -> anyhow::Result<()> {
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    create_effects(&store).await?;
    let events = workload(topic, EVENTS, KEYS);

    // A steady stream: one writer, 50 events per transaction, paced so it spans the kills.
    let writer = {
        let store = store.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(500) {
                enqueue_all(&store, chunk, 50).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    let consumer = {
        let store = store.clone();
        let events = events.clone();
        tokio::spawn(async move {
            consume_and_apply(sub.as_mut(), &store, &events, Duration::from_secs(240)).await
        })
    };

    let pool = store.as_postgres().context("a PostgreSQL store")?.clone();
    let mut mid_batch = 0;
    for kill in 0..KILLS {
        let mut child = spawn_child(db.url(), sink, target)?;
        let alive_ms = onephase_core::rand::rng().random_range(300..1500_u64);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        ensure!(
            child.try_wait()?.is_none(),
            "the relay exited by itself before kill {kill}"
        );
        child.start_kill()?; // SIGKILL
        child.wait().await?;
        // Rows still claimed by the dead relay: it was killed mid-batch.
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM onephase_outbox WHERE claimed_by IS NOT NULL AND claimed_until > now()",
        )
        .fetch_one(&pool)
        .await?;
        if held > 0 {
            mid_batch += 1;
        }
    }
    eprintln!("{mid_batch} of {KILLS} kills left a claimed batch behind");
    let status = OutboxAdmin::new(store.clone()).status().await?;
    eprintln!("after {KILLS} kills: {status:?}");
    // The last relay runs until the consumer has everything.
    let mut last = spawn_child(db.url(), sink, target)?;
    writer.await??;
    let consumed = consumer.await??;
    last.start_kill()?;
    last.wait().await?;
    assert_effects_once(&store, &events).await?;
    eprintln!(
        "{} deliveries for {} events ({} duplicates absorbed by the inbox)",
        consumed.deliveries, EVENTS, consumed.duplicates
    );
    db.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_ten_times_postgres_to_nats() -> anyhow::Result<()> {
    use onephase_broker::nats::{NatsPublisher, NatsSubscriber, NatsSubscription};
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let suffix = Uuid::now_v7().simple().to_string();
    let topic = format!("crash.t{suffix}");
    let stream = format!("CRASH_{suffix}");
    let publisher = NatsPublisher::connect(&nats).await?;
    publisher
        .ensure_stream(&stream, vec![topic.clone()], Duration::from_secs(120))
        .await?;
    let sub = NatsSubscriber::subscribe(
        publisher.jetstream(),
        NatsSubscription {
            stream: stream.clone(),
            durable: "checker".into(),
            filter_subject: topic.clone(),
            ack_wait: Duration::from_secs(30),
        },
    )
    .await?;
    crash_and_restart(db, Sink::Nats, &nats, Box::new(sub), &topic).await?;
    publisher
        .jetstream()
        .delete_stream(&stream)
        .await
        .context("deleting the stream")?;
    Ok(())
}

#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_ten_times_postgres_to_kafka() -> anyhow::Result<()> {
    use onephase_broker::kafka::{KafkaPublisher, KafkaSubscriber};
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(brokers) = engine_url(Engine::Kafka) else {
        return Ok(());
    };
    let topic = format!("crash.t{}", Uuid::now_v7().simple());
    KafkaPublisher::connect(&brokers, Duration::from_secs(30))?
        .ensure_topic(&topic, 8)
        .await?;
    let sub = KafkaSubscriber::subscribe(&brokers, &format!("{topic}.checker"), &[topic.as_str()])?;
    crash_and_restart(db, Sink::Kafka, &brokers, Box::new(sub), &topic).await
}

#[cfg(not(feature = "kafka-tests"))]
#[test]
fn relay_killed_ten_times_postgres_to_kafka() {
    onephase_testkit::engine_not_built(Engine::Kafka, "onephase-outbox", "kafka-tests");
}

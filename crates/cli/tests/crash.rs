//! Fault test: `onephase serve` relaying an application's PostgreSQL outbox to a broker is
//! killed with SIGKILL at random moments while events stream in, and restarted. Afterwards
//! every event was published at least once, each key's events arrived in order, and a consumer
//! using the inbox applied every event exactly once.

#[path = "../../outbox/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::*;
use onephase_core::rand::RngExt;
use onephase_outbox::OutboxAdmin;
use onephase_testkit::{Engine, TestDb, engine_url};
use tokio::process::{Child, Command};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onephase");
const EVENTS: usize = 20_000;
const KEYS: usize = 500;
const KILLS: usize = 10;

/// Writes a configuration that relays `source` to `sink`, with a short claim timeout so the
/// rows a killed server held come back quickly.
fn write_config(dir: &Path, source: &str, sink: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("onephase.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"sqlite://{}\"\n\n[[outbox.relay]]\nname = \"app\"\nsource = \"{source}\"\n\
             sink = \"{sink}\"\nbatch_size = 200\nclaim_timeout_secs = 2\n",
            dir.join("onephase.db").display()
        ),
    )?;
    Ok(path)
}

fn spawn_server(config: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--config",
        ])
        .arg(config)
        .env_remove("ONEPHASE_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

async fn crash_and_restart(
    db: TestDb,
    sink: &str,
    mut sub: Box<dyn onephase_broker::Subscriber>,
    topic: &str,
) -> anyhow::Result<()> {
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    create_effects(&store).await?;
    let events = workload(topic, EVENTS, KEYS);
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), db.url(), sink)?;

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
        let mut server = spawn_server(&config)?;
        let alive_ms = onephase_core::rand::rng().random_range(300..1500_u64);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        ensure!(
            server.try_wait()?.is_none(),
            "the server exited by itself before kill {kill}"
        );
        server.start_kill()?; // SIGKILL
        server.wait().await?;
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
    // The last server runs until the consumer has everything.
    let mut last = spawn_server(&config)?;
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
async fn server_killed_ten_times_relaying_postgres_to_nats() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let NatsChecker { sub, stream } =
        NatsChecker::start(&nats, "crash", Duration::from_secs(120)).await?;
    crash_and_restart(db, &nats, Box::new(sub), &stream.topic).await?;
    stream.delete().await
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_ten_times_relaying_postgres_to_kafka() -> anyhow::Result<()> {
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
    crash_and_restart(db, &format!("kafka://{brokers}"), Box::new(sub), &topic).await
}

#[cfg(not(feature = "kafka"))]
#[test]
fn server_killed_ten_times_relaying_postgres_to_kafka() {
    onephase_testkit::engine_not_built(Engine::Kafka, "onephase (cli)", "kafka");
}

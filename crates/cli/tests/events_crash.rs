//! Fault test: `onephase serve` catching a projection up with 100,000 events is killed with
//! SIGKILL at random moments and restarted. Afterwards the read model equals the one a fresh
//! single pass builds: every row counts exactly its stream's events (a batch applied twice, or
//! lost, would show), and every event is in the lineage once.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::{free_port, spawn_server, wait_until_up};
use onephase_core::rand::rngs::StdRng;
use onephase_core::rand::{RngExt, SeedableRng};
use onephase_events::{EventStore, ExpectedVersion, NewEvent, StreamAppend};
use onephase_store::on_store;
use onephase_testkit::TestDb;
use serde_json::{Value, json};

const EVENTS: u64 = 100_000;
const STREAMS: u64 = 500;
const KILLS: usize = 8;
const TOKEN: &str = "op_events_crash_test_token";

fn write_config(dir: &Path, store: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("onephase.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"{store}\"\n[[auth.tokens]]\nname = \"crash-test\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

async fn status(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let answer = http
        .get(format!("{base}/v1/events/projections/tally"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "status answered {}",
        answer.status()
    );
    Ok(answer.json::<Value>().await?[0].clone())
}

async fn crash_and_restart(db: TestDb) -> anyhow::Result<()> {
    let store = db.store().clone();
    store.migrate(&[onephase_events::migrations()]).await?;
    let events = EventStore::new(store.clone());
    let mut truth: HashMap<String, u64> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(23);
    for chunk in 0..EVENTS / 1000 {
        let mut by_stream: HashMap<String, Vec<NewEvent>> = HashMap::new();
        for i in 0..1000 {
            let stream = format!("tally-{}", rng.random_range(0..STREAMS));
            *truth.entry(stream.clone()).or_default() += 1;
            by_stream.entry(stream).or_default().push(NewEvent::new(
                "Counted",
                &format!(r#"{{"n":{}}}"#, chunk * 1000 + i),
            )?);
        }
        let appends: Vec<StreamAppend> = by_stream
            .into_iter()
            .map(|(s, e)| StreamAppend::new(s, ExpectedVersion::Any, e))
            .collect();
        events.append_all(&appends).await?;
    }
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), db.url())?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut server = spawn_server(&config, port, "warn")?;
    wait_until_up(&http, &base).await?;
    let defined = http
        .put(format!("{base}/v1/events/projections/tally"))
        .bearer_auth(TOKEN)
        .json(&json!({"key": "stream", "handlers": {"Counted": "count"}}))
        .send()
        .await?;
    ensure!(
        defined.status().is_success(),
        "define answered {}",
        defined.status()
    );
    let mut killed_mid_catch_up = 0;
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let before = status(&http, &base).await?;
        ensure!(
            server.try_wait()?.is_none(),
            "the server exited by itself before kill {kill}"
        );
        server.start_kill()?; // SIGKILL
        server.wait().await?;
        if before["position"].as_u64() < Some(EVENTS) {
            killed_mid_catch_up += 1;
        }
        server = spawn_server(&config, port, "warn")?;
        wait_until_up(&http, &base).await?;
    }
    eprintln!("{killed_mid_catch_up} of {KILLS} kills came during the catch-up");
    ensure!(
        killed_mid_catch_up > 0,
        "every kill came after the catch-up: nothing was tested"
    );
    let mut last = Value::Null;
    for _ in 0..1200 {
        last = status(&http, &base).await?;
        if last["position"].as_u64() == Some(EVENTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        last["position"].as_u64() == Some(EVENTS),
        "not caught up: {last}"
    );
    server.start_kill()?;
    let rows: Vec<(String, String)> = on_store!(read store.db(), pool => {
        sqlx::query_as("SELECT key, doc FROM onephase_events_documents WHERE projection = 'tally'")
            .fetch_all(pool)
            .await?
    });
    ensure!(
        rows.len() == truth.len(),
        "{} rows for {} streams",
        rows.len(),
        truth.len()
    );
    for (key, doc) in rows {
        let doc: Value = serde_json::from_str(&doc)?;
        let counted = doc["count"].as_u64().context("a count")?;
        let expected = truth.get(&key).copied().unwrap_or(0);
        ensure!(
            counted == expected,
            "{key}: counted {counted}, the stream holds {expected}"
        );
    }
    let lineage: i64 = on_store!(read store.db(), pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM onephase_events_lineage WHERE projection = 'tally'")
            .fetch_one(pool)
            .await?
    });
    ensure!(
        lineage == EVENTS as i64,
        "{lineage} lineage rows for {EVENTS} events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_catch_up_survives_sigkills_on_sqlite() -> anyhow::Result<()> {
    crash_and_restart(TestDb::sqlite().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_catch_up_survives_sigkills_on_postgres() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    crash_and_restart(db).await
}

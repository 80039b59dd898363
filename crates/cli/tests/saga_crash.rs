//! Fault test: `onephase serve` orchestrating 1,000 order sagas against real HTTP participants
//! that fail at random is killed with SIGKILL at random moments and restarted, while runs are
//! still being started (each start retried under its idempotency key until the server answers).
//!
//! Afterwards: exactly 1,000 runs exist; every one is terminal or waits for an operator; the
//! ones waiting are exactly those whose plan makes a needed compensation fail forever; every
//! participant applied each idempotency key at most once, never had two requests for one key in
//! flight, never saw one attempt number twice; and the books balance per order.

#[path = "../../saga/tests/common/mod.rs"]
mod participants;

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{free_port, spawn_server, wait_until_up};
use onephase_core::rand::rngs::StdRng;
use onephase_core::rand::{RngExt, SeedableRng};
use onephase_testkit::TestDb;
use participants::{Expect, Participants, expected, expected_books, order_definition, order_input};
use serde_json::{Value, json};

const RUNS: i64 = 1000;
const KILLS: usize = 10;
const TOKEN: &str = "op_saga_crash_test_token";

fn write_config(dir: &Path, store: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("onephase.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"{store}\"\n\
             [[auth.tokens]]\nname = \"crash-test\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [[outbox.relay]]\nname = \"self\"\nsink = \"log\"\nclaim_timeout_secs = 2\n\
             [saga]\nlease_margin_secs = 1\npoll_interval_ms = 20\nallow_networks = [\"127.0.0.0/8\"]\n",
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

/// One run's plan, drawn at random.
#[derive(Debug, Clone)]
struct Plan {
    refuse_at: Option<&'static str>,
    stuck: Option<&'static str>,
    input: Value,
}

fn plans(seed: u64) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..RUNS)
        .map(|order| {
            let refuse_at = match rng.random_range(0..100) {
                0..15 => Some("ship"),
                15..20 => Some("charge"),
                20..23 => Some("reserve"),
                _ => None,
            };
            // A compensation that always fails, on a step the refusal makes compensate.
            let stuck = match refuse_at {
                Some("ship") if rng.random_bool(0.2) => Some(if rng.random_bool(0.5) {
                    "reserve"
                } else {
                    "charge"
                }),
                Some("charge") if rng.random_bool(0.2) => Some("reserve"),
                _ => None,
            };
            let mut flaky = Vec::new();
            if rng.random_bool(0.2) {
                flaky.push(("charge", "action", rng.random_range(1..3)));
            }
            if rng.random_bool(0.1) {
                flaky.push(("ship", "action", 1));
            }
            if rng.random_bool(0.3) {
                flaky.push(("reserve", "compensation", rng.random_range(1..4)));
            }
            if rng.random_bool(0.2) {
                flaky.push(("charge", "compensation", rng.random_range(1..3)));
            }
            let delay = rng.random_range(0..30);
            Plan {
                refuse_at,
                stuck,
                input: order_input(order, refuse_at, stuck, &flaky, delay),
            }
        })
        .collect()
}

async fn crash_and_restart(db: TestDb) -> anyhow::Result<()> {
    let participants = Participants::start().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), db.url())?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut server = spawn_server(&config, port, "warn")?;
    wait_until_up(&http, &base).await?;
    let registered = http
        .post(format!("{base}/v1/sagas"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(order_definition(&participants.base(), 1, 2000))
        .send()
        .await?;
    ensure!(
        registered.status().is_success(),
        "{}",
        registered.text().await?
    );

    // Starts stream in while the server is killed; each is retried under its key until the
    // server answers, so a start whose answer was lost is not started twice.
    let plans = plans(0xC0FFEE);
    let done_starting = Arc::new(AtomicBool::new(false));
    let starter = {
        let (http, base, plans, done) = (
            http.clone(),
            base.clone(),
            plans.clone(),
            done_starting.clone(),
        );
        tokio::spawn(async move {
            let mut ids = HashMap::new();
            let mut retries = 0_u32;
            for (order, plan) in plans.iter().enumerate() {
                loop {
                    let sent = http
                        .post(format!("{base}/v1/sagas/order/runs"))
                        .bearer_auth(TOKEN)
                        .header("Idempotency-Key", format!("order-{order}"))
                        .json(&json!({"input": plan.input}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let body: Value = r.json().await?;
                            let id = body["id"].as_str().context("id")?.to_owned();
                            ids.insert(id, order);
                            break;
                        }
                        Ok(r) if r.status().is_client_error() => {
                            anyhow::bail!("start {order} refused: {}", r.text().await?);
                        }
                        _ => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            done.store(true, Ordering::SeqCst);
            anyhow::Ok((ids, retries))
        })
    };

    let mut rng = StdRng::seed_from_u64(0xDEAD);
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        ensure!(
            server.try_wait()?.is_none(),
            "the server exited by itself before kill {kill}"
        );
        server.start_kill()?; // SIGKILL
        server.wait().await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        server = spawn_server(&config, port, "warn")?;
        wait_until_up(&http, &base).await?;
    }
    let (ids, start_retries) = starter.await??;
    eprintln!(
        "{KILLS} kills; {start_retries} start requests retried; all started: {}",
        done_starting.load(Ordering::SeqCst)
    );

    // The last server finishes everything.
    let deadline = Instant::now() + Duration::from_secs(240);
    let runs = loop {
        let mut all: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut url = format!("{base}/v1/saga-runs?limit=1000");
            if let Some(b) = &before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Vec<Value> = http
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            let Some(last) = page.last() else { break };
            before = last["id"].as_str().map(str::to_owned);
            all.extend(page);
        }
        let active = all
            .iter()
            .filter(|r| matches!(r["state"].as_str(), Some("running" | "compensating")))
            .count();
        if active == 0 {
            break all;
        }
        ensure!(
            Instant::now() < deadline,
            "{active} runs still active after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    server.start_kill()?;
    server.wait().await?;

    ensure!(
        runs.len() == usize::try_from(RUNS)?,
        "{} runs for {RUNS} starts",
        runs.len()
    );
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for run in &runs {
        let id = run["id"].as_str().context("id")?;
        let order = *ids.get(id).context("a run no start returned")?;
        let plan = &plans[order];
        let want = match expected(plan.refuse_at, plan.stuck) {
            Expect::Completed => "completed",
            Expect::Compensated => "compensated",
            Expect::NeedsOperator => "needs_operator",
        };
        let state = run["state"].as_str().unwrap_or("?");
        ensure!(
            state == want,
            "run {id} (order {order}, {plan:?}) is {state}, expected {want}: {run}"
        );
        *by_state.entry(state.to_owned()).or_default() += 1;
    }
    eprintln!("final states: {by_state:?}");

    check_books(&participants, &plans)?;
    // The kills landed mid-work: runs whose attempt was cut off were taken over.
    let sql = "SELECT count(DISTINCT run_id) FROM onephase_saga_history WHERE detail LIKE '%interrupted%'";
    let interrupted: i64 = match db.store().db() {
        onephase_store::Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        onephase_store::Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await?,
    };
    eprintln!("{interrupted} runs had an attempt cut off by a kill and were taken over");
    ensure!(
        interrupted > 0,
        "no kill landed mid-call; the test proved nothing"
    );
    db.close().await?;
    Ok(())
}

/// The participants' side: nothing in flight twice, no attempt twice, balanced books.
fn check_books(participants: &Participants, plans: &[Plan]) -> anyhow::Result<()> {
    let books = participants.books();
    ensure!(
        books.overlaps.is_empty(),
        "{} invocations were in flight twice at a participant, e.g. {:?}",
        books.overlaps.len(),
        books.overlaps.first()
    );
    ensure!(
        books.repeated_attempts.is_empty(),
        "{} (key, attempt) pairs were sent twice, e.g. {:?}",
        books.repeated_attempts.len(),
        books.repeated_attempts.first()
    );
    let net = books.net();
    for (order, plan) in plans.iter().enumerate() {
        let order = i64::try_from(order)?;
        let get = |service: &str| net.get(&(service.to_owned(), order)).copied().unwrap_or(0);
        let got = (get("inventory"), get("payment"), get("shipping"));
        let want = expected_books(plan.refuse_at, plan.stuck);
        ensure!(
            got == want,
            "order {order} ({plan:?}): books (inventory, payment, shipping) {got:?}, expected {want:?}"
        );
    }
    eprintln!(
        "{} effects applied, {} repeated requests answered from the record, {} no-op compensations",
        books.applied.len(),
        books.replays.values().sum::<u32>(),
        books.noop_compensations
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_ten_sigkills_on_sqlite() -> anyhow::Result<()> {
    crash_and_restart(TestDb::sqlite().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_ten_sigkills_on_postgres() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    crash_and_restart(db).await
}

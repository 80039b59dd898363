//! The dual write on engines: the orders and the outbox in PostgreSQL, the events in NATS
//! JetStream, and onephase's relay a `onephase serve` process of its own, killed with SIGKILL
//! three times while it publishes and started again.
//!
//! Each run makes a JetStream stream of its own (`ONEPHASE_LAB_<run>`, subjects
//! `onephase-lab.<run>.>`, deleted at the end) and a database `onephase_lab_orders` on the
//! PostgreSQL server, whose `orders` and outbox tables it empties first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;
use futures::TryStreamExt;
use onephase_broker::Publisher;
use onephase_broker::nats::NatsPublisher;
use onephase_outbox::enqueue;
use onephase_store::Store;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, Executor};
use tokio::process::{Child, Command};

use super::{Failed, ORDERS, Outcome, STEP, Write, event, fates, figures, order_of};
use crate::Report;

const DATABASE: &str = "onephase_lab_orders";
/// SIGKILLs of the relay while the orders are written, evenly spread.
const KILLS: u32 = 3;
/// One order every 5 ms: the writes span the kills.
const ORDER_EVERY: Duration = Duration::from_millis(5);
/// How long the relay may take to publish the rest after the last order.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// Where the engines are and how to start onephase's relay.
#[derive(Debug, Clone)]
pub struct OnEngines<'a> {
    /// A PostgreSQL server (the scenario makes its database there).
    pub postgres: &'a str,
    /// NATS with JetStream.
    pub nats: &'a str,
    /// The `onephase` executable, run as `onephase serve` with a relay to NATS.
    pub onephase: &'a Path,
}

/// [`dual_write`](super::dual_write) on PostgreSQL and NATS JetStream, with a real SIGKILL of
/// onephase's relay process (three times, while it publishes) instead of a crash of the
/// writing process.
pub async fn dual_write_on_engines(seed: u64, engines: OnEngines<'_>) -> Report {
    let mut report = Report::new(
        "dual-write",
        seed,
        "400 orders, each with an event; the process dies after 5 % of commits, 5 % of commits fail; PostgreSQL, NATS JetStream, the relay killed with SIGKILL 3 times",
    );
    let Some((first, second, outbox, kills)) = report.ran_to_end(run_all(seed, &engines).await)
    else {
        return report;
    };
    figures(&mut report, &first, &second, &outbox);
    report.row(
        "events in the broker twice",
        first.duplicates as f64,
        outbox.duplicates as f64,
    );
    report.row(
        "relay processes killed (SIGKILL)",
        0.0,
        f64::from(kills.kills),
    );
    report.row(
        "kills that left a claimed batch behind",
        0.0,
        f64::from(kills.mid_batch),
    );
    report
}

/// What the kills did.
struct Kills {
    kills: u32,
    /// Kills after which the dead relay still held claimed rows: it died mid-batch.
    mid_batch: u32,
}

async fn run_all(
    seed: u64,
    engines: &OnEngines<'_>,
) -> Result<(Outcome, Outcome, Outcome, Kills), Failed> {
    let url = database(engines.postgres).await?;
    let store = Store::connect(&url).await?;
    store.migrate(&[onephase_outbox::migrations()]).await?;
    let pool = store
        .as_postgres()
        .ok_or("a postgres:// URL opens a PostgreSQL store")?
        .clone();
    pool.execute(
        "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, total BIGINT NOT NULL)",
    )
    .await?;
    let nats = NatsPublisher::connect(engines.nats).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let stream_name = format!("ONEPHASE_LAB_{run}");
    let subjects = format!("onephase-lab.{run}");
    let mut stream = nats
        .ensure_stream(
            &stream_name,
            vec![format!("{subjects}.>")],
            Duration::from_secs(120),
        )
        .await?;
    let outcomes = async {
        let first = naive(
            &pool,
            &nats,
            &mut stream,
            &subjects,
            Write::CommitThenPublish,
            seed,
        )
        .await?;
        let second = naive(
            &pool,
            &nats,
            &mut stream,
            &subjects,
            Write::PublishThenCommit,
            seed,
        )
        .await?;
        let (outbox, kills) = relayed(&pool, &url, engines, &mut stream, &subjects, seed).await?;
        Ok::<_, Failed>((first, second, outbox, kills))
    }
    .await;
    let _ = nats.jetstream().delete_stream(&stream_name).await;
    store.close().await;
    outcomes
}

/// The scenario's database on `server`, made if missing: its URL.
async fn database(server: &str) -> Result<String, Failed> {
    let mut admin = crate::two_phase::connect(server).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .await?;
    }
    admin.close().await?;
    let mut url = url_of(server)?;
    url.set_path(DATABASE);
    Ok(url.to_string())
}

fn url_of(server: &str) -> Result<reqwest::Url, Failed> {
    Ok(reqwest::Url::parse(server)?)
}

async fn reset(pool: &PgPool) -> Result<(), sqlx::Error> {
    pool.execute("TRUNCATE orders, onephase_outbox").await?;
    Ok(())
}

/// The naive ways, against PostgreSQL and NATS.
async fn naive(
    pool: &PgPool,
    nats: &NatsPublisher,
    stream: &mut Stream,
    subjects: &str,
    write: Write,
    seed: u64,
) -> Result<Outcome, Failed> {
    reset(pool).await?;
    let topic = format!("{subjects}.{}", mode(write));
    for (order, (dies, fails)) in (0..ORDERS).zip(fates(seed)) {
        let event = event(&topic, order)?;
        let publish = || async {
            match nats.publish(std::slice::from_ref(&event)).await.pop() {
                Some(Err(e)) => Err::<(), Failed>(e.into()),
                _ => Ok(()),
            }
        };
        match write {
            Write::CommitThenPublish => {
                if place(pool, order, fails).await? && !dies {
                    publish().await?;
                }
            }
            Write::PublishThenCommit => {
                publish().await?;
                place(pool, order, fails).await?;
            }
            Write::Outbox => return Err("the outbox is relayed, not written naively".into()),
        }
    }
    tally(pool, stream, &topic).await
}

fn mode(write: Write) -> &'static str {
    match write {
        Write::CommitThenPublish => "commit-then-publish",
        Write::PublishThenCommit => "publish-then-commit",
        Write::Outbox => "outbox",
    }
}

async fn place(pool: &PgPool, order: u32, fails: bool) -> Result<bool, Failed> {
    let mut tx = pool.begin().await?;
    insert(&mut tx, order).await?;
    if fails {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

async fn insert(tx: &mut sqlx::PgConnection, order: u32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO orders (id, total) VALUES ($1, 100)")
        .bind(i64::from(order))
        .execute(tx)
        .await?;
    Ok(())
}

/// The outbox, relayed by `onephase serve` processes that are killed with SIGKILL and
/// started again while the orders are written.
async fn relayed(
    pool: &PgPool,
    url: &str,
    engines: &OnEngines<'_>,
    stream: &mut Stream,
    subjects: &str,
    seed: u64,
) -> Result<(Outcome, Kills), Failed> {
    reset(pool).await?;
    let topic = format!("{subjects}.{}", mode(Write::Outbox));
    // The relay's own store and configuration, removed when the run is over.
    let dir = tempfile::Builder::new().prefix("onephase-lab-").tempdir()?;
    let relay = Relay {
        config: config(dir.path(), url, engines.nats)?,
        onephase: engines.onephase.to_owned(),
    };
    let outcome = async {
        let mut process = relay.start()?;
        let mut kills = Kills {
            kills: 0,
            mid_batch: 0,
        };
        let kill_every = ORDERS / (KILLS + 1);
        let start = Instant::now();
        for (order, (_, fails)) in (0..ORDERS).zip(fates(seed)) {
            tokio::time::sleep_until((start + ORDER_EVERY * order).into()).await;
            let mut tx = pool.begin().await?;
            insert(&mut tx, order).await?;
            enqueue(&mut *tx, &event(&topic, order)?).await?;
            if fails {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            if order > 0 && order % kill_every == 0 && kills.kills < KILLS {
                relay.kill(&mut process).await?;
                kills.kills += 1;
                if claimed(pool).await? > 0 {
                    kills.mid_batch += 1;
                }
                process = relay.start()?;
            }
        }
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(pool)
            .await?;
        let deadline = Instant::now() + DRAIN_WITHIN;
        while published(stream, &topic).await? < committed as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay.kill(&mut process).await?;
        Ok::<_, Failed>(kills)
    }
    .await;
    drop(dir);
    let kills = outcome?;
    Ok((tally(pool, stream, &topic).await?, kills))
}

/// Outbox rows held by a relay right now.
async fn claimed(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM onephase_outbox WHERE claimed_by IS NOT NULL AND claimed_until > now()",
    )
    .fetch_one(pool)
    .await
}

/// How `onephase serve` is started as the relay.
struct Relay {
    config: PathBuf,
    onephase: PathBuf,
}

impl Relay {
    fn start(&self) -> Result<Child, Failed> {
        Command::new(&self.onephase)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "error",
                "--config",
            ])
            .arg(&self.config)
            .env_remove("ONEPHASE_STORE")
            .env_remove("ONEPHASE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {} serve: {e}", self.onephase.display()).into())
    }

    /// SIGKILL, then waits for the process to be gone; an exit of its own before is an error.
    async fn kill(&self, process: &mut Child) -> Result<(), Failed> {
        if let Some(status) = process.try_wait()? {
            return Err(format!(
                "the relay ({} serve) exited by itself with {status}; run it with the same configuration to see why",
                self.onephase.display()
            )
            .into());
        }
        process.start_kill()?;
        process.wait().await?;
        Ok(())
    }
}

/// The relay's configuration: its own store in `dir`, a relay of `source` to `nats` with a
/// short claim, so the rows a killed relay held come back within a second.
fn config(dir: &Path, source: &str, nats: &str) -> Result<PathBuf, Failed> {
    let path = dir.join("onephase.toml");
    let text = format!(
        "store = \"sqlite://{}\"\n\n[[outbox.relay]]\nname = \"lab\"\nsource = \"{source}\"\n\
         sink = \"{nats}\"\nbatch_size = 50\nclaim_timeout_secs = 1\n",
        dir.join("onephase.db").display()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Messages on `topic` in the stream.
async fn published(stream: &mut Stream, topic: &str) -> Result<u64, Failed> {
    let mut info = stream.info_with_subjects(topic).await?;
    let mut total = 0;
    while let Some((_, count)) = info.try_next().await? {
        total += count as u64;
    }
    Ok(total)
}

/// The orders in the table and the events on `topic`, with how often each arrived.
async fn tally(pool: &PgPool, stream: &mut Stream, topic: &str) -> Result<Outcome, Failed> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(pool)
        .await?;
    let orders: BTreeSet<u32> = ids
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    let last = stream.info().await?.state.last_sequence;
    let mut arrivals: BTreeMap<u32, usize> = BTreeMap::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if message.subject.as_str() != topic {
            continue;
        }
        if let Some(order) = order_of(&message.payload) {
            *arrivals.entry(order).or_default() += 1;
        }
    }
    let events: BTreeSet<u32> = arrivals.keys().copied().collect();
    let duplicates = arrivals.values().filter(|n| **n > 1).count();
    // Counted at the end, by order: what is broken for the first orders stays broken.
    let broken = (1..=ORDERS / STEP)
        .map(|step| {
            let upto = step * STEP;
            let lost = orders
                .iter()
                .filter(|o| **o < upto && !events.contains(o))
                .count();
            let phantom = events
                .iter()
                .filter(|e| **e < upto && !orders.contains(e))
                .count();
            (lost + phantom) as f64
        })
        .collect();
    Ok(Outcome {
        orders,
        events,
        broken,
        duplicates,
    })
}

//! Posts 9 and 13 of the seed (*The Outbox Pattern: Reliable Events Without Two-Phase
//! Commit*, *The Transactional Outbox Pattern in Spring Boot*): a service writes an order and
//! publishes an event about it, and the two writes go to two systems. Run on real stores, on
//! the real clock: by default the orders and the outbox in one SQLite database and the broker
//! an embedded log in another; on engines ([`engines`], feature `nats`) the orders in
//! PostgreSQL, the broker NATS JetStream, and the relay a `onephase serve` process killed with
//! SIGKILL while it publishes.

#[cfg(feature = "nats")]
pub mod engines;

use std::collections::BTreeSet;

use bytes::Bytes;
use onephase_broker::log::EmbeddedLog;
use onephase_core::{Envelope, Random};
use onephase_outbox::{Relay, RelayConfig, enqueue};
use onephase_store::Store;
use sqlx::SqlitePool;

use crate::{Failed, Report};

const ORDERS: u32 = 400;
/// The share of orders after whose commit the process dies.
const CRASH: f64 = 0.05;
/// The share of orders whose commit fails (a constraint, a serialization failure, a timeout).
const COMMIT_FAILS: f64 = 0.05;
const TOPIC: &str = "orders.created";
/// Orders per point of the chart.
const STEP: u32 = 20;

/// How the service writes an order and its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Commit the order, then publish the event.
    CommitThenPublish,
    /// Publish the event, then commit the order.
    PublishThenCommit,
    /// The order and an outbox row in one transaction; a relay publishes the row.
    Outbox,
}

/// What one way of writing left behind.
struct Outcome {
    orders: BTreeSet<u32>,
    events: BTreeSet<u32>,
    /// Orders or events without their other half, after each [`STEP`] orders.
    broken: Vec<f64>,
    /// Events that reached the broker more than once (counted on engines).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    duplicates: usize,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.orders.difference(&self.events).count()
    }

    fn phantom(&self) -> usize {
        self.events.difference(&self.orders).count()
    }
}

/// The dual write.
///
/// 400 orders. After 5 % of the commits the process dies before doing anything else; 5 % of
/// the commits fail. The same orders, crashes and failures (drawn from the seed) for each way
/// of writing:
///
/// - **Naive, commit then publish**: an order whose process died after the commit never gets
///   its event.
/// - **Naive, publish then commit**: an order whose commit failed has an event about it
///   anyway: consumers act on an order that does not exist.
/// - **onephase**: the order and its event ([`enqueue`]) in one transaction; a [`Relay`]
///   publishes committed rows. A crash after the commit loses nothing (the row waits in the
///   table), a failed commit leaves neither.
pub async fn dual_write(seed: u64) -> Report {
    let mut report = Report::new(
        "dual-write",
        seed,
        "400 orders, each with an event; the process dies after 5 % of commits, 5 % of commits fail; SQLite store, embedded log",
    );
    let outcomes = async {
        let first = run(Write::CommitThenPublish, seed).await?;
        let second = run(Write::PublishThenCommit, seed).await?;
        let outbox = run(Write::Outbox, seed).await?;
        Ok::<_, Failed>((first, second, outbox))
    };
    let Some((first, second, outbox)) = report.ran_to_end(outcomes.await) else {
        return report;
    };
    figures(&mut report, &first, &second, &outbox);
    report
}

/// The rows, the invariant and the chart of the three ways of writing.
fn figures(report: &mut Report, first: &Outcome, second: &Outcome, outbox: &Outcome) {
    report.row(
        "events lost (commit, then publish; the process died between)",
        first.lost() as f64,
        outbox.lost() as f64,
    );
    report.row(
        "phantom events (publish, then commit; the commit failed)",
        second.phantom() as f64,
        outbox.phantom() as f64,
    );
    report.row(
        "orders committed",
        first.orders.len() as f64,
        outbox.orders.len() as f64,
    );
    report.row(
        "events published",
        first.events.len() as f64,
        outbox.events.len() as f64,
    );
    let whole = |o: &Outcome| o.lost() == 0 && o.phantom() == 0;
    report.invariant(
        "every committed order has its event and every event its order: 0 lost, 0 phantom",
        whole(first) && whole(second),
        whole(outbox),
    );
    let naive: Vec<f64> = first
        .broken
        .iter()
        .zip(&second.broken)
        .map(|(a, b)| a + b)
        .collect();
    report.chart_by(
        "orders and events without their other half, both naive ways together",
        "",
        &format!("{STEP} orders"),
        naive,
        outbox.broken.clone(),
    );
}

async fn run(write: Write, seed: u64) -> Result<Outcome, Failed> {
    let app = Store::connect("sqlite::memory:").await?;
    app.migrate(&[onephase_outbox::migrations()]).await?;
    let pool = app
        .as_sqlite()
        .ok_or("an in-memory store is SQLite")?
        .writer()
        .clone();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let broker = Store::connect("sqlite::memory:").await?;
    broker
        .migrate(&[onephase_broker::log::migrations()])
        .await?;
    let log = EmbeddedLog::new(broker.clone());
    let fates = fates(seed);
    let mut broken = Vec::new();
    let relay = Relay::new(
        app.clone(),
        log.publisher(),
        RelayConfig {
            batch_size: 50,
            ..RelayConfig::default()
        },
    );
    for (order, (dies, fails)) in (0..ORDERS).zip(fates) {
        let event = event(TOPIC, order)?;
        match write {
            Write::CommitThenPublish => {
                let committed = place(&pool, order, fails).await?;
                if committed && !dies {
                    log.append(std::slice::from_ref(&event)).await?;
                }
            }
            Write::PublishThenCommit => {
                log.append(std::slice::from_ref(&event)).await?;
                place(&pool, order, fails).await?;
            }
            Write::Outbox => {
                let mut tx = pool.begin().await?;
                insert(&mut tx, order).await?;
                enqueue(&mut *tx, &event).await?;
                if fails {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
                // A crash here loses nothing: the row is committed, and the relay (another
                // process) publishes it.
                relay.run_once().await?;
            }
        }
        if (order + 1) % STEP == 0 {
            let outcome = tally(&pool, &log, Vec::new()).await?;
            broken.push((outcome.lost() + outcome.phantom()) as f64);
        }
    }
    while write == Write::Outbox && relay.run_once().await?.claimed > 0 {}
    let outcome = tally(&pool, &log, broken).await?;
    app.close().await;
    broker.close().await;
    Ok(outcome)
}

/// For each order, whether the process dies after its commit and whether the commit fails:
/// the same draws for every way of writing.
fn fates(seed: u64) -> Vec<(bool, bool)> {
    let fate = Random::seeded(seed);
    (0..ORDERS)
        .map(|_| (fate.chance(CRASH), fate.chance(COMMIT_FAILS)))
        .collect()
}

fn event(topic: &str, order: u32) -> Result<Envelope, Failed> {
    let payload = Bytes::from(format!(r#"{{"order":{order}}}"#));
    Ok(Envelope::builder(topic, payload)
        .key(format!("order-{order}"))
        .build()?)
}

/// Inserts the order and commits, unless the commit `fails`; whether it committed.
async fn place(pool: &SqlitePool, order: u32, fails: bool) -> Result<bool, Failed> {
    let mut tx = pool.begin().await?;
    insert(&mut tx, order).await?;
    if fails {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

async fn insert(tx: &mut sqlx::SqliteConnection, order: u32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO orders (id, total) VALUES ($1, 100)")
        .bind(i64::from(order))
        .execute(tx)
        .await?;
    Ok(())
}

/// The order an event's payload is about.
fn order_of(payload: &[u8]) -> Option<u32> {
    let body: serde_json::Value = serde_json::from_slice(payload).ok()?;
    body["order"].as_u64().and_then(|o| u32::try_from(o).ok())
}

/// The orders in the table and the orders the log has events about.
async fn tally(pool: &SqlitePool, log: &EmbeddedLog, broken: Vec<f64>) -> Result<Outcome, Failed> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(pool)
        .await?;
    let orders = ids
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    let mut events = BTreeSet::new();
    let mut after = 0;
    loop {
        let records = log.read(TOPIC, after, 1000).await?;
        let Some(last) = records.last() else { break };
        after = last.position;
        for record in &records {
            if let Some(order) = order_of(record.envelope.payload()) {
                events.insert(order);
            }
        }
    }
    Ok(Outcome {
        orders,
        events,
        broken,
        duplicates: 0,
    })
}

//! Posts 10 and 5 of the seed (*Event Sourcing Sounds Better Than It Is*, *CQRS Sounds Fancy
//! Until You Have to Debug It*): the failures that arrive after the first demo, each on a real
//! store and the real clock, naive beside [`onephase_events`].
//!
//! - [`lost_update`]: two writers decide on the same state and both append.
//! - [`skipped::skipped_event`]: a reader by position passes an event that commits late
//!   (PostgreSQL).
//! - [`read_your_writes`]: a client reads the read model right after its write.
//! - [`schema_change`]: last year's events meet this year's code.

pub mod skipped;

use std::time::{Duration, Instant};

use onephase_core::Random;
use onephase_events::{
    EventStore, EventsError, ExpectedVersion, NewEvent, Projections, Projector, Upcasters,
};
use onephase_store::Store;
use serde::Deserialize;

use crate::report::seconds;
use crate::{Failed, Report};

/// A store in a file of its own (an in-memory SQLite database lives and dies with a
/// connection), migrated for events.
async fn store(dir: &tempfile::TempDir) -> Result<EventStore, Failed> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("events.db").display()
    );
    let store = Store::connect(&url).await?;
    store.migrate(&[onephase_events::migrations()]).await?;
    Ok(EventStore::new(store))
}

const ACCOUNTS: u32 = 100;
const OPENING: i64 = 100;

/// The balance of `account`, folded from its events, and the version it reflects.
async fn balance(events: &EventStore, account: &str) -> Result<(i64, u64), Failed> {
    let read = events.read_stream(account, 0, 1000).await?;
    let mut balance = 0;
    for e in &read {
        let amount = e.data.to_value()["amount"].as_i64().unwrap_or(0);
        balance += if e.event_type == "Deposited" {
            amount
        } else {
            -amount
        };
    }
    Ok((balance, read.last().map_or(0, |e| e.version)))
}

/// Two writers per account, each withdrawing 60 to 90 of a balance of 100 after checking it
/// covers the amount. Both read before either writes, which is the race at its worst.
///
/// - **Naive**: the append does not say which version the decision saw (`Any`): both
///   withdrawals land and the account is overdrawn.
/// - **onephase**: the append expects the version read (`Exact`); the second writer's append
///   is refused, it reads again, decides again, and refuses its withdrawal.
pub async fn lost_update(seed: u64) -> Report {
    let mut report = Report::new(
        "lost-update",
        seed,
        "100 accounts opened with 100; per account two writers each withdraw 60-90 after checking the balance, both reading before either appends; SQLite store",
    );
    let run = async {
        let naive = overdrafts(seed, false).await?;
        let onephase = overdrafts(seed, true).await?;
        Ok::<_, Failed>((naive, onephase))
    };
    let Some((naive, onephase)) = report.ran_to_end(run.await) else {
        return report;
    };
    report.row(
        "accounts overdrawn",
        naive.overdrawn as f64,
        onephase.overdrawn as f64,
    );
    report.row(
        "withdrawals accepted",
        naive.accepted as f64,
        onephase.accepted as f64,
    );
    report.row(
        "stale decisions refused by the expected version",
        naive.conflicts as f64,
        onephase.conflicts as f64,
    );
    report.row(
        "lowest balance",
        naive.lowest as f64,
        onephase.lowest as f64,
    );
    report.invariant(
        "no account is overdrawn: every withdrawal was decided on the balance it changed",
        naive.overdrawn == 0,
        onephase.overdrawn == 0,
    );
    report.chart_by(
        "accounts overdrawn so far",
        "",
        "10 accounts",
        naive.curve,
        onephase.curve,
    );
    report
}

struct Overdrafts {
    overdrawn: u32,
    accepted: u32,
    conflicts: u32,
    lowest: i64,
    curve: Vec<f64>,
}

async fn overdrafts(seed: u64, expect: bool) -> Result<Overdrafts, Failed> {
    let dir = tempfile::tempdir()?;
    let events = store(&dir).await?;
    let random = Random::seeded(seed);
    let mut out = Overdrafts {
        overdrawn: 0,
        accepted: 0,
        conflicts: 0,
        lowest: OPENING,
        curve: Vec::new(),
    };
    for n in 0..ACCOUNTS {
        let account = format!("account-{n}");
        events
            .append(
                &account,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "Deposited",
                    &format!(r#"{{"amount":{OPENING}}}"#),
                )?],
            )
            .await?;
        let amounts = [
            60 + (random.next_u64() % 31) as i64,
            60 + (random.next_u64() % 31) as i64,
        ];
        // Both writers read before either appends, then append in a fixed order: the race's
        // losing schedule every time, so one seed replays one run.
        let mut seen = Vec::with_capacity(amounts.len());
        for _ in amounts {
            seen.push(balance(&events, &account).await?);
        }
        for (amount, read) in amounts.into_iter().zip(seen) {
            let (accepted, conflicts) = withdraw(&events, &account, amount, read, expect).await?;
            out.accepted += u32::from(accepted);
            out.conflicts += conflicts;
        }
        let (balance, _) = balance(&events, &account).await?;
        out.lowest = out.lowest.min(balance);
        out.overdrawn += u32::from(balance < 0);
        if (n + 1) % 10 == 0 {
            out.curve.push(f64::from(out.overdrawn));
        }
    }
    Ok(out)
}

/// One writer's decision on the state it read (`read`: balance and version), then its append;
/// with `expect`, a conflict makes it read and decide again. Returns whether it withdrew and
/// how many conflicts it met.
async fn withdraw(
    events: &EventStore,
    account: &str,
    amount: i64,
    read: (i64, u64),
    expect: bool,
) -> Result<(bool, u32), Failed> {
    let mut conflicts = 0;
    let (mut balance_seen, mut version) = read;
    loop {
        if balance_seen < amount {
            return Ok((false, conflicts));
        }
        let expected = if expect {
            ExpectedVersion::Exact(version)
        } else {
            ExpectedVersion::Any
        };
        let event = NewEvent::new("Withdrawn", &format!(r#"{{"amount":{amount}}}"#))?;
        match events.append(account, expected, vec![event]).await {
            Ok(_) => return Ok((true, conflicts)),
            Err(EventsError::WrongExpectedVersion { .. }) => conflicts += 1,
            Err(e) => return Err(e.into()),
        }
        (balance_seen, version) = balance(events, account).await?;
    }
}

const WRITES: u32 = 200;

/// A client places an order and at once reads its customer's row of the read model, which a
/// projector keeps up to date beside it.
///
/// - **Naive**: reads the row as it is: until the projector has applied the order, the client
///   sees its own write missing.
/// - **onephase**: reads with the append's position as a consistency token
///   ([`Projections::wait_for`]), so the row it sees includes its write; the cost is the wait.
pub async fn read_your_writes(seed: u64) -> Report {
    let mut report = Report::new(
        "read-your-writes",
        seed,
        "200 orders, each read back from the customer's read-model row at once; a projector in the same process; SQLite store",
    );
    let run = async {
        let naive = reads(seed, false).await?;
        let onephase = reads(seed, true).await?;
        Ok::<_, Failed>((naive, onephase))
    };
    let Some((naive, onephase)) = report.ran_to_end(run.await) else {
        return report;
    };
    report.row(
        "reads missing the client's own write",
        naive.stale as f64,
        onephase.stale as f64,
    );
    report.row("read latency p50 (µs)", naive.p(0.5), onephase.p(0.5));
    report.row("read latency p99 (µs)", naive.p(0.99), onephase.p(0.99));
    report.invariant(
        "a client always reads its own write from the read model",
        naive.stale == 0,
        onephase.stale == 0,
    );
    report.chart_by(
        "stale reads so far",
        "",
        "20 orders",
        naive.curve,
        onephase.curve,
    );
    report
}

struct Reads {
    stale: u32,
    latencies_us: Vec<f64>,
    curve: Vec<f64>,
}

impl Reads {
    fn p(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_by(f64::total_cmp);
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).copied().unwrap_or(0.0)
    }
}

async fn reads(seed: u64, token: bool) -> Result<Reads, Failed> {
    let dir = tempfile::tempdir()?;
    let events = store(&dir).await?;
    let projections = Projections::new(events.clone());
    let definition = serde_json::from_str(
        r#"{"category":"order","key":{"field":"customer"},"handlers":{"OrderPlaced":"count"}}"#,
    )?;
    projections.define("customers", &definition, "lab").await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projector = tokio::spawn(
        Projector::new(events.clone())
            .with_documents()
            .run(async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    let random = Random::seeded(seed);
    let mut out = Reads {
        stale: 0,
        latencies_us: Vec::new(),
        curve: Vec::new(),
    };
    let mut placed = std::collections::HashMap::<String, u64>::new();
    for n in 0..WRITES {
        let customer = format!("c-{}", random.next_u64() % 20);
        let event = NewEvent::new("OrderPlaced", &format!(r#"{{"customer":"{customer}"}}"#))?;
        let appended = events
            .append(
                &format!("order-{n}"),
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await?;
        *placed.entry(customer.clone()).or_default() += 1;
        let start = Instant::now();
        if token {
            projections
                .wait_for("customers", appended.position, Duration::from_secs(5))
                .await?;
        }
        let row = projections.document("customers", &customer).await?;
        out.latencies_us.push(seconds(start.elapsed()) * 1e6);
        let seen = row
            .and_then(|r| r.doc.to_value()["count"].as_u64())
            .unwrap_or(0);
        out.stale += u32::from(seen < placed[&customer]);
        if (n + 1) % 20 == 0 {
            out.curve.push(f64::from(out.stale));
        }
    }
    let _ = stop.send(true);
    projector.await?;
    Ok(out)
}

/// This year's shape of `CustomerRegistered`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Registered {
    full_name: String,
    country: String,
}

const STORED: u32 = 300;

/// Three years of `CustomerRegistered` events: v1 had `name`, v2 renamed it `full_name`, v3
/// added `country`. Today's code reads them all into v3's shape.
///
/// - **Naive**: deserializes the stored data as it is: every v1 and v2 event fails (or, with
///   lenient defaults, is silently wrong).
/// - **onephase**: reads through [`Upcasters`] (v1 -> v2 -> v3); every event arrives in
///   today's shape, and one written by a newer service (v4) is an error that names it.
pub async fn schema_change(seed: u64) -> Report {
    let mut report = Report::new(
        "schema-change",
        seed,
        "300 stored CustomerRegistered events of schema versions 1, 2 and 3, read by code that knows version 3; SQLite store",
    );
    let Some((naive, onephase, newer, curves)) = report.ran_to_end(schema_run(seed).await) else {
        return report;
    };
    report.row(
        "events that could not be read",
        f64::from(naive),
        f64::from(onephase),
    );
    report.row(
        "events read in today's shape",
        f64::from(STORED - naive),
        f64::from(STORED - onephase),
    );
    report.invariant(
        "every stored event is read in today's shape, and one the reader cannot know is refused by name",
        naive == 0,
        onephase == 0 && newer,
    );
    report.chart_by(
        "events that could not be read so far",
        "",
        "30 stored events",
        curves.0,
        curves.1,
    );
    report
}

/// Unreadable events so far, after each tenth of the stored ones.
fn unreadable_curve(read: &[onephase_events::RecordedEvent]) -> Vec<f64> {
    let step = (read.len() / 10).max(1);
    let mut failed = 0.0;
    let mut curve = Vec::new();
    for (i, e) in read.iter().enumerate() {
        if serde_json::from_str::<Registered>(e.data.get()).is_err() {
            failed += 1.0;
        }
        if (i + 1) % step == 0 {
            curve.push(failed);
        }
    }
    curve
}

type SchemaOutcome = (u32, u32, bool, (Vec<f64>, Vec<f64>));

async fn schema_run(seed: u64) -> Result<SchemaOutcome, Failed> {
    let dir = tempfile::tempdir()?;
    let plain = store(&dir).await?;
    let random = Random::seeded(seed);
    let mut batch = Vec::new();
    for n in 0..STORED {
        let event = match random.next_u64() % 3 {
            0 => NewEvent::new(
                "CustomerRegistered",
                &format!(r#"{{"name":"Customer {n}"}}"#),
            )?
            .with_schema_version(1),
            1 => NewEvent::new(
                "CustomerRegistered",
                &format!(r#"{{"full_name":"Customer {n}"}}"#),
            )?
            .with_schema_version(2),
            _ => NewEvent::new(
                "CustomerRegistered",
                &format!(r#"{{"full_name":"Customer {n}","country":"NL"}}"#),
            )?
            .with_schema_version(3),
        };
        batch.push(event);
    }
    plain
        .append("customer-all", ExpectedVersion::NoStream, batch)
        .await?;
    let stored = plain.read_stream("customer-all", 0, STORED).await?;
    let naive_curve = unreadable_curve(&stored);
    let naive = naive_curve.last().copied().unwrap_or(0.0) as u32;
    let upcasters = Upcasters::new()
        .step("CustomerRegistered", 1, |mut d| {
            let name = d["name"].take();
            if let Some(o) = d.as_object_mut() {
                o.remove("name");
                o.insert("full_name".into(), name);
            }
            Ok(d)
        })
        .step("CustomerRegistered", 2, |mut d| {
            d["country"] = "unknown".into();
            Ok(d)
        });
    let events = plain.clone().with_upcasters(upcasters);
    let upcast = events.read_stream("customer-all", 0, STORED).await?;
    let onephase_curve = unreadable_curve(&upcast);
    let onephase = onephase_curve.last().copied().unwrap_or(0.0) as u32;
    // A newer service wrote version 4; this reader must refuse it by name, not skip it.
    plain
        .clone()
        .with_upcasters(Upcasters::new().register("CustomerRegistered", 4))
        .append(
            "customer-new",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "CustomerRegistered",
                r#"{"full_name":"N","country":"SE","tier":1}"#,
            )?],
        )
        .await?;
    let newer = matches!(
        events.read_stream("customer-new", 0, 1).await,
        Err(EventsError::UnknownVersion { version: 4, .. })
    );
    Ok((naive, onephase, newer, (naive_curve, onephase_curve)))
}

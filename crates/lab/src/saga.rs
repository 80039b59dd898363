//! Post 3 of the seed, *Sagas Are Not Transactions*: other services see a saga's intermediate
//! states, and a compensation can fail. Run with the real [`Orchestrator`] on a SQLite store,
//! on the real clock, against in-process participants.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onephase_core::{Backoff, Jitter, Random};
use onephase_saga::{
    Audit, Call, Orchestrator, OrchestratorConfig, Policy, RunFilter, RunState, Saga, StartRequest,
    StepError, step,
};
use onephase_store::Store;
use serde_json::{Value, json};

use crate::herd::lock;
use crate::{Failed, Report};

const ORDERS: u32 = 100;
/// The share of orders the warehouse cannot place (out of stock).
const OUT_OF_STOCK: f64 = 0.2;
/// Orders per point of the chart.
const STEP: u32 = 10;

/// The payment and order services' books, and what a reader of them sees meanwhile.
#[derive(Debug, Default)]
struct Books {
    charged: Mutex<BTreeSet<u32>>,
    refunded: Mutex<BTreeSet<u32>>,
    placed: Mutex<BTreeSet<u32>>,
    /// Idempotency keys applied, so a repeated call changes nothing.
    applied: Mutex<HashSet<String>>,
    /// Refunds fail while set: the payment service is down.
    payments_down: AtomicBool,
    /// The order whose saga is running now (they run one after another).
    current: Mutex<Option<u32>>,
}

impl Books {
    /// Orders charged and neither refunded nor placed: money taken for nothing.
    fn charged_for_nothing(&self) -> BTreeSet<u32> {
        let (charged, refunded, placed) = (
            lock(&self.charged).clone(),
            lock(&self.refunded).clone(),
            lock(&self.placed).clone(),
        );
        charged
            .into_iter()
            .filter(|o| !refunded.contains(o) && !placed.contains(o))
            .collect()
    }

    /// Whether the order in progress is charged and not yet placed nor refunded: the state a
    /// transaction would hide.
    fn in_between(&self) -> bool {
        let Some(order) = *lock(&self.current) else {
            return false;
        };
        lock(&self.charged).contains(&order)
            && !lock(&self.placed).contains(&order)
            && !lock(&self.refunded).contains(&order)
    }

    fn first_time(&self, key: &str) -> bool {
        lock(&self.applied).insert(key.to_owned())
    }
}

/// A service call: a moment of work, during which others may look at the books.
async fn service_time() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn charge(books: &Books, order: u32, key: &str) -> Result<Value, StepError> {
    service_time().await;
    if books.first_time(key) {
        lock(&books.charged).insert(order);
    }
    Ok(json!({"charged": order}))
}

async fn refund(books: &Books, order: u32, key: &str) -> Result<Value, StepError> {
    service_time().await;
    if books.payments_down.load(Ordering::SeqCst) {
        return Err(StepError::retry("the payment service is down"));
    }
    if books.first_time(key) {
        lock(&books.refunded).insert(order);
    }
    Ok(Value::Null)
}

async fn place(books: &Books, order: u32, in_stock: bool, key: &str) -> Result<Value, StepError> {
    service_time().await;
    if !in_stock {
        return Err(StepError::fail("out of stock"));
    }
    if books.first_time(key) {
        lock(&books.placed).insert(order);
    }
    Ok(json!({"placed": order}))
}

/// What one orchestration left behind.
struct Outcome {
    /// Reads, by a service watching the books, that saw money taken for an order not placed.
    intermediate_seen: u64,
    /// Orders charged for nothing once the run (and any operator) is done.
    charged_for_nothing: usize,
    /// Of those, the ones nobody was told about.
    unnoticed: usize,
    /// Runs that waited for an operator.
    parked: usize,
    /// Orders charged for nothing and unnoticed, counted after each [`STEP`] orders.
    unnoticed_by_step: Vec<f64>,
}

/// Sagas are not transactions.
///
/// 100 orders, each a saga of two steps: charge the card (undone by a refund), then place the
/// order, which fails for the 20 % out of stock (drawn from the seed). The payment service is
/// down while the orders run, so every refund fails; a service reads the books every
/// millisecond meanwhile.
///
/// - **Naive**: an orchestrator in a `try`/`catch`: charge, place, and on a failure refund,
///   logging the refund's error and moving on.
/// - **onephase**: the [`Orchestrator`]: a refund that keeps failing (3 attempts) parks its
///   run in `needs_operator`, visible and counted; when the payment service is back, the
///   operator retries them ([`onephase_saga::SagaAdmin::retry`], with a note) and they
///   compensate.
pub async fn compensation(seed: u64) -> Report {
    let mut report = Report::new(
        "saga-compensation",
        seed,
        "100 orders: charge, then place; 20 % out of stock; the payment service is down while they run, so refunds fail",
    );
    let outcomes = async {
        let naive = naive(seed).await?;
        let onephase = orchestrated(seed).await?;
        Ok::<_, Failed>((naive, onephase))
    };
    let Some((naive, onephase)) = report.ran_to_end(outcomes.await) else {
        return report;
    };
    report.row(
        "reads that saw the order in progress charged and not placed",
        naive.intermediate_seen as f64,
        onephase.intermediate_seen as f64,
    );
    report.row(
        "customers charged for an order never placed, at the end",
        naive.charged_for_nothing as f64,
        onephase.charged_for_nothing as f64,
    );
    report.row(
        "of those, known to nobody",
        naive.unnoticed as f64,
        onephase.unnoticed as f64,
    );
    report.row(
        "runs that waited for an operator",
        naive.parked as f64,
        onephase.parked as f64,
    );
    report.invariant(
        "no failed compensation goes unnoticed, and once the operator acted no customer is charged for an order never placed",
        naive.unnoticed == 0 && naive.charged_for_nothing == 0,
        onephase.unnoticed == 0 && onephase.charged_for_nothing == 0,
    );
    report.chart_by(
        "customers charged for nothing that nobody knows of, so far",
        "",
        &format!("{STEP} orders"),
        naive.unnoticed_by_step,
        onephase.unnoticed_by_step,
    );
    report
}

/// Which orders are out of stock: the same draws for both orchestrations.
fn stock(seed: u64) -> Vec<bool> {
    let random = Random::seeded(seed);
    (0..ORDERS).map(|_| !random.chance(OUT_OF_STOCK)).collect()
}

/// Reads the books every millisecond until `stop`, counting the reads that see the order in
/// progress charged and not placed.
fn watch(books: Arc<Books>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let seen = AtomicU64::new(0);
        while !stop.load(Ordering::SeqCst) {
            if books.in_between() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen.into_inner()
    })
}

async fn naive(seed: u64) -> Result<Outcome, Failed> {
    let books = Arc::new(Books::default());
    books.payments_down.store(true, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(books.clone(), stop.clone());
    let mut dropped = BTreeSet::new();
    let mut unnoticed_by_step = Vec::new();
    for (order, in_stock) in (0..ORDERS).zip(stock(seed)) {
        *lock(&books.current) = Some(order);
        let key = |step: &str| format!("naive/{order}/{step}");
        charge(&books, order, &key("charge")).await?;
        if place(&books, order, in_stock, &key("place")).await.is_err()
            && refund(&books, order, &key("refund")).await.is_err()
        {
            // `catch (e) { log.warn(e) }`: a line in a log, and on to the next order.
            dropped.insert(order);
        }
        if (order + 1) % STEP == 0 {
            unnoticed_by_step.push(dropped.len() as f64);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let intermediate_seen = watcher.await?;
    // The payment service comes back, but nothing remembers the refunds it missed.
    books.payments_down.store(false, Ordering::SeqCst);
    let charged_for_nothing = books.charged_for_nothing().len();
    Ok(Outcome {
        intermediate_seen,
        charged_for_nothing,
        unnoticed: charged_for_nothing,
        parked: 0,
        unnoticed_by_step,
    })
}

async fn orchestrated(seed: u64) -> Result<Outcome, Failed> {
    let books = Arc::new(Books::default());
    books.payments_down.store(true, Ordering::SeqCst);
    let store = Store::connect("sqlite::memory:").await?;
    store
        .migrate(&[onephase_outbox::migrations(), onephase_saga::migrations()])
        .await?;
    let orchestrator = Orchestrator::new(store.clone(), OrchestratorConfig::default());
    let quick = Backoff::new(
        Duration::from_millis(2),
        Duration::from_millis(10),
        Jitter::Full,
    )?;
    let order_of = |call: &Call| -> u32 {
        call.input["order"]
            .as_u64()
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(u32::MAX)
    };
    let (charging, refunding, placing) = (books.clone(), books.clone(), books.clone());
    orchestrator.register(
        Saga::builder("order", 1)
            .step(
                step::compensatable(
                    "charge",
                    move |call: Call| {
                        let books = charging.clone();
                        async move { charge(&books, order_of(&call), &call.idempotency_key).await }
                    },
                    move |call: Call| {
                        let books = refunding.clone();
                        async move { refund(&books, order_of(&call), &call.idempotency_key).await }
                    },
                )
                .compensation_policy(Policy {
                    timeout: Duration::from_secs(5),
                    max_attempts: Some(3),
                    backoff: quick,
                }),
            )
            .pivot(step::pivot("place", move |call: Call| {
                let books = placing.clone();
                async move {
                    let in_stock = call.input["in_stock"].as_bool().unwrap_or(true);
                    place(&books, order_of(&call), in_stock, &call.idempotency_key).await
                }
            }))
            .build()?,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(books.clone(), stop.clone());
    let mut unnoticed_by_step = Vec::new();
    for (order, in_stock) in (0..ORDERS).zip(stock(seed)) {
        *lock(&books.current) = Some(order);
        let input = json!({"order": order, "in_stock": in_stock});
        orchestrator
            .start(StartRequest::new("order", input).idempotency_key(format!("order-{order}")))
            .await?;
        rested(&orchestrator).await?;
        if (order + 1) % STEP == 0 {
            // A refund that failed is a run in needs_operator: known, counted, listed.
            let parked = parked(&orchestrator).await?.len();
            let unnoticed = books.charged_for_nothing().len().saturating_sub(parked);
            unnoticed_by_step.push(unnoticed as f64);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let intermediate_seen = watcher.await?;
    let waiting = parked(&orchestrator).await?;
    let unnoticed = books
        .charged_for_nothing()
        .len()
        .saturating_sub(waiting.len());
    // The payment service is back; the operator retries what waits for them.
    books.payments_down.store(false, Ordering::SeqCst);
    let admin = orchestrator.admin();
    for id in &waiting {
        let audit = Audit::new("lab-operator", "the payment service is back; refund");
        admin.retry(*id, &audit).await?;
    }
    rested(&orchestrator).await?;
    let charged_for_nothing = books.charged_for_nothing().len();
    store.close().await;
    Ok(Outcome {
        intermediate_seen,
        charged_for_nothing,
        unnoticed,
        parked: waiting.len(),
        unnoticed_by_step,
    })
}

/// Drives the runs until none is running or compensating.
async fn rested(orchestrator: &Orchestrator) -> Result<(), Failed> {
    loop {
        orchestrator.run_once().await?;
        let counts = orchestrator.admin().counts().await?;
        let moving = [RunState::Running, RunState::Compensating]
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .sum::<i64>();
        if moving == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The runs waiting for an operator.
async fn parked(orchestrator: &Orchestrator) -> Result<Vec<uuid::Uuid>, Failed> {
    let filter = RunFilter {
        state: Some(RunState::NeedsOperator),
        limit: 1000,
        ..RunFilter::default()
    };
    Ok(orchestrator
        .admin()
        .list(&filter)
        .await?
        .into_iter()
        .map(|run| run.id)
        .collect())
}

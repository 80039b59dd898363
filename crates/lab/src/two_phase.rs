//! Post 12 of the seed, *Distributed Transactions Are a Lie*: a money transfer
//! across two PostgreSQL databases, with real `PREPARE TRANSACTION` / `COMMIT PREPARED` and a
//! coordinator that dies between the two, beside the same transfer as an onephase saga.
//!
//! It needs a PostgreSQL server with `max_prepared_transactions > 0` (the default is 0, which
//! refuses `PREPARE TRANSACTION`): `scripts/engines.sh` starts a cluster of the project's own on
//! 127.0.0.1:5433 for it. The scenario makes two databases there, `onephase_lab_bank_a` and
//! `onephase_lab_bank_b`, and empties their tables on every run.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onephase_core::{Backoff, Jitter};
use onephase_saga::{
    Call, Orchestrator, OrchestratorConfig, Policy, RunState, Saga, StartRequest, StepError, step,
};
use onephase_store::{Store, redact_url};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::herd::{Timeline, lock};
use crate::report::seconds;
use crate::{Failed, Report};

/// Transfers, one every [`TRANSFER_EVERY`].
const TRANSFERS: u32 = 20;
const TRANSFER_EVERY: Duration = Duration::from_millis(100);
const AMOUNT: i64 = 10;
/// The transfer whose coordinator dies after the prepare (2PC), or after the debit (saga).
const CRASHING: u32 = 3;
/// The transfer whose credit fails: the receiving account is frozen.
const TO_FROZEN: u32 = 1;
/// How long after the coordinator died an operator resolves the in-doubt transactions by hand.
const OPERATOR_AFTER: Duration = Duration::from_secs(2);
/// How long the other clients keep buying.
const RUN_FOR: Duration = Duration::from_secs(3);
const CLIENTS: usize = 6;
/// How long a client's statement waits for a row lock before it gives up: 200 ms.
const LOCK_TIMEOUT: &str = "SET lock_timeout = '200ms'";
const LOCK_TIMEOUT_LOCAL: &str = "SET LOCAL lock_timeout = '200ms'";
const BANKS: [&str; 2] = ["onephase_lab_bank_a", "onephase_lab_bank_b"];
const START_BALANCE: i64 = 1_000_000;
/// Prefix of this scenario's prepared transactions, so leftovers of an interrupted run can be
/// found and rolled back.
const GID_PREFIX: &str = "onephase-lab-";

/// What the scenario needs, said when it cannot run.
pub const NEEDS: &str = "a PostgreSQL server with max_prepared_transactions > 0 (`--postgres URL`, \
     or ONEPHASE_LAB_POSTGRES_URL); scripts/engines.sh starts one on 127.0.0.1:5433";

/// The two banks' pools.
#[derive(Clone)]
struct Banks {
    a: PgPool,
    b: PgPool,
}

impl Banks {
    /// Both databases, made if missing, their accounts reset, and any prepared transaction an
    /// interrupted run left behind rolled back (it would hold its locks forever).
    async fn open(url: &str) -> Result<Self, Failed> {
        let options = PgConnectOptions::from_str(url)?;
        let mut admin = sqlx::PgConnection::connect_with(&options).await?;
        for bank in BANKS {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(bank)
                    .fetch_one(&mut admin)
                    .await?;
            if !exists {
                admin
                    .execute(AssertSqlSafe(format!("CREATE DATABASE {bank}")))
                    .await?;
            }
        }
        admin.close().await?;
        let pool = |bank: &str| {
            PgPoolOptions::new()
                .max_connections(16)
                .connect_with(options.clone().database(bank))
        };
        let banks = Self {
            a: pool(BANKS[0]).await?,
            b: pool(BANKS[1]).await?,
        };
        for (pool, accounts, opening) in [
            (
                &banks.a,
                "INSERT INTO accounts (id, balance, frozen) VALUES ('alice', $1, false), ('shop', 0, false)",
                START_BALANCE,
            ),
            (
                &banks.b,
                "INSERT INTO accounts (id, balance, frozen) VALUES ('bob', $1, false), ('carol', 0, true)",
                0,
            ),
        ] {
            let leftovers: Vec<String> = sqlx::query_scalar(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
            )
            .bind(format!("{GID_PREFIX}%"))
            .fetch_all(pool)
            .await?;
            for gid in leftovers {
                pool.execute(AssertSqlSafe(format!("ROLLBACK PREPARED '{gid}'")))
                    .await?;
            }
            pool.execute(
                "CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL, frozen boolean NOT NULL);
                 CREATE TABLE IF NOT EXISTS applied (key text PRIMARY KEY);
                 TRUNCATE accounts, applied;",
            )
            .await?;
            sqlx::query(accounts).bind(opening).execute(pool).await?;
        }
        Ok(banks)
    }

    /// All the money in both banks.
    async fn total(&self) -> Result<i64, sqlx::Error> {
        let sum = "SELECT COALESCE(SUM(balance), 0)::bigint FROM accounts";
        let a: i64 = sqlx::query_scalar(sum).fetch_one(&self.a).await?;
        let b: i64 = sqlx::query_scalar(sum).fetch_one(&self.b).await?;
        Ok(a + b)
    }

    async fn close(self) {
        self.a.close().await;
        self.b.close().await;
    }
}

/// A session on `url` holding the scenario's advisory lock, so that two runs against one server
/// take turns instead of emptying each other's tables; after checking that the server can
/// prepare transactions at all.
async fn exclusive(url: &str) -> Result<sqlx::PgConnection, Failed> {
    let mut session = connect(url).await?;
    let prepared: i64 = sqlx::query_scalar(
        "SELECT setting::bigint FROM pg_settings WHERE name = 'max_prepared_transactions'",
    )
    .fetch_one(&mut session)
    .await?;
    if prepared == 0 {
        return Err(format!(
            "{} has max_prepared_transactions = 0, so it refuses PREPARE TRANSACTION; this scenario needs {NEEDS}",
            redact_url(url)
        )
        .into());
    }
    sqlx::query("SELECT pg_advisory_lock(hashtext('onephase-lab two-phase-commit'))")
        .execute(&mut session)
        .await?;
    Ok(session)
}

/// A session on `url`; an error that names the server (without its password).
pub(crate) async fn connect(url: &str) -> Result<sqlx::PgConnection, Failed> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| format!("{} is not a PostgreSQL URL: {e}", redact_url(url)))?;
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {}: {e}", redact_url(url)).into())
}

fn lock_timed_out(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// What the other clients and a reader saw while the transfers ran.
#[derive(Default)]
struct Traffic {
    purchases: AtomicU64,
    timed_out: Timeline,
    timed_out_count: AtomicU64,
    longest_wait_ms: AtomicU64,
    /// Reads of both banks whose total was not the money there is: a transfer half done.
    half_done_reads: AtomicU64,
}

/// Alice's card purchases at the shop, in bank A: each a short transaction on her row.
async fn clients(banks: Banks, traffic: Arc<Traffic>, start: Instant, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (bank, traffic, stop) = (banks.a.clone(), traffic.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                let outcome = purchase(&bank).await;
                let waited = began.elapsed().as_millis() as u64;
                traffic.longest_wait_ms.fetch_max(waited, Ordering::Relaxed);
                match outcome {
                    Ok(()) => {
                        traffic.purchases.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if lock_timed_out(&e) => {
                        traffic.timed_out.add(began - start);
                        traffic.timed_out_count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Anything else is the engine failing; the totals at the end show it.
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let reader = {
        let (banks, traffic, stop) = (banks.clone(), traffic.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(total) = banks.total().await
                    && total != START_BALANCE
                {
                    traffic.half_done_reads.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    let _ = reader.await;
}

async fn purchase(bank: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = bank.begin().await?;
    tx.execute(LOCK_TIMEOUT_LOCAL).await?;
    tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 'alice'")
        .await?;
    tx.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 'shop'")
        .await?;
    tx.commit().await
}

fn recipient(transfer: u32) -> &'static str {
    if transfer == TO_FROZEN {
        "carol"
    } else {
        "bob"
    }
}

/// What one way of transferring did.
#[derive(Default)]
struct Outcome {
    purchases: u64,
    timed_out: u64,
    timed_out_by_bucket: Timeline,
    longest_wait_ms: u64,
    /// From the coordinator's death to the in-doubt transactions' resolution.
    unavailable: Duration,
    half_done_reads: u64,
    /// The longest time money had left one bank and not reached (or returned to) the other.
    longest_in_flight: Duration,
    transfers_done: u64,
    transfers_undone: u64,
    /// Money created (positive) or lost (negative) once everything settled.
    money_drift: i64,
}

/// Two-phase commit is a lie.
///
/// Alice's bank (database A) and Bob's (database B). 20 transfers of 10 from Alice to Bob,
/// one every 100 ms; the 2nd goes to a frozen account, so its credit fails. Meanwhile six
/// clients make card purchases on Alice's account every 20 ms (each statement waits at most
/// 200 ms for a row lock), and a reader adds up both banks every 5 ms.
///
/// - **Naive, 2PC**: each transfer updates both databases, `PREPARE TRANSACTION` on both,
///   then `COMMIT PREPARED` on both. The 4th transfer's coordinator dies after the prepare
///   (its connections close without a word, as when its process is killed): the prepared
///   transactions outlive it and keep Alice's row locked, so every purchase and every later
///   transfer times out until an operator, 2 s later, finds them in `pg_prepared_xacts` and
///   commits them by hand.
/// - **onephase**: each transfer is a saga on the [`Orchestrator`]: debit A in a local
///   transaction (undone by a refund), then credit B. The 4th transfer's orchestrator dies
///   after the debit; another takes the run over when its claim lapses and credits Bob. No
///   lock outlives a local transaction, so nothing waits; the price is that the money is
///   visibly in flight meanwhile, which the reader counts. The frozen account's credit fails
///   and the debit is refunded.
pub async fn two_phase_commit(seed: u64, postgres: Option<&str>) -> Report {
    let mut report = Report::new(
        "two-phase-commit",
        seed,
        "20 transfers A → B, one every 100 ms, the 4th's coordinator dies; 6 clients buy on the same account every 20 ms (lock_timeout 200 ms); PostgreSQL",
    );
    let Some(url) = postgres else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    let outcomes = async {
        let one_at_a_time = exclusive(url).await?;
        let naive = two_phase(url).await?;
        let onephase = saga(url, seed).await?;
        one_at_a_time.close().await?;
        Ok::<_, Failed>((naive, onephase))
    };
    let Some((naive, onephase)) = report.ran_to_end(outcomes.await) else {
        return report;
    };
    report.row(
        "requests that timed out waiting for a lock",
        naive.timed_out as f64,
        onephase.timed_out as f64,
    );
    report.row(
        "seconds the account could not be written",
        seconds(naive.unavailable),
        seconds(onephase.unavailable),
    );
    report.row(
        "longest request (ms)",
        naive.longest_wait_ms as f64,
        onephase.longest_wait_ms as f64,
    );
    report.row(
        "purchases made",
        naive.purchases as f64,
        onephase.purchases as f64,
    );
    report.row(
        "transfers completed",
        naive.transfers_done as f64,
        onephase.transfers_done as f64,
    );
    report.row(
        "transfers undone (frozen account)",
        naive.transfers_undone as f64,
        onephase.transfers_undone as f64,
    );
    report.row(
        "reads that saw a transfer half done",
        naive.half_done_reads as f64,
        onephase.half_done_reads as f64,
    );
    report.row(
        "longest time money was in flight (ms)",
        naive.longest_in_flight.as_millis() as f64,
        onephase.longest_in_flight.as_millis() as f64,
    );
    report.row(
        "money created or lost at the end",
        naive.money_drift as f64,
        onephase.money_drift as f64,
    );
    let kept = |o: &Outcome| o.timed_out == 0 && o.money_drift == 0;
    report.invariant(
        "no request waits on another database's unfinished transfer (0 lock timeouts), and no money is created or lost",
        kept(&naive),
        kept(&onephase),
    );
    let len = naive
        .timed_out_by_bucket
        .len()
        .max(onephase.timed_out_by_bucket.len())
        .max((RUN_FOR.as_millis() / crate::herd::BUCKET.as_millis()) as usize);
    report.chart(
        "requests that timed out on a lock, per 100 ms",
        "",
        crate::herd::BUCKET,
        naive.timed_out_by_bucket.counts(len),
        onephase.timed_out_by_bucket.counts(len),
    );
    report
}

/// Runs the clients and the reader beside `transfers`, and collects what they saw.
async fn with_traffic<F, Fut>(banks: &Banks, transfers: F) -> Result<Outcome, Failed>
where
    F: FnOnce(Instant) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, Failed>>,
{
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let load = tokio::spawn(clients(banks.clone(), traffic.clone(), start, stop.clone()));
    let result = transfers(start).await;
    let rest = RUN_FOR.saturating_sub(start.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::SeqCst);
    load.await?;
    let mut outcome = result?;
    outcome.purchases = traffic.purchases.load(Ordering::Relaxed);
    outcome.timed_out = traffic.timed_out_count.load(Ordering::Relaxed);
    outcome.timed_out_by_bucket = traffic.timed_out.clone();
    outcome.longest_wait_ms = traffic.longest_wait_ms.load(Ordering::Relaxed);
    outcome.half_done_reads = traffic.half_done_reads.load(Ordering::Relaxed);
    outcome.money_drift = banks.total().await? - START_BALANCE;
    Ok(outcome)
}

async fn two_phase(url: &str) -> Result<Outcome, Failed> {
    let banks = Banks::open(url).await?;
    let outcome = with_traffic(&banks, |start| {
        let banks = banks.clone();
        async move {
            let mut outcome = Outcome::default();
            let mut died_at = None;
            let mut operator = None;
            for transfer in 0..TRANSFERS {
                tokio::time::sleep_until((start + TRANSFER_EVERY * transfer).into()).await;
                let dies = transfer == CRASHING;
                match prepare_and_commit(&banks, transfer, dies).await {
                    Ok(Prepared::Committed) => outcome.transfers_done += 1,
                    Ok(Prepared::RolledBack) => outcome.transfers_undone += 1,
                    Ok(Prepared::InDoubt) => {
                        let at = Instant::now();
                        died_at = Some(at);
                        operator = Some(tokio::spawn(resolve_by_hand(banks.clone(), at)));
                    }
                    // A later transfer that waited on the in-doubt locks and gave up.
                    Err(e) if lock_timed_out(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let (Some(died_at), Some(operator)) = (died_at, operator) {
                let resolved_at = operator.await??;
                outcome.transfers_done += 1;
                outcome.unavailable = resolved_at - died_at;
            }
            Ok(outcome)
        }
    })
    .await;
    banks.close().await;
    outcome
}

enum Prepared {
    Committed,
    RolledBack,
    /// Prepared on both sides, and the coordinator died.
    InDoubt,
}

/// One transfer by two-phase commit; with `dies`, the coordinator disappears after both
/// prepares.
async fn prepare_and_commit(
    banks: &Banks,
    transfer: u32,
    dies: bool,
) -> Result<Prepared, sqlx::Error> {
    let mut a = banks.a.acquire().await?.detach();
    let mut b = banks.b.acquire().await?.detach();
    let gid = |bank: &str| format!("{GID_PREFIX}{transfer}-{bank}");
    a.execute(LOCK_TIMEOUT).await?;
    b.execute(LOCK_TIMEOUT).await?;
    a.execute("BEGIN").await?;
    b.execute("BEGIN").await?;
    let work = async {
        sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = 'alice'")
            .bind(AMOUNT)
            .execute(&mut a)
            .await?;
        let credited =
            sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND NOT frozen")
                .bind(AMOUNT)
                .bind(recipient(transfer))
                .execute(&mut b)
                .await?;
        Ok::<_, sqlx::Error>(credited.rows_affected() == 1)
    }
    .await;
    match work {
        Ok(true) => {}
        Ok(false) => {
            // Phase one: B votes no, so both roll back.
            a.execute("ROLLBACK").await?;
            b.execute("ROLLBACK").await?;
            return Ok(Prepared::RolledBack);
        }
        Err(e) => {
            let _ = a.execute("ROLLBACK").await;
            let _ = b.execute("ROLLBACK").await;
            return Err(e);
        }
    }
    a.execute(AssertSqlSafe(format!("PREPARE TRANSACTION '{}'", gid("a"))))
        .await?;
    b.execute(AssertSqlSafe(format!("PREPARE TRANSACTION '{}'", gid("b"))))
        .await?;
    if dies {
        // The coordinator is gone: its sessions end without COMMIT PREPARED. What was
        // prepared stays prepared, locks and all, until someone decides.
        drop((a, b));
        return Ok(Prepared::InDoubt);
    }
    a.execute(AssertSqlSafe(format!("COMMIT PREPARED '{}'", gid("a"))))
        .await?;
    b.execute(AssertSqlSafe(format!("COMMIT PREPARED '{}'", gid("b"))))
        .await?;
    a.close().await?;
    b.close().await?;
    Ok(Prepared::Committed)
}

/// The operator, paged [`OPERATOR_AFTER`] the coordinator died: finds the prepared
/// transactions, sees both sides voted yes, and commits them. When they were resolved.
async fn resolve_by_hand(banks: Banks, died_at: Instant) -> Result<Instant, Failed> {
    tokio::time::sleep_until((died_at + OPERATOR_AFTER).into()).await;
    for pool in [&banks.a, &banks.b] {
        let gids: Vec<String> = sqlx::query_scalar(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
        )
        .bind(format!("{GID_PREFIX}%"))
        .fetch_all(pool)
        .await?;
        for gid in gids {
            pool.execute(AssertSqlSafe(format!("COMMIT PREPARED '{gid}'")))
                .await?;
        }
    }
    Ok(Instant::now())
}

/// When each transfer's money left A, and when it arrived in B or went back to A.
#[derive(Default)]
struct Flights {
    left: std::sync::Mutex<HashMap<u32, Instant>>,
    longest: std::sync::Mutex<Duration>,
}

impl Flights {
    fn landed(&self, transfer: u32) {
        if let Some(left) = lock(&self.left).get(&transfer) {
            let mut longest = lock(&self.longest);
            *longest = (*longest).max(left.elapsed());
        }
    }
}

/// Applies `sql` (with the amount and the account) to `bank` once per idempotency key, in one
/// local transaction; false when the account is frozen.
async fn apply_once(
    bank: &PgPool,
    key: &str,
    sql: &'static str,
    account: &str,
) -> Result<bool, Failed> {
    let mut tx = bank.begin().await?;
    let first = sqlx::query("INSERT INTO applied (key) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if first {
        let changed = sqlx::query(sql)
            .bind(AMOUNT)
            .bind(account)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    tx.commit().await?;
    Ok(true)
}

fn transfer_of(call: &Call) -> u32 {
    call.input["transfer"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(u32::MAX)
}

fn transient(e: impl std::fmt::Display) -> StepError {
    StepError::retry(e.to_string())
}

fn transfer_saga(
    banks: &Banks,
    flights: &Arc<Flights>,
    dying: &Arc<tokio::sync::Notify>,
    crashed: &Arc<AtomicBool>,
) -> Result<onephase_saga::Definition, Failed> {
    let quick = Backoff::new(
        Duration::from_millis(5),
        Duration::from_millis(20),
        Jitter::Full,
    )?;
    let policy = Policy {
        timeout: Duration::from_millis(300),
        max_attempts: Some(20),
        backoff: quick,
    };
    let (debit_bank, refund_bank, credit_bank) =
        (banks.a.clone(), banks.a.clone(), banks.b.clone());
    let (debit_flights, refund_flights, credit_flights) =
        (flights.clone(), flights.clone(), flights.clone());
    let (dying, crashed) = (dying.clone(), crashed.clone());
    Ok(Saga::builder("transfer", 1)
        .step(
            step::compensatable(
                "debit",
                move |call: Call| {
                    let (bank, flights) = (debit_bank.clone(), debit_flights.clone());
                    async move {
                        let sql = "UPDATE accounts SET balance = balance - $1 WHERE id = $2";
                        apply_once(&bank, &call.idempotency_key, sql, "alice")
                            .await
                            .map_err(transient)?;
                        lock(&flights.left)
                            .entry(transfer_of(&call))
                            .or_insert_with(Instant::now);
                        Ok::<_, StepError>(Value::Null)
                    }
                },
                move |call: Call| {
                    let (bank, flights) = (refund_bank.clone(), refund_flights.clone());
                    async move {
                        let sql = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";
                        apply_once(&bank, &call.idempotency_key, sql, "alice")
                            .await
                            .map_err(transient)?;
                        flights.landed(transfer_of(&call));
                        Ok::<_, StepError>(Value::Null)
                    }
                },
            )
            .timeout(policy.timeout)
            .max_attempts(policy.max_attempts)
            .backoff(policy.backoff)
            .compensation_policy(policy),
        )
        .pivot(
            step::pivot("credit", move |call: Call| {
                let (bank, flights) = (credit_bank.clone(), credit_flights.clone());
                let (dying, crashed) = (dying.clone(), crashed.clone());
                async move {
                    let transfer = transfer_of(&call);
                    if transfer == CRASHING && !crashed.swap(true, Ordering::SeqCst) {
                        // The orchestrator dies here, between the debit and the credit.
                        dying.notify_one();
                        std::future::pending::<()>().await;
                    }
                    let to = call.input["to"].as_str().unwrap_or("bob").to_owned();
                    let sql =
                        "UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND NOT frozen";
                    match apply_once(&bank, &call.idempotency_key, sql, &to).await {
                        Ok(true) => {
                            flights.landed(transfer);
                            Ok(Value::Null)
                        }
                        Ok(false) => Err(StepError::fail(format!("the account {to} is frozen"))),
                        Err(e) => Err(transient(e)),
                    }
                }
            })
            .timeout(policy.timeout)
            .max_attempts(policy.max_attempts)
            .backoff(policy.backoff),
        )
        .build()?)
}

async fn saga(url: &str, seed: u64) -> Result<Outcome, Failed> {
    let banks = Banks::open(url).await?;
    // The orchestrator's own state: its runs outlive it, whichever process drives them. A
    // file, not `sqlite::memory:`: that database lives in one connection, which the driver's
    // death may take with it.
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("saga.db").display()
    ))
    .await?;
    store
        .migrate(&[onephase_outbox::migrations(), onephase_saga::migrations()])
        .await?;
    let flights = Arc::new(Flights::default());
    let dying = Arc::new(tokio::sync::Notify::new());
    let crashed = Arc::new(AtomicBool::new(false));
    let config = OrchestratorConfig {
        lease_margin: Duration::from_millis(200),
        poll_interval: Some(Duration::from_millis(10)),
        ..OrchestratorConfig::default()
    };
    let orchestrator = |n: u64| -> Result<Orchestrator, Failed> {
        let orchestrator = Orchestrator::new(store.clone(), config.clone()).with_seed(seed + n);
        orchestrator.register(transfer_saga(&banks, &flights, &dying, &crashed)?)?;
        Ok(orchestrator)
    };
    let first = orchestrator(0)?;
    let second = orchestrator(1)?;
    let outcome = with_traffic(&banks, |start| {
        let (store, dying) = (store.clone(), dying.clone());
        async move {
            let driving = first.clone();
            let mut driver = tokio::spawn(async move { driving.run(std::future::pending()).await });
            let mut replaced = false;
            for transfer in 0..TRANSFERS {
                tokio::time::sleep_until((start + TRANSFER_EVERY * transfer).into()).await;
                let input = json!({"transfer": transfer, "to": recipient(transfer)});
                first
                    .start(
                        StartRequest::new("transfer", input)
                            .idempotency_key(format!("transfer-{transfer}")),
                    )
                    .await?;
                if !replaced && transfer >= CRASHING {
                    // Wait for the death, then kill the process's driver mid-call and start
                    // another orchestrator in its place.
                    dying.notified().await;
                    driver.abort();
                    let driving = second.clone();
                    driver = tokio::spawn(async move { driving.run(std::future::pending()).await });
                    replaced = true;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut outcome = Outcome::default();
            loop {
                let counts = second.admin().counts().await?;
                let count = |state: RunState| counts.get(&state).copied().unwrap_or(0);
                if count(RunState::Running) + count(RunState::Compensating) == 0 {
                    outcome.transfers_done = count(RunState::Completed) as u64;
                    outcome.transfers_undone = count(RunState::Compensated) as u64;
                    break;
                }
                if Instant::now() > deadline {
                    return Err("the transfers did not settle within 10 s".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            driver.abort();
            drop(store);
            Ok(outcome)
        }
    })
    .await;
    let mut outcome = outcome?;
    outcome.longest_in_flight = *lock(&flights.longest);
    store.close().await;
    banks.close().await;
    Ok(outcome)
}

//! Limits kept in the onephase store, for users without Redis.
//!
//! - PostgreSQL: each decision is one statement, `SELECT * FROM onephase_limit_check(...)`, a
//!   function that locks the key's row, reads the database server's clock after the lock, and
//!   writes the row only when the units are admitted. Every server sharing the database is
//!   judged on one clock, as with Redis, and decisions on one key are serialised by its row.
//! - SQLite (embedded, no server to run code in): each decision is one `BEGIN IMMEDIATE`
//!   transaction in process that reads the key's state, runs [`decide`](crate::decide) and
//!   writes it back; processes sharing the file are serialised by SQLite's write lock and
//!   judged on their own clocks.
//!
//! Keys whose state is back to fresh are deleted by a sweep that a check starts at most once
//! a minute, so the table holds the keys in use.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};
use onephase_store::{Db, Migrations, Store};
use sqlx::Row as _;

use crate::algorithm::{State, decide};
use crate::decision::micros;
use crate::{Algorithm, Decision, FailMode, LimitError, Policy};

/// The longest key (prefix included) a store limiter takes, in bytes.
pub const MAX_STORE_KEY: usize = 1024;
/// How often a limiter deletes its expired keys, at most.
const SWEEP_EVERY_US: i64 = 60_000_000;
/// How many keys one sweep deletes at most.
const SWEEP_BATCH: i64 = 1000;

/// The tables and the PostgreSQL function the store limiter uses, for
/// [`Store::migrate`](onephase_store::Store::migrate).
pub fn migrations() -> Migrations {
    Migrations::new(
        "limit",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

const PG_CHECK: &str = "SELECT allowed, remaining, reset_us, retry_us, now_us \
     FROM onephase_limit_check($1, $2, $3, $4, $5, $6, $7, $8)";

const PG_SWEEP: &str = "WITH now AS (SELECT COALESCE($3, \
       floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT) AS t), \
     gone AS (DELETE FROM onephase_limits WHERE key IN ( \
         SELECT key FROM onephase_limits, now WHERE key >= $1 AND key < $2 AND expires_us < t \
         LIMIT $4) \
       AND expires_us < (SELECT t FROM now) RETURNING key), \
     log AS (DELETE FROM onephase_limit_log WHERE key IN (SELECT key FROM gone)) \
     SELECT count(*) FROM gone";

const SQLITE_READ: &str = "SELECT a, b, c, expires_us FROM onephase_limits WHERE key = $1";
const SQLITE_LOG: &str = "SELECT at_us, cost FROM onephase_limit_log \
     WHERE key = $1 AND at_us > $2 ORDER BY at_us, seq";
const SQLITE_WRITE: &str = "INSERT INTO onephase_limits (key, a, b, c, expires_us) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET a = excluded.a, \
     b = excluded.b, c = excluded.c, expires_us = excluded.expires_us";
const SQLITE_LOG_ADD: &str =
    "INSERT INTO onephase_limit_log (key, at_us, seq, cost) VALUES ($1, $2, $3, $4)";
const SQLITE_LOG_TRIM: &str = "DELETE FROM onephase_limit_log WHERE key = $1 AND at_us <= $2";
const SQLITE_SWEEP_LOG: &str = "DELETE FROM onephase_limit_log WHERE key IN ( \
     SELECT key FROM onephase_limits WHERE key >= $1 AND key < $2 AND expires_us < $3 LIMIT $4)";
const SQLITE_SWEEP: &str = "DELETE FROM onephase_limits WHERE key IN ( \
     SELECT key FROM onephase_limits WHERE key >= $1 AND key < $2 AND expires_us < $3 LIMIT $4)";

/// A keyed limiter whose state lives in the onephase store (SQLite or PostgreSQL), shared by
/// every process using the same database, prefix and policy. Migrate the store with
/// [`migrations`] first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
/// use std::time::Duration;
/// use onephase_limit::{Algorithm, Policy, StoreLimiter, migrations};
/// use onephase_store::Store;
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate(&[migrations()]).await?;
/// let policy = Policy::new(Algorithm::SlidingLog, 2, Duration::from_secs(60))?;
/// let limiter = StoreLimiter::new(store, policy, "login:")?;
/// assert!(limiter.check("alice", 1).await?.allowed);
/// assert!(limiter.check("alice", 1).await?.allowed);
/// let third = limiter.check("alice", 1).await?;
/// assert!(!third.allowed);
/// assert!(third.retry_after.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct StoreLimiter {
    store: Store,
    policy: Policy,
    prefix: String,
    /// What to decide when the store cannot be asked.
    #[setters(generate)]
    fail_mode: FailMode,
    /// How long the store may take per decision before the limiter falls back. A decision
    /// that times out may still have been counted.
    #[setters(generate)]
    timeout: Duration,
    /// Set by `with_clock`: decide on it on PostgreSQL too, rather than on the server's clock.
    clock_given: bool,
    clock: SharedClock,
    last_sweep: Arc<AtomicI64>,
}

impl std::fmt::Debug for StoreLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLimiter")
            .field("backend", &self.store.backend())
            .field("policy", &self.policy)
            .field("prefix", &self.prefix)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

impl StoreLimiter {
    /// A limiter for `policy` in `store`, with its keys under `prefix` (one prefix per policy:
    /// two policies must not share keys, and no prefix may start another). Fails open after a
    /// 250 ms timeout unless told otherwise. On PostgreSQL it decides on the database
    /// server's clock; on SQLite on this process's.
    pub fn new(
        store: Store,
        policy: Policy,
        prefix: impl Into<String>,
    ) -> Result<Self, LimitError> {
        let prefix = prefix.into();
        if prefix.len() >= MAX_STORE_KEY {
            return Err(LimitError::Invalid(format!(
                "the prefix is {} bytes: use fewer than {MAX_STORE_KEY}",
                prefix.len()
            )));
        }
        Ok(Self {
            store,
            policy,
            prefix,
            fail_mode: FailMode::Open,
            timeout: Duration::from_millis(250),
            clock_given: false,
            clock: Arc::new(SystemClock),
            last_sweep: Arc::new(AtomicI64::new(i64::MIN)),
        })
    }

    /// The same limiter deciding on `clock`'s wall time, also on PostgreSQL (for tests with
    /// a manual clock, or to share a clock with other stores).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self.clock_given = true;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks `cost` units for `key`: one statement on PostgreSQL, one transaction on SQLite.
    pub async fn check(&self, key: &str, cost: u64) -> Result<Decision, LimitError> {
        self.policy.check_cost(cost)?;
        if self.prefix.len() + key.len() > MAX_STORE_KEY {
            return Err(LimitError::Invalid(format!(
                "the key is {} bytes: use at most {}",
                key.len(),
                MAX_STORE_KEY - self.prefix.len()
            )));
        }
        let full = format!("{}{key}", self.prefix);
        let answer = tokio::time::timeout(self.timeout, self.decide(&full, cost)).await;
        let failure = match answer {
            Ok(Ok(decision)) => {
                if let Some(now) = decision.decided_at_us {
                    self.maybe_sweep(now);
                }
                return Ok(decision);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.fail_mode.decide(&self.policy, failure)
    }

    /// Deletes up to 1,000 of this limiter's keys whose state is back to fresh, returning how
    /// many. Checks call it on their own at most once a minute.
    pub async fn sweep(&self) -> Result<u64, LimitError> {
        self.sweep_at(self.clock_now()).await
    }

    /// [`sweep`](Self::sweep) as of `now` (Unix µs; `None`: the database's clock on
    /// PostgreSQL, this process's on SQLite).
    async fn sweep_at(&self, now: Option<i64>) -> Result<u64, LimitError> {
        let upper = format!("{}\u{10FFFF}", self.prefix);
        let swept = match self.store.db() {
            Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(PG_SWEEP)
                .bind(&self.prefix)
                .bind(&upper)
                .bind(now)
                .bind(SWEEP_BATCH)
                .fetch_one(pool)
                .await
                .map(to_u64),
            Db::Sqlite(s) => {
                async {
                    let now = now.unwrap_or_else(|| unix_us(self.clock.now()));
                    let mut tx = s.writer().begin_with("BEGIN IMMEDIATE").await?;
                    let mut swept = 0;
                    for statement in [SQLITE_SWEEP_LOG, SQLITE_SWEEP] {
                        swept = sqlx::query(statement)
                            .bind(&self.prefix)
                            .bind(&upper)
                            .bind(now)
                            .bind(SWEEP_BATCH)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                    Ok(swept)
                }
                .await
            }
        };
        swept.map_err(|e: sqlx::Error| LimitError::Store(e.to_string()))
    }

    fn maybe_sweep(&self, now: i64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_US
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let this = self.clone();
        // As of the decision that started it, not of whenever the task runs.
        let at = self.clock_given.then_some(now);
        tokio::spawn(async move {
            if let Err(e) = this.sweep_at(at).await {
                tracing::warn!(error = %e, "rate-limit sweep failed");
            }
        });
    }

    /// The caller's clock in Unix microseconds, if it has one.
    fn clock_now(&self) -> Option<i64> {
        self.clock_given.then(|| unix_us(self.clock.now()))
    }

    async fn decide(&self, key: &str, cost: u64) -> Result<Decision, sqlx::Error> {
        match self.store.db() {
            Db::Postgres(pool) => self.decide_pg(pool, key, cost).await,
            Db::Sqlite(s) => self.decide_sqlite(s.writer(), key, cost).await,
        }
    }

    /// One call of the PL/pgSQL function, on the server's clock unless given one.
    async fn decide_pg(
        &self,
        pool: &sqlx::PgPool,
        key: &str,
        cost: u64,
    ) -> Result<Decision, sqlx::Error> {
        let row = sqlx::query(PG_CHECK)
            .bind(key)
            .bind(self.policy.algorithm().as_str())
            .bind(to_i64(self.policy.limit()))
            .bind(self.policy.period_us())
            .bind(self.policy.emission_us())
            .bind(to_i64(self.policy.burst()))
            .bind(to_i64(cost))
            .bind(self.clock_now())
            .fetch_one(pool)
            .await?;
        let allowed: bool = row.try_get(0)?;
        Ok(Decision {
            allowed,
            limit: self.policy.limit(),
            remaining: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
            reset_after: micros(row.try_get(2)?),
            retry_after: (!allowed).then_some(micros(row.try_get(3)?)),
            fallback: None,
            decided_at_us: Some(row.try_get(4)?),
        })
    }

    /// Read, decide and (if admitted) write in one immediate transaction: SQLite's one writer
    /// orders the decisions on a key.
    async fn decide_sqlite(
        &self,
        writer: &sqlx::SqlitePool,
        key: &str,
        cost: u64,
    ) -> Result<Decision, sqlx::Error> {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        // Read after the write lock is taken, so that decisions on the key are made in
        // the order of their clock readings (a reading from before a wait for the lock
        // would take a fixed window back).
        let now = unix_us(self.clock.now());
        let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(SQLITE_READ)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        let period = self.policy.period_us();
        let mut state = match row {
            Some((a, b, c, expires)) if expires > now => match self.policy.algorithm() {
                Algorithm::Gcra => State::Gcra { tat: a },
                Algorithm::FixedWindow => State::Fixed {
                    window: a,
                    count: to_u64(b),
                },
                Algorithm::SlidingWindow => State::Sliding {
                    window: a,
                    previous: to_u64(b),
                    current: to_u64(c),
                },
                Algorithm::SlidingLog => {
                    let entries: Vec<(i64, i64)> = sqlx::query_as(SQLITE_LOG)
                        .bind(key)
                        .bind(now - period)
                        .fetch_all(&mut *tx)
                        .await?;
                    State::Log {
                        entries: entries.into_iter().map(|(t, c)| (t, to_u64(c))).collect(),
                    }
                }
            },
            _ => State::fresh(self.policy.algorithm()),
        };
        let seq = row.map_or(0, |r| r.2);
        let mut decision = decide(&self.policy, &mut state, now, cost);
        decision.decided_at_us = Some(now);
        if decision.allowed {
            let (a, b, c) = match &state {
                State::Gcra { tat } => (*tat, 0, 0),
                State::Fixed { window, count } => (*window, to_i64(*count), 0),
                State::Sliding {
                    window,
                    previous,
                    current,
                } => (*window, to_i64(*previous), to_i64(*current)),
                State::Log { entries } => (0, to_i64(entries.iter().map(|e| e.1).sum()), seq + 1),
            };
            if let State::Log { .. } = state {
                // Expired entries (all of them when the key was fresh) go as the new
                // one comes in.
                let cutoff = if row.is_some_and(|r| r.3 > now) {
                    now - period
                } else {
                    i64::MAX
                };
                sqlx::query(SQLITE_LOG_TRIM)
                    .bind(key)
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(SQLITE_LOG_ADD)
                    .bind(key)
                    .bind(now)
                    .bind(seq + 1)
                    .bind(to_i64(cost))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(SQLITE_WRITE)
                .bind(key)
                .bind(a)
                .bind(b)
                .bind(c)
                .bind(state.idle_from(&self.policy))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(decision)
    }
}

fn unix_us(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

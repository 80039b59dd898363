//! Post 1 of the seed, *Why Your Distributed Lock Doesn't Lock*: a holder pauses past its
//! lease, or the lock server's clock jumps, and a second holder writes meanwhile. Run on real
//! leases ([`onephase_lease`] in a SQLite store) and a real table, on the real clock: the
//! pauses are a few hundred milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use onephase_core::{Clock, Sleep, SystemClock};
use onephase_lease::{FencingToken, Leases, fence, migrations};
use onephase_store::Store;
use sqlx::SqlitePool;
use time::OffsetDateTime;

use crate::{Failed, Report};

const TTL: Duration = Duration::from_millis(200);
/// The first holder's pause: twice its lease.
const PAUSE: Duration = Duration::from_millis(400);
const ROUNDS: u32 = 5;
const RESOURCE: &str = "inventory";

/// The system clock, whose wall reading can jump forward as an NTP step or a VM resume does
/// to the lock server's.
#[derive(Debug, Default)]
struct JumpingClock {
    ahead_ms: AtomicI64,
}

impl JumpingClock {
    fn jump(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for JumpingClock {
    fn now(&self) -> OffsetDateTime {
        SystemClock.now() + time::Duration::milliseconds(self.ahead_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Instant {
        SystemClock.monotonic()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        SystemClock.sleep(duration)
    }
}

/// How a holder writes its increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// `UPDATE` as soon as it believes it holds the lock.
    Naive,
    /// `onephase_lease::fence::check` with its token, then the `UPDATE`, in one transaction;
    /// a refused holder takes the lease again and redoes its increment.
    Fenced,
}

/// What one way of writing did.
#[derive(Debug, Default)]
struct Outcome {
    increments: u64,
    count: i64,
    stale_landed: u64,
    stale_refused: u64,
    /// The counter after each round, against the increments asked for so far.
    lost_after_round: Vec<f64>,
}

/// The lock that doesn't lock.
///
/// Two holders increment a counter in a table, each under a lease of 200 ms. Five times, the
/// first holder reads the counter and then pauses for 400 ms (a GC pause); its lease lapses,
/// the second holder takes it, increments and releases; then the first wakes and writes its
/// increment. Then once more, without a pause: the lock server's clock jumps 10 s forward, so
/// the server lets the second holder in while the first is still well inside its lease on its
/// own clock.
///
/// - **Naive**: the first holder's write lands over the second's: an increment is lost each
///   time.
/// - **onephase**: every write checks the lease's fencing token in its transaction; the
///   first holder's older token is refused, it takes the lease again and redoes its
///   increment. Nothing is lost.
pub async fn fenced_lock(seed: u64) -> Report {
    let mut report = Report::new(
        "fenced-lock",
        seed,
        "leases of 200 ms on SQLite; a holder pauses 400 ms between its read and its write, 5 times; then the lock server's clock jumps 10 s",
    );
    let outcomes =
        async { Ok::<_, Failed>((rounds(Writer::Naive).await?, rounds(Writer::Fenced).await?)) };
    let Some((naive, onephase)) = report.ran_to_end(outcomes.await) else {
        return report;
    };
    report.row(
        "increments made",
        naive.increments as f64,
        onephase.increments as f64,
    );
    report.row(
        "the counter at the end",
        naive.count as f64,
        onephase.count as f64,
    );
    report.row(
        "writes of a lapsed holder that landed",
        naive.stale_landed as f64,
        onephase.stale_landed as f64,
    );
    report.row(
        "writes of a lapsed holder refused by the fence",
        naive.stale_refused as f64,
        onephase.stale_refused as f64,
    );
    let kept = |o: &Outcome| o.stale_landed == 0 && o.count == o.increments as i64;
    report.invariant(
        "no write of a holder whose lease lapsed lands: the counter equals the increments made",
        kept(&naive),
        kept(&onephase),
    );
    report.chart_by(
        "increments lost so far",
        "",
        "round",
        naive.lost_after_round,
        onephase.lost_after_round,
    );
    report
}

async fn rounds(writer: Writer) -> Result<Outcome, Failed> {
    let store = Store::connect("sqlite::memory:").await?;
    store.migrate(&[migrations()]).await?;
    let pool = store
        .as_sqlite()
        .ok_or("an in-memory store is SQLite")?
        .writer()
        .clone();
    sqlx::query("CREATE TABLE inventory (id INTEGER PRIMARY KEY, count INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO inventory (id, count) VALUES (1, 0)")
        .execute(&pool)
        .await?;
    let clock = Arc::new(JumpingClock::default());
    let leases = Leases::store(store.clone()).with_clock(clock.clone());
    let mut outcome = Outcome::default();
    for round in 0..=ROUNDS {
        let jump = round == ROUNDS;
        let ttl = if jump { Duration::from_secs(5) } else { TTL };
        let first = leases.try_acquire(RESOURCE, "first", ttl).await?;
        let seen = read(&pool).await?;
        if jump {
            clock.jump(Duration::from_secs(10));
        } else {
            tokio::time::sleep(PAUSE).await;
        }
        // Meanwhile (the pause, or the jump) the second holder gets the lease and increments.
        let second = leases
            .acquire(RESOURCE, "second", ttl, Duration::from_secs(2))
            .await?;
        let value = read(&pool).await?;
        write(&pool, writer, second.token(), value + 1).await?;
        outcome.increments += 1;
        second.release().await?;
        // The first holder wakes and writes what it computed before its pause.
        outcome.increments += 1;
        match write(&pool, writer, first.token(), seen + 1).await? {
            true => outcome.stale_landed += 1,
            false => {
                outcome.stale_refused += 1;
                let again = leases
                    .acquire(RESOURCE, "first", ttl, Duration::from_secs(2))
                    .await?;
                let value = read(&pool).await?;
                write(&pool, writer, again.token(), value + 1).await?;
                again.release().await?;
            }
        }
        let count = read(&pool).await?;
        outcome
            .lost_after_round
            .push((outcome.increments as i64 - count) as f64);
    }
    outcome.count = read(&pool).await?;
    store.close().await;
    Ok(outcome)
}

async fn read(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count FROM inventory WHERE id = 1")
        .fetch_one(pool)
        .await
}

/// Writes `value`; false when the fence refused the token.
async fn write(
    pool: &SqlitePool,
    writer: Writer,
    token: FencingToken,
    value: i64,
) -> Result<bool, Failed> {
    let mut tx = pool.begin().await?;
    if writer == Writer::Fenced {
        match fence::check(&mut *tx, RESOURCE, token).await {
            Ok(()) => {}
            Err(fence::FenceError::Stale { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    sqlx::query("UPDATE inventory SET count = $1 WHERE id = 1")
        .bind(value)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

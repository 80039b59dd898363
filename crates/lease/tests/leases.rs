//! Leases and fences on SQLite and PostgreSQL: the pause and drift scenarios with a manual
//! clock, tokens across releases and restarts, waiting, renewal, a backend cut off while a
//! holder works, and bad input.

use onephase_testkit::per_backend;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use onephase_core::ManualClock;
use onephase_lease::fence::{self, FencedResource};
use onephase_lease::{FenceError, FencingToken, Lapse, LeaseError, Leases, migrations};
use onephase_store::{Db, Store};
use onephase_testkit::{FaultProxy, TestDb};
use time::macros::datetime;

async fn migrated(db: &TestDb) -> anyhow::Result<Store> {
    let store = db.store().clone();
    store.migrate(&[migrations()]).await?;
    exec(
        &store,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL)",
    )
    .await?;
    exec(
        &store,
        "INSERT INTO accounts VALUES (1, 'nobody'), (2, 'nobody')",
    )
    .await?;
    Ok(store)
}

async fn exec(store: &Store, sql: &'static str) -> anyhow::Result<()> {
    match store.db() {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop)?,
        Db::Sqlite(s) => sqlx::query(sql).execute(s.writer()).await.map(drop)?,
    };
    Ok(())
}

/// Writes `owner` to the account as a holder would without a fence.
async fn write_unfenced(store: &Store, owner: &str) -> anyhow::Result<()> {
    let sql = "UPDATE accounts SET owner = $1 WHERE id = 1";
    match store.db() {
        Db::Postgres(p) => sqlx::query(sql).bind(owner).execute(p).await.map(drop)?,
        Db::Sqlite(s) => sqlx::query(sql)
            .bind(owner)
            .execute(s.writer())
            .await
            .map(drop)?,
    };
    Ok(())
}

/// Writes `owner` to the account under `token`, in one transaction with the fence.
async fn write_fenced(
    store: &Store,
    owner: &str,
    token: FencingToken,
) -> anyhow::Result<Result<(), FenceError>> {
    let sql = "UPDATE accounts SET owner = $1 WHERE id = 2";
    macro_rules! fenced {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            if let Err(e) = fence::check(&mut tx, "account-2", token).await {
                tx.rollback().await?;
                return Ok(Err(e));
            }
            sqlx::query(sql).bind(owner).execute(&mut *tx).await?;
            tx.commit().await?;
        }};
    }
    match store.db() {
        Db::Postgres(p) => fenced!(p),
        Db::Sqlite(s) => fenced!(s.writer()),
    }
    Ok(Ok(()))
}

async fn owner(store: &Store, id: i64) -> anyhow::Result<String> {
    let sql = "SELECT owner FROM accounts WHERE id = $1";
    Ok(match store.db() {
        Db::Postgres(p) => sqlx::query_scalar(sql).bind(id).fetch_one(p).await?,
        Db::Sqlite(s) => {
            sqlx::query_scalar(sql)
                .bind(id)
                .fetch_one(s.reader())
                .await?
        }
    })
}

fn manual() -> ManualClock {
    ManualClock::new(datetime!(2026-11-28 12:00 UTC))
}

per_backend! {
    #[tokio::test]
    async fn a_paused_holder_loses_its_update_unless_the_write_is_fenced(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let clock = manual();
        let leases = Leases::store(store.clone()).with_clock(Arc::new(clock.clone()));
        let memory = FencedResource::new("account-3", "nobody".to_owned());

        let a = leases
            .try_acquire("account", "a", Duration::from_secs(10))
            .await?;
        ensure!(a.is_held());
        // A stops the world for longer than its TTL.
        clock.advance(Duration::from_secs(11));
        ensure!(!a.is_held(), "A's own deadline has passed");
        let b = leases
            .try_acquire("account", "b", Duration::from_secs(10))
            .await?;
        ensure!(b.token() > a.token(), "{} then {}", a.token(), b.token());
        write_unfenced(&store, "b").await?;
        write_fenced(&store, "b", b.token()).await??;
        memory.write(b.token(), |o| *o = "b".to_owned()).await?;

        // A wakes up and finishes what it started before the pause.
        write_unfenced(&store, "a").await?;
        let stale = write_fenced(&store, "a", a.token()).await?;
        ensure!(
            matches!(stale, Err(FenceError::Stale { highest, .. }) if highest == b.token()),
            "{stale:?}"
        );
        ensure!(
            memory
                .write(a.token(), |o| *o = "a".to_owned())
                .await
                .is_err()
        );

        ensure!(
            owner(&store, 1).await? == "a",
            "without a fence, B's update is lost"
        );
        ensure!(
            owner(&store, 2).await? == "b",
            "with a fence, B's update stands"
        );
        ensure!(memory.read(Clone::clone).await == "b");
        // A's lease is gone for good: it can neither renew nor release B's grant.
        ensure!(matches!(
            leases
                .renew("account", a.token(), Duration::from_secs(10))
                .await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.release("account", a.token()).await,
            Err(LeaseError::NotHeld { .. })
        ));
        b.release().await?;
        drop(a);
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_clock_that_jumps_ahead_cannot_give_two_writers_the_resource(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        // A and B are separate processes on one store, each granting with its own clock.
        let clock_a = manual();
        let clock_b = manual();
        let leases_a = Leases::store(store.clone()).with_clock(Arc::new(clock_a.clone()));
        let leases_b = Leases::store(store.clone()).with_clock(Arc::new(clock_b.clone()));
        let a = leases_a
            .try_acquire("account", "a", Duration::from_secs(30))
            .await?;
        // B's wall clock steps an hour ahead (an NTP step, a drifting VM): A's grant looks
        // lapsed to B, while A's own monotonic deadline is still ahead.
        clock_b.shift_wall(time::Duration::hours(1));
        ensure!(a.is_held(), "A cannot see B's clock");
        let b = leases_b
            .try_acquire("account", "b", Duration::from_secs(30))
            .await?;
        ensure!(b.is_held() && b.token() > a.token());
        write_fenced(&store, "b", b.token()).await??;
        let late = write_fenced(&store, "a", a.token()).await?;
        ensure!(matches!(late, Err(FenceError::Stale { .. })), "{late:?}");
        ensure!(owner(&store, 2).await? == "b");

        // The same with the drift on A's side: A's clock runs forward, so the grant it made
        // for itself looks lapsed to A's own process, and a second worker there takes it.
        let c = leases_a
            .try_acquire("ledger", "a", Duration::from_secs(30))
            .await?;
        clock_a.shift_wall(time::Duration::minutes(5));
        let d = leases_a
            .try_acquire("ledger", "a-2", Duration::from_secs(30))
            .await?;
        ensure!(c.is_held() && d.is_held() && d.token() > c.token());
        let ledger = FencedResource::new("ledger", 0_i64);
        ledger.write(d.token(), |v| *v += 1).await?;
        ensure!(ledger.write(c.token(), |v| *v += 100).await.is_err());
        ensure!(ledger.read(|v| *v).await == 1);
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn tokens_rise_across_releases_lapses_and_restarts(db) -> anyhow::Result<()> {
        migrated(&db).await?;
        let clock = manual();
        let mut last = FencingToken::new(0);
        for round in 0..3 {
            // A new store each round: the same database opened again, as after a restart.
            let store = Store::connect(db.url()).await?;
            let leases = Leases::store(store.clone()).with_clock(Arc::new(clock.clone()));
            for _ in 0..5 {
                let g = leases
                    .try_acquire("job", "w", Duration::from_secs(1))
                    .await?;
                ensure!(
                    g.token() > last,
                    "round {round}: {} after {last}",
                    g.token()
                );
                last = g.token();
                if round == 1 {
                    // Let it lapse instead of releasing.
                    clock.advance(Duration::from_secs(2));
                    drop(g);
                } else {
                    g.release().await?;
                }
            }
            store.close().await;
        }
        ensure!(last == FencingToken::new(15));
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn acquire_waits_for_a_release_or_a_lapse_and_times_out(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let leases = Leases::store(store);
        let a = leases
            .try_acquire("queue", "a", Duration::from_millis(400))
            .await?;
        let held = leases
            .try_acquire("queue", "b", Duration::from_secs(1))
            .await;
        ensure!(
            matches!(&held, Err(LeaseError::Held { holder, token, .. }) if holder == "a" && *token == a.token()),
            "{held:?}"
        );
        let timeout = leases
            .acquire(
                "queue",
                "b",
                Duration::from_secs(1),
                Duration::from_millis(100),
            )
            .await;
        ensure!(
            matches!(timeout, Err(LeaseError::Timeout { .. })),
            "{timeout:?}"
        );
        // A never releases: B gets the lease once it lapses.
        let b = leases
            .acquire("queue", "b", Duration::from_secs(1), Duration::from_secs(5))
            .await?;
        ensure!(b.token() > a.token());
        ensure!(!a.is_held());
        // C waits for B's release.
        let waiter = {
            let leases = leases.clone();
            tokio::spawn(async move {
                leases
                    .acquire("queue", "c", Duration::from_secs(1), Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b_token = b.token();
        b.release().await?;
        let c = waiter.await??;
        ensure!(c.token() > b_token);
        let listed = leases.list().await?;
        ensure!(
            listed.len() == 1
                && listed[0].holder.as_deref() == Some("c")
                && listed[0].token == c.token(),
            "{listed:?}"
        );
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn keep_alive_holds_and_run_stops_work_when_the_lease_lapses(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let leases = Leases::store(store);
        let ttl = Duration::from_secs(3);
        let mut g = leases.try_acquire("renewed", "a", ttl).await?;
        let first = leases.list().await?[0].expires_at;
        g.keep_alive();
        // Three renewals seen in the store, however long the scheduler takes to make them:
        // the stored expiry moves on each time, under the same token.
        let mut expiries = vec![first];
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while expiries.len() < 4 {
            let listed = leases.list().await?;
            ensure!(
                listed[0].token == g.token(),
                "renewals keep the token: {listed:?}"
            );
            if listed[0].expires_at > *expiries.last().unwrap_or(&None) {
                expiries.push(listed[0].expires_at);
            }
            ensure!(
                std::time::Instant::now() < give_up,
                "keep-alive renewed {} times in 60 s",
                expiries.len() - 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(g.is_held(), "renewed three times over");
        ensure!(matches!(
            leases
                .try_acquire("renewed", "b", Duration::from_secs(1))
                .await,
            Err(LeaseError::Held { .. })
        ));
        // Without renewals, work longer than the lease is stopped at the deadline.
        let short = leases
            .try_acquire("short", "a", Duration::from_millis(200))
            .await?;
        let started = std::time::Instant::now();
        let run = short.run(tokio::time::sleep(Duration::from_secs(10))).await;
        ensure!(matches!(run, Err(LeaseError::Lapsed { .. })), "{run:?}");
        ensure!(started.elapsed() < Duration::from_secs(5));
        g.release().await?;
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_holder_cut_off_from_postgres_learns_it_before_its_deadline() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    migrated(&db).await?;
    let (proxy, url) = FaultProxy::in_front_of(db.url()).await?;
    let store = Store::connect(&url).await?;
    let direct = Leases::store(db.store().clone());
    let leases = Leases::store(store).with_margin(Duration::from_millis(500));
    let ttl = Duration::from_secs(2);
    let mut g = leases.try_acquire("cut", "a", ttl).await?;
    g.keep_alive();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(g.is_held(), "renewals go through the proxy");
    proxy.cut().await;
    let cut_at = std::time::Instant::now();
    let deadline = g.deadline();
    let lapse = tokio::time::timeout(Duration::from_secs(10), g.lapsed()).await?;
    let learned_at = std::time::Instant::now();
    // Once told, the holder counts itself as not holding: nothing it guards may go on.
    ensure!(
        !g.is_held(),
        "lapsed() returned ({lapse:?}) while is_held() is still true"
    );
    ensure!(
        g.remaining() == Duration::ZERO,
        "{:?} left after {lapse:?}",
        g.remaining()
    );
    ensure!(
        learned_at <= deadline + Duration::from_millis(100),
        "learned {:?} after the deadline",
        learned_at - deadline
    );
    ensure!(
        learned_at - cut_at < ttl,
        "{lapse:?} after {:?}",
        learned_at - cut_at
    );
    // The backend still counts it held at that moment: the holder stopped first.
    let listed = direct.list().await?;
    ensure!(listed[0].holder.as_deref() == Some("a"), "{listed:?}");
    // After the lapse, another holder gets a larger token.
    let b = direct
        .acquire("cut", "b", ttl, Duration::from_secs(5))
        .await?;
    ensure!(b.token() > g.token());
    proxy.restore();
    ensure!(matches!(
        g.renew().await,
        Err(LeaseError::NotHeld { .. } | LeaseError::Lapsed { .. })
    ));
    ensure!(matches!(g.lapsed().await, Lapse::Lost(_) | Lapse::Deadline));
    db.close().await?;
    Ok(())
}

per_backend! {
    #[tokio::test]
    async fn bad_input_is_refused_and_changes_nothing(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let leases = Leases::store(store.clone());
        let held = leases
            .try_acquire("job", "a", Duration::from_secs(5))
            .await?;
        let long = "x".repeat(300);
        for (name, holder, ttl) in [
            ("job", "b", Duration::ZERO),
            ("job", "b", Duration::from_millis(50)),
            ("job", "b", Duration::from_secs(25 * 3600)),
            ("job", "", Duration::from_secs(1)),
            ("job", "tab\there", Duration::from_secs(1)),
            ("", "b", Duration::from_secs(1)),
            ("with space", "b", Duration::from_secs(1)),
            ("/rooted", "b", Duration::from_secs(1)),
            ("ünïcode", "b", Duration::from_secs(1)),
            (long.as_str(), "b", Duration::from_secs(1)),
        ] {
            let r = leases.try_acquire(name, holder, ttl).await;
            ensure!(
                matches!(r, Err(LeaseError::Invalid(_))),
                "{name:?} {holder:?} {ttl:?}: {r:?}"
            );
        }
        let other = FencingToken::new(held.token().get() + 1);
        ensure!(matches!(
            leases.release("job", other).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.release("job", FencingToken::new(u64::MAX)).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.renew("job", other, Duration::from_secs(5)).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.renew("job", held.token(), Duration::ZERO).await,
            Err(LeaseError::Invalid(_))
        ));
        ensure!(matches!(
            leases.release("never-granted", FencingToken::new(1)).await,
            Err(LeaseError::Unknown(_))
        ));
        ensure!(matches!(
            leases
                .renew(
                    "never-granted",
                    FencingToken::new(1),
                    Duration::from_secs(1)
                )
                .await,
            Err(LeaseError::Unknown(_))
        ));
        let listed = leases.list().await?;
        ensure!(
            listed.len() == 1
                && listed[0].holder.as_deref() == Some("a")
                && listed[0].token == held.token(),
            "{listed:?}"
        );
        ensure!(held.is_held());
        // A forged token beyond any grant is refused by the SQL fence and leaves it alone.
        let forged = match store.db() {
            Db::Postgres(p) => {
                let mut c = p.acquire().await?;
                fence::check(&mut *c, "r", FencingToken::new(u64::MAX)).await
            }
            Db::Sqlite(s) => {
                let mut c = s.writer().acquire().await?;
                fence::check(&mut *c, "r", FencingToken::new(u64::MAX)).await
            }
        };
        ensure!(
            matches!(forged, Err(FenceError::OutOfRange(_))),
            "{forged:?}"
        );
        held.release().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_release_wakes_a_waiter_whose_clock_stands_still(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        // The waiter's clock never moves, so its polls never come round: only the release's
        // wake-up can let it try again.
        let clock = manual();
        let waiting = Leases::store(store.clone()).with_clock(Arc::new(clock.clone()));
        // On PostgreSQL the holder is another process's leases (nothing shared in memory:
        // NOTIFY carries the release); on SQLite, the same process's.
        let holding = match store.db() {
            Db::Postgres(_) => Leases::store(store.clone()).with_clock(Arc::new(manual())),
            Db::Sqlite(_) => waiting.clone(),
        };
        let held = holding
            .try_acquire("job", "a", Duration::from_secs(10))
            .await?;
        let waiter = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                waiting
                    .acquire("job", "b", Duration::from_secs(10), Duration::from_secs(60))
                    .await
            }
        });
        for _ in 0..3000 {
            if clock.sleepers() > 0 || waiter.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(clock.sleepers() > 0, "the waiter never started waiting");
        let first = held.token();
        held.release().await?;
        // A bound on a hang, not a timing: without the wake-up the waiter never returns.
        let granted = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .map_err(|_| anyhow::anyhow!("the release did not wake the waiter"))???;
        ensure!(granted.grant().holder == "b" && granted.token() > first);
        granted.release().await?;
        // With the leases still alive: closing the pool ends the listening connection.
        db.close().await?;
        drop((waiting, holding));
        Ok(())
    }
}

#[tokio::test]
async fn release_wake_ups_take_no_connection_from_the_store_s_pool() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    db.store().migrate(&[migrations()]).await?;
    // A pool of one: were the listening connection taken from it, nothing else could run.
    let mut options = onephase_store::StoreOptions::default();
    options.max_connections = 1;
    options.acquire_timeout = Duration::from_secs(5);
    let store = Store::connect_with(db.url(), &options).await?;
    let leases = Leases::store(store.clone());
    let held = leases
        .try_acquire("job", "a", Duration::from_secs(10))
        .await?;
    let waiter = tokio::spawn({
        let leases = leases.clone();
        async move {
            leases
                .acquire("job", "b", Duration::from_secs(10), Duration::from_secs(30))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.release().await?;
    let granted = waiter.await??;
    ensure!(granted.grant().holder == "b");
    granted.release().await?;
    store.close().await;
    db.close().await?;
    Ok(())
}

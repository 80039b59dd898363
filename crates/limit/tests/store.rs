//! The SQLite/PostgreSQL store against real databases: its decisions equal the library's
//! `decide` step for step on a manual clock (PostgreSQL runs its own copy of the arithmetic),
//! many tasks on several pools hold each algorithm's bound on the database's clock, expired
//! keys are swept, a PostgreSQL cut off through the fault proxy fails open, closed or with an
//! error, and bad input changes nothing.

#[cfg(not(feature = "store"))]
#[test]
fn store_suite() {
    onephase_testkit::engine_not_built(
        onephase_testkit::Engine::Postgres,
        "onephase-limit",
        "store",
    );
}

#[cfg(feature = "store")]
#[path = "common/mod.rs"]
mod common;

#[cfg(feature = "store")]
mod suite {
    use super::common;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context as _, ensure};
    use onephase_core::ManualClock;
    use onephase_limit::{
        Algorithm, FailMode, Limiter, MAX_STORE_KEY, Policy, State, StoreLimiter, decide,
        migrations,
    };
    use onephase_store::{Db, Store};
    use onephase_testkit::{FaultProxy, TestDb, per_backend};

    async fn migrated(db: &TestDb) -> anyhow::Result<Store> {
        db.store().migrate(&[migrations()]).await?;
        Ok(db.store().clone())
    }

    per_backend! {
        #[tokio::test]
        async fn every_decision_equals_the_reference_step_on_a_manual_clock(db) -> anyhow::Result<()> {
            let store = migrated(&db).await?;
            for algorithm in Algorithm::ALL {
                let policy =
                    Policy::new(algorithm, 7, Duration::from_millis(1000))?.with_burst(4)?;
                let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000)?;
                let clock = ManualClock::new(start);
                let limiter =
                    StoreLimiter::new(store.clone(), policy, format!("model:{algorithm}:"))?
                        .with_fail_mode(FailMode::Error)
                        .with_timeout(Duration::from_secs(10))
                        .with_clock(Arc::new(clock.clone()));
                let mut reference = State::fresh(algorithm);
                let mut steps = common::Steps(0x9e37_79b9_7f4a_7c15 ^ algorithm as u64);
                let mut now_us = 1_800_000_000_000_000_i64;
                for step in 0..400 {
                    // Mostly small steps, sometimes a whole period or more.
                    let advance = match steps.next(10) {
                        0 => 1_000_000 + steps.next(1_500_000),
                        1 => 0,
                        _ => steps.next(120_000),
                    };
                    clock.advance(Duration::from_micros(advance));
                    now_us += i64::try_from(advance)?;
                    let cost = 1 + steps.next(policy.burst());
                    let got = limiter.check("k", cost).await?;
                    let mut want = decide(&policy, &mut reference, now_us, cost);
                    want.decided_at_us = Some(now_us);
                    ensure!(
                        got == want,
                        "{:?} {algorithm} step {step} (cost {cost}): store {got:?}, reference {want:?}",
                        db.store().backend()
                    );
                }
            }
            db.close().await?;
            Ok(())
        }
    }

    per_backend! {
        #[tokio::test]
        async fn the_boundary_burst_is_the_fixed_window_s_alone(db) -> anyhow::Result<()> {
            let store = migrated(&db).await?;
            for algorithm in Algorithm::ALL {
                let policy = Policy::new(algorithm, 10, Duration::from_secs(60))?;
                // A second before a window boundary.
                let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000 - 1)?;
                let clock = ManualClock::new(start);
                let limiter =
                    StoreLimiter::new(store.clone(), policy, format!("edge:{algorithm}:"))?
                        .with_fail_mode(FailMode::Error)
                        .with_clock(Arc::new(clock.clone()));
                let mut admitted = 0;
                for _ in 0..20 {
                    admitted += u32::from(limiter.check("k", 1).await?.allowed);
                }
                clock.advance(Duration::from_secs(2));
                for _ in 0..20 {
                    admitted += u32::from(limiter.check("k", 1).await?.allowed);
                }
                let expected = match algorithm {
                    Algorithm::FixedWindow => 20,
                    // 10 at once, then one per 6 s: none within 2 s.
                    Algorithm::Gcra | Algorithm::SlidingLog => 10,
                    // 10 + 10 × (1 − 2/60 of the previous window's weight left) = 10 + 0.
                    Algorithm::SlidingWindow => 10,
                };
                ensure!(
                    admitted == expected,
                    "{:?} {algorithm}: {admitted} admitted within 2 s, expected {expected}",
                    db.store().backend()
                );
            }
            db.close().await?;
            Ok(())
        }
    }

    /// Admission times (store clock) of 3 pools × 16 tasks checking one key for `run`.
    async fn hammer(db: &TestDb, policy: Policy, run: Duration) -> anyhow::Result<Vec<i64>> {
        let mut nodes: Vec<Arc<dyn Limiter>> = Vec::new();
        for _ in 0..3 {
            let store = Store::connect(db.url()).await?;
            nodes.push(Arc::new(
                StoreLimiter::new(store, policy, format!("hammer:{}:", policy.algorithm()))?
                    .with_fail_mode(FailMode::Error)
                    .with_timeout(Duration::from_secs(10)),
            ));
        }
        common::hammer(nodes, run, common::Timing::Store).await
    }

    per_backend! {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn many_pools_on_one_key_never_exceed_the_limit(db) -> anyhow::Result<()> {
            migrated(&db).await?;
            for algorithm in Algorithm::ALL {
                let policy = Policy::new(algorithm, 40, Duration::from_millis(500))?;
                let times = hammer(&db, policy, Duration::from_millis(1_600)).await?;
                let what = format!("over 3 pools on {:?}", db.store().backend());
                common::check_bounds(algorithm, &times, 500_000, 40, &what)?;
            }
            db.close().await?;
            Ok(())
        }
    }

    async fn count(store: &Store, table: &'static str) -> anyhow::Result<i64> {
        let sql = match table {
            "log" => "SELECT count(*) FROM onephase_limit_log",
            _ => "SELECT count(*) FROM onephase_limits",
        };
        Ok(match store.db() {
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await?,
        })
    }

    per_backend! {
        #[tokio::test]
        async fn keys_back_to_fresh_are_swept_and_no_other_limiter_s(db) -> anyhow::Result<()> {
            let store = migrated(&db).await?;
            let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000)?;
            let clock = ManualClock::new(start);
            let policy = Policy::new(Algorithm::SlidingLog, 5, Duration::from_secs(10))?;
            let limiter = StoreLimiter::new(store.clone(), policy, "sweep:")?
                .with_fail_mode(FailMode::Error)
                .with_clock(Arc::new(clock.clone()));
            let other = StoreLimiter::new(store.clone(), policy, "sweep-other:")?
                .with_fail_mode(FailMode::Error)
                .with_clock(Arc::new(clock.clone()));
            for key in ["a", "b", "c"] {
                limiter.check(key, 2).await?;
            }
            clock.advance(Duration::from_secs(5));
            limiter.check("d", 1).await?;
            other.check("a", 1).await?;
            ensure!(limiter.sweep().await? == 0);
            clock.advance(Duration::from_secs(6));
            // a, b and c are fresh again; d is not; the other prefix is not this sweep's.
            ensure!(limiter.sweep().await? == 3);
            ensure!(count(&store, "keys").await? == 2);
            ensure!(count(&store, "log").await? == 2);
            // A swept key starts afresh.
            let d = limiter.check("a", 5).await?;
            ensure!(d.allowed && d.remaining == 0, "{d:?}");
            db.close().await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_unreachable_postgres_fails_open_closed_or_with_an_error_as_chosen()
    -> anyhow::Result<()> {
        let Some(db) = TestDb::postgres().await else {
            return Ok(());
        };
        migrated(&db).await?;
        let (proxy, url) = FaultProxy::in_front_of(db.url()).await?;
        let store = Store::connect(&url).await?;
        let policy = Policy::new(Algorithm::Gcra, 2, Duration::from_secs(60))?;
        let open =
            StoreLimiter::new(store, policy, "outage:")?.with_timeout(Duration::from_millis(300));
        let closed = open.clone().with_fail_mode(FailMode::Closed);
        let error = open.clone().with_fail_mode(FailMode::Error);
        common::check_outage(&proxy, &open, &closed, &error, "PostgreSQL").await?;
        db.close().await?;
        Ok(())
    }

    per_backend! {
        #[tokio::test]
        async fn bad_input_is_refused_and_changes_nothing(db) -> anyhow::Result<()> {
            let store = migrated(&db).await?;
            let policy = Policy::new(Algorithm::FixedWindow, 3, Duration::from_secs(60))?;
            let limiter =
                StoreLimiter::new(store.clone(), policy, "bad:")?.with_fail_mode(FailMode::Error);
            ensure!(limiter.check("k", 0).await.is_err());
            ensure!(limiter.check("k", 4).await.is_err());
            let long = "x".repeat(MAX_STORE_KEY);
            let e = limiter.check(&long, 1).await.err().context("a long key")?;
            ensure!(e.to_string().contains("bytes"), "{e}");
            ensure!(StoreLimiter::new(store.clone(), policy, long).is_err());
            ensure!(count(&store, "keys").await? == 0);
            let d = limiter.check("k", 3).await?;
            ensure!(d.allowed && d.remaining == 0, "{d:?}");
            db.close().await?;
            Ok(())
        }
    }
}

//! The hybrid limiter: leases in chunks, spends them without asking, remembers refusals,
//! lets unspent leases lapse, and over several nodes never admits more than the shared
//! policy's bound plus `chunk + (chunk − 1) / 2` per node, on a manual clock and against Redis
//! and PostgreSQL.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::ensure;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use onephase_core::ManualClock;
use onephase_limit::{
    Algorithm, Decision, HybridLimiter, LimitError, Limiter, LocalLimiter, Policy,
};

/// A shared limiter (a real local one) that counts the checks it is asked and the units.
struct Counted {
    inner: LocalLimiter,
    asked: AtomicU64,
    units: AtomicU64,
}

impl Limiter for Counted {
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let decision = self.inner.check(key, cost);
        if let Ok(d) = &decision
            && d.allowed
        {
            self.units.fetch_add(cost, Ordering::Relaxed);
        }
        futures::future::ready(decision).boxed()
    }

    fn policy(&self) -> &Policy {
        self.inner.policy()
    }
}

fn counted(policy: Policy, clock: &ManualClock) -> Arc<Counted> {
    Arc::new(Counted {
        inner: LocalLimiter::with_clock(policy, Arc::new(clock.clone())),
        asked: AtomicU64::new(0),
        units: AtomicU64::new(0),
    })
}

fn clock() -> anyhow::Result<ManualClock> {
    Ok(ManualClock::new(time::OffsetDateTime::from_unix_timestamp(
        1_800_000_000,
    )?))
}

#[tokio::test]
async fn chunks_are_leased_spent_locally_and_shrink_near_the_limit() -> anyhow::Result<()> {
    let clock = clock()?;
    let policy = Policy::new(Algorithm::FixedWindow, 25, Duration::from_secs(60))?;
    let shared = counted(policy, &clock);
    let hybrid = HybridLimiter::new(shared.clone(), 10)?
        .with_lease_ttl(Duration::from_secs(60))
        .with_clock(Arc::new(clock.clone()));
    let first = hybrid.check("k", 1).await?;
    ensure!(first.allowed && first.remaining == 9, "{first:?}");
    for _ in 0..19 {
        ensure!(hybrid.check("k", 1).await?.allowed);
    }
    ensure!(shared.asked.load(Ordering::Relaxed) == 2);
    // 20 of 25 leased; a chunk of 10 is refused, so the check leases just its unit.
    for _ in 0..5 {
        ensure!(hybrid.check("k", 1).await?.allowed);
    }
    ensure!(shared.units.load(Ordering::Relaxed) == 25);
    let refused = hybrid.check("k", 1).await?;
    ensure!(
        !refused.allowed && refused.retry_after.is_some(),
        "{refused:?}"
    );
    let asked = shared.asked.load(Ordering::Relaxed);
    // The refusal stands until its retry_after: no more round trips.
    for _ in 0..1000 {
        ensure!(!hybrid.check("k", 1).await?.allowed);
    }
    ensure!(shared.asked.load(Ordering::Relaxed) == asked);
    clock.advance(refused.retry_after.unwrap_or_default());
    ensure!(hybrid.check("k", 1).await?.allowed);
    ensure!(shared.asked.load(Ordering::Relaxed) == asked + 1);
    Ok(())
}

#[tokio::test]
async fn unspent_leases_lapse_and_bad_input_is_refused() -> anyhow::Result<()> {
    let clock = clock()?;
    let policy = Policy::new(Algorithm::Gcra, 100, Duration::from_secs(1))?;
    let shared = counted(policy, &clock);
    ensure!(HybridLimiter::new(shared.clone(), 0).is_err());
    ensure!(HybridLimiter::new(shared.clone(), 101).is_err());
    let hybrid = HybridLimiter::new(shared.clone(), 20)?
        .with_lease_ttl(Duration::from_millis(100))
        .with_clock(Arc::new(clock.clone()));
    ensure!(hybrid.check("k", 0).await.is_err());
    ensure!(hybrid.check("k", 101).await.is_err());
    ensure!(shared.asked.load(Ordering::Relaxed) == 0);
    ensure!(hybrid.check("k", 1).await?.allowed);
    clock.advance(Duration::from_millis(100));
    // The 19 units left have lapsed: this check leases again.
    let d = hybrid.check("k", 1).await?;
    ensure!(d.allowed && d.remaining == 19, "{d:?}");
    ensure!(shared.asked.load(Ordering::Relaxed) == 2);
    // A cost larger than the chunk leases what it needs beyond the 19 in hand.
    let d = hybrid.check("k", 50).await?;
    ensure!(d.allowed && d.remaining == 0, "{d:?}");
    ensure!(shared.units.load(Ordering::Relaxed) == 20 + 20 + 31);
    Ok(())
}

#[tokio::test]
async fn three_nodes_stay_within_the_bound_on_a_manual_clock() -> anyhow::Result<()> {
    for algorithm in Algorithm::ALL {
        let clock = clock()?;
        let period_us: i64 = 1_000_000;
        let policy = Policy::new(
            algorithm,
            30,
            Duration::from_micros(period_us.unsigned_abs()),
        )?;
        let shared = counted(policy, &clock);
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                HybridLimiter::new(shared.clone(), 4).map(|h| h.with_clock(Arc::new(clock.clone())))
            })
            .collect::<Result<_, _>>()?;
        let mut steps = common::Steps(0x2545_f491_4f6c_dd1d ^ algorithm as u64);
        let mut times = Vec::new();
        let mut now = 0_i64;
        for _ in 0..20_000 {
            let advance = steps.next(800);
            clock.advance(Duration::from_micros(advance));
            now += i64::try_from(advance)?;
            let node = usize::try_from(steps.next(3))?;
            if nodes[node].check("k", 1).await?.allowed {
                times.push(now);
            }
            // Let leases ahead of need run between checks.
            tokio::task::yield_now().await;
        }
        // The hybrid's clock starts at 0 where the shared one starts at its creation: the
        // same instants, so the same windows.
        common::check_bounds_within(
            algorithm,
            &times,
            period_us,
            30,
            3 * (4 + 1),
            "over 3 nodes",
        )?;
        ensure!(
            times.len() as u64 <= shared.units.load(Ordering::Relaxed),
            "admitted more than was leased"
        );
    }
    Ok(())
}

#[cfg(not(all(feature = "redis", feature = "store")))]
#[test]
fn hybrid_engines_suite() {
    onephase_testkit::engine_not_built(
        onephase_testkit::Engine::Redis,
        "onephase-limit",
        "redis,store",
    );
}

#[cfg(all(feature = "redis", feature = "store"))]
mod engines {
    use super::common;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::ensure;
    use onephase_limit::{
        Algorithm, FailMode, Fallback, HybridLimiter, Limiter, Policy, RedisLimiter, StoreLimiter,
    };
    use onephase_store::Store;
    use onephase_testkit::{Engine, FaultProxy, TestDb, engine_url};

    const CHUNK: u64 = 4;

    fn wall_us() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
    }

    fn tag() -> String {
        format!("{:x}", wall_us())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_hybrid_nodes_on_redis_and_postgres_stay_within_the_bound() -> anyhow::Result<()>
    {
        let Some(redis) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let Some(db) = TestDb::postgres().await else {
            return Ok(());
        };
        db.store().migrate(&[onephase_limit::migrations()]).await?;
        let (limit, period_us): (u64, i64) = (40, 500_000);
        for algorithm in Algorithm::ALL {
            let policy = Policy::new(
                algorithm,
                limit,
                Duration::from_micros(period_us.unsigned_abs()),
            )?;
            for store in ["Redis", "PostgreSQL"] {
                let prefix = format!("onephase-test:hybrid:{algorithm}:{}:", tag());
                let mut nodes: Vec<Arc<dyn Limiter>> = Vec::new();
                for _ in 0..3 {
                    let shared: Arc<dyn Limiter> = if store == "Redis" {
                        let client = redis::Client::open(redis.as_str())?;
                        let conn = redis::aio::ConnectionManager::new(client).await?;
                        Arc::new(
                            RedisLimiter::new(conn, policy, prefix.clone())
                                .with_fail_mode(FailMode::Error),
                        )
                    } else {
                        let store = Store::connect(db.url()).await?;
                        Arc::new(
                            StoreLimiter::new(store, policy, prefix.clone())?
                                .with_fail_mode(FailMode::Error)
                                .with_timeout(Duration::from_secs(10)),
                        )
                    };
                    nodes.push(Arc::new(HybridLimiter::new(shared, CHUNK)?));
                }
                // Decided in process: timed on this machine's clock, which Redis and
                // PostgreSQL here share.
                let times =
                    common::hammer(nodes, Duration::from_millis(1_600), common::Timing::Wall)
                        .await?;
                let limit = usize::try_from(limit)?;
                let slack = 3 * usize::try_from(CHUNK + (CHUNK - 1) / 2)?;
                let what = format!("by 3 hybrid nodes on {store}");
                common::check_bounds_within(algorithm, &times, period_us, limit, slack, &what)?;
            }
        }
        db.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_hybrid_node_cut_off_from_redis_passes_on_the_fallback() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let upstream = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .to_owned();
        let proxy = FaultProxy::start(&upstream).await?;
        let client = redis::Client::open(format!("redis://{}/", proxy.local_addr()))?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        let policy = Policy::new(Algorithm::Gcra, 100, Duration::from_secs(60))?;
        let prefix = format!("onephase-test:hybrid-outage:{}:", tag());
        let shared = RedisLimiter::new(conn, policy, prefix)
            .with_fail_mode(FailMode::Closed)
            .with_timeout(Duration::from_millis(200));
        let hybrid = HybridLimiter::new(Arc::new(shared), 5)?;
        ensure!(hybrid.check("k", 1).await?.allowed);
        proxy.cut().await;
        // The lease in hand is spent without Redis...
        for _ in 0..4 {
            let d = hybrid.check("k", 1).await?;
            ensure!(d.allowed && d.fallback.is_none(), "{d:?}");
        }
        // ...then the shared limiter's fallback decides, and is not remembered as a refusal.
        let d = hybrid.check("k", 1).await?;
        ensure!(
            !d.allowed && d.fallback == Some(Fallback::FailedClosed),
            "{d:?}"
        );
        proxy.restore();
        let mut back = false;
        for _ in 0..50 {
            let d = hybrid.check("k", 1).await?;
            if d.fallback.is_none() {
                ensure!(d.allowed && d.remaining == 4, "{d:?}");
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(back, "Redis did not come back through the proxy");
        Ok(())
    }
}

//! The Redis store against a real Redis: many tasks on several connections (as several nodes
//! would be) hammer one key, and the admissions, timed on the Redis clock the scripts return,
//! hold each algorithm's bound; a Redis cut off through the fault proxy fails open, closed or
//! with an error, as chosen.

#[cfg(not(feature = "redis"))]
#[test]
fn redis_suite() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Redis, "onephase-limit", "redis");
}

#[cfg(feature = "redis")]
#[path = "common/mod.rs"]
mod common;

#[cfg(feature = "redis")]
mod suite {
    use super::common;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::ensure;
    use onephase_limit::{Algorithm, FailMode, Limiter, Policy, RedisLimiter};
    use onephase_testkit::{Engine, FaultProxy, engine_url};
    use redis::aio::ConnectionManager;

    const NODES: usize = 3;

    fn prefix(what: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("onephase-test:{what}:{nanos:x}:")
    }

    async fn connection(url: &str) -> anyhow::Result<ConnectionManager> {
        Ok(ConnectionManager::new(redis::Client::open(url)?).await?)
    }

    /// Admission times (Redis clock, µs) of `NODES` connections × 16 tasks checking one key
    /// for `run`.
    async fn hammer(url: &str, policy: Policy, run: Duration) -> anyhow::Result<Vec<i64>> {
        let prefix = prefix(policy.algorithm().as_str());
        let mut nodes: Vec<Arc<dyn Limiter>> = Vec::new();
        for _ in 0..NODES {
            nodes.push(Arc::new(
                RedisLimiter::new(connection(url).await?, policy, prefix.clone())
                    .with_fail_mode(FailMode::Error)
                    .with_timeout(Duration::from_secs(5)),
            ));
        }
        common::hammer(nodes, run, common::Timing::Store).await
    }

    /// The most admissions in any interval of `len` µs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_nodes_on_one_key_never_exceed_the_limit() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let period = Duration::from_millis(500);
        let period_us = 500_000;
        let limit = 50;
        for algorithm in Algorithm::ALL {
            let policy = Policy::new(algorithm, limit, period)?;
            let times = hammer(&url, policy, Duration::from_millis(1_600)).await?;
            let limit = usize::try_from(limit)?;
            common::check_bounds(algorithm, &times, period_us, limit, "over 3 connections")?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_open_closed_or_with_an_error_as_chosen()
    -> anyhow::Result<()> {
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
        let conn = connection(&format!("redis://{}/", proxy.local_addr())).await?;
        let policy = Policy::new(Algorithm::Gcra, 2, Duration::from_secs(60))?;
        let prefix = prefix("outage");
        let open = RedisLimiter::new(conn.clone(), policy, prefix.clone())
            .with_timeout(Duration::from_millis(200));
        let closed = open.clone().with_fail_mode(FailMode::Closed);
        let error = open.clone().with_fail_mode(FailMode::Error);
        common::check_outage(&proxy, &open, &closed, &error, "Redis").await?;
        Ok(())
    }

    #[tokio::test]
    async fn bad_costs_are_refused_before_redis_is_asked() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let policy = Policy::new(Algorithm::SlidingLog, 3, Duration::from_secs(10))?;
        let limiter = RedisLimiter::new(connection(&url).await?, policy, prefix("bad"));
        ensure!(limiter.check("k", 0).await.is_err());
        ensure!(limiter.check("k", 4).await.is_err());
        let d = limiter.check("k", 3).await?;
        ensure!(d.allowed && d.remaining == 0, "{d:?}");
        let d = limiter.check("k", 1).await?;
        ensure!(
            !d.allowed && d.retry_after.is_some_and(|r| r > Duration::from_secs(9)),
            "{d:?}"
        );
        Ok(())
    }
}

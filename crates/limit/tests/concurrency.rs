//! Concurrency limits: never more than `max` in flight, in process and across connections to
//! one Redis; a permit whose holder vanished lapses; bad input is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::ensure;
use onephase_limit::ConcurrencyLimiter;

/// Runs `tasks` tasks that each try `rounds` times to take a permit, hold it 1 ms and let it
/// go; returns (most seen running at once, permits granted).
async fn hammer_local(
    limiter: ConcurrencyLimiter,
    tasks: usize,
    rounds: usize,
) -> anyhow::Result<(u64, u64)> {
    let running = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (limiter, running, most, granted) = (
                limiter.clone(),
                Arc::clone(&running),
                Arc::clone(&most),
                Arc::clone(&granted),
            );
            tokio::spawn(async move {
                for _ in 0..rounds {
                    if let Ok(permit) = limiter.try_acquire("backend")? {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        granted.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    Ok((most.load(Ordering::SeqCst), granted.load(Ordering::Relaxed)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_never_more_than_max_in_flight() -> anyhow::Result<()> {
    let limiter = ConcurrencyLimiter::new(4)?;
    let (most, granted) = hammer_local(limiter.clone(), 32, 200).await?;
    ensure!(
        most == 4,
        "at most 4 at once, and the limit was reached: {most}"
    );
    ensure!(granted > 100, "{granted}");
    ensure!(limiter.keys() == 0, "nothing in flight, nothing kept");
    ensure!(ConcurrencyLimiter::new(0).is_err());
    ensure!(limiter.try_acquire("").is_err());
    Ok(())
}

#[cfg(feature = "redis")]
mod redis_suite {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::ensure;
    use onephase_limit::RedisConcurrencyLimiter;
    use onephase_testkit::{Engine, engine_url};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn across_connections_never_more_than_max_in_flight() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("onephase-test:concurrency:{nanos:x}:");
        let running = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let conn =
                redis::aio::ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
            let limiter =
                RedisConcurrencyLimiter::new(conn, 5, Duration::from_secs(10), prefix.clone())?;
            for _ in 0..16 {
                let (limiter, running, most) =
                    (limiter.clone(), Arc::clone(&running), Arc::clone(&most));
                tasks.push(tokio::spawn(async move {
                    for _ in 0..40 {
                        if let Ok(permit) = limiter.try_acquire("backend").await? {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            // Counted down before the release reaches Redis, so the count here
                            // is never below Redis's.
                            running.fetch_sub(1, Ordering::SeqCst);
                            permit.release().await?;
                        }
                    }
                    anyhow::Ok(())
                }));
            }
        }
        for t in tasks {
            t.await??;
        }
        let most = most.load(Ordering::SeqCst);
        ensure!((3..=5).contains(&most), "at most 5 in flight: {most}");

        // A holder that never releases (it crashed) holds its slot only for the lifetime.
        let conn = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
        let short =
            RedisConcurrencyLimiter::new(conn, 1, Duration::from_millis(300), prefix.clone())?;
        let lost = short.try_acquire("crashy").await?;
        ensure!(lost.is_ok());
        std::mem::forget(lost);
        ensure!(
            short.try_acquire("crashy").await?.is_err(),
            "the slot is held"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        ensure!(
            short.try_acquire("crashy").await?.is_ok(),
            "the lost permit lapsed"
        );
        Ok(())
    }
}

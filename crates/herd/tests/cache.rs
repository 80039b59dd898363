//! The cache on a manual clock: early refresh near expiry and never far from it, stale values
//! served while refreshing, errors not cached, the size bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use onephase_core::ManualClock;
use onephase_herd::{CacheConfig, HerdCache, Random};

const LOAD: Duration = Duration::from_millis(100);

struct Fixture {
    clock: ManualClock,
    cache: HerdCache<u32, u64, String>,
    loads: Arc<AtomicU64>,
}

fn fixture(config: CacheConfig) -> Fixture {
    let clock = ManualClock::default();
    let cache = HerdCache::new("test", config)
        .with_clock(Arc::new(clock.clone()))
        .with_random(Random::seeded(3));
    Fixture {
        clock,
        cache,
        loads: Arc::new(AtomicU64::new(0)),
    }
}

impl Fixture {
    /// Reads key 1 with a loader that takes [`LOAD`] on the manual clock (it moves the clock
    /// itself) and answers the load's number, or `fail`.
    async fn read(&self, fail: bool) -> Result<u64, String> {
        let (clock, loads) = (self.clock.clone(), Arc::clone(&self.loads));
        self.cache
            .get_with(1, move || async move {
                let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                clock.advance(LOAD);
                if fail {
                    Err(format!("load {n} failed"))
                } else {
                    Ok(n)
                }
            })
            .await
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

async fn background() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn config(beta: f64, stale_for: Duration) -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(60),
        stale_for,
        beta,
        capacity: 100,
    }
}

#[tokio::test]
async fn far_from_expiry_no_read_refreshes() {
    let f = fixture(config(1.0, Duration::ZERO));
    assert_eq!(f.read(false).await, Ok(1));
    // 50 s before expiry with a 100 ms load: 500 loads away, a chance of e^-500.
    f.clock.advance(Duration::from_secs(10));
    for _ in 0..10_000 {
        assert_eq!(f.read(false).await, Ok(1));
    }
    background().await;
    assert_eq!(f.loads(), 1);
    assert_eq!(f.cache.stats().refreshes, 0);
}

#[tokio::test]
async fn near_expiry_a_read_refreshes_in_the_background_and_does_not_wait() {
    let f = fixture(config(1.0, Duration::ZERO));
    assert_eq!(f.read(false).await, Ok(1));
    // 1 ms before expiry with a 100 ms load: each read refreshes with probability e^-0.01.
    f.clock
        .advance(Duration::from_secs(60) - Duration::from_millis(1));
    let mut answered = Vec::new();
    for _ in 0..20 {
        answered.push(f.read(false).await);
    }
    assert!(
        answered.iter().all(|r| *r == Ok(1)),
        "served the cached value: {answered:?}"
    );
    background().await;
    assert_eq!(
        f.loads(),
        2,
        "exactly one refresh, however many reads chose to"
    );
    assert_eq!(f.cache.stats().refreshes, 1);
    assert_eq!(f.read(false).await, Ok(2));
    assert_eq!(f.cache.stats().misses, 1, "only the first read waited");
}

#[tokio::test]
async fn beta_zero_turns_early_refresh_off() {
    let f = fixture(config(0.0, Duration::ZERO));
    assert_eq!(f.read(false).await, Ok(1));
    f.clock
        .advance(Duration::from_secs(60) - Duration::from_millis(1));
    for _ in 0..1_000 {
        assert_eq!(f.read(false).await, Ok(1));
    }
    background().await;
    assert_eq!(f.loads(), 1);
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(f.read(false).await, Ok(2));
    assert_eq!(f.cache.stats().misses, 2);
}

#[tokio::test]
async fn stale_values_are_served_while_revalidating_then_expire() {
    let f = fixture(config(0.0, Duration::from_secs(10)));
    assert_eq!(f.read(false).await, Ok(1));
    f.clock.advance(Duration::from_secs(65));
    assert_eq!(f.read(false).await, Ok(1), "stale, at once");
    background().await;
    assert_eq!(f.read(false).await, Ok(2), "refreshed");
    assert_eq!(f.cache.stats().stale_hits, 1);
    // Past ttl + stale_for, a read waits for a load.
    f.clock.advance(Duration::from_secs(71));
    assert_eq!(f.read(false).await, Ok(3));
    assert_eq!(f.cache.stats().misses, 2);
}

#[tokio::test]
async fn errors_reach_the_reader_and_are_not_cached() {
    let f = fixture(config(0.0, Duration::from_secs(10)));
    assert_eq!(f.read(true).await, Err("load 1 failed".to_owned()));
    assert_eq!(f.read(false).await, Ok(2));
    // A failed background refresh leaves the stale value in place.
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.read(true).await, Ok(2));
    background().await;
    assert_eq!(f.loads(), 3);
    assert_eq!(f.read(false).await, Ok(2), "still stale, refreshing again");
    background().await;
    assert_eq!(f.read(false).await, Ok(4));
}

#[tokio::test]
async fn concurrent_misses_share_one_load() {
    let f = Arc::new(fixture(config(1.0, Duration::ZERO)));
    let gate = Arc::new(tokio::sync::Notify::new());
    let readers: Vec<_> = (0..500)
        .map(|_| {
            let (cache, loads, gate) = (f.cache.clone(), Arc::clone(&f.loads), Arc::clone(&gate));
            tokio::spawn(async move {
                cache
                    .get_with(1, move || async move {
                        gate.notified().await;
                        Ok(loads.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await
            })
        })
        .collect();
    background().await;
    gate.notify_one();
    for r in readers {
        assert_eq!(r.await.expect("joined"), Ok(1));
    }
    assert_eq!(f.loads(), 1);
    assert_eq!(f.cache.flight_stats().executions, 1);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let f = fixture(config(1.0, Duration::ZERO));
    for key in 0..2_000u32 {
        let value = f
            .cache
            .get_with(key, move || async move { Ok(u64::from(key)) })
            .await;
        assert_eq!(value, Ok(u64::from(key)));
    }
    assert!(f.cache.entry_count() <= 100, "{}", f.cache.entry_count());
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onephase_core::Clock as _;
use onephase_herd::{CacheConfig, HerdCache, Random};

use super::{Timeline, lock};
use crate::{Report, SimClock};

const TTL: Duration = Duration::from_secs(10);
const ORIGIN: Duration = Duration::from_millis(100);
const BURST: usize = 1_000;
const STEADY: Duration = Duration::from_secs(60);
const READ_EVERY: Duration = Duration::from_millis(1);

/// A cache stampede.
///
/// An origin that takes 100 ms, behind a cache with a 10 s time-to-live, read two ways:
///
/// - **Burst**: the key is loaded, left alone until it expires, then 1,000 readers arrive in
///   the same instant. Naive: each reader misses and calls the origin. onephase: they share
///   one load.
/// - **Steady**: one read per millisecond for 60 s. Naive: every expiry, each read during
///   the 100 ms reload misses too. onephase (XFetch, `beta` 1, no stale serving): some read
///   refreshes the entry shortly before it expires, so after the first load no reader waits.
pub async fn stampede(seed: u64) -> Report {
    let mut report = Report::new(
        "stampede",
        seed,
        "origin 100 ms, ttl 10 s; burst: 1,000 readers at expiry; steady: 1,000 reads/s for 60 s",
    );
    let config = CacheConfig {
        ttl: TTL,
        stale_for: Duration::ZERO,
        beta: 1.0,
        capacity: 1_000,
    };

    // Burst.
    let naive = NaiveCache::new(SimClock::start());
    let naive_origin = Origin::default();
    naive.get(&naive_origin).await;
    tokio::time::sleep(TTL).await;
    let before = naive_origin.calls();
    let readers: Vec<_> = (0..BURST)
        .map(|_| {
            let (cache, origin) = (naive.clone(), naive_origin.clone());
            tokio::spawn(async move { timed(cache.get(&origin)).await })
        })
        .collect();
    let naive_waits = join_all(readers).await;
    let naive_burst = naive_origin.calls() - before;

    let clock = SimClock::start();
    let cache = herd_cache(config, clock, seed);
    let origin = Origin::default();
    read(&cache, &origin).await;
    tokio::time::sleep(TTL).await;
    let before = origin.calls();
    let readers: Vec<_> = (0..BURST)
        .map(|_| {
            let (cache, origin) = (cache.clone(), origin.clone());
            tokio::spawn(async move { timed(read(&cache, &origin)).await })
        })
        .collect();
    let herd_waits = join_all(readers).await;
    let herd_burst = origin.calls() - before;
    report.row("burst: origin calls", naive_burst as f64, herd_burst as f64);
    report.invariant(
        "1,000 readers arriving at an expired key make at most 1 origin call",
        naive_burst <= 1,
        herd_burst <= 1,
    );
    report.row(
        "burst: longest wait, ms",
        max_ms(&naive_waits),
        max_ms(&herd_waits),
    );

    // Steady.
    let naive = NaiveCache::new(SimClock::start());
    let naive_origin = Origin::default();
    naive.get(&naive_origin).await;
    let naive_waits = steady(|| {
        let (cache, origin) = (naive.clone(), naive_origin.clone());
        async move { cache.get(&origin).await }
    })
    .await;

    let cache = herd_cache(config, clock, seed);
    let origin = Origin::default();
    read(&cache, &origin).await;
    let herd_waits = steady(|| {
        let (cache, origin) = (cache.clone(), origin.clone());
        async move { read(&cache, &origin).await }
    })
    .await;
    report.row(
        "steady: origin calls",
        naive_origin.calls() as f64,
        origin.calls() as f64,
    );
    report.row(
        "steady: readers that waited for a load",
        waited(&naive_waits),
        waited(&herd_waits),
    );
    report.row(
        "steady: longest wait, ms",
        max_ms(&naive_waits),
        max_ms(&herd_waits),
    );
    super::chart(
        &mut report,
        "steady: origin calls per 100 ms",
        &naive_origin.at,
        &origin.at,
    );
    report
}

fn herd_cache(config: CacheConfig, clock: SimClock, seed: u64) -> HerdCache<u32, u64, String> {
    HerdCache::new("lab-stampede", config)
        .with_clock(Arc::new(clock))
        .with_random(Random::seeded(seed))
}

async fn read(cache: &HerdCache<u32, u64, String>, origin: &Origin) -> u64 {
    let origin = origin.clone();
    cache
        .get_with(1, move || async move { Ok(origin.load().await) })
        .await
        .unwrap_or_default()
}

/// One read per millisecond for [`STEADY`]; each read's wait.
async fn steady<F, Fut>(read: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let mut tasks = Vec::new();
    let reads = STEADY.as_millis() / READ_EVERY.as_millis();
    for _ in 0..reads {
        tasks.push(tokio::spawn(timed(read())));
        tokio::time::sleep(READ_EVERY).await;
    }
    join_all(tasks).await
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> Duration {
    let clock = SimClock::start();
    f.await;
    clock.elapsed()
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Duration>>) -> Vec<Duration> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or(Duration::MAX));
    }
    out
}

fn max_ms(waits: &[Duration]) -> f64 {
    waits.iter().max().map_or(0.0, |d| d.as_millis() as f64)
}

fn waited(waits: &[Duration]) -> f64 {
    waits.iter().filter(|d| !d.is_zero()).count() as f64
}

/// The slow thing behind the cache: 100 ms per call, counted, and when (from its creation).
#[derive(Debug, Clone)]
struct Origin {
    calls: Arc<AtomicU64>,
    at: Timeline,
    clock: SimClock,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            at: Timeline::default(),
            clock: SimClock::start(),
        }
    }
}

impl Origin {
    async fn load(&self) -> u64 {
        self.at.add(self.clock.elapsed());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(ORIGIN).await;
        n
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The cache most code starts with: look, and on a miss load and store.
#[derive(Debug, Clone)]
struct NaiveCache {
    entries: Arc<Mutex<HashMap<u32, (u64, std::time::Instant)>>>,
    clock: SimClock,
}

impl NaiveCache {
    fn new(clock: SimClock) -> Self {
        Self {
            entries: Arc::default(),
            clock,
        }
    }

    async fn get(&self, origin: &Origin) -> u64 {
        let now = self.clock.monotonic();
        if let Some((value, expires)) = lock(&self.entries).get(&1)
            && now < *expires
        {
            return *value;
        }
        let value = origin.load().await;
        let expires = self.clock.monotonic() + TTL;
        lock(&self.entries).insert(1, (value, expires));
        value
    }
}

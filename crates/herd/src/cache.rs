//! A cache that does not stampede: coalesced loads, probabilistic early refresh, and
//! stale-while-revalidate.
//!
//! A plain cache with a time-to-live fails at expiry: every reader that arrives between the
//! expiry and the end of the recomputation misses, and each one recomputes. [`HerdCache`]
//! closes that gap three ways:
//!
//! 1. **Coalescing.** Readers that miss one key share one load, through a
//!    [`SingleFlight`]: a thousand readers at expiry make one origin call.
//! 2. **Probabilistic early refresh** (XFetch: Vattani, Chierichetti and Lowenstein,
//!    *Optimal Probabilistic Cache Stampede Prevention*, VLDB 2015). Each entry stores
//!    `delta`, how long its load took. A read at `now` starts a refresh in the background
//!    when `now − delta · beta · ln(rand()) ≥ expiry`, with `rand()` uniform in `(0, 1]`: the
//!    closer the expiry and the slower the load, the likelier. Under steady traffic some
//!    reader refreshes the entry shortly before it expires, so no reader waits on a load.
//!    `beta > 1` refreshes earlier, `beta < 1` later; `beta = 0` turns it off.
//! 3. **Stale-while-revalidate.** For `stale_for` after expiry, a read returns the old value
//!    at once and starts a background refresh, for keys too cold for early refresh to fire.
//!
//! A refresh is a background tokio task running the reader's loader; a reader never waits
//! for it. Only a true miss (no entry, or one older than `ttl + stale_for`) waits, and it
//! shares that wait with every other reader of the key. Failed loads are not cached: a
//! failed refresh leaves the old value in place until it is too stale to serve.
//!
//! Entries are held in a [`moka`] cache bounded by `capacity` (moka evicts by its TinyLFU
//! policy); expiry and staleness are measured on this crate's [`Clock`](onephase_core::Clock),
//! so a [`ManualClock`](onephase_core::ManualClock) drives them in tests.
//!
//! ```
//! use std::time::Duration;
//! use onephase_herd::{CacheConfig, HerdCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = CacheConfig { ttl: Duration::from_secs(60), ..CacheConfig::default() };
//! let cache: HerdCache<u64, String, String> = HerdCache::new("users", config);
//! let name = cache
//!     .get_with(7, || async { Ok::<_, String>("Ada".to_owned()) })
//!     .await;
//! assert_eq!(name.as_deref(), Ok("Ada"));
//! assert_eq!(cache.stats().misses, 1);
//! # }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::Counter;
use onephase_core::{SharedClock, SystemClock};

use crate::{Random, SingleFlight};

/// How a [`HerdCache`] expires and refreshes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    /// How long a loaded value is fresh.
    pub ttl: Duration,
    /// How long after expiry a value is still served while a background refresh runs.
    /// Zero turns stale-while-revalidate off.
    pub stale_for: Duration,
    /// XFetch's `beta`: how eagerly to refresh early. 1.0 is the paper's choice; 0 turns early
    /// refresh off.
    pub beta: f64,
    /// The most entries kept.
    pub capacity: u64,
}

impl Default for CacheConfig {
    /// 60 s fresh, 10 s stale, `beta` 1.0, 10,000 entries.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            stale_for: Duration::from_secs(10),
            beta: 1.0,
            capacity: 10_000,
        }
    }
}

/// Counts of what reads found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Reads answered from a fresh entry.
    pub hits: u64,
    /// Reads answered from an expired entry within `stale_for`.
    pub stale_hits: u64,
    /// Reads that found no servable entry and waited for a load (their own or a shared one).
    pub misses: u64,
    /// Background refreshes started by early refresh or staleness.
    pub refreshes: u64,
    /// Loads run against the origin, foreground and background.
    pub loads: u64,
}

struct Entry<V> {
    value: V,
    expires: Instant,
    /// How long the load that produced it took.
    delta: Duration,
}

struct Inner<K, V, E> {
    entries: moka::sync::Cache<K, Arc<Entry<V>>>,
    flights: SingleFlight<K, V, E>,
    /// Keys with a background refresh scheduled or running: one at a time per key.
    refreshing: Mutex<HashSet<K>>,
    clock: SharedClock,
    random: Random,
    config: CacheConfig,
    counts: [AtomicU64; 5],
    metrics: [Counter; 4],
}

const HITS: usize = 0;
const STALE: usize = 1;
const MISSES: usize = 2;
const REFRESHES: usize = 3;
const LOADS: usize = 4;

/// A bounded cache with coalesced loads, XFetch early refresh and stale-while-revalidate.
/// Clones share one cache. See the [module docs](self).
pub struct HerdCache<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> Clone for HerdCache<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, E> HerdCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A cache on the system clock with entropy-seeded early refresh. `name` labels its
    /// metrics (`onephase_herd_cache_reads_total{cache, result}`).
    pub fn new(name: &str, config: CacheConfig) -> Self {
        let (clock, random): (SharedClock, _) = (Arc::new(SystemClock), Random::from_entropy());
        let reads = |result: &'static str| metrics::counter!("onephase_herd_cache_reads_total", "cache" => name.to_owned(), "result" => result);
        Self {
            inner: Arc::new(Inner {
                entries: moka::sync::Cache::new(config.capacity),
                flights: SingleFlight::new(name),
                refreshing: Mutex::new(HashSet::new()),
                clock,
                random,
                config,
                counts: Default::default(),
                metrics: [
                    reads("hit"),
                    reads("stale"),
                    reads("miss"),
                    reads("refresh"),
                ],
            }),
        }
    }

    /// The same cache on `clock`. Configure before cloning: a clone keeps what it had.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.clock = clock,
            None => tracing::warn!("HerdCache::with_clock on a shared cache changes nothing"),
        }
        self
    }

    /// The same cache drawing early-refresh decisions from `random` (seeded for the lab).
    /// Configure before cloning, like [`with_clock`](Self::with_clock).
    pub fn with_random(mut self, random: Random) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.random = random,
            None => tracing::warn!("HerdCache::with_random on a shared cache changes nothing"),
        }
        self
    }

    /// The value for `key`: from the cache when it is fresh or servable stale, else from
    /// `load`, shared with every concurrent reader of `key`.
    ///
    /// `load` runs at most once per call, either now (a miss, when this reader leads the
    /// load) or in a background task (a refresh). Its error is returned to the readers that
    /// waited for it and is not cached.
    pub async fn get_with<F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let inner = &self.inner;
        let now = inner.clock.monotonic();
        let seen = inner.entries.get(&key);
        if let Some(entry) = &seen {
            if now < entry.expires {
                inner.count(HITS);
                if inner.refresh_early(entry, now) {
                    self.refresh(key, seen.clone(), load);
                }
                return Ok(entry.value.clone());
            }
            if now < entry.expires + inner.config.stale_for {
                inner.count(STALE);
                self.refresh(key, seen.clone(), load);
                return Ok(entry.value.clone());
            }
        }
        inner.count(MISSES);
        Inner::load(inner, key, seen, load).await
    }

    /// The value cached for `key` if it is still fresh, without loading.
    pub fn get_fresh(&self, key: &K) -> Option<V> {
        let entry = self.inner.entries.get(key)?;
        (self.inner.clock.monotonic() < entry.expires).then(|| entry.value.clone())
    }

    /// How many entries the cache holds, after moka has applied pending evictions.
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }

    /// Forgets `key`: the next read loads it.
    pub fn invalidate(&self, key: &K) {
        self.inner.entries.invalidate(key);
    }

    /// Counts of reads and loads since creation.
    pub fn stats(&self) -> CacheStats {
        let c = |i: usize| self.inner.counts[i].load(Ordering::Relaxed);
        CacheStats {
            hits: c(HITS),
            stale_hits: c(STALE),
            misses: c(MISSES),
            refreshes: c(REFRESHES),
            loads: c(LOADS),
        }
    }

    /// The coalescing counts of this cache's loads.
    pub fn flight_stats(&self) -> crate::FlightStats {
        self.inner.flights.stats()
    }

    /// Starts a background refresh of `key` (whose entry the reader saw as `seen`) unless one
    /// is running.
    fn refresh<F, Fut>(&self, key: K, seen: Option<Arc<Entry<V>>>, load: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.flights.is_running(&key) || !self.inner.refreshing().insert(key.clone()) {
            return;
        }
        self.inner.count(REFRESHES);
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            // Cleared however the task ends, so a key is never stuck as "refreshing".
            let _done = Refreshing(&inner, key.clone());
            if let Err(_e) = Inner::load(&inner, key, seen, load).await {
                tracing::debug!("background cache refresh failed; the stale value stays");
            }
        });
    }
}

/// Removes its key from the refreshing set when dropped.
struct Refreshing<'a, K: Hash + Eq, V, E>(&'a Inner<K, V, E>, K);

impl<K: Hash + Eq, V, E> Drop for Refreshing<'_, K, V, E> {
    fn drop(&mut self) {
        self.0.refreshing().remove(&self.1);
    }
}

impl<K: Hash + Eq, V, E> Inner<K, V, E> {
    fn refreshing(&self) -> MutexGuard<'_, HashSet<K>> {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, V, E> Inner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn count(&self, i: usize) {
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.metrics.get(i) {
            c.increment(1);
        }
    }

    /// XFetch: `delta · beta · −ln(u) ≥ expires − now`, drawn as `u ≤ e^(−x)` with
    /// `x = (expires − now) / (delta · beta)`; past `x = 40` the chance is below 1e-17, so no
    /// number is drawn.
    fn refresh_early(&self, entry: &Entry<V>, now: Instant) -> bool {
        let scale = entry.delta.as_secs_f64() * self.config.beta;
        if scale <= 0.0 || !scale.is_finite() {
            return false;
        }
        let x = entry.expires.saturating_duration_since(now).as_secs_f64() / scale;
        x <= 40.0 && self.random.chance((-x).exp())
    }

    /// Loads `key` through the single-flight. A leader first looks again: if another load
    /// stored a fresh entry since this reader looked (`seen`), that entry is the answer.
    async fn load<F, Fut>(
        inner: &Arc<Self>,
        key: K,
        seen: Option<Arc<Entry<V>>>,
        load: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let stored_key = key.clone();
        inner
            .flights
            .run(key, || async move {
                let started = inner.clock.monotonic();
                if let Some(current) = inner.entries.get(&stored_key) {
                    let newer = seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current));
                    if newer && started < current.expires {
                        return Ok(current.value.clone());
                    }
                }
                inner.count(LOADS);
                let value = load().await?;
                let finished = inner.clock.monotonic();
                let entry = Entry {
                    value: value.clone(),
                    expires: finished + inner.config.ttl,
                    delta: finished.saturating_duration_since(started),
                };
                inner.entries.insert(stored_key, Arc::new(entry));
                Ok(value)
            })
            .await
    }
}

impl<K, V, E> std::fmt::Debug for HerdCache<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HerdCache")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

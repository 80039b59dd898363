//! Post 11 of the seed, *Rate Limiting Is Harder Than It Looks*: the window boundary a client
//! can straddle, and limits that each node keeps for itself, each run naive and with
//! [`onephase_limit`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use onephase_limit::{Algorithm, HybridLimiter, Limiter, LocalLimiter, Policy};

use crate::{Report, SimClock};

/// Admission times, on the scenario's clock.
#[derive(Debug, Default, Clone)]
struct Admissions(Arc<Mutex<Vec<Duration>>>);

impl Admissions {
    fn add(&self, at: Duration) {
        crate::herd::lock(&self.0).push(at);
    }

    fn total(&self) -> usize {
        crate::herd::lock(&self.0).len()
    }

    /// The most admissions in any interval of length `window` (the times are sorted: they
    /// are added as the clock runs).
    fn most_within(&self, window: Duration) -> usize {
        let times = crate::herd::lock(&self.0);
        let mut first = 0;
        let mut most = 0;
        for (last, at) in times.iter().enumerate() {
            while *at - times[first] >= window {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        most
    }

    /// Admissions per `bucket`, over `len` buckets.
    fn per(&self, bucket: Duration, len: usize) -> Vec<f64> {
        let mut counts = vec![0.0; len];
        for at in crate::herd::lock(&self.0).iter() {
            let i = (at.as_micros() / bucket.as_micros()) as usize;
            if let Some(c) = counts.get_mut(i) {
                *c += 1.0;
            }
        }
        counts
    }
}

const LIMIT: u64 = 100;
const PERIOD: Duration = Duration::from_secs(1);
const CYCLES: u32 = 5;
const CYCLE: Duration = Duration::from_secs(2);
const CHART_BUCKET: Duration = Duration::from_millis(50);

/// The window boundary burst.
///
/// A limit of 100 requests per second, and a client that knows where the windows begin: it
/// stays quiet, sends 100 requests 50 ms before a second ends and 100 more as the next one
/// starts, and does it again every 2 s, five times.
///
/// - **Naive**: a fixed window (a counter per calendar second), which admits both volleys:
///   200 requests within 50 ms, twice the limit.
/// - **onephase**: the sliding log of [`onephase_limit`], which never admits more than the
///   limit in any interval of one period.
pub async fn boundary_burst(seed: u64) -> Report {
    let mut report = Report::new(
        "boundary-burst",
        seed,
        "100 requests/s; every 2 s a client sends 100 requests at 0.95 s and 100 at 1.00 s",
    );
    let naive = volleys(Algorithm::FixedWindow).await;
    let onephase = volleys(Algorithm::SlidingLog).await;
    let (naive_most, onephase_most) = (naive.most_within(PERIOD), onephase.most_within(PERIOD));
    report.row(
        "most admitted in any 1 s",
        naive_most as f64,
        onephase_most as f64,
    );
    report.row(
        "most admitted in any 100 ms",
        naive.most_within(Duration::from_millis(100)) as f64,
        onephase.most_within(Duration::from_millis(100)) as f64,
    );
    report.row(
        "admitted in all",
        naive.total() as f64,
        onephase.total() as f64,
    );
    let limit = usize::try_from(LIMIT).unwrap_or(usize::MAX);
    report.invariant(
        "no interval of 1 s admits more than the limit of 100",
        naive_most <= limit,
        onephase_most <= limit,
    );
    let len = (CYCLE * CYCLES).as_millis() as usize / CHART_BUCKET.as_millis() as usize;
    report.chart(
        "admitted per 50 ms",
        "",
        CHART_BUCKET,
        naive.per(CHART_BUCKET, len),
        onephase.per(CHART_BUCKET, len),
    );
    report
}

async fn volleys(algorithm: Algorithm) -> Admissions {
    let clock = SimClock::start();
    let policy = Policy::new(algorithm, LIMIT, PERIOD).expect("a valid policy");
    let limiter = LocalLimiter::with_clock(policy, Arc::new(clock));
    let admitted = Admissions::default();
    for cycle in 0..CYCLES {
        let start = CYCLE * cycle;
        for at in [start + Duration::from_millis(950), start + PERIOD] {
            tokio::time::sleep_until(tokio::time::Instant::now() + (at - clock.elapsed())).await;
            for _ in 0..LIMIT {
                if limiter.check("client", 1).is_ok_and(|d| d.allowed) {
                    admitted.add(clock.elapsed());
                }
            }
        }
    }
    admitted
}

const NODES: u64 = 3;
const GLOBAL: u64 = 300;
const CHUNK: u64 = 10;
const RUN: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(2);

/// Limits each node keeps for itself.
///
/// A limit of 300 requests per second for one API key, three nodes behind a load balancer,
/// each receiving 500 requests per second for that key for 10 s.
///
/// - **Naive**: each node enforces 300 per second in its own memory, so the three admit
///   900 per second: three times the limit.
/// - **onephase**: one shared limit (a sliding log standing for the one in Redis or the
///   database) that each node reaches through a [`HybridLimiter`] leasing 10 units at a time.
///   Its stated bound: at most the limit plus `nodes × (chunk + (chunk - 1) / 2)` = 342 in any
///   second.
pub async fn local_limits(seed: u64) -> Report {
    let mut report = Report::new(
        "local-limits",
        seed,
        "300 requests/s for one key; 3 nodes each receive 500 requests/s for 10 s; hybrid chunk 10",
    );
    let policy = Policy::new(Algorithm::SlidingLog, GLOBAL, PERIOD).expect("a valid policy");
    let clock = SimClock::start();
    let naive: Vec<Arc<dyn Limiter>> = (0..NODES)
        .map(|_| Arc::new(LocalLimiter::with_clock(policy, Arc::new(clock))) as Arc<dyn Limiter>)
        .collect();
    let naive = nodes(naive).await;

    let clock = SimClock::start();
    let shared: Arc<dyn Limiter> = Arc::new(LocalLimiter::with_clock(policy, Arc::new(clock)));
    let hybrid: Vec<Arc<dyn Limiter>> = (0..NODES)
        .map(|_| {
            let node = HybridLimiter::new(shared.clone(), CHUNK)
                .expect("a chunk within the burst")
                .with_clock(Arc::new(clock));
            Arc::new(node) as Arc<dyn Limiter>
        })
        .collect();
    let onephase = nodes(hybrid).await;

    let (naive_most, onephase_most) = (naive.most_within(PERIOD), onephase.most_within(PERIOD));
    report.row(
        "most admitted in any 1 s",
        naive_most as f64,
        onephase_most as f64,
    );
    report.row(
        "admitted per second, on average",
        naive.total() as f64 / RUN.as_secs_f64(),
        onephase.total() as f64 / RUN.as_secs_f64(),
    );
    let bound = GLOBAL + NODES * (CHUNK + (CHUNK - 1) / 2);
    let bound = usize::try_from(bound).unwrap_or(usize::MAX);
    report.invariant(
        format!("no interval of 1 s admits more than the limit plus the hybrid's stated margin ({bound})"),
        naive_most <= bound,
        onephase_most <= bound,
    );
    let bucket = Duration::from_millis(100);
    let len = RUN.as_millis() as usize / bucket.as_millis() as usize;
    report.chart(
        "admitted per 100 ms, all nodes",
        "",
        bucket,
        naive.per(bucket, len),
        onephase.per(bucket, len),
    );
    report
}

/// Each node's requests, one every [`EVERY`] per node, for [`RUN`].
async fn nodes(limiters: Vec<Arc<dyn Limiter>>) -> Admissions {
    let clock = SimClock::start();
    let admitted = Admissions::default();
    while clock.elapsed() < RUN {
        for limiter in &limiters {
            if limiter.check("api-key", 1).await.is_ok_and(|d| d.allowed) {
                admitted.add(clock.elapsed());
            }
        }
        tokio::time::sleep(EVERY).await;
    }
    admitted
}

//! Exactness across OS processes: three processes of this test binary, two of them with their
//! clocks skewed by +30 s and −30 s (`faketime`), each with 16 tasks, hammer one key in Redis,
//! then in PostgreSQL. The admissions, timed on the store's clock, hold each algorithm's
//! bound: the clients' clocks enter no decision.

#[cfg(not(all(feature = "redis", feature = "store")))]
#[test]
fn processes_suite() {
    onephase_testkit::engine_not_built(
        onephase_testkit::Engine::Redis,
        "onephase-limit",
        "redis,store",
    );
}

#[cfg(all(feature = "redis", feature = "store"))]
#[path = "common/mod.rs"]
mod common;

#[cfg(all(feature = "redis", feature = "store"))]
mod suite {
    use super::common;
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::{Context as _, ensure};
    use onephase_limit::{Algorithm, FailMode, Limiter, Policy, RedisLimiter, StoreLimiter};
    use onephase_store::Store;
    use onephase_testkit::{Engine, TestDb, engine_url, engines_required};

    const WORKER: &str = "ONEPHASE_LIMIT_WORKER";
    const TASKS: usize = 16;
    const PERIOD_US: i64 = 500_000;
    const LIMIT: u64 = 40;

    fn now_us() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
    }

    /// The worker's side: when started by the test below, check one key from 16 tasks for the
    /// given time and print this process's clock, then every admission's Redis time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker() -> anyhow::Result<()> {
        let Ok(spec) = std::env::var(WORKER) else {
            return Ok(());
        };
        let mut parts = spec.split(',');
        let url = parts.next().context("url")?.to_owned();
        let algorithm: Algorithm = parts.next().context("algorithm")?.parse()?;
        let prefix = parts.next().context("prefix")?.to_owned();
        let run_ms: u64 = parts.next().context("run")?.parse()?;
        let policy = Policy::new(algorithm, LIMIT, Duration::from_micros(PERIOD_US as u64))?;
        let limiter: Arc<dyn Limiter> = if url.starts_with("postgres") {
            Arc::new(
                StoreLimiter::new(Store::connect(&url).await?, policy, prefix)?
                    .with_fail_mode(FailMode::Closed),
            )
        } else {
            let conn = redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?;
            Arc::new(RedisLimiter::new(conn, policy, prefix).with_fail_mode(FailMode::Closed))
        };
        // A store slower than the limiter's timeout (a loaded machine) is the product's
        // business, not a test failure: closed, such a check is refused and marked as a
        // fallback, and never admitted uncounted.
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let fallbacks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (limiter, admitted) = (Arc::clone(&limiter), Arc::clone(&admitted));
                let fallbacks = Arc::clone(&fallbacks);
                tokio::spawn(async move {
                    let end = tokio::time::Instant::now() + Duration::from_millis(run_ms);
                    while tokio::time::Instant::now() < end {
                        let d = limiter.check("shared", 1).await?;
                        if d.fallback.is_some() {
                            anyhow::ensure!(!d.allowed, "a closed fallback admitted: {d:?}");
                            fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        if let (true, Some(at)) = (d.allowed, d.decided_at_us) {
                            admitted.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "clock {}", now_us())?;
        writeln!(
            out,
            "fallbacks {}",
            fallbacks.load(std::sync::atomic::Ordering::Relaxed)
        )?;
        for at in admitted.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            writeln!(out, "admitted {at}")?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn three_processes_with_skewed_clocks_share_one_exact_limit() -> anyhow::Result<()> {
        if std::env::var(WORKER).is_ok() {
            return Ok(());
        }
        let Some(redis) = engine_url(Engine::Redis) else {
            return Ok(());
        };
        let Some(db) = TestDb::postgres().await else {
            return Ok(());
        };
        db.store().migrate(&[onephase_limit::migrations()]).await?;
        let faketime = std::process::Command::new("faketime")
            .arg("-f")
            .arg("+0s")
            .arg("true")
            .status();
        if !faketime.is_ok_and(|s| s.success()) {
            ensure!(
                !engines_required(),
                "faketime is needed to skew the worker clocks: apt-get install faketime"
            );
            eprintln!("SKIPPED the clock-skew test: faketime is not installed");
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        for (store, url) in [("Redis", redis.as_str()), ("PostgreSQL", db.url())] {
            for algorithm in Algorithm::ALL {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let prefix = format!("onephase-test:processes:{algorithm}:{nanos:x}:");
                let spec = format!("{url},{algorithm},{prefix},1600");
                let mut children = Vec::new();
                for skew in ["+0s", "+30s", "-30s"] {
                    children.push((
                        skew,
                        tokio::process::Command::new("faketime")
                            .arg("-f")
                            .arg(skew)
                            .arg(&exe)
                            .args([
                                "suite::worker",
                                "--exact",
                                "--nocapture",
                                "--test-threads",
                                "1",
                            ])
                            .env(WORKER, &spec)
                            .stdout(std::process::Stdio::piped())
                            .stderr(std::process::Stdio::inherit())
                            .spawn()?,
                    ));
                }
                let mut times = Vec::new();
                for (skew, child) in children {
                    let started = now_us();
                    let out = child.wait_with_output().await?;
                    ensure!(out.status.success(), "worker {skew} failed: {}", out.status);
                    let text = String::from_utf8_lossy(&out.stdout);
                    // libtest prints "test suite::worker ... " before the first line.
                    let clock: i64 = text
                        .lines()
                        .find_map(|l| l.find("clock ").map(|at| &l[at + 6..]))
                        .context("the worker printed no clock")?
                        .trim()
                        .parse()?;
                    let offset_s = (clock - started) as f64 / 1e6;
                    let expected: f64 = skew.trim_end_matches('s').parse()?;
                    ensure!(
                        (offset_s - expected).abs() < 5.0,
                        "worker {skew} had a clock {offset_s:.1} s off"
                    );
                    for line in text.lines() {
                        if let Some(at) = line.find("admitted ").map(|at| &line[at + 9..]) {
                            times.push(at.trim().parse::<i64>()?);
                        }
                    }
                }
                ensure!(
                    !times.is_empty(),
                    "{algorithm} on {store}: no check was decided by the store"
                );
                times.sort_unstable();
                let limit = usize::try_from(LIMIT)?;
                let what = format!("over 3 processes on {store}");
                common::check_bounds(algorithm, &times, PERIOD_US, limit, &what)?;
            }
        }
        db.close().await?;
        Ok(())
    }
}

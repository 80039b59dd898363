//! Decisions per second: local GCRA against the `governor` crate (GCRA vs GCRA), and Redis
//! against a raw `INCR` with the same connection setup, in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"        # for Redis
//! cargo bench -p onephase-limit --features redis,store --bench limit
//! ```
//!
//! - **Local**: 1,000,000 units per second with bursts of 1,000,000 (so nearly every check is
//!   admitted and both libraries do their full work), on one key and on 100,000 keys visited in
//!   turn, from 1 and 2 threads, in 7 rounds of 300 ms that alternate the two libraries, each one's median kept. governor's keyed limiter keeps every key until
//!   `retain_recent()` is called, which this benchmark never does; onephase drops idle keys by
//!   itself.
//! - **Redis**: 64 tasks on one multiplexed connection (`ConnectionManager`) checking one key
//!   (GCRA, `EVALSHA`), against the same 64 tasks running the ecosystem's Lua GCRA (the
//!   algorithm of go-redis/redis_rate and redis-cell, as a script of this benchmark) on the
//!   same setup, and sending `INCR` (the raw limit of one round trip per decision, which no
//!   script reaches: Redis runs a script's interpreter and `TIME` on top).
//! - **Hybrid**: the same 64 tasks checking one key through a `HybridLimiter` leasing chunks
//!   of 100 and of 1,000 units (0.01 % and 0.1 % of the limit) from that Redis limiter, against
//!   the Redis limiter itself.
//! - **PostgreSQL**: 64 tasks on a pool of 16 checking one key (GCRA, one statement), against
//!   the same tasks running `UPDATE ... SET n = n + 1` on one row (the raw limit of a locked
//!   row written per decision).
//!
//! Results go to `bench/results/limit.json` and a Markdown table on stdout.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use onephase_limit::{Algorithm, HybridLimiter, LocalLimiter, Policy, RedisLimiter, StoreLimiter};
use onephase_testkit::{Engine, engine_url};
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Each local case alternates the two libraries for this many rounds of [`LOCAL_RUN`] and keeps
/// each one's median: on a shared machine a slow second hits both, not one.
const ROUNDS: usize = 7;
const LOCAL_RUN: Duration = Duration::from_millis(300);
const KEYS: usize = 100_000;

/// Runs `work(thread, i)` on `threads` OS threads for [`LOCAL_RUN`]; calls per second.
fn threaded(threads: usize, work: impl Fn(usize, usize) + Send + Sync + 'static) -> f64 {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, stop, done) = (Arc::clone(&work), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        work(t, i);
                        i += 1;
                    }
                }
                done.fetch_add(i as u64, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(LOCAL_RUN);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

struct Row {
    case: String,
    onephase: f64,
    baseline: &'static str,
    raw: f64,
}

fn local_rows() -> AnyResult<Vec<Row>> {
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|n| format!("client-{n}")).collect());
    let policy = Policy::new(Algorithm::Gcra, 1_000_000, Duration::from_secs(1))?;
    let quota = Quota::per_second(NonZeroU32::new(1_000_000).ok_or("quota")?);
    let mut rows = Vec::new();
    for (label, many) in [("one key", false), ("100,000 keys", true)] {
        for threads in [1, 2] {
            let ours = Arc::new(LocalLimiter::new(policy));
            let theirs = Arc::new(RateLimiter::<String, _, _>::keyed(quota));
            let (mut onephase, mut governor) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let (ours, k1) = (Arc::clone(&ours), Arc::clone(&keys));
                onephase.push(threaded(threads, move |t, i| {
                    let key = if many {
                        &k1[(i * 2 + t) % KEYS]
                    } else {
                        &k1[0]
                    };
                    let _ = std::hint::black_box(ours.check(key, 1));
                }));
                let (theirs, k2) = (Arc::clone(&theirs), Arc::clone(&keys));
                governor.push(threaded(threads, move |t, i| {
                    let key = if many {
                        &k2[(i * 2 + t) % KEYS]
                    } else {
                        &k2[0]
                    };
                    let _ = std::hint::black_box(theirs.check_key(key));
                }));
            }
            let (onephase, governor) = (median(onephase), median(governor));
            rows.push(Row {
                case: format!("local GCRA, {label}, {threads} thread(s)"),
                onephase,
                baseline: "governor keyed GCRA",
                raw: governor,
            });
        }
    }
    Ok(rows)
}

const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(3);

/// Runs `work` from [`CALLERS`] tasks for [`RUN`]; calls per second.
async fn rate<F, Fut>(work: F) -> AnyResult<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = AnyResult<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (work, stop, done) = (work.clone(), Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    work().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                AnyResult::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
async fn redis_rows(url: &str) -> AnyResult<Vec<Row>> {
    let conn = redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?;
    let policy = Policy::new(Algorithm::Gcra, 1_000_000, Duration::from_secs(1))?;
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let limiter = RedisLimiter::new(conn.clone(), policy, format!("onephase-bench:{nanos}:"))
        .with_timeout(Duration::from_secs(5));
    let hybrid_100 = Arc::new(HybridLimiter::new(Arc::new(limiter.clone()), 100)?);
    let hybrid_1000 = Arc::new(HybridLimiter::new(Arc::new(limiter.clone()), 1000)?);
    let onephase = rate({
        let limiter = limiter.clone();
        move || {
            let limiter = limiter.clone();
            async move {
                let d = limiter.check("one-key", 1).await?;
                if d.fallback.is_some() {
                    return Err("Redis did not answer".into());
                }
                Ok(())
            }
        }
    })
    .await?;
    let mut hybrid = Vec::new();
    for limiter in [hybrid_100, hybrid_1000] {
        hybrid.push(
            rate(move || {
                let limiter = Arc::clone(&limiter);
                async move {
                    let d = limiter.check("hybrid-key", 1).await?;
                    if d.fallback.is_some() || !d.allowed {
                        return Err(format!("the hybrid limiter answered {d:?}").into());
                    }
                    Ok(())
                }
            })
            .await?,
        );
    }
    // GCRA as the ecosystem runs it in Redis (the algorithm of go-redis/redis_rate and of
    // redis-cell, written here as a Lua script): the server's TIME, the stored theoretical
    // arrival time in seconds as a float, one GET and one SET with an expiry, through EVALSHA.
    let lua_gcra = redis::Script::new(
        r"
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local emission = 1 / rate
local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission * cost
local allow_at = new_tat - burst * emission
if now < allow_at then return {0, math.ceil((allow_at - now) * 1000)} end
redis.call('SET', KEYS[1], tostring(new_tat), 'EX', math.ceil(new_tat - now))
return {1, math.floor((now - allow_at) / emission)}
",
    );
    let lua_key = format!("onephase-bench:{nanos}:lua-gcra");
    let ecosystem = rate({
        let conn = conn.clone();
        move || {
            let (mut conn, script, key) = (conn.clone(), lua_gcra.clone(), lua_key.clone());
            async move {
                let _: (i64, i64) = script
                    .key(&key)
                    .arg(1_000_000)
                    .arg(1_000_000)
                    .arg(1)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let counter = format!("onephase-bench:{nanos}:incr");
    let raw = rate(move || {
        let (mut conn, counter) = (conn.clone(), counter.clone());
        async move {
            let _: i64 = redis::cmd("INCR")
                .arg(&counter)
                .query_async(&mut conn)
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(vec![
        Row {
            case: format!("Redis GCRA, one key, {CALLERS} callers"),
            onephase,
            baseline: "the ecosystem's Lua GCRA (redis_rate's algorithm), EVALSHA",
            raw: ecosystem,
        },
        Row {
            case: format!("Redis GCRA, one key, {CALLERS} callers"),
            onephase,
            baseline: "INCR, same connection setup (the ceiling of one round trip)",
            raw,
        },
        Row {
            case: format!("hybrid over Redis (chunks of 100), one key, {CALLERS} callers"),
            onephase: hybrid[0],
            baseline: "Redis GCRA (EVALSHA per decision)",
            raw: onephase,
        },
        Row {
            case: format!("hybrid over Redis (chunks of 1,000), one key, {CALLERS} callers"),
            onephase: hybrid[1],
            baseline: "Redis GCRA (EVALSHA per decision)",
            raw: onephase,
        },
    ])
}

async fn postgres_rows(url: &str) -> AnyResult<Vec<Row>> {
    use onephase_store::{Store, StoreOptions};
    let db = format!("onephase_bench_limit_{}", std::process::id());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => return Err("a PostgreSQL URL with a database".into()),
    };
    let mut options = StoreOptions::default();
    options.max_connections = 16;
    let store = Store::connect_with(&db_url, &options).await?;
    store.migrate(&[onephase_limit::migrations()]).await?;
    let policy = Policy::new(Algorithm::Gcra, 1_000_000, Duration::from_secs(1))?;
    let limiter =
        StoreLimiter::new(store.clone(), policy, "bench:")?.with_timeout(Duration::from_secs(5));
    let onephase = rate(move || {
        let limiter = limiter.clone();
        async move {
            let d = limiter.check("one-key", 1).await?;
            if d.fallback.is_some() {
                return Err("PostgreSQL did not answer".into());
            }
            Ok(())
        }
    })
    .await?;
    let pool = store.as_postgres().ok_or("PostgreSQL")?.clone();
    sqlx::query("CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO counter VALUES (1, 0)")
        .execute(&pool)
        .await?;
    let raw = rate(move || {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1")
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await?;
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin)
        .await?;
    Ok(vec![Row {
        case: format!("PostgreSQL GCRA, one key, {CALLERS} callers, pool of 16"),
        onephase,
        baseline: "UPDATE n = n + 1 on one row, same pool",
        raw,
    }])
}

fn main() -> AnyResult<()> {
    let mut rows = local_rows()?;
    if let Some(url) = engine_url(Engine::Redis) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rows.extend(runtime.block_on(redis_rows(&url))?);
    }
    if let Some(url) = engine_url(Engine::Postgres) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rows.extend(runtime.block_on(postgres_rows(&url))?);
    }
    println!("| case | onephase decisions/s | baseline | baseline/s | ratio |");
    println!("|---|---|---|---|---|");
    let mut json_rows: Vec<Value> = Vec::new();
    for r in &rows {
        let ratio = r.onephase / r.raw;
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.2} |",
            r.case, r.onephase, r.baseline, r.raw, ratio
        );
        json_rows.push(json!({
            "case": r.case,
            "onephase_per_sec": r.onephase,
            "baseline": r.baseline,
            "baseline_per_sec": r.raw,
            "ratio": ratio,
        }));
    }
    let out = json!({
        "bench": "rate-limit decisions",
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "results": json_rows,
    });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/results/limit.json"
    );
    std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("wrote {path}");
    Ok(())
}

//! Acquire+release cycles per second on each backend, uncontended (1 client) and contended (8
//! clients on one name), against the engine's own lock doing the same work in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"        # PostgreSQL and etcd; SQLite always runs
//! cargo bench -p onephase-lease --features etcd --bench lease
//! ```
//!
//! - **onephase**: `try_acquire` (uncontended) or `acquire` with a wait (contended; a release
//!   wakes one waiter, in this process directly and on PostgreSQL through `NOTIFY`), then
//!   `release`. Every grant is durable and fenced.
//! - **PostgreSQL baseline**: `pg_advisory_lock` + `pg_advisory_unlock`, one connection per
//!   client: a session lock, no token, gone with the connection.
//! - **etcd baseline**: etcd's lock API (`lock` + `unlock`, etcd-client), each client with one
//!   etcd lease granted up front (a session), as its concurrency package does: two writes per
//!   cycle, but a lock that lapses only when the whole session does. The second etcd baseline
//!   (uncontended) is the floor of a grant with its own expiry, as onephase's: grant an etcd
//!   lease, put the key under it in a transaction, revoke the lease; three writes.
//! - **SQLite baseline**, and the second **PostgreSQL baseline**: two single-row write
//!   transactions per cycle (what an acquire and a release each cost at least when both are
//!   durable: the floor of any lease that survives a crash, which an advisory lock is not).
//!
//! Each case runs for 3 s. Results go to `bench/results/lease.json` and a Markdown table on
//! stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onephase_lease::{EtcdLeases, Leases, migrations};
use onephase_store::{Store, on_store};
use onephase_testkit::{Engine, TestDb, engine_url};
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const RUN: Duration = Duration::from_secs(3);
const TTL: Duration = Duration::from_secs(10);

struct Row {
    backend: &'static str,
    clients: usize,
    onephase: f64,
    baseline: &'static str,
    raw: f64,
}

/// Runs `clients` copies of `cycle` for [`RUN`] and returns cycles per second.
async fn rate<F, Fut>(clients: usize, cycle: F) -> AnyResult<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = AnyResult<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, done, cycle) = (Arc::clone(&stop), Arc::clone(&done), cycle.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    cycle(i).await?;
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

async fn onephase(leases: Leases, clients: usize) -> AnyResult<f64> {
    rate(clients, move |i| {
        let leases = leases.clone();
        async move {
            let holder = format!("c{i}");
            let guard = if clients == 1 {
                leases.try_acquire("bench", &holder, TTL).await?
            } else {
                leases
                    .acquire("bench", &holder, TTL, Duration::from_secs(60))
                    .await?
            };
            guard.release().await?;
            Ok(())
        }
    })
    .await
}

async fn postgres_baseline(url: &str, clients: usize) -> AnyResult<f64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(clients)?)
        .connect(url)
        .await?;
    rate(clients, move |_| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            sqlx::query("SELECT pg_advisory_lock(4242)")
                .execute(&mut *conn)
                .await?;
            sqlx::query("SELECT pg_advisory_unlock(4242)")
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
    })
    .await
}

async fn etcd_baseline(url: &str, clients: usize) -> AnyResult<f64> {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        let mut client = etcd_client::Client::connect([url], None).await?;
        let lease = client.lease_grant(60, None).await?.id();
        sessions.push((client, lease));
    }
    let sessions = Arc::new(sessions);
    rate(clients, move |i| {
        let sessions = Arc::clone(&sessions);
        async move {
            let (client, lease) = &sessions[i];
            let mut client = client.clone();
            let options = etcd_client::LockOptions::new().with_lease(*lease);
            let locked = client
                .lock("onephase-bench/etcd-lock", Some(options))
                .await?;
            client.unlock(locked.key().to_vec()).await?;
            Ok(())
        }
    })
    .await
}

/// What a lease whose grant has its own expiry costs at least on etcd: grant an etcd lease,
/// put the key under it in a transaction that checks it is absent, revoke the lease.
async fn etcd_floor(url: &str, clients: usize) -> AnyResult<f64> {
    let client = etcd_client::Client::connect([url], None).await?;
    rate(clients, move |i| {
        let mut client = client.clone();
        async move {
            let lease = client.lease_grant(10, None).await?.id();
            let key = format!("onephase-bench/etcd-floor/{i}");
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::create_revision(
                    key.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(
                    key,
                    "bench",
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            client.txn(txn).await?;
            client.lease_revoke(lease).await?;
            Ok(())
        }
    })
    .await
}

/// What any lease that records its grant and its release durably costs at least: two
/// single-row write transactions per cycle, the engine queueing the writers.
async fn durable_floor(store: &Store, clients: usize) -> AnyResult<f64> {
    on_store!(store.db(), pool => {
        let pool = pool.clone();
        sqlx::query("CREATE TABLE IF NOT EXISTS bench_floor (id INTEGER PRIMARY KEY, n BIGINT)")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO bench_floor VALUES (1, 0) ON CONFLICT DO NOTHING")
            .execute(&pool)
            .await?;
        rate(clients, move |_| {
            let pool = pool.clone();
            async move {
                for _ in 0..2 {
                    sqlx::query("UPDATE bench_floor SET n = n + 1 WHERE id = 1")
                        .execute(&pool)
                        .await?;
                }
                Ok(())
            }
        })
        .await
    })
}

fn main() -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut rows = Vec::new();
        let sqlite = TestDb::sqlite().await?;
        sqlite.store().migrate(&[migrations()]).await?;
        for clients in [1, 8] {
            rows.push(Row {
                backend: "sqlite",
                clients,
                onephase: onephase(Leases::store(sqlite.store().clone()), clients).await?,
                baseline: "two write transactions",
                raw: durable_floor(sqlite.store(), clients).await?,
            });
        }
        sqlite.close().await?;
        if let Some(pg) = TestDb::postgres().await {
            pg.store().migrate(&[migrations()]).await?;
            for clients in [1, 8] {
                let ours = onephase(Leases::store(pg.store().clone()), clients).await?;
                rows.push(Row {
                    backend: "postgres",
                    clients,
                    onephase: ours,
                    baseline: "pg_advisory_lock + unlock",
                    raw: postgres_baseline(pg.url(), clients).await?,
                });
                rows.push(Row {
                    backend: "postgres",
                    clients,
                    onephase: ours,
                    baseline: "two write transactions",
                    raw: durable_floor(pg.store(), clients).await?,
                });
            }
            pg.close().await?;
        }
        if let Some(url) = engine_url(Engine::Etcd) {
            let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            for clients in [1, 8] {
                let client = etcd_client::Client::connect([url.as_str()], None).await?;
                let leases = Leases::new(EtcdLeases::with_prefix(client, format!("onephase-bench/{nanos}/")));
                let ours = onephase(leases, clients).await?;
                rows.push(Row {
                    backend: "etcd",
                    clients,
                    onephase: ours,
                    baseline: "etcd lock + unlock",
                    raw: etcd_baseline(&url, clients).await?,
                });
                if clients == 1 {
                    rows.push(Row {
                        backend: "etcd",
                        clients,
                        onephase: ours,
                        baseline: "lease grant + put txn + revoke",
                        raw: etcd_floor(&url, clients).await?,
                    });
                }
            }
        }
        println!("| backend | clients | onephase cycles/s | baseline | baseline cycles/s | ratio |");
        println!("|---|---|---|---|---|---|");
        let mut json_rows: Vec<Value> = Vec::new();
        for r in &rows {
            let ratio = r.onephase / r.raw;
            println!(
                "| {} | {} | {:.0} | {} | {:.0} | {:.2} |",
                r.backend, r.clients, r.onephase, r.baseline, r.raw, ratio
            );
            json_rows.push(json!({
                "backend": r.backend,
                "clients": r.clients,
                "onephase_cycles_per_sec": r.onephase,
                "baseline": r.baseline,
                "baseline_cycles_per_sec": r.raw,
                "ratio": ratio,
            }));
        }
        let out = json!({
            "bench": "lease acquire+release",
            "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
            "run_secs": RUN.as_secs(),
            "results": json_rows,
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results/lease.json");
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
        eprintln!("wrote {path}");
        Ok(())
    })
}

//! Post 4, "Your replica is lying to you": reads from a PostgreSQL streaming replica that
//! applies WAL late. Needs a primary and two replicas of a cluster the lab may change: it sets
//! `recovery_min_apply_delay` on the replicas for the run and resets it after.
//!
//! - [`read_your_writes`]: a client reads right after its own write.
//! - [`monotonic_reads`]: a reader alternates between two replicas with different delays.
//! - [`across_services`]: service A writes and calls service B, which reads a replica.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::{Extension, Json};
use onephase_core::Random;
use onephase_replica::layer::{Consistency, ConsistencyLayer};
use onephase_replica::{HEADER, Policy, Router, RouterConfig, Session};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::report::seconds;
use crate::{Failed, Report};

/// What the scenarios need, said when they cannot run.
pub const NEEDS: &str = "a PostgreSQL primary and two streaming replicas the lab may delay \
     (`--replicas PRIMARY_URL,REPLICA_URL,REPLICA_URL`, or ONEPHASE_LAB_REPLICAS)";

const TABLE: &str = "onephase_lab_replica";

/// The cluster: a primary and two replicas.
struct Cluster {
    primary: PgPool,
    replicas: [PgPool; 2],
}

async fn connect(urls: &str) -> Result<Cluster, Failed> {
    let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
    if urls.len() != 3 {
        return Err(format!("{} URLs given; {NEEDS}", urls.len()).into());
    }
    let pool = |url: &str| {
        let url = url.to_owned();
        async move {
            PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await
                .map_err(|e| format!("{}: {e}", onephase_store::redact_url(&url)))
        }
    };
    Ok(Cluster {
        primary: pool(urls[0]).await?,
        replicas: [pool(urls[1]).await?, pool(urls[2]).await?],
    })
}

/// Sets the replicas' apply delays (0 for none) and waits until they hold.
async fn delays(cluster: &Cluster, ms: [u64; 2]) -> Result<(), Failed> {
    for (replica, ms) in cluster.replicas.iter().zip(ms) {
        let set = if ms == 0 {
            "ALTER SYSTEM RESET recovery_min_apply_delay".to_owned()
        } else {
            format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")
        };
        sqlx::query(AssertSqlSafe(set)).execute(replica).await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(replica)
            .await?;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(replica)
            .await?;
    }
    // WAL written before the delay took effect replays at once; after this, the delay holds.
    tokio::time::sleep(Duration::from_millis(
        ms.iter().max().copied().unwrap_or(0) + 500,
    ))
    .await;
    Ok(())
}

async fn fresh_table(primary: &PgPool) -> Result<(), Failed> {
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(primary)
        .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {TABLE} (id INT PRIMARY KEY, v BIGINT NOT NULL)"
    )))
    .execute(primary)
    .await?;
    sqlx::query(AssertSqlSafe(format!("INSERT INTO {TABLE} VALUES (1, 0)")))
        .execute(primary)
        .await?;
    Ok(())
}

async fn write(primary: &PgPool, v: i64) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {TABLE} SET v = $1 WHERE id = 1"
    )))
    .bind(v)
    .execute(primary)
    .await?;
    Ok(())
}

async fn read(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT v FROM {TABLE} WHERE id = 1")))
        .fetch_one(pool)
        .await
}

/// A router over the cluster, its monitor running until the returned sender drops.
async fn router(cluster: &Cluster) -> Result<(Router, tokio::sync::oneshot::Sender<()>), Failed> {
    let router = Router::new(
        "lab",
        cluster.primary.clone(),
        [
            ("replica-1".to_owned(), cluster.replicas[0].clone()),
            ("replica-2".to_owned(), cluster.replicas[1].clone()),
        ],
    )
    .with_config(
        RouterConfig::default()
            .with_poll_interval(Duration::from_millis(50))
            .with_heartbeat_interval(Duration::from_millis(200)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = router.clone();
    tokio::spawn(async move {
        monitor
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while router.status().replicas.iter().any(|r| !r.in_rotation) {
        if Instant::now() > deadline {
            return Err(format!(
                "the replicas did not come into rotation: {:?}",
                router.status()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((router, stop))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

const WRITES: i64 = 60;
const DELAY_MS: u64 = 300;

/// A client writes, then reads the row back at once, 60 times; replica 1 applies WAL 300 ms
/// late, replica 2 at once, and reads are spread over both.
///
/// - **Naive**: reads go to the replicas in turn: half of them land on the late one.
/// - **onephase**: [`Policy::ReadYourWrites`] with the token taken after the commit: a replica
///   that has replayed it, or a bounded wait (1 s), or the primary. The cost is in the
///   latency rows.
pub async fn read_your_writes(seed: u64, replicas: Option<&str>) -> Report {
    let mut report = Report::new(
        "replica-read-your-writes",
        seed,
        "60 writes on a PostgreSQL primary, each read back at once; replica 1 applies WAL 300 ms late, replica 2 at once",
    );
    let Some(urls) = replicas else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    let Some(((naive, onephase), served)) = report.ran_to_end(ryw_run(seed, urls).await) else {
        return report;
    };
    let stale = |o: &[(bool, f64)]| o.iter().filter(|(s, _)| *s).count() as f64;
    report.row("reads", naive.len() as f64, onephase.len() as f64);
    report.row("stale reads", stale(&naive), stale(&onephase));
    let (naive_p50, naive_p99) = percentiles(naive.iter().map(|(_, ms)| *ms).collect());
    let (p50, p99) = percentiles(onephase.iter().map(|(_, ms)| *ms).collect());
    report.row("read latency p50 (µs)", naive_p50, p50);
    report.row("read latency p99 (µs)", naive_p99, p99);
    report.row(
        "reads served by a replica",
        naive.len() as f64,
        served as f64,
    );
    report.invariant(
        "a read right after a write sees the write",
        stale(&naive) == 0.0,
        stale(&onephase) == 0.0,
    );
    report.chart_by(
        "stale reads, per write",
        "",
        "a write",
        naive.iter().map(|(s, _)| f64::from(u8::from(*s))).collect(),
        onephase
            .iter()
            .map(|(s, _)| f64::from(u8::from(*s)))
            .collect(),
    );
    report
}

type Reads = Vec<(bool, f64)>;

async fn ryw_run(seed: u64, urls: &str) -> Result<((Reads, Reads), usize), Failed> {
    let cluster = connect(urls).await?;
    fresh_table(&cluster.primary).await?;
    delays(&cluster, [DELAY_MS, 0]).await?;
    let outcome = async {
        let (router, _stop) = router(&cluster).await?;
        let random = Random::seeded(seed);
        let mut naive = Vec::new();
        for v in 1..=WRITES {
            write(&cluster.primary, v).await?;
            let started = Instant::now();
            let seen = read(&cluster.replicas[(v % 2) as usize]).await?;
            naive.push((seen != v, seconds(started.elapsed()) * 1e6));
            tokio::time::sleep(Duration::from_millis(random.next_u64() % 20)).await;
        }
        let (mut onephase, mut served) = (Vec::new(), 0);
        for v in WRITES + 1..=2 * WRITES {
            write(&cluster.primary, v).await?;
            let token = router.token().await?;
            let started = Instant::now();
            let route = router
                .route(Policy::ReadYourWrites {
                    token: Some(token),
                    wait: Duration::from_secs(1),
                })
                .await?;
            let seen = read(&route.pool).await?;
            onephase.push((seen != v, seconds(started.elapsed()) * 1e6));
            served += usize::from(!route.is_primary());
            tokio::time::sleep(Duration::from_millis(random.next_u64() % 20)).await;
        }
        Ok::<_, Failed>(((naive, onephase), served))
    }
    .await;
    delays(&cluster, [0, 0]).await?;
    outcome
}

const READS: usize = 200;

/// A writer raises a counter every 5 ms; a reader reads it 200 times, 4 ms apart. Replica 1
/// applies WAL 600 ms late, replica 2 at once.
///
/// - **Naive**: each read goes to either replica (seeded choice): the counter goes down
///   whenever a read on the late replica follows one on the prompt one.
/// - **onephase**: a [`Session`] ([`Router::route_monotonic`]): reads stay on one replica and
///   move only to one at least as far along.
pub async fn monotonic_reads(seed: u64, replicas: Option<&str>) -> Report {
    let mut report = Report::new(
        "monotonic-reads",
        seed,
        "a counter raised every 5 ms on the primary, read 200 times over two replicas: one 600 ms late, one prompt",
    );
    let Some(urls) = replicas else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    let Some((naive, onephase)) = report.ran_to_end(monotonic_run(seed, urls).await) else {
        return report;
    };
    let backwards = |o: &[f64]| o.iter().filter(|b| **b > 0.0).count() as f64;
    report.row("reads", READS as f64, READS as f64);
    report.row(
        "times the counter went backwards",
        backwards(&naive),
        backwards(&onephase),
    );
    report.row(
        "largest step back",
        naive.iter().copied().fold(0.0, f64::max),
        onephase.iter().copied().fold(0.0, f64::max),
    );
    report.invariant(
        "a reader never sees the counter go down",
        backwards(&naive) == 0.0,
        backwards(&onephase) == 0.0,
    );
    report.chart_by("step back at each read", "", "a read", naive, onephase);
    report
}

async fn monotonic_run(seed: u64, urls: &str) -> Result<(Vec<f64>, Vec<f64>), Failed> {
    let cluster = connect(urls).await?;
    fresh_table(&cluster.primary).await?;
    delays(&cluster, [600, 0]).await?;
    let outcome = async {
        let (router, _stop) = router(&cluster).await?;
        let (stop_writer, mut stopped) = tokio::sync::watch::channel(false);
        let primary = cluster.primary.clone();
        let writer = tokio::spawn(async move {
            let mut v = 0;
            while !*stopped.borrow_and_update() {
                v += 1;
                write(&primary, v).await?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = stopped.changed() => {}
                }
            }
            Ok::<_, sqlx::Error>(())
        });
        // Let the late replica fall its full delay behind.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let random = Random::seeded(seed);
        let mut naive = Vec::with_capacity(READS);
        let mut last = 0;
        for i in 0..READS {
            let seen = read(&cluster.replicas[(i + (random.next_u64() % 2) as usize) % 2]).await?;
            naive.push((last - seen).max(0) as f64);
            last = last.max(seen);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        let mut session = Session::new();
        let mut onephase = Vec::with_capacity(READS);
        let mut last = 0;
        for _ in 0..READS {
            let route = router.route_monotonic(&mut session).await?;
            let seen = read(&route.pool).await?;
            onephase.push((last - seen).max(0) as f64);
            last = last.max(seen);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        let _ = stop_writer.send(true);
        writer.await??;
        Ok::<_, Failed>((naive, onephase))
    }
    .await;
    delays(&cluster, [0, 0]).await?;
    outcome
}

/// Service B: reads the row from a replica, honouring the request's token when `honour`.
async fn service_b(router: Router, honour: bool) -> Result<SocketAddr, Failed> {
    async fn show(
        State((router, honour)): State<(Router, bool)>,
        Extension(consistency): Extension<Consistency>,
    ) -> Json<Option<i64>> {
        let token = if honour { consistency.token() } else { None };
        let policy = Policy::ReadYourWrites {
            token,
            wait: Duration::from_secs(1),
        };
        let Ok(route) = router.route(policy).await else {
            return Json(None);
        };
        Json(read(&route.pool).await.ok())
    }
    let app = axum::Router::new()
        .route("/row", axum::routing::get(show))
        .layer(ConsistencyLayer)
        .with_state((router, honour));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// Service A: writes on the primary, then asks B for the row, handing on the token.
async fn service_a(router: Router, b: SocketAddr) -> Result<SocketAddr, Failed> {
    async fn place(
        State((router, b)): State<(Router, SocketAddr)>,
        Extension(consistency): Extension<Consistency>,
        Path(v): Path<i64>,
    ) -> Json<Option<i64>> {
        if write(router.primary(), v).await.is_err() {
            return Json(None);
        }
        if let Ok(token) = router.token().await {
            consistency.advance(token);
        }
        let mut call = reqwest::Client::new().get(format!("http://{b}/row"));
        if let Some(value) = consistency.header_value() {
            call = call.header(HEADER, value);
        }
        match call.send().await {
            Ok(answer) => Json(answer.json::<Option<i64>>().await.ok().flatten()),
            Err(_) => Json(None),
        }
    }
    let app = axum::Router::new()
        .route("/row/{v}", axum::routing::post(place))
        .layer(ConsistencyLayer)
        .with_state((router, b));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// Service A writes a row and calls service B over HTTP, which reads it from a replica, 40
/// times; replica 1 applies WAL 300 ms late, replica 2 at once.
///
/// - **Naive**: B reads a replica: it misses A's write whenever the late one answers.
/// - **onephase**: A sends the token of its write in the `consistency-token` header
///   ([`ConsistencyLayer`] on both services); B routes with it.
pub async fn across_services(seed: u64, replicas: Option<&str>) -> Report {
    let mut report = Report::new(
        "token-across-services",
        seed,
        "service A writes on the primary and calls service B over HTTP, 40 times; B reads from replicas, one 300 ms late",
    );
    let Some(urls) = replicas else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    let Some((naive, onephase)) = report.ran_to_end(across_run(seed, urls).await) else {
        return report;
    };
    let missed = |o: &[f64]| o.iter().sum::<f64>();
    report.row("calls", naive.len() as f64, onephase.len() as f64);
    report.row("B missed A's write", missed(&naive), missed(&onephase));
    report.invariant(
        "B sees the write A made before calling it",
        missed(&naive) == 0.0,
        missed(&onephase) == 0.0,
    );
    report.chart_by(
        "B missed A's write, per call",
        "",
        "a call",
        naive,
        onephase,
    );
    report
}

async fn across_run(seed: u64, urls: &str) -> Result<(Vec<f64>, Vec<f64>), Failed> {
    let cluster = connect(urls).await?;
    fresh_table(&cluster.primary).await?;
    delays(&cluster, [DELAY_MS, 0]).await?;
    let outcome = async {
        let (router, _stop) = router(&cluster).await?;
        let naive_a = service_a(router.clone(), service_b(router.clone(), false).await?).await?;
        let a = service_a(router.clone(), service_b(router.clone(), true).await?).await?;
        let client = reqwest::Client::new();
        let random = Random::seeded(seed);
        let mut runs = [Vec::new(), Vec::new()];
        for (run, (service, base)) in runs.iter_mut().zip([(naive_a, 0), (a, 1_000)]) {
            for i in 1..=40i64 {
                let v = base + i;
                let seen: Option<i64> = client
                    .post(format!("http://{service}/row/{v}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                run.push(f64::from(u8::from(seen != Some(v))));
                tokio::time::sleep(Duration::from_millis(random.next_u64() % 20)).await;
            }
        }
        let [naive, onephase] = runs;
        Ok::<_, Failed>((naive, onephase))
    }
    .await;
    delays(&cluster, [0, 0]).await?;
    outcome
}

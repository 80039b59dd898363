//! Fault test of the online move through the server: two PostgreSQL databases are two shards,
//! 1,000,000 rows start on the first, eight writers keep writing (routing with the map the
//! server serves, refetching it when a fence refuses them), and `onephase serve` moving half of
//! the rows to the second shard is killed with SIGKILL during the backfill, the catch-up and
//! the cutover, and restarted each time.
//!
//! Afterwards: the move completed; each shard holds exactly the rows of its key range as the
//! writers left them (none lost, duplicated or left behind); every write acknowledged to a
//! writer is there; the map's versions rose one at a time and no writer ever saw one go back.
//! And the bad requests (an overlapping move, an unknown map, a shard that does not answer)
//! are refused with a clear error and move nothing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use common::{free_port, spawn_server, wait_until_up};
use onephase_core::rand::rngs::StdRng;
use onephase_core::rand::{RngExt, SeedableRng};
use onephase_partition::online::{MoveError, Phase, admit, install_fences, status};
use onephase_partition::{MapSpec, PartitionMap};
use onephase_testkit::TestDb;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const ROWS: i64 = 1_000_000;
const SPLIT: i64 = 500_000;
const WRITERS: i64 = 8;
const TOKEN: &str = "op_partition_crash_test_token";

fn write_config(dir: &Path, a: &str, b: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("onephase.toml");
    let store = dir.join("onephase.db");
    std::fs::write(
        &path,
        format!(
            "store = \"sqlite://{}\"\n\
             [[auth.tokens]]\nname = \"crash-test\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [saga]\nlease_margin_secs = 1\npoll_interval_ms = 20\n\
             [partition.shards]\na = \"{a}\"\nb = \"{b}\"\n\
             down = \"postgres://postgres@127.0.0.1:1/none\"\n",
            store.display(),
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

fn pool(db: &TestDb) -> anyhow::Result<&PgPool> {
    db.store()
        .as_postgres()
        .context("a PostgreSQL test database")
}

/// The server's API, tolerant of the server being down: callers retry.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// The map, retried while the server is down.
    async fn map(&self) -> anyhow::Result<MapSpec> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.get("/v1/partitions/orders").await {
                Ok(map) => return Ok(serde_json::from_value(map)?),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// What writers were told committed, per id: its total, or `None` once deleted.
type Ledger = Arc<Mutex<HashMap<i64, Option<i64>>>>;

/// A writer's task: how many writes it was told committed, and how many a fence refused.
type Writer = tokio::task::JoinHandle<anyhow::Result<(u64, u64)>>;

struct Writers {
    ledger: Ledger,
    /// Per writer, the map versions it used, in order.
    versions: Arc<Mutex<Vec<Vec<u64>>>>,
}

/// Eight writers, each on its own ids (id % 8), across both halves of the key space, routing
/// with the map from the server and presenting its version; half admit through the fence,
/// half rely on the guard trigger alone.
fn spawn_writers(
    api: Api,
    a: PgPool,
    b: PgPool,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Writers, Vec<Writer>) {
    let writers = Writers {
        ledger: Arc::default(),
        versions: Arc::new(Mutex::new(vec![Vec::new(); WRITERS as usize])),
    };
    let handles = (0..WRITERS)
        .map(|w| {
            let (api, a, b, stop) = (api.clone(), a.clone(), b.clone(), stop.clone());
            let (ledger, versions) = (writers.ledger.clone(), writers.versions.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed + w as u64);
                let mut map = PartitionMap::new(api.map().await?)?;
                let mut writes = 0u64;
                let mut refused = 0u64;
                let mut seen = vec![map.spec().version];
                while !stop.load(Ordering::Relaxed) {
                    let id = rng.random_range(0..(ROWS + ROWS / 10) / WRITERS) * WRITERS + w;
                    let route = map.route(&id.to_string());
                    let shard = if route.owner == "a" { &a } else { &b };
                    let mut tx = shard.begin().await?;
                    let admitted = if w % 2 == 0 {
                        match admit(&mut tx, "orders", route.partition, route.version).await {
                            Ok(()) => true,
                            Err(MoveError::Moved { .. }) => false,
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        true
                    };
                    let written = if !admitted {
                        None
                    } else if rng.random_bool(0.1) {
                        match sqlx::query("DELETE FROM orders WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                        {
                            Ok(_) => Some(None),
                            Err(sqlx::Error::Database(e))
                                if e.code().as_deref() == Some("OP001") =>
                            {
                                None
                            }
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        match sqlx::query_scalar::<_, i64>(
                            "INSERT INTO orders VALUES ($1, 1, 'new')
                             ON CONFLICT (id) DO UPDATE SET total = orders.total + 1, note = 'upd'
                             RETURNING total",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        {
                            Ok(total) => Some(Some(total)),
                            Err(sqlx::Error::Database(e))
                                if e.code().as_deref() == Some("OP001") =>
                            {
                                None
                            }
                            Err(e) => return Err(e.into()),
                        }
                    };
                    match written {
                        Some(state) => {
                            tx.commit().await?;
                            ledger.lock().expect("ledger").insert(id, state);
                            writes += 1;
                        }
                        None => {
                            // Refused by a fence: the map moved on; fetch it again.
                            drop(tx);
                            refused += 1;
                            let next = api.map().await?;
                            if next.version != map.spec().version {
                                seen.push(next.version);
                            }
                            map = PartitionMap::new(next)?;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                versions.lock().expect("versions")[w as usize] = seen;
                Ok((writes, refused))
            })
        })
        .collect();
    (writers, handles)
}

/// Polls the move's phase on the source until `kill_now` says so, then SIGKILLs `server`;
/// returns the phase it was killed in.
async fn kill_when(
    server: &mut tokio::process::Child,
    source: &PgPool,
    id: Uuid,
    mut kill_now: impl FnMut(&onephase_partition::online::MoveStatus) -> bool,
) -> anyhow::Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(s) = status(source, id).await {
            if kill_now(&s) {
                server.start_kill()?;
                server.wait().await?;
                return Ok(s.phase);
            }
            if matches!(s.phase, Phase::Done | Phase::RolledBack) {
                bail!("the move ended ({:?}) before the kill", s.phase);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the move did not get there in 300 s"
        );
        ensure!(server.try_wait()?.is_none(), "the server exited by itself");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_survives_sigkill_in_every_phase_with_eight_writers() -> anyhow::Result<()> {
    let (Some(a), Some(b)) = (TestDb::postgres().await, TestDb::postgres().await) else {
        return Ok(());
    };
    let (pa, pb) = (pool(&a)?.clone(), pool(&b)?.clone());
    for p in [&pa, &pb] {
        sqlx::query(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL, note text)",
        )
        .execute(p)
        .await?;
        install_fences(p).await?;
    }
    let loaded = Instant::now();
    sqlx::query("INSERT INTO orders SELECT i, i, NULL FROM generate_series(0, $1 - 1) i")
        .bind(ROWS)
        .execute(&pa)
        .await?;
    eprintln!("{ROWS} rows loaded in {:?}", loaded.elapsed());

    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), a.url(), b.url())?;
    let port = free_port()?;
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
    };
    let mut server = spawn_server(&config, port, "warn")?;
    wait_until_up(&api.http, &api.base).await?;
    let (status_code, map) = api
        .call(
            reqwest::Method::PUT,
            "/v1/partitions/orders",
            Some(json!({ "version": 1, "scheme": { "kind": "range", "splits": [SPLIT.to_string()] }, "owners": ["a", "a"] })),
        )
        .await?;
    ensure!(status_code == 200, "{status_code} {map}");

    bad_requests_move_nothing(&api, &pa, &pb).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let seed = 0x5EED_2026;
    let (writers, handles) = spawn_writers(api.clone(), pa.clone(), pb.clone(), stop.clone(), seed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, started) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/orders/moves",
            Some(json!({ "partition": 1, "to": "b", "table": "orders", "key": "id", "chunk_rows": 5000 })),
        )
        .await?;
    ensure!(code == 202, "{code} {started}");
    let id: Uuid = started["spec"]["id"].as_str().context("move id")?.parse()?;

    // The overlapping move is refused while this one runs, and so is a move of the map's
    // other partition (a second switch would roll this one back).
    for partition in [1, 0] {
        let (code, problem) = api
            .call(
                reqwest::Method::POST,
                "/v1/partitions/orders/moves",
                Some(json!({ "partition": partition, "to": "b", "table": "orders", "key": "id" })),
            )
            .await?;
        ensure!(code == 409, "a second move: {code} {problem}");
        ensure!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("has a move in progress (move {id}, partition 1)")),
            "{problem}"
        );
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed = Vec::new();
    // During the backfill, somewhere between a tenth and two thirds of the way.
    let fraction = rng.random_range(0.1..0.66);
    killed.push(
        kill_when(&mut server, &pa, id, |s| {
            s.phase == Phase::Backfilling
                && s.copied_rows as f64 >= fraction * s.total_rows as f64
                && s.total_rows > 0
        })
        .await?,
    );
    server = spawn_server(&config, port, "warn")?;
    // During the catch-up and verification.
    let settle = Duration::from_millis(rng.random_range(0..400));
    let mut since: Option<Instant> = None;
    killed.push(
        kill_when(&mut server, &pa, id, |s| {
            if s.phase != Phase::CatchingUp {
                return false;
            }
            since.get_or_insert_with(Instant::now).elapsed() >= settle
        })
        .await?,
    );
    server = spawn_server(&config, port, "warn")?;
    // At the cutover: fenced, or just past it (switched, cleaning up).
    killed.push(
        kill_when(&mut server, &pa, id, |s| {
            matches!(s.phase, Phase::Fenced | Phase::Switched)
        })
        .await?,
    );
    eprintln!("killed in phases {killed:?}");
    server = spawn_server(&config, port, "warn")?;
    wait_until_up(&api.http, &api.base).await?;

    let deadline = Instant::now() + Duration::from_secs(300);
    let view = loop {
        let view = api
            .get(&format!("/v1/partitions/orders/moves/{id}"))
            .await?;
        if view["ended"] == json!(true) {
            break view;
        }
        ensure!(
            Instant::now() < deadline,
            "the move did not end in 300 s: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut writes, mut refused) = (0, 0);
    for handle in handles {
        let (w, r) = handle.await??;
        writes += w;
        refused += r;
    }
    eprintln!(
        "move ended: {}; {writes} writes acknowledged, {refused} refused by a fence and retried",
        serde_json::to_string(&view["status"])?
    );
    ensure!(view["status"]["phase"] == json!("done"), "{view}");

    // The map: version 2 with the partition on b; every version one more than the last.
    let map: MapSpec = api.map().await?;
    ensure!(map.owners == ["a", "b"], "{map:?}");
    let history = api.get("/v1/partitions/orders/history").await?;
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .context("versions")?
        .iter()
        .filter_map(|v| v["spec"]["version"].as_u64())
        .collect();
    ensure!(
        versions.iter().copied().eq(1..=map.version),
        "versions not one at a time: {versions:?}"
    );
    for (w, seen) in writers
        .versions
        .lock()
        .expect("versions")
        .iter()
        .enumerate()
    {
        ensure!(
            seen.windows(2).all(|p| p[0] < p[1]),
            "writer {w} saw versions go back: {seen:?}"
        );
    }

    // The contents: the initial rows as the writers left them, each on its range's shard.
    let mut expected: HashMap<i64, i64> = (0..ROWS).map(|i| (i, i)).collect();
    for (id, state) in writers.ledger.lock().expect("ledger").iter() {
        match state {
            Some(total) => expected.insert(*id, *total),
            None => expected.remove(id),
        };
    }
    let rows = |p: PgPool| async move {
        sqlx::query_as::<_, (i64, i64)>("SELECT id, total FROM orders")
            .fetch_all(&p)
            .await
    };
    let (in_a, in_b) = (rows(pa.clone()).await?, rows(pb.clone()).await?);
    let mut problems = Vec::new();
    for (shard, found, wants_low) in [("a", &in_a, true), ("b", &in_b, false)] {
        let mut seen = 0usize;
        for (id, total) in found {
            if (*id < SPLIT) != wants_low {
                problems.push(format!("{id} left behind in {shard}"));
            } else if expected.get(id) != Some(total) {
                problems.push(format!(
                    "{id} in {shard} holds {total}, the writers left {:?}",
                    expected.get(id)
                ));
            } else {
                seen += 1;
            }
        }
        let wanted = expected
            .keys()
            .filter(|id| (**id < SPLIT) == wants_low)
            .count();
        if seen != wanted {
            problems.push(format!(
                "{shard} holds {seen} of the {wanted} rows it should"
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    eprintln!(
        "a holds {}, b holds {}: exactly what {WRITERS} writers left",
        in_a.len(),
        in_b.len()
    );

    // The source keeps refusing writes to the range that left.
    let refused = sqlx::query("INSERT INTO orders VALUES ($1, 1, 'stale')")
        .bind(SPLIT + 1)
        .execute(&pa)
        .await;
    ensure!(
        matches!(&refused, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("OP001")),
        "a stale write to the source was not refused: {refused:?}"
    );
    server.start_kill()?;
    Ok(())
}

/// An unknown map, a shard that does not answer, a partition that does not exist: each
/// refused with a clear error, and nothing recorded or copied.
async fn bad_requests_move_nothing(api: &Api, a: &PgPool, b: &PgPool) -> anyhow::Result<()> {
    let moves =
        |map: &'static str| json!({ "partition": 1, "to": map, "table": "orders", "key": "id" });
    let (code, problem) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/nothing/moves",
            Some(moves("b")),
        )
        .await?;
    ensure!(code == 404, "unknown map: {code} {problem}");
    let (code, problem) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/orders/moves",
            Some(moves("down")),
        )
        .await?;
    ensure!(code == 503, "a shard down: {code} {problem}");
    ensure!(
        problem["detail"].as_str().unwrap_or("").contains("down"),
        "the problem does not name the shard: {problem}"
    );
    let (code, problem) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/orders/moves",
            Some(json!({ "partition": 7, "to": "b", "table": "orders", "key": "id" })),
        )
        .await?;
    ensure!(code == 400, "no such partition: {code} {problem}");
    let (code, problem) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/orders/moves",
            Some(json!({ "partition": 1, "to": "b", "table": "orders; drop table orders", "key": "id" })),
        )
        .await?;
    ensure!(
        code == 400,
        "a table name that is not one: {code} {problem}"
    );
    let (code, problem) = api
        .call(
            reqwest::Method::POST,
            "/v1/partitions/orders/moves",
            Some(json!({ "partition": "x" })),
        )
        .await?;
    ensure!((400..500).contains(&code), "malformed: {code} {problem}");
    let listed = api.get("/v1/partitions/orders/moves").await?;
    ensure!(
        listed["moves"] == json!([]),
        "a refused move was recorded: {listed}"
    );
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(b)
        .await?;
    ensure!(in_b == 0, "{in_b} rows reached b");
    let logged: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('onephase_partition_moves')::text")
            .fetch_one(a)
            .await?;
    ensure!(logged.is_none(), "a refused move prepared the source");
    Ok(())
}

/// `onephase partition ...` as an operator types it: the CLI against a running server.
async fn cli(port: u16, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_onephase"))
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            TOKEN,
        ])
        .args(args)
        .env_remove("ONEPHASE_CONFIG")
        .output()
        .await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_a_map_moves_a_partition_and_shows_it() -> anyhow::Result<()> {
    let (Some(a), Some(b)) = (TestDb::postgres().await, TestDb::postgres().await) else {
        return Ok(());
    };
    let (pa, pb) = (pool(&a)?.clone(), pool(&b)?.clone());
    for p in [&pa, &pb] {
        sqlx::query(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL, note text)",
        )
        .execute(p)
        .await?;
    }
    sqlx::query("INSERT INTO orders SELECT i, i, NULL FROM generate_series(0, 19999) i")
        .execute(&pa)
        .await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), a.url(), b.url())?;
    let port = free_port()?;
    let http = reqwest::Client::new();
    let mut server = spawn_server(&config, port, "warn")?;
    wait_until_up(&http, &format!("http://127.0.0.1:{port}")).await?;

    let scheme = r#"{"kind":"range","splits":["10000"]}"#;
    let (code, out, err) = cli(
        port,
        &[
            "partition",
            "map",
            "set",
            "orders",
            "--scheme",
            scheme,
            "--owners",
            "a,a",
        ],
    )
    .await?;
    ensure!(code == 0, "map set: {code} {out} {err}");
    ensure!(
        out.contains("orders version 1") && out.contains("1: [10000, highest) on a"),
        "{out}"
    );
    let (code, out, _) = cli(port, &["partition", "map"]).await?;
    ensure!(
        code == 0 && out.contains("orders") && out.contains("shards: a, b, down"),
        "{out}"
    );
    let (code, out, _) = cli(port, &["partition", "map", "route", "orders", "12345"]).await?;
    ensure!(
        code == 0 && out.contains("partition 1 on a (map version 1)"),
        "{out}"
    );

    // Bad input: a scheme that is not JSON (usage, 2), an unknown map, a shard that is down.
    let (code, _, err) = cli(
        port,
        &[
            "partition",
            "map",
            "set",
            "orders",
            "--scheme",
            "range",
            "--owners",
            "a",
        ],
    )
    .await?;
    ensure!(code == 2 && err.contains("not JSON"), "{code} {err}");
    let (code, _, err) = cli(
        port,
        &[
            "partition",
            "move",
            "nothing",
            "--partition",
            "1",
            "--to",
            "b",
            "--table",
            "orders",
            "--key",
            "id",
        ],
    )
    .await?;
    ensure!(code != 0 && err.contains("nothing"), "{code} {err}");
    let (code, _, err) = cli(
        port,
        &[
            "partition",
            "move",
            "orders",
            "--partition",
            "1",
            "--to",
            "down",
            "--table",
            "orders",
            "--key",
            "id",
        ],
    )
    .await?;
    ensure!(
        code != 0 && err.contains("\"down\" does not answer"),
        "{code} {err}"
    );

    let (code, out, err) = cli(
        port,
        &[
            "partition",
            "move",
            "orders",
            "--partition",
            "1",
            "--to",
            "b",
            "--table",
            "orders",
            "--key",
            "id",
            "--chunk-rows",
            "2000",
            "--wait",
        ],
    )
    .await?;
    ensure!(code == 0, "move --wait: {code} {out} {err}");
    ensure!(
        out.contains("phase done (ended)") && out.contains("copied 10000 of 10000 rows"),
        "{out}"
    );
    let (code, out, _) = cli(port, &["partition", "status"]).await?;
    ensure!(
        code == 0 && out.contains("done") && out.contains("orders"),
        "{out}"
    );
    let (code, out, _) = cli(port, &["--json", "partition", "map", "orders"]).await?;
    let map: Value = serde_json::from_str(&out)?;
    ensure!(
        code == 0 && map["version"] == json!(2) && map["owners"] == json!(["a", "b"]),
        "{out}"
    );
    let (code, out, _) = cli(port, &["partition", "map", "history", "orders"]).await?;
    ensure!(code == 0 && out.lines().count() == 3, "{out}");
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pb)
        .await?;
    let in_a: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pa)
        .await?;
    ensure!((in_a, in_b) == (10_000, 10_000), "a {in_a}, b {in_b}");
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("onephase_partition_moves_started_total{map=\"orders\"} 1"),
        "{metrics}"
    );
    server.start_kill()?;
    Ok(())
}

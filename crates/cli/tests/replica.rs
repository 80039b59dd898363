//! `onephase serve` watching a real PostgreSQL primary and replica: `/v1/replicas`, the wait
//! API with good and bad tokens, the lag gauges on `/metrics` under an injected apply delay,
//! and `onephase replica status|wait`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use onephase_testkit::{Engine, engine_url};
use serde_json::{Value, json};
use sqlx::PgPool;

const BIN: &str = env!("CARGO_BIN_EXE_onephase");

async fn sql(pool: &PgPool, statement: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(pool)
        .await?;
    Ok(())
}

async fn reset(replica: &PgPool) -> anyhow::Result<()> {
    sql(replica, "ALTER SYSTEM RESET recovery_min_apply_delay").await?;
    sql(replica, "SELECT pg_reload_conf()").await?;
    sql(replica, "SELECT pg_wal_replay_resume()").await
}

/// The value of the series `name{labels}` on /metrics.
fn series(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn cli(server: &Serve, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new(BIN)
        .args(args)
        .env("ONEPHASE_SERVER", &server.base)
        .env(
            "ONEPHASE_TOKEN",
            server.token.as_deref().unwrap_or_default(),
        )
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_watches_a_replica_and_answers_waits() -> anyhow::Result<()> {
    let Some(urls) = engine_url(Engine::PostgresReplicas) else {
        return Ok(());
    };
    let urls: Vec<&str> = urls.split(',').collect();
    let (primary, replica) = (
        PgPool::connect(urls[0]).await?,
        PgPool::connect(urls[1]).await?,
    );
    reset(&replica).await?;
    let dir = tempfile::tempdir()?;
    let heartbeat = 0.2;
    let server = serve_with(
        dir.path(),
        &format!(
            "[[replica]]\ncluster = \"test\"\nprimary = \"{}\"\nreplicas = {{ r1 = \"{}\" }}\n\
             poll_interval_ms = 50\nheartbeat_interval_ms = 200\nmax_lag_ms = 5000\n",
            urls[0], urls[1]
        ),
    )
    .await?;
    let api = Api::of(&server)?;
    let r1 = |status: &Value| status["clusters"][0]["replicas"][0].clone();
    eventually(Duration::from_secs(15), "r1 healthy", || async {
        Ok(r1(&api.get("/v1/replicas").await?)["state"] == "healthy")
    })
    .await?;

    // The lag gauge follows an injected apply delay within one heartbeat interval.
    sql(
        &replica,
        "ALTER SYSTEM SET recovery_min_apply_delay = '1500ms'",
    )
    .await?;
    sql(&replica, "SELECT pg_reload_conf()").await?;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let labels = "cluster=\"test\",replica=\"r1\"";
    for _ in 0..5 {
        let metrics = api.text("/metrics").await?;
        let lag = series(&metrics, "onephase_replica_lag_seconds", labels)
            .context("onephase_replica_lag_seconds for r1")?;
        ensure!(
            (lag - 1.5).abs() <= heartbeat,
            "lag gauge {lag} under a 1.5 s delay"
        );
        ensure!(series(&metrics, "onephase_replica_in_rotation", labels) == Some(1.0));
        ensure!(series(&metrics, "onephase_replica_lag_bytes", labels).is_some());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // A token at the primary's position: the replica reaches it about 1.5 s later.
    sql(
        &primary,
        "CREATE TABLE IF NOT EXISTS cli_replica_probe (x int)",
    )
    .await?;
    sql(&primary, "INSERT INTO cli_replica_probe VALUES (1)").await?;
    let token: String = sqlx::query_scalar(
        "SELECT 'op1.' || lpad(to_hex((SELECT system_identifier FROM pg_control_system())), 16, '0') \
         || '.' || substr(pg_walfile_name(lsn), 1, 8) \
         || '.' || lpad(to_hex((lsn - '0/0'::pg_lsn)::bigint), 16, '0') \
         FROM pg_current_wal_insert_lsn() AS lsn",
    )
    .fetch_one(&primary)
    .await?;
    let started = Instant::now();
    let (status, body) = api
        .post(
            "/v1/replicas/wait",
            json!({"token": token, "timeout_ms": 10_000}),
        )
        .await?;
    ensure!(
        status == 200 && body["replicas"] == json!(["r1"]),
        "{status} {body}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(1_000),
        "the delayed replica answered at once"
    );

    // Bad input: a clear 4xx at once, never a hang.
    let system = &token[4..20];
    let foreign_system = if system.starts_with('0') { "1" } else { "0" };
    let foreign = format!("op1.{foreign_system}{}", &token[5..]);
    let ahead = format!("{}ffff{}", &token[..30], &token[34..]);
    for (body, want, says) in [
        (json!({"token": "op1.nope"}), 400, "not a consistency token"),
        (json!({"token": foreign}), 400, "another PostgreSQL cluster"),
        (json!({"token": ahead}), 400, "ahead of the primary"),
        (
            json!({"token": token, "timeout_ms": 40_000}),
            400,
            "at most 30000",
        ),
        (
            json!({"token": token, "cluster": "nope"}),
            404,
            "no replica cluster named",
        ),
        (json!({"token": token, "extra": 1}), 422, "unknown field"),
        (json!({"timeout_ms": 5}), 422, "token"),
    ] {
        let started = Instant::now();
        let (status, answer) = api.post("/v1/replicas/wait", body.clone()).await?;
        ensure!(status == want, "{body}: {status} {answer}");
        ensure!(answer.to_string().contains(says), "{body}: {answer}");
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "{body} took {:?}",
            started.elapsed()
        );
    }

    // CLI: status, and a wait that succeeds.
    let out = cli(&server, &["replica", "status"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("r1") && text.contains("healthy"),
        "{text}"
    );
    let out = cli(&server, &["replica", "wait", &token, "--timeout", "5s"]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("replayed by r1"));

    // Replay paused: the replica leaves rotation, a wait for a newer position answers 504
    // within its timeout, and the CLI exits non-zero saying what to do.
    sql(&replica, "SELECT pg_wal_replay_pause()").await?;
    eventually(Duration::from_secs(10), "r1 paused", || async {
        Ok(r1(&api.get("/v1/replicas").await?)["state"] == "paused")
    })
    .await?;
    sql(&primary, "INSERT INTO cli_replica_probe VALUES (2)").await?;
    let newer = api.get("/v1/replicas").await?["clusters"][0]["token"]
        .as_str()
        .context("status token")?
        .to_owned();
    let started = Instant::now();
    let (status, answer) = api
        .post(
            "/v1/replicas/wait",
            json!({"token": newer, "timeout_ms": 300}),
        )
        .await?;
    ensure!(status == 504, "{status} {answer}");
    // The whole timeout, though no replica is in rotation: one may come back within it.
    ensure!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
    ensure!(
        answer["detail"]
            .as_str()
            .is_some_and(|d| d.contains("r1 paused")),
        "{answer}"
    );
    let out = cli(&server, &["replica", "wait", &newer, "--timeout", "300ms"]).await?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("read from the primary"));
    let metrics = api.text("/metrics").await?;
    ensure!(series(&metrics, "onephase_replica_in_rotation", labels) == Some(0.0));
    ensure!(metrics.contains("onephase_replica_wait_seconds_count{cluster=\"test\"}"));
    ensure!(series(&metrics, "onephase_replica_primary_up", "cluster=\"test\"") == Some(1.0));
    let page = api.text("/").await?;
    ensure!(
        page.contains("Replicas"),
        "the dashboard has no replica panel"
    );

    // Resumed: a wait that starts while the replica is still out of rotation (it rejoins after
    // three calm polls) answers once it is back, within its timeout.
    sql(&replica, "SELECT pg_wal_replay_resume()").await?;
    let (status, answer) = api
        .post(
            "/v1/replicas/wait",
            json!({"token": newer, "timeout_ms": 10_000}),
        )
        .await?;
    ensure!(
        status == 200 && answer["replicas"] == json!(["r1"]),
        "{status} {answer}"
    );

    reset(&replica).await?;
    server.terminate().await?;
    Ok(())
}

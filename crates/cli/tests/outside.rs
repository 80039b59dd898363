//! The release binary driven as a service in another language drives it: `onephase serve` as a
//! child process, spoken to over plain HTTP (and raw TCP where the bytes matter), its output and
//! logs read as text. Each test is a defect found this way, kept fixed.

mod common;
#[path = "../../webhook/tests/common/mod.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::{Api, eventually, serve, serve_with};
use onephase_testkit::{Engine, FaultProxy, engine_url};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_onephase");

async fn relay(api: &Api, name: &str) -> anyhow::Result<Value> {
    let relays = api.get("/v1/relays").await?;
    relays
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .cloned()
        .with_context(|| format!("relay {name} in {relays}"))
}

/// Inserts an outbox row into the SQLite database at `path` as an application would.
async fn insert_outbox_row(path: &Path, topic: &str) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload) VALUES ($1, $2, 'k', $3)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(topic)
        .bind(b"{}".to_vec())
        .execute(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_policy_defined_over_http_keeps_its_counts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let api = Api::of(&server)?;
    let define = |name: String| {
        let api = &api;
        async move {
            let (status, body) = api
                .send(
                    reqwest::Method::PUT,
                    &format!("/v1/limits/{name}"),
                    Some(json!({"algorithm": "fixed_window", "limit": 5, "period_ms": 60_000})),
                )
                .await?;
            ensure!(status == 201, "{status} {body}");
            anyhow::Ok(())
        }
    };
    let admitted = |name: String, n: usize| {
        let api = &api;
        async move {
            let path = format!("/v1/limits/{name}/check");
            let checks = (0..n).map(|_| api.post(&path, json!({"key": "k"})));
            let mut allowed = 0;
            for result in futures::future::join_all(checks).await {
                let (status, body) = result?;
                ensure!(status == 200, "{status} {body}");
                allowed += usize::from(body["allowed"] == true);
            }
            anyhow::Ok(allowed)
        }
    };
    define("p".into()).await?;
    let mut first = 0;
    for _ in 0..7 {
        first += admitted("p".into(), 1).await?;
    }
    ensure!(first == 5, "{first} of 7 admitted on a limit of 5");
    // Past the second after which the server reads the policy back from its store.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut later = 0;
    for _ in 0..7 {
        later += admitted("p".into(), 1).await?;
    }
    ensure!(
        later == 0,
        "{later} more admitted after the policy was read back"
    );

    // Sixteen simultaneous first checks, right after the definition and after the re-read.
    for trial in 0..12 {
        let name = format!("burst{trial}");
        define(name.clone()).await?;
        if trial % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let allowed = admitted(name, 16).await?;
        ensure!(
            allowed == 5,
            "trial {trial}: {allowed} of 16 admitted on a limit of 5"
        );
    }
    server.terminate().await?;
    Ok(())
}

/// The metric names a capability page documents in its `## Metrics` table.
fn documented_metrics() -> BTreeSet<String> {
    let pages = [
        include_str!("../../../docs/server.md"),
        include_str!("../../../docs/outbox.md"),
        include_str!("../../../docs/saga.md"),
        include_str!("../../../docs/webhook.md"),
        include_str!("../../../docs/lease.md"),
        include_str!("../../../docs/limit.md"),
        include_str!("../../../docs/events.md"),
        include_str!("../../../docs/replica.md"),
        include_str!("../../../docs/kafka.md"),
        include_str!("../../../docs/partition.md"),
    ];
    let mut names = BTreeSet::new();
    for page in pages {
        let Some(start) = page.find("## Metrics") else {
            continue;
        };
        let section = &page[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        for line in section[..end].lines() {
            if let Some(rest) = line.strip_prefix("| `onephase_")
                && let Some(name) = rest.split('`').next()
            {
                names.insert(format!("onephase_{name}"));
            }
        }
    }
    names
}

/// Drives every capability of a running server, then reads `/metrics`: every metric the docs
/// list must be there. Also checks that a webhook's and a saga's numbers travel exactly.
#[tokio::test]
async fn every_documented_metric_is_on_the_servers_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let app_db = dir.path().join("app.db");
    // The replica metrics need a cluster to watch; without one they are left out of the check.
    let replicas = engine_url(Engine::PostgresReplicas);
    let watched = replicas.as_deref().map_or(String::new(), |urls| {
        let urls: Vec<&str> = urls.split(',').collect();
        format!(
            "[[replica]]\ncluster = \"main\"\nprimary = \"{}\"\nreplicas = {{ r1 = \"{}\" }}\n\
             poll_interval_ms = 100\nheartbeat = false\n",
            urls[0], urls[1]
        )
    });
    // The Kafka group gauges need a watch (and a binary built with Kafka); the partition
    // gauges need a group with partitions, which crates/kafka/tests/doctor.rs checks.
    let kafka = engine_url(Engine::Kafka).filter(|_| cfg!(feature = "kafka"));
    let kafka_watch = kafka.as_deref().map_or(String::new(), |brokers| {
        format!(
            "[[kafka.watch]]\nbrokers = \"{brokers}\"\ngroups = [\"outside-check\"]\ninterval_ms = 200\n"
        )
    });
    let server = serve_with(
        dir.path(),
        &format!(
            "[[outbox.relay]]\nname = \"app\"\nsource = \"sqlite://{}\"\nsink = \"log\"\n\
             [webhook]\nallow_networks = [\"127.0.0.0/8\"]\nschedule_secs = [0, 1]\npoll_interval_ms = 20\n\
             [saga]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n{watched}{kafka_watch}",
            app_db.display()
        ),
    )
    .await?;
    let api = Api::of(&server)?;
    let rx = receiver::TestReceiver::start().await;

    // Outbox: a row written by the application is relayed.
    eventually(Duration::from_secs(20), "the relay runs", || async {
        Ok(relay(&api, "app").await?["state"] == "running")
    })
    .await?;
    insert_outbox_row(&app_db, "orders.created").await?;
    eventually(Duration::from_secs(20), "the row is published", || async {
        Ok(relay(&api, "app").await?["published_total"].as_u64() >= Some(1))
    })
    .await?;

    // Webhook: a payload's numbers arrive with every digit.
    let (status, endpoint) = api
        .post("/v1/webhooks/endpoints", json!({"url": rx.url("hook")}))
        .await?;
    ensure!(status == 201, "{status} {endpoint}");
    let response = api
        .http
        .post(format!("{}/v1/webhooks/messages", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(r#"{"event_type": "big.numbers", "payload": {"big": 123456789012345678901234567890, "neg": -9223372036854775809, "f": 1.50}}"#)
        .send()
        .await?;
    ensure!(response.status() == 201, "{}", response.text().await?);
    eventually(Duration::from_secs(20), "the webhook arrives", || async {
        Ok(!rx.arrivals_at("hook").is_empty())
    })
    .await?;
    let body = String::from_utf8(rx.arrivals_at("hook")[0].body.to_vec())?;
    ensure!(
        body.contains(
            r#""data":{"big":123456789012345678901234567890,"neg":-9223372036854775809,"f":1.50}"#
        ),
        "the webhook body: {body}"
    );

    // Saga: an input number reaches the participant with every digit.
    let definition = json!({"name": "ping", "version": 1, "steps": [
        {"name": "call", "kind": "pivot",
         "action": {"method": "POST", "url": rx.url("saga"), "body": {"n": "{{input.n}}"}}}]});
    let (status, body) = api.post("/v1/sagas", definition).await?;
    ensure!(status == 201, "{status} {body}");
    let response = api
        .http
        .post(format!("{}/v1/sagas/ping/runs", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(r#"{"input": {"n": 98765432109876543210987654321}}"#)
        .send()
        .await?;
    ensure!(response.status() == 201, "{}", response.text().await?);
    let run: Value = response.json().await?;
    let run_path = format!("/v1/saga-runs/{}", run["id"].as_str().context("run id")?);
    eventually(Duration::from_secs(20), "the saga completes", || async {
        Ok(api.get(&run_path).await?["state"] == "completed")
    })
    .await?;
    let body = String::from_utf8(rx.arrivals_at("saga")[0].body.to_vec())?;
    ensure!(
        body == r#"{"n":98765432109876543210987654321}"#,
        "the step's body: {body}"
    );

    // Lease and limit.
    let (status, grant) = api
        .post(
            "/v1/leases/job/acquire",
            json!({"holder": "a", "ttl_ms": 10_000}),
        )
        .await?;
    ensure!(status == 200, "{status} {grant}");
    let token = grant["token"].clone();
    let (status, _) = api
        .post(
            "/v1/leases/job/renew",
            json!({"token": token, "ttl_ms": 10_000}),
        )
        .await?;
    ensure!(status == 200);
    let (status, _) = api
        .post("/v1/leases/job/release", json!({"token": token}))
        .await?;
    ensure!(status == 204);
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            "/v1/limits/api",
            Some(json!({"algorithm": "gcra", "limit": 10, "period_ms": 1000})),
        )
        .await?;
    ensure!(status == 201);
    let (status, _) = api
        .post("/v1/limits/api/check", json!({"key": "k"}))
        .await?;
    ensure!(status == 200);
    // Events: a projection that applies one event and parks on the next.
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/events/projections/customers",
            Some(json!({"key": {"field": "customer"}, "handlers": {"OrderPlaced": "count"}})),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    let (status, body) = api
        .post(
            "/v1/events/streams/order-1",
            json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1"}},
                              {"type": "OrderPlaced", "data": {"total": 1}}]}),
        )
        .await?;
    ensure!(status == 201, "{status} {body}");
    eventually(Duration::from_secs(20), "the projection parks", || async {
        Ok(api.get("/v1/events/projections/customers").await?[0]["parked_position"] == 2)
    })
    .await?;
    // Partitioning: a map (its version gauge is set every 2 s).
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            "/v1/partitions/orders",
            Some(json!({"version": 1, "scheme": {"kind": "jump", "partitions": 4}, "owners": ["a", "b", "c", "d"]})),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    // The gauges are refreshed every 5 s.
    eventually(Duration::from_secs(20), "the lag gauges", || async {
        Ok(api
            .text("/metrics")
            .await?
            .contains("onephase_events_projection_lag_seconds{"))
    })
    .await?;
    if replicas.is_some() {
        // A wait records its time whatever the outcome (another suite may pause the replica).
        eventually(
            Duration::from_secs(20),
            "the replica cluster is polled",
            || async { Ok(api.get("/v1/replicas").await?["clusters"][0]["token"].is_string()) },
        )
        .await?;
        let token = api.get("/v1/replicas").await?["clusters"][0]["token"].clone();
        let (status, body) = api
            .post(
                "/v1/replicas/wait",
                json!({"token": token, "timeout_ms": 500}),
            )
            .await?;
        ensure!(status == 200 || status == 504, "{status} {body}");
    }
    if kafka.is_some() {
        eventually(
            Duration::from_secs(20),
            "the Kafka watch observes",
            || async {
                Ok(
                    api.get("/v1/kafka/groups").await?["watches"][0]["groups"][0]["group"]
                        == "outside-check",
                )
            },
        )
        .await?;
    }
    api.text("/readyz").await?;
    api.text("/").await?;

    let text = api.text("/metrics").await?;
    let present: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<String> = documented_metrics()
        .into_iter()
        .filter(|name| replicas.is_some() || !name.starts_with("onephase_replica_"))
        .filter(|name| {
            !name.starts_with("onephase_kafka_partition_")
                && (kafka.is_some() || !name.starts_with("onephase_kafka_"))
        })
        .filter(|name| {
            !["", "_bucket", "_count"]
                .iter()
                .any(|suffix| present.contains(format!("{name}{suffix}").as_str()))
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "documented but not on /metrics: {missing:?}"
    );
    ensure!(
        documented_metrics().len() > 25,
        "{:?}",
        documented_metrics()
    );
    ensure!(
        text.contains("# HELP onephase_outbox_published_total"),
        "metrics carry their help"
    );
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn saga_participants_are_where_the_definition_says_and_the_server_allows()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rx = receiver::TestReceiver::start().await;
    let call = |url: String| {
        json!({"name": "guarded", "version": 1, "steps": [
            {"name": "call", "kind": "pivot", "action": {"method": "POST", "url": url}}]})
    };

    // A permissive server registers a definition that calls loopback.
    let open = serve_with(
        dir.path(),
        "[saga]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n",
    )
    .await?;
    let api = Api::of(&open)?;
    // The host can never come from a run's input, which a client token chooses.
    let (status, body) = api
        .post("/v1/sagas", call("http://{{input.host}}:17879/x".into()))
        .await?;
    ensure!(
        status == 400
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("placeholders may only follow the host")),
        "{status} {body}"
    );
    let (status, body) = api.post("/v1/sagas", call(rx.url("saga"))).await?;
    ensure!(status == 201, "{status} {body}");
    let token = api.token.clone();
    open.terminate().await?;

    // A server on the same store without that network refuses to register such a call, and
    // does not make the stored one either.
    let strict = serve_with(dir.path(), "[saga]\npoll_interval_ms = 20\n").await?;
    let api = Api {
        http: reqwest::Client::new(),
        base: strict.base.clone(),
        token,
    };
    let mut second = call(rx.url("other"));
    second["version"] = json!(2);
    let (status, body) = api.post("/v1/sagas", second).await?;
    ensure!(
        status == 422 && body["type"] == "urn:onephase:problem:destination-refused",
        "{status} {body}"
    );
    let (status, run) = api
        .post("/v1/sagas/guarded/runs", json!({"input": {}, "version": 1}))
        .await?;
    ensure!(status == 201, "{status} {run}");
    let run_path = format!("/v1/saga-runs/{}", run["id"].as_str().context("run id")?);
    eventually(Duration::from_secs(20), "the run ends", || async {
        Ok(api.get(&run_path).await?["state"] == "compensated")
    })
    .await?;
    let detail = api.get(&run_path).await?;
    ensure!(
        detail["error"]
            .as_str()
            .is_some_and(|e| e.contains("internal address")),
        "{detail}"
    );
    ensure!(rx.arrivals().is_empty(), "a refused call was sent");
    strict.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn credentials_in_sink_urls_are_never_shown() -> anyhow::Result<()> {
    let Some(amqp) = engine_url(Engine::RabbitMq) else {
        return Ok(());
    };
    let password = amqp
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .context("the AMQP URL carries a password")?;
    let dir = tempfile::tempdir()?;
    let server = serve_with(
        dir.path(),
        &format!("[[outbox.relay]]\nname = \"rabbit\"\nsink = \"{amqp}\"\n"),
    )
    .await?;
    let api = Api::of(&server)?;
    let secret = format!(":{password}@");
    let listed = relay(&api, "rabbit").await?;
    let sink = listed["sink"].as_str().context("sink")?;
    ensure!(sink.contains(":***@") && !sink.contains(&secret), "{sink}");
    for page in ["/", "/dashboard/panels"] {
        let html = api.text(page).await?;
        ensure!(html.contains("rabbit"), "{page} shows the relay");
        ensure!(!html.contains(&secret), "{page} shows the password");
    }
    let status = Command::new(BIN)
        .args([
            "outbox", "status", "--server", &api.base, "--token", &api.token,
        ])
        .output()
        .await?;
    let out = String::from_utf8_lossy(&status.stdout);
    ensure!(status.status.success() && out.contains(":***@"), "{out}");
    ensure!(!out.contains(&secret), "{out}");
    ensure!(
        !server.log_text().contains(&secret),
        "the log shows the password"
    );
    server.terminate().await?;
    Ok(())
}

/// A relay whose broker is down when the server starts: the server serves everything else,
/// says what is unavailable (readiness, the relay's status, the log) and keeps trying; once the
/// broker is back the relay catches up. A broker that stalls later is logged too.
#[tokio::test]
async fn a_relay_whose_sink_is_down_leaves_the_server_serving_and_catches_up() -> anyhow::Result<()>
{
    use onephase_broker::nats::NatsPublisher;
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("outside.t{suffix}");
    NatsPublisher::connect(&nats)
        .await?
        .ensure_stream(
            &format!("OUTSIDE_{suffix}"),
            vec![topic.clone()],
            Duration::from_secs(120),
        )
        .await?;
    let (proxy, through) = FaultProxy::in_front_of(&nats).await?;
    proxy.cut().await;
    let dir = tempfile::tempdir()?;
    let server = serve_with(
        dir.path(),
        &format!("[[outbox.relay]]\nname = \"nats\"\nsink = \"{through}\"\n"),
    )
    .await?;
    let api = Api::of(&server)?;
    let me = api.get("/v1/whoami").await?;
    ensure!(me["role"] == "admin", "the API serves: {me}");
    eventually(
        Duration::from_secs(20),
        "the relay says why it waits",
        || async {
            let r = relay(&api, "nats").await?;
            Ok(r["state"] == "unavailable"
                && r["error"].as_str().is_some_and(|e| e.contains("sink")))
        },
    )
    .await?;
    let ready: Value = serde_json::from_str(&api.text("/readyz").await?)?;
    ensure!(
        ready["status"] == "ready"
            && ready["unavailable"][0]
                .as_str()
                .is_some_and(|u| u.contains("outbox relay \"nats\"")),
        "{ready}"
    );
    ensure!(
        server.log_text().contains("outbox relay cannot start"),
        "{}",
        server.log_text()
    );

    insert_outbox_row(&dir.path().join("onephase.db"), &topic).await?;
    proxy.restore();
    eventually(Duration::from_secs(60), "the relay catches up", || async {
        let r = relay(&api, "nats").await?;
        Ok(r["state"] == "running" && r["published_total"].as_u64() >= Some(1))
    })
    .await?;

    // A broker that stops answering later: the retries are logged, not silent.
    proxy.cut().await;
    insert_outbox_row(&dir.path().join("onephase.db"), &topic).await?;
    eventually(
        Duration::from_secs(90),
        "the failing publishes are logged",
        || async { Ok(server.log_text().contains("outbox publishes failing")) },
    )
    .await?;
    proxy.restore();
    eventually(
        Duration::from_secs(90),
        "the row goes once the broker is back",
        || async { Ok(relay(&api, "nats").await?["published_total"].as_u64() >= Some(2)) },
    )
    .await?;
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn the_first_admin_token_is_printed_by_the_first_start_that_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let failed = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .output()
        .await?;
    ensure!(!failed.status.success(), "a start on a taken port failed");
    let printed = String::from_utf8_lossy(&failed.stdout);
    ensure!(
        !printed.contains("op_"),
        "a failed start printed a token: {printed}"
    );
    ensure!(
        String::from_utf8_lossy(&failed.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let server = serve(dir.path(), &[]).await?;
    ensure!(
        server.token.is_some(),
        "the first start that serves prints the admin token"
    );
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn an_answer_given_before_the_body_arrived_announces_the_close() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    // Headers now, the body later: the 401 is decided before the body is read.
    stream
        .write_all(
            b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer op_unknown\r\n\
              Content-Type: application/json\r\nContent-Length: 20\r\n\r\n",
        )
        .await?;
    let mut head = vec![0_u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await??;
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 401"), "{head}");
    ensure!(
        head.contains("connection: close"),
        "the client is told not to reuse the connection: {head}"
    );

    // A client that sends everything at once keeps its connection: 200 requests on one.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    for _ in 0..200 {
        let status = http
            .post(format!("{}/v1/tokens", server.base))
            .bearer_auth("op_unknown")
            .json(&json!({"name": "x"}))
            .send()
            .await?
            .status();
        ensure!(status == 401);
    }
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn commands_end_quietly_when_their_reader_goes_away() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let migrated = Command::new(BIN)
        .arg("migrate")
        .current_dir(dir.path())
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .output()
        .await?;
    ensure!(migrated.status.success(), "{migrated:?}");
    let mut child = Command::new(BIN)
        .args(["token", "list"])
        .current_dir(dir.path())
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // `| head -0`: the reader is gone before the first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("panicked"),
        "{}: {stderr}",
        out.status
    );
    Ok(())
}

async fn failing(args: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .output()
        .await?;
    ensure!(!out.status.success(), "{args:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn errors_say_their_cause_once_with_where_and_what_to_do() -> anyhow::Result<()> {
    let refused = failing(&["serve", "--store", "postgres://postgres@127.0.0.1:1/x"]).await?;
    ensure!(
        refused.matches("Connection refused").count() == 1
            && refused.contains("127.0.0.1:1")
            && refused.contains("is the database running"),
        "{refused}"
    );
    let missing = failing(&["serve", "--store", "sqlite:///no-such-dir/x.db"]).await?;
    ensure!(
        missing.matches("unable to open database file").count() == 1
            && missing.contains("/no-such-dir/x.db")
            && missing.contains("check that its directory exists"),
        "{missing}"
    );
    let no_scheme = failing(&[
        "outbox",
        "status",
        "--server",
        "127.0.0.1:7700",
        "--token",
        "t",
    ])
    .await?;
    ensure!(
        no_scheme.contains("is not a URL like http://"),
        "{no_scheme}"
    );
    let down = failing(&[
        "outbox",
        "status",
        "--server",
        "http://127.0.0.1:1",
        "--token",
        "t",
    ])
    .await?;
    ensure!(
        down.contains("cannot reach the server at http://127.0.0.1:1")
            && down.contains("Connection refused")
            && down.contains("Is `onephase serve` running"),
        "{down}"
    );
    Ok(())
}

/// Runs the binary in `dir` with no store, configuration, server or token from the
/// environment; returns its exit status and what it wrote.
async fn run_in(dir: &Path, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .env_remove("ONEPHASE_SERVER")
        .env_remove("ONEPHASE_TOKEN")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn client_flags_go_anywhere_and_the_exit_status_says_what_happened() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let token = server
        .token
        .clone()
        .context("the first start prints a token")?;
    let base = server.base.as_str();

    // Before or after the subcommand, the same.
    for args in [
        vec!["--server", base, "--token", &token, "lease", "list"],
        vec!["lease", "list", "--server", base, "--token", &token],
        vec![
            "--server", base, "lease", "list", "--token", &token, "--json",
        ],
    ] {
        let (status, stdout, stderr) = run_in(dir.path(), &args).await?;
        ensure!(status == 0, "{args:?}: {status} {stderr}");
        ensure!(!stdout.is_empty(), "{args:?} printed nothing");
    }

    // (arguments, whether to send the token, exit status, what the one error line says)
    let cases: [(&[&str], bool, i32, &str); 3] = [
        // No token: a usage error, as clap's.
        (&["lease", "list"], false, 2, "no API token"),
        // Unknown: not found.
        (
            &["saga", "show", "01936f0e-0000-7000-8000-000000000000"],
            true,
            4,
            "no saga run",
        ),
        // Invalid input: refused.
        (
            &["lease", "acquire", "a name with spaces"],
            true,
            3,
            "lease name",
        ),
    ];
    for (args, with_token, want, says) in cases {
        let mut full = vec!["--server", base];
        if with_token {
            full.extend(["--token", token.as_str()]);
        }
        full.extend(args);
        let (status, _, stderr) = run_in(dir.path(), &full).await?;
        ensure!(
            status == want && stderr.contains(says) && stderr.lines().count() == 1,
            "{args:?}: {status} {stderr}"
        );
    }
    let (status, _, stderr) = run_in(
        dir.path(),
        &[
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "lease",
            "list",
        ],
    )
    .await?;
    ensure!(
        status == 1 && stderr.contains("cannot reach"),
        "{status} {stderr}"
    );
    server.terminate().await?;

    // A token command in a folder without a store says so and creates nothing.
    let elsewhere = tempfile::tempdir()?;
    let (status, _, stderr) = run_in(elsewhere.path(), &["token", "list"]).await?;
    ensure!(
        status == 4
            && stderr.contains("no store at")
            && stderr.contains(&elsewhere.path().join("onephase.db").display().to_string()),
        "{status} {stderr}"
    );
    ensure!(
        std::fs::read_dir(elsewhere.path())?.next().is_none(),
        "token list created files in the wrong folder"
    );
    // In the server's folder it names the store it opened.
    let (status, stdout, stderr) = run_in(dir.path(), &["token", "list"]).await?;
    ensure!(
        status == 0 && stderr.contains("store: sqlite://onephase.db") && stdout.contains("admin"),
        "{status} {stderr}"
    );

    let (status, script, _) = run_in(dir.path(), &["completions", "bash"]).await?;
    ensure!(status == 0 && script.contains("_onephase()"), "{status}");
    Ok(())
}

#[tokio::test]
async fn saga_start_wait_follows_the_run_to_its_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rx = receiver::TestReceiver::start().await;
    let server = serve_with(
        dir.path(),
        "[saga]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n",
    )
    .await?;
    let api = Api::of(&server)?;
    for (name, url) in [
        ("ok", rx.url("ok")),
        ("down", "http://127.0.0.1:1/x".to_owned()),
    ] {
        let definition = json!({"name": name, "version": 1, "steps": [
            {"name": "call", "kind": "pivot", "action": {"method": "POST", "url": url}}]});
        let (status, body) = api.post("/v1/sagas", definition).await?;
        ensure!(status == 201, "{status} {body}");
    }
    let client = [
        "--server",
        server.base.as_str(),
        "--token",
        api.token.as_str(),
    ];
    let args = |saga: &'static str| {
        let mut args = client.to_vec();
        args.extend(["saga", "start", saga, "--wait", "--timeout", "60s"]);
        args
    };
    let (status, stdout, stderr) = run_in(dir.path(), &args("ok")).await?;
    ensure!(
        status == 0 && stdout.contains("completed") && stdout.contains("run_completed"),
        "{status} {stdout} {stderr}"
    );
    // A pivot that cannot be reached is retried, then compensated: not completed, status 1.
    let (status, stdout, stderr) = run_in(dir.path(), &args("down")).await?;
    ensure!(
        status == 1 && stderr.contains("ended compensated") && stdout.contains("compensated"),
        "{status} {stdout} {stderr}"
    );
    server.terminate().await?;
    Ok(())
}

/// The metric names an operations file refers to (histogram series named as their metric).
fn metrics_named_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("onephase_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_deployment_files_name_only_documented_metrics_and_the_example_configuration_loads()
-> anyhow::Result<()> {
    let documented = documented_metrics();
    for (file, text) in [
        (
            "deploy/prometheus/onephase-rules.yml",
            include_str!("../../../deploy/prometheus/onephase-rules.yml"),
        ),
        (
            "deploy/grafana/onephase.json",
            include_str!("../../../deploy/grafana/onephase.json"),
        ),
    ] {
        let named = metrics_named_in(text);
        ensure!(named.len() >= 8, "{file} names only {named:?}");
        let unknown: Vec<_> = named.difference(&documented).collect();
        ensure!(
            unknown.is_empty(),
            "{file} names undocumented metrics {unknown:?}"
        );
    }
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/onephase.json"))?;
    ensure!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/onephase.toml");
    let config = onephase_server::ServerConfig::load(Some(&example), Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(config.store.starts_with("postgres://"), "{}", config.store);
    Ok(())
}

/// The value of the hidden `csrf` field of a dashboard page.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    let marker = r#"name="csrf" value=""#;
    let start = page.find(marker).context("a csrf field")? + marker.len();
    Ok(page[start..]
        .split('"')
        .next()
        .context("a csrf value")?
        .to_owned())
}

/// The text of the page at `url`, signed in with `cookie`.
async fn page_as(http: &reqwest::Client, url: &str, cookie: &str) -> anyhow::Result<String> {
    Ok(http
        .get(url)
        .header("cookie", cookie)
        .send()
        .await?
        .text()
        .await?)
}

/// `/lab` on the dashboard: signed in, an admin runs every scenario from the page and sees the
/// report; a client token sees it and may not run it; bad forms change nothing.
#[tokio::test]
async fn the_dashboard_runs_the_failure_lab_and_shows_its_report() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let api = Api::of(&server)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let lab = format!("{}/lab", api.base);
    let run = format!("{}/lab/run", api.base);

    let anonymous = http.get(&lab).send().await?;
    ensure!(anonymous.status() == 303, "{}", anonymous.status());
    ensure!(anonymous.headers()["location"] == "/dashboard/sign-in");

    let admin = format!("onephase_session={}", api.token);
    let empty = page_as(&http, &lab, &admin).await?;
    ensure!(
        empty.contains("No report yet") && empty.contains(r#"action="/lab/run""#),
        "{empty}"
    );
    let csrf = csrf_of(&empty)?;
    for (form, status) in [
        (vec![("csrf", "not-this-session"), ("seed", "3")], 403),
        (vec![("csrf", csrf.as_str()), ("seed", "three")], 400),
    ] {
        let refused = http
            .post(&run)
            .header("cookie", &admin)
            .form(&form)
            .send()
            .await?;
        ensure!(refused.status() == status, "{form:?}: {}", refused.status());
    }
    let still_empty = page_as(&http, &lab, &admin).await?;
    ensure!(
        still_empty.contains("No report yet"),
        "a refused form ran the lab"
    );

    let ran = http
        .post(&run)
        .header("cookie", &admin)
        .form(&[("csrf", csrf.as_str()), ("seed", "3")])
        .send()
        .await?;
    ensure!(ran.status() == 303 && ran.headers()["location"] == "/lab");
    let report = page_as(&http, &lab, &admin).await?;
    for name in ["fenced-lock", "stampede", "boundary-burst", "local-limits"] {
        ensure!(
            report.contains(&format!(r#"<section id="{name}""#)),
            "{name}: {report}"
        );
    }
    ensure!(
        report.contains("onephase kept every invariant") && report.contains(", seed 3."),
        "{report}"
    );

    let (status, client) = api
        .post("/v1/tokens", json!({"name": "viewer", "role": "client"}))
        .await?;
    ensure!(status == 201, "{status} {client}");
    let viewer = format!(
        "onephase_session={}",
        client["token"].as_str().context("a token")?
    );
    let seen = page_as(&http, &lab, &viewer).await?;
    ensure!(
        seen.contains(r#"<section id="stampede""#) && !seen.contains(r#"action="/lab/run""#),
        "{seen}"
    );
    // Its own session's CSRF token (from the overview's sign-out form) does not make it an
    // admin.
    let overview = format!("{}/", api.base);
    let overview = page_as(&http, &overview, &viewer).await?;
    let refused = http
        .post(&run)
        .header("cookie", &viewer)
        .form(&[("csrf", csrf_of(&overview)?.as_str())])
        .send()
        .await?;
    ensure!(refused.status() == 403, "{}", refused.status());
    Ok(())
}

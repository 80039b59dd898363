//! The server over real HTTP, on a real store: every backend the environment offers.

#[path = "../../saga/tests/common/mod.rs"]
mod participants;
#[path = "../../webhook/tests/common/mod.rs"]
mod receiver;

use onephase_testkit::per_backend;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use onephase_server::auth::{ConfiguredToken, Role, hash_token};
use onephase_server::{Server, ServerConfig};
use onephase_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A running server and what a test needs to talk to it.
struct Running {
    base: String,
    admin: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), onephase_server::ServerError>>,
}

impl Running {
    async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let server = Server::bind(config).await?;
        let addr: SocketAddr = server.local_addr();
        let admin = server.bootstrap_token().map(str::to_owned);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            base: format!("http://{addr}"),
            admin,
            stop: Some(stop),
            task,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin(&self) -> &str {
        self.admin.as_deref().unwrap_or_default()
    }

    /// The cookie of a dashboard session signed in with the admin token.
    fn session(&self) -> String {
        format!("onephase_session={}", self.admin())
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

fn config_for(db: &TestDb) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: db.url().to_owned(),
        ..ServerConfig::default()
    }
}

/// Checks that `response` is a problem document with `status`, and returns it.
async fn problem(response: reqwest::Response, status: StatusCode) -> anyhow::Result<Value> {
    ensure!(
        response.status() == status,
        "expected {status}, got {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type == "application/problem+json",
        "content type {content_type:?}"
    );
    let body: Value = response.json().await?;
    ensure!(body["status"] == status.as_u16(), "{body}");
    ensure!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    ensure!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    Ok(body)
}

per_backend! {
    #[tokio::test]
    async fn public_endpoints_answer_and_metrics_count_requests(db) -> anyhow::Result<()> {
        let server = Running::start(config_for(&db)).await?;
        let http = reqwest::Client::new();

        let health: Value = http
            .get(server.url("/healthz"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(health["status"] == "ok");
        let ready = http.get(server.url("/readyz")).send().await?;
        ensure!(ready.status() == StatusCode::OK);

        let dashboard = http.get(server.url("/")).header("cookie", server.session()).send().await?;
        ensure!(dashboard.status() == StatusCode::OK);
        let html = dashboard.text().await?;
        ensure!(
            html.contains("<h2>Server</h2>") && html.contains("Ready"),
            "{html}"
        );

        let metrics = http
            .get(server.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        ensure!(metrics.contains("onephase_build_info"), "{metrics}");
        ensure!(
            metrics.contains(
                r#"onephase_http_requests_total{method="GET",route="/healthz",status="200"}"#
            ),
            "{metrics}"
        );
        ensure!(metrics.contains("onephase_http_request_duration_seconds_bucket"));

        let doc: Value = http
            .get(server.url("/openapi.json"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in [
            "/healthz",
            "/readyz",
            "/v1/whoami",
            "/v1/tokens",
            "/v1/tokens/{name}",
        ] {
            ensure!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
        }
        ensure!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
        ensure!(doc["components"]["schemas"]["Problem"].is_object());

        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn first_start_creates_one_admin_token_and_later_starts_do_not(db) -> anyhow::Result<()> {
        let first = Running::start(config_for(&db)).await?;
        let token = first.admin.clone().context("first start creates a token")?;
        ensure!(token.starts_with("op_"));
        first.stop().await?;

        let second = Running::start(config_for(&db)).await?;
        ensure!(
            second.admin.is_none(),
            "a second start created another admin token"
        );
        let me: Value = reqwest::Client::new()
            .get(second.url("/v1/whoami"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            me == json!({"name": "admin", "role": "admin", "source": "store"}),
            "{me}"
        );
        second.stop().await?;
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn servers_starting_together_on_postgres_create_exactly_one_admin() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        starting.spawn(Running::start(config_for(&db)));
    }
    let mut servers = Vec::new();
    while let Some(started) = starting.join_next().await {
        servers.push(started??);
    }
    let created = servers.iter().filter(|s| s.admin.is_some()).count();
    ensure!(created == 1, "{created} servers created an admin token");
    for server in servers {
        server.stop().await?;
    }
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn v1_needs_a_valid_bearer_token() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let server = Running::start(config_for(&db)).await?;
    let http = reqwest::Client::new();
    let whoami = server.url("/v1/whoami");

    let missing = http.get(&whoami).send().await?;
    ensure!(missing.headers().get("www-authenticate").is_some());
    let body = problem(missing, StatusCode::UNAUTHORIZED).await?;
    ensure!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"),
        "{body}"
    );
    ensure!(body["instance"] == "/v1/whoami");

    let basic = http
        .get(&whoami)
        .basic_auth("admin", Some("x"))
        .send()
        .await?;
    problem(basic, StatusCode::UNAUTHORIZED).await?;
    let empty = http
        .get(&whoami)
        .header("authorization", "Bearer ")
        .send()
        .await?;
    problem(empty, StatusCode::UNAUTHORIZED).await?;
    let unknown = http
        .get(&whoami)
        .bearer_auth(format!("op_{}", "0".repeat(64)))
        .send()
        .await?;
    problem(unknown, StatusCode::UNAUTHORIZED).await?;
    let foreign = http.get(&whoami).bearer_auth("not-ours").send().await?;
    problem(foreign, StatusCode::UNAUTHORIZED).await?;

    let ok = http.get(&whoami).bearer_auth(server.admin()).send().await?;
    ensure!(ok.status() == StatusCode::OK);
    server.stop().await?;
    Ok(())
}

per_backend! {
    #[tokio::test]
    async fn tokens_are_created_listed_and_revoked_by_admins_only(db) -> anyhow::Result<()> {
        let server = Running::start(config_for(&db)).await?;
        let http = reqwest::Client::new();
        let tokens = server.url("/v1/tokens");

        let created = http
            .post(&tokens)
            .bearer_auth(server.admin())
            .json(&json!({"name": "billing"}))
            .send()
            .await?;
        ensure!(created.status() == StatusCode::CREATED);
        let created: Value = created.json().await?;
        ensure!(
            created["role"] == "client" && created["source"] == "store",
            "{created}"
        );
        let client_token = created["token"]
            .as_str()
            .context("secret in response")?
            .to_owned();

        let me: Value = http
            .get(server.url("/v1/whoami"))
            .bearer_auth(&client_token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(me["name"] == "billing" && me["role"] == "client", "{me}");

        let forbidden = http
            .post(&tokens)
            .bearer_auth(&client_token)
            .json(&json!({"name": "sneaky", "role": "admin"}))
            .send()
            .await?;
        problem(forbidden, StatusCode::FORBIDDEN).await?;
        let forbidden = http.get(&tokens).bearer_auth(&client_token).send().await?;
        problem(forbidden, StatusCode::FORBIDDEN).await?;

        let duplicate = http
            .post(&tokens)
            .bearer_auth(server.admin())
            .json(&json!({"name": "billing"}))
            .send()
            .await?;
        let body = problem(duplicate, StatusCode::CONFLICT).await?;
        ensure!(body["instance"] == "/v1/tokens", "{body}");

        let listed: Value = http
            .get(&tokens)
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        let names: Vec<&str> = listed
            .as_array()
            .context("a list")?
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        ensure!(names == ["admin", "billing"], "{listed}");
        ensure!(
            !listed.to_string().contains("op_"),
            "a listing leaked a secret: {listed}"
        );

        let revoked = http
            .delete(server.url("/v1/tokens/billing"))
            .bearer_auth(server.admin())
            .send()
            .await?;
        ensure!(revoked.status() == StatusCode::NO_CONTENT);
        let after = http
            .get(server.url("/v1/whoami"))
            .bearer_auth(&client_token)
            .send()
            .await?;
        problem(after, StatusCode::UNAUTHORIZED).await?;
        let again = http
            .delete(server.url("/v1/tokens/billing"))
            .bearer_auth(server.admin())
            .send()
            .await?;
        ensure!(
            again.status() == StatusCode::NO_CONTENT,
            "revoking twice is harmless"
        );
        let unknown = http
            .delete(server.url("/v1/tokens/nobody"))
            .bearer_auth(server.admin())
            .send()
            .await?;
        problem(unknown, StatusCode::NOT_FOUND).await?;

        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let config = ServerConfig {
        body_limit: 256,
        ..config_for(&db)
    };
    let server = Running::start(config).await?;
    let http = reqwest::Client::new();
    let tokens = server.url("/v1/tokens");
    let before: Value = http
        .get(&tokens)
        .bearer_auth(server.admin())
        .send()
        .await?
        .json()
        .await?;

    let post = |body: &'static str, content_type: &'static str| {
        http.post(&tokens)
            .bearer_auth(server.admin())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let malformed = problem(
        post("{\"name\": ", "application/json").await?,
        StatusCode::BAD_REQUEST,
    )
    .await?;
    ensure!(
        malformed["type"] == "urn:onephase:problem:malformed-json",
        "{malformed}"
    );
    let wrong_type = post("{\"name\":\"x\"}", "text/plain").await?;
    problem(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await?;
    let shape = problem(
        post("{\"name\": 7}", "application/json").await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    ensure!(
        shape["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("name"),
        "{shape}"
    );
    let unknown_field = post("{\"name\":\"x\",\"admin\":true}", "application/json").await?;
    problem(unknown_field, StatusCode::UNPROCESSABLE_ENTITY).await?;
    let bad_role = post("{\"name\":\"x\",\"role\":\"root\"}", "application/json").await?;
    problem(bad_role, StatusCode::UNPROCESSABLE_ENTITY).await?;
    let bad_name = post("{\"name\":\"has spaces\"}", "application/json").await?;
    problem(bad_name, StatusCode::BAD_REQUEST).await?;

    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(1000));
    let too_large = http
        .post(&tokens)
        .bearer_auth(server.admin())
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await?;

    let nowhere = http.get(server.url("/v1/nothing-here")).send().await?;
    let body = problem(nowhere, StatusCode::NOT_FOUND).await?;
    ensure!(body["instance"] == "/v1/nothing-here");
    let wrong_method = http.put(server.url("/healthz")).send().await?;
    let allow = wrong_method
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(allow.contains("GET"), "Allow: {allow:?}");
    problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await?;

    let after: Value = http
        .get(&tokens)
        .bearer_auth(server.admin())
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        before == after,
        "bad requests changed the tokens: {before} -> {after}"
    );
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn configured_tokens_authenticate_and_suppress_the_bootstrap_token() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let secret = format!("op_{}", "ab".repeat(32));
    let config = ServerConfig {
        tokens: vec![ConfiguredToken {
            name: "deploy-bot".to_owned(),
            role: Role::Client,
            sha256: hash_token(&secret),
        }],
        ..config_for(&db)
    };
    let server = Running::start(config).await?;
    ensure!(
        server.admin.is_none(),
        "configured tokens replace the bootstrap token"
    );
    let me: Value = reqwest::Client::new()
        .get(server.url("/v1/whoami"))
        .bearer_auth(&secret)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        me == json!({"name": "deploy-bot", "role": "client", "source": "config"}),
        "{me}"
    );
    server.stop().await?;

    let bad = ServerConfig {
        tokens: vec![ConfiguredToken {
            name: "x".to_owned(),
            role: Role::Admin,
            sha256: "not-a-hash".to_owned(),
        }],
        ..config_for(&db)
    };
    let Err(err) = Server::bind(bad).await else {
        anyhow::bail!("a malformed configured hash was accepted");
    };
    ensure!(err.to_string().contains("sha256"), "{err}");
    Ok(())
}

#[tokio::test]
async fn readiness_fails_with_a_problem_when_the_store_is_gone() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let server = Running::start(config_for(&db)).await?;
    let http = reqwest::Client::new();
    ensure!(http.get(server.url("/readyz")).send().await?.status() == StatusCode::OK);
    // Dropping the database out from under the server is the harshest store outage there is.
    db.close().await?;
    let body = problem(
        http.get(server.url("/readyz")).send().await?,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await?;
    ensure!(body["type"] == "urn:onephase:problem:not-ready", "{body}");
    let health = http.get(server.url("/healthz")).send().await?;
    ensure!(
        health.status() == StatusCode::OK,
        "liveness must not depend on the store"
    );
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_taken_listen_address_is_a_clear_error() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = ServerConfig {
        listen: taken.local_addr()?,
        ..config_for(&db)
    };
    let Err(err) = Server::bind(config).await else {
        anyhow::bail!("bound an address that is in use");
    };
    ensure!(err.to_string().contains("--listen"), "{err}");
    Ok(())
}

fn with_log_relay(db: &TestDb) -> ServerConfig {
    ServerConfig {
        outbox_relays: vec![onephase_server::outbox::RelaySettings {
            name: "self".to_owned(),
            source: None,
            sink: "log".to_owned(),
            batch_size: None,
            max_attempts: Some(1),
            claim_timeout_secs: None,
        }],
        ..config_for(db)
    }
}

async fn wait_for_records(
    http: &reqwest::Client,
    server: &Running,
    topic: &str,
    count: usize,
) -> anyhow::Result<Vec<Value>> {
    for _ in 0..200 {
        let records: Vec<Value> = http
            .get(server.url(&format!("/v1/outbox/{topic}")))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        if records.len() >= count {
            return Ok(records);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("{topic} did not reach {count} records")
}

per_backend! {
    #[tokio::test]
    async fn outbox_api_appends_reads_relays_and_manages_dead_rows(db) -> anyhow::Result<()> {
        let server = Running::start(with_log_relay(&db)).await?;
        let http = reqwest::Client::new();

        // Append, idempotently on the id, and read back.
        let id = uuid::Uuid::now_v7();
        // `2.0` stays a float: the server never rewrites a payload.
        let event = json!({"key": "order-42", "payload": {"order": 42, "price": 2.0}, "headers": {"correlation-id": "req-1"}, "id": id});
        let mut positions = Vec::new();
        // The same rule as sagas and webhooks: 201 new, 200 the same again.
        for expected in [StatusCode::CREATED, StatusCode::OK] {
            let response = http
                .post(server.url("/v1/outbox/orders.created"))
                .bearer_auth(server.admin())
                .json(&event)
                .send()
                .await?;
            ensure!(
                response.status() == expected,
                "{} where {expected} was due",
                response.status()
            );
            let body: Value = response.json().await?;
            positions.push(body["position"].as_i64().context("position")?);
        }
        ensure!(
            positions == [1, 1],
            "a repeated id was appended twice: {positions:?}"
        );
        // Another event under the id: 409, and nothing appended.
        let mut other = event.clone();
        other["payload"] = json!({"order": 43});
        problem(
            http.post(server.url("/v1/outbox/orders.created"))
                .bearer_auth(server.admin())
                .json(&other)
                .send()
                .await?,
            StatusCode::CONFLICT,
        )
        .await?;
        // A payload's numbers are the caller's bytes: every digit comes back.
        let exact =
            r#"{"payload": {"big": 123456789012345678901234567890, "neg": -9223372036854775809}}"#;
        let response = http
            .post(server.url("/v1/outbox/exact.numbers"))
            .bearer_auth(server.admin())
            .header("content-type", "application/json")
            .body(exact)
            .send()
            .await?;
        ensure!(response.status() == StatusCode::CREATED);
        let text = http
            .get(server.url("/v1/outbox/exact.numbers?after=0"))
            .bearer_auth(server.admin())
            .send()
            .await?
            .text()
            .await?;
        ensure!(
            text.contains(
                r#""payload":{"big":123456789012345678901234567890,"neg":-9223372036854775809}"#
            ),
            "{text}"
        );
        let records = wait_for_records(&http, &server, "orders.created", 1).await?;
        ensure!(records.len() == 1, "{records:?}");
        ensure!(
            records[0]["payload"] == json!({"order": 42, "price": 2.0})
                && records[0]["key"] == "order-42",
            "{records:?}"
        );
        ensure!(records[0]["headers"]["correlation-id"] == "req-1");

        // A row written to the server's own outbox by plain SQL is relayed to the log.
        let store = onephase_store::Store::connect(db.url()).await?;
        let relayed = uuid::Uuid::now_v7();
        let bad = uuid::Uuid::now_v7();
        for (id, topic) in [(relayed, "relayed.events"), (bad, "not a topic")] {
            match store.db() {
                onephase_store::Db::Postgres(pool) => {
                    sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload) VALUES ($1, $2, 'k', 'x')")
                        .bind(id)
                        .bind(topic)
                        .execute(pool)
                        .await?;
                }
                onephase_store::Db::Sqlite(s) => {
                    sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload) VALUES (?1, ?2, 'k2', 'x')")
                        .bind(id.to_string())
                        .bind(topic)
                        .execute(s.writer())
                        .await?;
                }
            }
        }
        let relayed_records = wait_for_records(&http, &server, "relayed.events", 1).await?;
        ensure!(relayed_records[0]["id"] == relayed.to_string());
        ensure!(
            relayed_records[0]["payload_base64"] == "eA==",
            "{relayed_records:?}"
        );

        // The row with an invalid topic is dead-lettered, visible, retryable, discardable.
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead = http
                .get(server.url("/v1/relays/self/dead"))
                .bearer_auth(server.admin())
                .send()
                .await?
                .json::<Vec<Value>>()
                .await?;
            if !dead.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        ensure!(
            dead.len() == 1 && dead[0]["id"] == bad.to_string(),
            "{dead:?}"
        );
        ensure!(
            dead[0]["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("topic"),
            "{dead:?}"
        );
        let relays: Vec<Value> = http
            .get(server.url("/v1/relays"))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            relays.len() == 1 && relays[0]["name"] == "self" && relays[0]["dead"] == 1,
            "{relays:?}"
        );
        ensure!(
            relays[0]["published_total"].as_u64().unwrap_or_default() >= 1,
            "{relays:?}"
        );

        let client_token = http
            .post(server.url("/v1/tokens"))
            .bearer_auth(server.admin())
            .json(&json!({"name": "svc"}))
            .send()
            .await?
            .json::<Value>()
            .await?["token"]
            .as_str()
            .context("token")?
            .to_owned();
        let retry = server.url(&format!("/v1/relays/self/dead/{bad}/retry"));
        problem(
            http.post(&retry).bearer_auth(&client_token).send().await?,
            StatusCode::FORBIDDEN,
        )
        .await?;
        let response = http.post(&retry).bearer_auth(server.admin()).send().await?;
        ensure!(
            response.status() == StatusCode::NO_CONTENT,
            "{}",
            response.status()
        );
        let unknown = server.url(&format!(
            "/v1/relays/self/dead/{}/retry",
            uuid::Uuid::now_v7()
        ));
        problem(
            http.post(&unknown)
                .bearer_auth(server.admin())
                .send()
                .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;
        problem(
            http.post(server.url("/v1/relays/self/dead/not-a-uuid/retry"))
                .bearer_auth(server.admin())
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        problem(
            http.get(server.url("/v1/relays/nope/dead"))
                .bearer_auth(server.admin())
                .send()
                .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;
        // Dead again after its one attempt; then discarded for good.
        for _ in 0..100 {
            let response = http
                .delete(server.url(&format!("/v1/relays/self/dead/{bad}")))
                .bearer_auth(server.admin())
                .send()
                .await?;
            if response.status() == StatusCode::NO_CONTENT {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let status: Vec<Value> = http
            .get(server.url("/v1/relays"))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            status[0]["dead"] == 0 && status[0]["pending"] == 0,
            "{status:?}"
        );

        let page = http.get(server.url("/")).header("cookie", server.session()).send().await?.text().await?;
        ensure!(
            page.contains("Outbox") && page.contains("self"),
            "the dashboard has no outbox panel"
        );
        store.close().await;
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn bad_outbox_appends_get_a_problem_and_append_nothing() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let server = Running::start(config_for(&db)).await?;
    let http = reqwest::Client::new();
    let post = |topic: &str, body: Value| {
        http.post(server.url(&format!("/v1/outbox/{topic}")))
            .bearer_auth(server.admin())
            .json(&body)
    };
    let cases = [
        (
            "bad%20topic",
            json!({"payload": 1}),
            StatusCode::BAD_REQUEST,
            "topic",
        ),
        (
            "a..b",
            json!({"payload": 1}),
            StatusCode::BAD_REQUEST,
            "segment",
        ),
        (
            "t",
            json!({"payload": 1, "key": ""}),
            StatusCode::BAD_REQUEST,
            "key",
        ),
        (
            "t",
            json!({"payload": 1, "headers": {"x": "caf\u{e9}"}}),
            StatusCode::BAD_REQUEST,
            "printable",
        ),
        (
            "t",
            json!({"payload": 1, "id": "00000000-0000-0000-0000-000000000000"}),
            StatusCode::BAD_REQUEST,
            "nil",
        ),
        (
            "t",
            json!({"payload": 1, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            "t",
            json!({"key": "k"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "payload",
        ),
    ];
    for (topic, body, status, mentions) in cases {
        let doc = problem(post(topic, body.clone()).send().await?, status).await?;
        let detail = doc["detail"].as_str().unwrap_or_default();
        ensure!(
            detail.contains(mentions),
            "{body}: {detail:?} does not mention {mentions:?}"
        );
    }
    let huge = json!({"payload": "x".repeat(1024 * 1024 + 1)});
    problem(post("t", huge).send().await?, StatusCode::PAYLOAD_TOO_LARGE).await?;
    let malformed = http
        .post(server.url("/v1/outbox/t"))
        .bearer_auth(server.admin())
        .header("content-type", "application/json")
        .body("{\"payload\": ")
        .send()
        .await?;
    problem(malformed, StatusCode::BAD_REQUEST).await?;
    problem(
        http.get(server.url("/v1/outbox/t?limit=0"))
            .bearer_auth(server.admin())
            .send()
            .await?,
        StatusCode::BAD_REQUEST,
    )
    .await?;
    let records: Vec<Value> = http
        .get(server.url("/v1/outbox/t"))
        .bearer_auth(server.admin())
        .send()
        .await?
        .json()
        .await?;
    ensure!(records.is_empty(), "bad input was appended: {records:?}");
    problem(
        http.post(server.url("/v1/outbox/t"))
            .json(&json!({"payload": 1}))
            .send()
            .await?,
        StatusCode::UNAUTHORIZED,
    )
    .await?;
    server.stop().await?;
    db.close().await?;
    Ok(())
}

/// Waits until the run is in a terminal state or waits for an operator.
async fn settled_run(http: &reqwest::Client, server: &Running, id: &str) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    // Generous: under the full suite two cores run every test at once.
    for _ in 0..2400 {
        let run: Value = http
            .get(server.url(&format!("/v1/saga-runs/{id}")))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        if !matches!(run["state"].as_str(), Some("running" | "compensating")) {
            return Ok(run);
        }
        last = run;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("run {id} did not settle within 60 s: {last}")
}

per_backend! {
    #[tokio::test]
    async fn sagas_are_registered_started_inspected_and_operated_over_http(db) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let parts = participants::Participants::start().await?;
        let definition = participants::order_definition(&parts.base(), 1, 2000);

        // Participants on an internal network (here loopback) need saga.allow_networks, as
        // webhook endpoints need webhook.allow_networks.
        let first = Running::start(config_for(&db)).await?;
        let refused = problem(
            http.post(first.url("/v1/sagas"))
                .bearer_auth(first.admin())
                .header("content-type", "application/json")
                .body(definition.clone())
                .send()
                .await?,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await?;
        ensure!(
            refused["type"] == "urn:onephase:problem:destination-refused"
                && refused["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("saga.allow_networks")),
            "{refused}"
        );
        let admin = first.admin().to_owned();
        first.stop().await?;
        let mut config = config_for(&db);
        config.saga.allow_networks = vec!["127.0.0.0/8".into()];
        let mut server = Running::start(config).await?;
        server.admin = Some(admin);

        // Registration: admin only, JSON or TOML, immutable versions, clear errors.
        let client_token: Value = http
            .post(server.url("/v1/tokens"))
            .bearer_auth(server.admin())
            .json(&json!({"name": "shop"}))
            .send()
            .await?
            .json()
            .await?;
        let client_token = client_token["token"].as_str().context("token")?.to_owned();
        let register = |token: &str, body: String, content_type: &str| {
            http.post(server.url("/v1/sagas"))
                .bearer_auth(token)
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        problem(
            register(&client_token, definition.clone(), "application/json").await?,
            StatusCode::FORBIDDEN,
        )
        .await?;
        let created = register(server.admin(), definition.clone(), "application/json").await?;
        ensure!(created.status() == StatusCode::CREATED);
        let again = register(server.admin(), definition.clone(), "application/json").await?;
        ensure!(again.status() == StatusCode::OK, "same document: no-op");
        let changed = definition.replace("/shipping/", "/courier/");
        let conflict = problem(
            register(server.admin(), changed, "application/json").await?,
            StatusCode::CONFLICT,
        )
        .await?;
        ensure!(
            conflict["detail"]
                .as_str()
                .is_some_and(|d| d.contains("version 2")),
            "{conflict}"
        );
        let invalid = definition.replace("\"pivot\"", "\"compensatable\"");
        let invalid = problem(
            register(server.admin(), invalid, "application/json").await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        ensure!(
            invalid["detail"]
                .as_str()
                .is_some_and(|d| d.contains("ship")),
            "{invalid}"
        );
        problem(
            register(server.admin(), "{".into(), "application/json").await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        problem(
            register(server.admin(), definition.clone(), "text/plain").await?,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await?;
        let toml = "name = \"ping\"\nversion = 1\n[[steps]]\nname = \"ping\"\nkind = \"pivot\"\n\
                    action = { method = \"POST\", url = \"http://127.0.0.1:9/ping\" }\n";
        let toml_created = register(server.admin(), toml.into(), "application/toml").await?;
        ensure!(toml_created.status() == StatusCode::CREATED);
        let listed: Value = http
            .get(server.url("/v1/sagas"))
            .bearer_auth(&client_token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(listed.as_array().is_some_and(|l| l.len() == 2), "{listed}");
        let doc: Value = http
            .get(server.url("/v1/sagas/order"))
            .bearer_auth(&client_token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            doc["version"] == 1 && doc["definition"]["steps"].is_array(),
            "{doc}"
        );
        problem(
            http.get(server.url("/v1/sagas/nope"))
                .bearer_auth(&client_token)
                .send()
                .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;

        // Starting: idempotent by key; mismatches, unknown sagas and thin inputs start nothing.
        let runs_url = server.url("/v1/sagas/order/runs");
        let start = |input: Value, key: &str| {
            http.post(&runs_url)
                .bearer_auth(&client_token)
                .header("Idempotency-Key", key)
                .json(&json!({"input": input}))
                .send()
        };
        let stuck_input = participants::order_input(1, Some("ship"), Some("reserve"), &[], 0);
        let first = start(stuck_input.clone(), "o-1").await?;
        ensure!(first.status() == StatusCode::CREATED);
        let first: Value = first.json().await?;
        let replay = start(stuck_input.clone(), "o-1").await?;
        ensure!(replay.status() == StatusCode::OK);
        let replay: Value = replay.json().await?;
        ensure!(
            replay["id"] == first["id"] && replay["created"] == false,
            "{replay}"
        );
        problem(
            start(participants::order_input(2, None, None, &[], 0), "o-1").await?,
            StatusCode::CONFLICT,
        )
        .await?;
        let thin = problem(
            start(json!({"order": 3}), "o-3").await?,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await?;
        ensure!(
            thin["detail"]
                .as_str()
                .is_some_and(|d| d.contains("input.")),
            "{thin}"
        );
        problem(
            http.post(server.url("/v1/sagas/nope/runs"))
                .bearer_auth(&client_token)
                .json(&json!({"input": {}}))
                .send()
                .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;
        problem(
            http.post(&runs_url)
                .bearer_auth(&client_token)
                .header("Idempotency-Key", "x".repeat(256))
                .json(&json!({"input": {}}))
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        // A body must be an object: serde would read a struct from an array.
        problem(
            http.post(&runs_url)
                .bearer_auth(&client_token)
                .json(&json!([{"order": 1}, null]))
                .send()
                .await?,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await?;
        let ok = start(participants::order_input(4, None, None, &[], 0), "o-4").await?;
        ensure!(ok.status() == StatusCode::CREATED);
        let ok: Value = ok.json().await?;

        // The runs settle: one completed, one waiting for an operator.
        let id = first["id"].as_str().context("id")?;
        let parked = settled_run(&http, &server, id).await?;
        ensure!(parked["state"] == "needs_operator", "{parked}");
        let done = settled_run(&http, &server, ok["id"].as_str().context("id")?).await?;
        ensure!(done["state"] == "completed", "{done}");
        let listed: Value = http
            .get(server.url("/v1/saga-runs?state=needs-operator"))
            .bearer_auth(&client_token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(listed.as_array().is_some_and(|l| l.len() == 1), "{listed}");
        let all: Value = http
            .get(server.url("/v1/saga-runs?saga=order"))
            .bearer_auth(&client_token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            all.as_array().is_some_and(|l| l.len() == 2),
            "only two runs started: {all}"
        );
        problem(
            http.get(server.url("/v1/saga-runs?state=sleeping"))
                .bearer_auth(&client_token)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        problem(
            http.get(server.url("/v1/saga-runs/not-a-uuid"))
                .bearer_auth(&client_token)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        problem(
            http.get(server.url(&format!("/v1/saga-runs/{}", uuid::Uuid::now_v7())))
                .bearer_auth(&client_token)
                .send()
                .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;

        // Operator actions: admin only, audited with the token's name.
        let act = |path: String, token: String, note: &str| {
            http.post(server.url(&path))
                .bearer_auth(token)
                .json(&json!({"note": note}))
                .send()
        };
        problem(
            act(
                format!("/v1/saga-runs/{id}/retry"),
                client_token.clone(),
                "x",
            )
            .await?,
            StatusCode::FORBIDDEN,
        )
        .await?;
        problem(
            act(
                format!("/v1/saga-runs/{id}/retry"),
                server.admin().into(),
                "",
            )
            .await?,
            StatusCode::BAD_REQUEST,
        )
        .await?;
        let retried = act(
            format!("/v1/saga-runs/{id}/retry"),
            server.admin().into(),
            "inventory fixed",
        )
        .await?;
        ensure!(retried.status() == StatusCode::OK);
        let parked = settled_run(&http, &server, id).await?;
        ensure!(
            parked["state"] == "needs_operator",
            "still failing: {parked}"
        );
        problem(
            act(
                format!("/v1/saga-runs/{id}/steps/ship/resolve"),
                server.admin().into(),
                "x",
            )
            .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;
        // Resolved from the dashboard: the run's page offers it, with this session's token.
        let page = http
            .get(server.url(&format!("/dashboard/runs/{id}")))
            .header("cookie", server.session())
            .send()
            .await?
            .text()
            .await?;
        ensure!(page.contains("Resolve reserve by hand"), "{page}");
        let resolved = http
            .post(server.url(&format!("/dashboard/runs/{id}/steps/reserve/resolve")))
            .header("cookie", server.session())
            .form(&[("csrf", csrf_of(&page)?.as_str()), ("note", "released by hand")])
            .send()
            .await?;
        ensure!(resolved.status() == StatusCode::OK);
        ensure!(resolved.text().await?.contains("Resolved by hand"));
        // Again: the run no longer waits for an operator, so the page says why, with the
        // API's status, and nothing changes.
        let again = http
            .post(server.url(&format!("/dashboard/runs/{id}/steps/reserve/resolve")))
            .header("cookie", server.session())
            .form(&[("csrf", csrf_of(&page)?.as_str()), ("note", "twice")])
            .send()
            .await?;
        ensure!(again.status() == StatusCode::CONFLICT, "{}", again.status());
        ensure!(again.text().await?.contains("not done"));
        let finished = settled_run(&http, &server, id).await?;
        ensure!(finished["state"] == "compensated", "{finished}");
        let history = finished["history"].as_array().context("history")?;
        ensure!(
            history.iter().any(|h| h["event"] == "operator_resolve"
                && h["actor"] == "admin"
                && h["detail"] == "released by hand"),
            "{finished}"
        );
        problem(
            act(
                format!("/v1/saga-runs/{id}/abort"),
                server.admin().into(),
                "late",
            )
            .await?,
            StatusCode::CONFLICT,
        )
        .await?;

        let html = http.get(server.url("/")).header("cookie", server.session()).send().await?.text().await?;
        ensure!(
            html.contains("<h2>Sagas</h2>") && html.contains("compensated"),
            "{html}"
        );
        let metrics = http
            .get(server.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        ensure!(
            metrics.contains("onephase_saga_step_attempts_total"),
            "{metrics}"
        );
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

fn with_webhooks(db: &TestDb, schedule_secs: Vec<u64>) -> ServerConfig {
    let mut config = config_for(db);
    config.webhook = onephase_server::webhook::WebhookSettings {
        allow_networks: vec!["127.0.0.0/8".into()],
        schedule_secs: Some(schedule_secs),
        jitter: Some(0.0),
        attempt_timeout_secs: Some(5),
        poll_interval_ms: Some(20),
        ..Default::default()
    };
    config
}

async fn client_token(http: &reqwest::Client, server: &Running) -> anyhow::Result<String> {
    let created: Value = http
        .post(server.url("/v1/tokens"))
        .bearer_auth(server.admin())
        .json(&json!({"name": "sender"}))
        .send()
        .await?
        .json()
        .await?;
    Ok(created["token"].as_str().context("a token")?.to_owned())
}

/// Polls the message until no delivery is pending.
async fn settled_message(
    http: &reqwest::Client,
    server: &Running,
    id: &str,
) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    for _ in 0..2400 {
        let message: Value = http
            .get(server.url(&format!("/v1/webhooks/messages/{id}")))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        let deliveries = message["deliveries"].as_array().context("deliveries")?;
        if deliveries.iter().all(|d| d["status"] != "pending") {
            return Ok(message);
        }
        last = message;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("message {id} still pending after 60 s: {last}")
}

per_backend! {
    #[tokio::test]
    async fn webhooks_are_sent_delivered_and_operated_over_http(db) -> anyhow::Result<()> {
        let server = Running::start(with_webhooks(&db, vec![0])).await?;
        let http = reqwest::Client::new();
        let client = client_token(&http, &server).await?;
        let rx = receiver::TestReceiver::start().await;
        rx.script(|path, _| receiver::Answer::status(if path == "down" { 500 } else { 200 }));

        // Endpoints are an admin's business.
        let spec = json!({"url": rx.url("ok"), "event_types": ["invoice.paid"]});
        let refused = http
            .post(server.url("/v1/webhooks/endpoints"))
            .bearer_auth(&client)
            .json(&spec)
            .send()
            .await?;
        problem(refused, StatusCode::FORBIDDEN).await?;
        let created = http
            .post(server.url("/v1/webhooks/endpoints"))
            .bearer_auth(server.admin())
            .json(&spec)
            .send()
            .await?;
        ensure!(created.status() == StatusCode::CREATED);
        let ok: Value = created.json().await?;
        let ok_id = ok["id"].as_str().context("an id")?.to_owned();
        let down: Value = http
            .post(server.url("/v1/webhooks/endpoints"))
            .bearer_auth(server.admin())
            .json(&json!({"url": rx.url("down")}))
            .send()
            .await?
            .json()
            .await?;
        let down_id = down["id"].as_str().context("an id")?.to_owned();
        let keys: Value = http
            .get(server.url(&format!("/v1/webhooks/endpoints/{ok_id}/keys")))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        let secret = keys[0]["key"].as_str().context("a key")?.to_owned();

        // Send with an idempotency key: once, again, and reused for another message.
        let send = |body: Value, key: &'static str| {
            http.post(server.url("/v1/webhooks/messages"))
                .bearer_auth(&client)
                .header("idempotency-key", key)
                .json(&body)
                .send()
        };
        let body = json!({"event_type": "invoice.paid", "payload": {"invoice": 7, "amount": 1.0}});
        let first = send(body.clone(), "inv-7").await?;
        ensure!(first.status() == StatusCode::CREATED);
        let first: Value = first.json().await?;
        ensure!(first["endpoints"] == 2, "{first}");
        let again = send(body, "inv-7").await?;
        ensure!(again.status() == StatusCode::OK);
        let again: Value = again.json().await?;
        ensure!(again["id"] == first["id"] && again["duplicate"] == true);
        let reused = send(json!({"event_type": "invoice.paid", "payload": 8}), "inv-7").await?;
        problem(reused, StatusCode::CONFLICT).await?;

        let id = first["id"].as_str().context("an id")?.to_owned();
        let message = settled_message(&http, &server, &id).await?;
        let statuses: Vec<(String, String)> = message["deliveries"]
            .as_array()
            .context("deliveries")?
            .iter()
            .map(|d| {
                (
                    d["endpoint_id"].as_str().unwrap_or("").to_owned(),
                    d["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        ensure!(
            statuses.contains(&(ok_id.clone(), "delivered".into())),
            "{statuses:?}"
        );
        ensure!(
            statuses.contains(&(down_id.clone(), "dead".into())),
            "{statuses:?}"
        );
        // The payload arrives as written, signed with the endpoint's key.
        let arrived = rx.arrivals_at("ok");
        ensure!(arrived.len() == 1);
        let a = &arrived[0];
        let verifier = onephase_webhook::signature::Verifier::new(vec![
            onephase_webhook::signature::VerifyKey::parse(&secret)?,
        ]);
        verifier.verify_at(
            &a.id(),
            &receiver::header(&a.headers, "webhook-timestamp"),
            &receiver::header(&a.headers, "webhook-signature"),
            &a.body,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )?;
        let delivered: Value = serde_json::from_slice(&a.body)?;
        ensure!(
            delivered["data"] == json!({"invoice": 7, "amount": 1.0}),
            "{delivered}"
        );

        let attempts: Value = http
            .get(server.url(&format!("/v1/webhooks/attempts?message_id={id}")))
            .bearer_auth(&client)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            attempts.as_array().is_some_and(|a| a.len() == 2),
            "{attempts}"
        );
        let dead: Value = http
            .get(server.url("/v1/webhooks/dead-letters"))
            .bearer_auth(&client)
            .send()
            .await?
            .json()
            .await?;
        ensure!(dead[0]["endpoint_id"] == down_id.as_str(), "{dead}");

        // The endpoint recovers; replay its dead letters.
        rx.script(|_, _| receiver::Answer::status(200));
        let replayed: Value = http
            .post(server.url("/v1/webhooks/replay"))
            .bearer_auth(server.admin())
            .json(&json!({"endpoint_id": down_id}))
            .send()
            .await?
            .json()
            .await?;
        ensure!(replayed["replayed"] == 1, "{replayed}");
        let message = settled_message(&http, &server, &id).await?;
        ensure!(
            message["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().all(|d| d["status"] == "delivered")),
            "{message}"
        );

        // Disable, rotate, patch, stats, dashboard, delete.
        let disabled: Value = http
            .post(server.url(&format!("/v1/webhooks/endpoints/{down_id}/disable")))
            .bearer_auth(server.admin())
            .json(&json!({"reason": "maintenance"}))
            .send()
            .await?
            .json()
            .await?;
        ensure!(disabled["enabled"] == false && disabled["disabled_reason"] == "maintenance");
        let rotated = http
            .post(server.url(&format!("/v1/webhooks/endpoints/{ok_id}/keys/rotate")))
            .bearer_auth(server.admin())
            .json(&json!({"overlap_secs": 60}))
            .send()
            .await?;
        ensure!(rotated.status() == StatusCode::OK);
        // Whether an endpoint is ordered is fixed when it is created: a change is refused and
        // changes nothing, the same value is accepted.
        let refused = http
            .patch(server.url(&format!("/v1/webhooks/endpoints/{ok_id}")))
            .bearer_auth(server.admin())
            .json(&json!({"max_concurrency": 7, "ordered": true}))
            .send()
            .await?;
        ensure!(refused.status() == StatusCode::BAD_REQUEST);
        let problem: Value = refused.json().await?;
        ensure!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("ordered is fixed")),
            "{problem}"
        );
        let patched: Value = http
            .patch(server.url(&format!("/v1/webhooks/endpoints/{ok_id}")))
            .bearer_auth(server.admin())
            .json(&json!({"event_types": null, "max_concurrency": 3, "ordered": false}))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            patched["event_types"].is_null()
                && patched["max_concurrency"] == 3
                && patched["keys"].as_array().is_some_and(|k| k.len() == 2),
            "{patched}"
        );
        let stats: Value = http
            .get(server.url("/v1/webhooks/stats"))
            .bearer_auth(&client)
            .send()
            .await?
            .json()
            .await?;
        ensure!(stats.as_array().is_some_and(|s| s.len() == 2), "{stats}");
        let page = http.get(server.url("/")).header("cookie", server.session()).send().await?.text().await?;
        ensure!(page.contains("Webhooks") && page.contains(&ok_id));
        let deleted = http
            .delete(server.url(&format!("/v1/webhooks/endpoints/{down_id}")))
            .bearer_auth(server.admin())
            .send()
            .await?;
        ensure!(deleted.status() == StatusCode::NO_CONTENT);
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn bad_webhook_requests_get_problems_and_change_nothing() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    // No allow-list: internal addresses are refused.
    let server = Running::start(config_for(&db)).await?;
    let http = reqwest::Client::new();
    let admin = server.admin().to_owned();
    let endpoints = server.url("/v1/webhooks/endpoints");
    let post = |url: String, body: &'static str| {
        http.post(url)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status) in [
        ("{", StatusCode::BAD_REQUEST),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"url": "http://example.com", "colour": "red"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"url": "ftp://example.com/x"}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"url": "http://127.0.0.1:9/x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"url": "http://10.0.0.1/x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"url": "http://169.254.169.254/latest/meta-data"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"url": "http://localhost:9/x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"url": "http://example.com", "max_concurrency": 0}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"url": "http://example.com", "key": "whsec_!!"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = post(endpoints.clone(), body).await?;
        problem(response, status)
            .await
            .with_context(|| body.to_owned())?;
    }
    let messages = server.url("/v1/webhooks/messages");
    for (body, status) in [
        ("not json", StatusCode::BAD_REQUEST),
        (r#"{"payload": 1}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"event_type": "", "payload": 1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"event_type": "a.b", "payload": 1, "app": "no spaces"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"event_type": "a.b", "payload": 1, "extra": true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let response = post(messages.clone(), body).await?;
        problem(response, status)
            .await
            .with_context(|| body.to_owned())?;
    }
    let bad_key = http
        .post(&messages)
        .bearer_auth(&admin)
        .header("idempotency-key", "")
        .json(&json!({"event_type": "a.b", "payload": 1}))
        .send()
        .await?;
    problem(bad_key, StatusCode::BAD_REQUEST).await?;
    let huge = json!({"event_type": "a.b", "payload": "x".repeat(300 * 1024)});
    let too_large = http
        .post(&messages)
        .bearer_auth(&admin)
        .json(&huge)
        .send()
        .await?;
    problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await?;
    for path in [
        "/v1/webhooks/endpoints/ep_nope",
        "/v1/webhooks/messages/msg_nope",
        "/v1/webhooks/endpoints/ep_nope/keys",
    ] {
        let response = http
            .get(server.url(path))
            .bearer_auth(&admin)
            .send()
            .await?;
        problem(response, StatusCode::NOT_FOUND)
            .await
            .with_context(|| path)?;
    }
    for path in [
        "/v1/webhooks/messages?limit=0",
        "/v1/webhooks/attempts?limit=5000",
        "/v1/webhooks/stats?window_secs=0",
    ] {
        let response = http
            .get(server.url(path))
            .bearer_auth(&admin)
            .send()
            .await?;
        problem(response, StatusCode::BAD_REQUEST)
            .await
            .with_context(|| path)?;
    }
    let replay = post(server.url("/v1/webhooks/replay"), "{}").await?;
    problem(replay, StatusCode::BAD_REQUEST).await?;
    let replay = post(
        server.url("/v1/webhooks/replay"),
        r#"{"message_id": "msg_nope"}"#,
    )
    .await?;
    problem(replay, StatusCode::NOT_FOUND).await?;
    // Nothing was recorded.
    for path in ["/v1/webhooks/endpoints", "/v1/webhooks/messages"] {
        let list: Value = http
            .get(server.url(path))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        ensure!(list.as_array().is_some_and(Vec::is_empty), "{path}: {list}");
    }
    server.stop().await?;
    db.close().await?;
    Ok(())
}

async fn post_lease(
    http: &reqwest::Client,
    server: &Running,
    token: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(http
        .post(server.url(&format!("/v1/leases/{path}")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?)
}

async fn lease_list(
    http: &reqwest::Client,
    server: &Running,
    token: &str,
) -> anyhow::Result<Value> {
    Ok(http
        .get(server.url("/v1/leases"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

per_backend! {
    #[tokio::test]
    async fn leases_are_acquired_renewed_released_and_listed_over_http(db) -> anyhow::Result<()> {
        let mut config = config_for(&db);
        config.lease.max_wait_ms = Some(300);
        let server = Running::start(config).await?;
        let http = reqwest::Client::new();
        let client = client_token(&http, &server).await?;
        let hold = json!({"holder": "a", "ttl_ms": 5000});
        let granted = post_lease(&http, &server, &client, "deploy/acquire", &hold).await?;
        ensure!(granted.status() == StatusCode::OK);
        let grant: Value = granted.json().await?;
        let token = grant["token"].as_u64().context("a token")?;
        ensure!(
            grant["holder"] == "a" && grant["name"] == "deploy",
            "{grant}"
        );

        let taken = json!({"holder": "b", "ttl_ms": 5000});
        let held = post_lease(&http, &server, &client, "deploy/acquire", &taken).await?;
        let body = problem(held, StatusCode::CONFLICT).await?;
        ensure!(
            body["detail"].as_str().is_some_and(|d| d.contains("\"a\"")),
            "{body}"
        );
        let waited = json!({"holder": "b", "ttl_ms": 5000, "wait_ms": 200});
        problem(
            post_lease(&http, &server, &client, "deploy/acquire", &waited).await?,
            StatusCode::CONFLICT,
        )
        .await?;
        // A wait longer than the server allows is cut to its bound (as documented), not
        // refused: still held after it, so 409.
        let patient = json!({"holder": "b", "ttl_ms": 5000, "wait_ms": 1_000_000_000_u64});
        let body = problem(
            post_lease(&http, &server, &client, "deploy/acquire", &patient).await?,
            StatusCode::CONFLICT,
        )
        .await?;
        ensure!(body["type"] == "urn:onephase:problem:lease-held", "{body}");

        let renewed = post_lease(
            &http,
            &server,
            &client,
            "deploy/renew",
            &json!({"token": token, "ttl_ms": 8000}),
        )
        .await?;
        ensure!(renewed.status() == StatusCode::OK);
        problem(
            post_lease(
                &http,
                &server,
                &client,
                "deploy/renew",
                &json!({"token": token + 1, "ttl_ms": 8000}),
            )
            .await?,
            StatusCode::CONFLICT,
        )
        .await?;
        problem(
            post_lease(
                &http,
                &server,
                &client,
                "nothing/renew",
                &json!({"token": 1, "ttl_ms": 8000}),
            )
            .await?,
            StatusCode::NOT_FOUND,
        )
        .await?;

        // Bad input: a problem each, and nothing changes.
        for (path, body, status) in [
            (
                "deploy/acquire",
                json!({"holder": "b", "ttl_ms": 0}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/acquire",
                json!({"holder": "b", "ttl_ms": 86_400_001}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/acquire",
                json!({"holder": "", "ttl_ms": 1000}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/acquire",
                json!({"holder": "tab\there", "ttl_ms": 1000}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/acquire",
                json!({"holder": "b", "ttl_ms": -5}),
                // Out of range whatever the sign: 400, as above.
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/acquire",
                json!({"holder": "b", "ttl_ms": 1000, "extra": 1}),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "with%20space/acquire",
                json!({"holder": "b", "ttl_ms": 1000}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deploy/release",
                json!({"token": token + 1}),
                StatusCode::CONFLICT,
            ),
            (
                "deploy/release",
                json!({"token": -1}),
                // Out of range whatever the sign: 400, as above.
                StatusCode::BAD_REQUEST,
            ),
            (
                "nothing/release",
                json!({"token": 1}),
                StatusCode::NOT_FOUND,
            ),
        ] {
            let response = post_lease(&http, &server, &client, path, &body).await?;
            problem(response, status)
                .await
                .with_context(|| format!("{path} {body}"))?;
        }
        let malformed = http
            .post(server.url("/v1/leases/deploy/acquire"))
            .bearer_auth(&client)
            .header("content-type", "application/json")
            .body("{\"holder\": ")
            .send()
            .await?;
        problem(malformed, StatusCode::BAD_REQUEST).await?;
        let anonymous = http
            .post(server.url("/v1/leases/deploy/release"))
            .json(&json!({"token": token}))
            .send()
            .await?;
        problem(anonymous, StatusCode::UNAUTHORIZED).await?;
        let listed = lease_list(&http, &server, &client).await?;
        ensure!(
            listed.as_array().map(Vec::len) == Some(1)
                && listed[0]["holder"] == "a"
                && listed[0]["token"] == token,
            "{listed}"
        );

        let released = post_lease(
            &http,
            &server,
            &client,
            "deploy/release",
            &json!({"token": token}),
        )
        .await?;
        ensure!(released.status() == StatusCode::NO_CONTENT);
        let next: Value = post_lease(&http, &server, &client, "deploy/acquire", &taken)
            .await?
            .error_for_status()?
            .json()
            .await?;
        ensure!(next["token"].as_u64() > Some(token), "{next}");
        let page = http.get(server.url("/")).header("cookie", server.session()).send().await?.text().await?;
        ensure!(
            page.contains("Leases") && page.contains("deploy"),
            "the dashboard lists the holder"
        );
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn limits_are_defined_checked_and_listed_over_http(db) -> anyhow::Result<()> {
        let mut config = config_for(&db);
        config
            .limit
            .policy
            .push(onephase_server::limit::NamedPolicy {
                name: "login".to_owned(),
                spec: onephase_server::limit::PolicySpec {
                    algorithm: "fixed_window".to_owned(),
                    limit: 2,
                    period_ms: 60_000,
                    burst: None,
                    fail_mode: None,
                    chunk: None,
                },
            });
        let server = Running::start(config).await?;
        let http = reqwest::Client::new();
        let client = client_token(&http, &server).await?;
        let check = |policy: &str, body: Value| {
            http.post(server.url(&format!("/v1/limits/{policy}/check")))
                .bearer_auth(&client)
                .json(&body)
                .send()
        };
        let mut allowed = Vec::new();
        for _ in 0..3 {
            let d: Value = check("login", json!({"key": "alice"}))
                .await?
                .error_for_status()?
                .json()
                .await?;
            allowed.push(d["allowed"] == true);
            if d["allowed"] == false {
                ensure!(
                    d["retry_after_ms"]
                        .as_u64()
                        .is_some_and(|ms| ms > 0 && ms <= 60_000),
                    "{d}"
                );
                ensure!(d["remaining"] == 0 && d["limit"] == 2, "{d}");
            }
        }
        ensure!(allowed == vec![true, true, false], "{allowed:?}");
        let other: Value = check("login", json!({"key": "bob", "cost": 2}))
            .await?
            .json()
            .await?;
        ensure!(
            other["allowed"] == true && other["remaining"] == 0,
            "{other}"
        );

        // Policies through the API are an admin's; the configuration's are read-only.
        let spec = json!({"algorithm": "gcra", "limit": 5, "period_ms": 1000, "burst": 2});
        let put = |name: &str, token: &str, body: &Value| {
            http.put(server.url(&format!("/v1/limits/{name}")))
                .bearer_auth(token)
                .json(body)
                .send()
        };
        problem(put("api", &client, &spec).await?, StatusCode::FORBIDDEN).await?;
        ensure!(put("api", server.admin(), &spec).await?.status() == StatusCode::CREATED);
        ensure!(put("api", server.admin(), &spec).await?.status() == StatusCode::NO_CONTENT);
        problem(
            put("login", server.admin(), &spec).await?,
            StatusCode::CONFLICT,
        )
        .await?;
        let burst: Vec<bool> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                let d: Value = check("api", json!({"key": "k"})).await?.json().await?;
                v.push(d["allowed"] == true);
            }
            v
        };
        ensure!(burst == vec![true, true, false], "burst 2: {burst:?}");

        // Bad input: a problem each, nothing counted or defined.
        for (policy, body, status) in [
            ("nothing", json!({"key": "k"}), StatusCode::NOT_FOUND),
            ("api", json!({"key": ""}), StatusCode::BAD_REQUEST),
            (
                "api",
                json!({"key": "k", "cost": 0}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "api",
                json!({"key": "k", "cost": 3}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "api",
                json!({"key": "k", "cost": -1}),
                // Out of range whatever the sign: 400, as above.
                StatusCode::BAD_REQUEST,
            ),
            ("api", json!({"cost": 1}), StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            problem(check(policy, body.clone()).await?, status)
                .await
                .with_context(|| format!("{policy} {body}"))?;
        }
        for (name, body) in [
            (
                "bad",
                json!({"algorithm": "token_bucket", "limit": 5, "period_ms": 1000}),
            ),
            (
                "bad",
                json!({"algorithm": "gcra", "limit": 0, "period_ms": 1000}),
            ),
            (
                "bad",
                json!({"algorithm": "gcra", "limit": 5, "period_ms": 0}),
            ),
            (
                "bad",
                json!({"algorithm": "gcra", "limit": 5, "period_ms": 1000, "burst": 0}),
            ),
            (
                "bad name!",
                json!({"algorithm": "gcra", "limit": 5, "period_ms": 1000}),
            ),
        ] {
            problem(
                put(name, server.admin(), &body).await?,
                StatusCode::BAD_REQUEST,
            )
            .await
            .with_context(|| format!("{name} {body}"))?;
        }
        let listed: Value = http
            .get(server.url("/v1/limits"))
            .bearer_auth(&client)
            .send()
            .await?
            .json()
            .await?;
        let names: Vec<&str> = listed
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        ensure!(names == vec!["api", "login"], "{listed}");
        ensure!(
            listed[1]["decisions"] == 4 && listed[1]["rejections"] == 1,
            "{listed}"
        );
        let page = http.get(server.url("/")).header("cookie", server.session()).send().await?.text().await?;
        ensure!(
            page.contains("Rate limits") && page.contains("login"),
            "dashboard"
        );
        let removed = http
            .delete(server.url("/v1/limits/api"))
            .bearer_auth(server.admin())
            .send()
            .await?;
        ensure!(removed.status() == StatusCode::NO_CONTENT);
        problem(
            check("api", json!({"key": "k"})).await?,
            StatusCode::NOT_FOUND,
        )
        .await?;
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn servers_on_one_database_share_its_limits_whole_or_in_chunks(db) -> anyhow::Result<()> {
        let shared_config = || {
            let mut config = config_for(&db);
            config.limit.store = Some(onephase_server::limit::LimitStore::Database);
            config
        };
        let a = Running::start(shared_config()).await?;
        let b = Running::start(shared_config()).await?;
        let http = reqwest::Client::new();
        let client = client_token(&http, &a).await?;
        let define = |name: &str, body: Value| {
            http.put(a.url(&format!("/v1/limits/{name}")))
                .bearer_auth(a.admin())
                .json(&body)
                .send()
        };
        let spec = json!({"algorithm": "fixed_window", "limit": 5, "period_ms": 60_000});
        ensure!(define("whole", spec).await?.status() == StatusCode::CREATED);
        let spec =
            json!({"algorithm": "fixed_window", "limit": 6, "period_ms": 60_000, "chunk": 2});
        ensure!(define("chunked", spec).await?.status() == StatusCode::CREATED);
        let bad = json!({"algorithm": "fixed_window", "limit": 6, "period_ms": 60_000, "chunk": 7});
        problem(define("bad", bad).await?, StatusCode::BAD_REQUEST).await?;
        for (policy, limit) in [("whole", 5), ("chunked", 6)] {
            let mut admitted = 0;
            for i in 0..12 {
                let server = if i % 2 == 0 { &a } else { &b };
                let d: Value = http
                    .post(server.url(&format!("/v1/limits/{policy}/check")))
                    .bearer_auth(&client)
                    .json(&json!({"key": "k"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                ensure!(d["fallback"].is_null(), "{d}");
                admitted += u32::from(d["allowed"] == true);
            }
            // Two servers, one count: the whole limit and no more (the chunks of 2 divide 6).
            ensure!(
                admitted == limit,
                "{policy}: {admitted} admitted, limit {limit}"
            );
        }
        let listed: Value = http
            .get(b.url("/v1/limits"))
            .bearer_auth(&client)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            listed[0]["store"] == "database" && listed[0]["spec"]["chunk"] == 2,
            "{listed}"
        );
        b.stop().await?;
        a.stop().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_policy_changed_through_one_server_reaches_the_others(db) -> anyhow::Result<()> {
        let a = Running::start(config_for(&db)).await?;
        let b = Running::start(config_for(&db)).await?;
        let http = reqwest::Client::new();
        let client = client_token(&http, &a).await?;
        let define = |limit: u64| {
            http.put(a.url("/v1/limits/shared"))
                .bearer_auth(a.admin())
                .json(&json!({"algorithm": "fixed_window", "limit": limit, "period_ms": 60_000}))
                .send()
        };
        let check_on_b = || {
            http.post(b.url("/v1/limits/shared/check"))
                .bearer_auth(&client)
                .json(&json!({"key": "k"}))
                .send()
        };
        ensure!(define(1).await?.status() == StatusCode::CREATED);
        let first: Value = check_on_b().await?.json().await?;
        let second: Value = check_on_b().await?.json().await?;
        ensure!(
            first["allowed"] == true && second["allowed"] == false,
            "{first} {second}"
        );
        ensure!(define(3).await?.status() == StatusCode::NO_CONTENT);
        tokio::time::sleep(onephase_server::limit::POLICY_REFRESH + Duration::from_millis(200))
            .await;
        let after: Value = check_on_b().await?.json().await?;
        ensure!(
            after["allowed"] == true && after["limit"] == 3,
            "B follows the redefinition: {after}"
        );
        let removed = http
            .delete(a.url("/v1/limits/shared"))
            .bearer_auth(a.admin())
            .send()
            .await?;
        ensure!(removed.status() == StatusCode::NO_CONTENT);
        tokio::time::sleep(onephase_server::limit::POLICY_REFRESH + Duration::from_millis(200))
            .await;
        problem(check_on_b().await?, StatusCode::NOT_FOUND).await?;
        b.stop().await?;
        a.stop().await?;
        db.close().await?;
        Ok(())
    }
}

/// The value of the hidden `csrf` field of a dashboard page.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    let at = page
        .find(r#"name="csrf" value=""#)
        .context("the page has no form")?
        + r#"name="csrf" value=""#.len();
    Ok(page[at..]
        .split('"')
        .next()
        .context("a csrf value")?
        .to_owned())
}

per_backend! {
    #[tokio::test]
    async fn the_dashboard_signs_in_and_an_admin_acts_from_it_with_csrf(db) -> anyhow::Result<()> {
        let server = Running::start(with_webhooks(&db, vec![0])).await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let client = client_token(&http, &server).await?;
        let rx = receiver::TestReceiver::start().await;
        rx.script(|_, _| receiver::Answer::status(500));

        // Without a session every page sends to the sign-in form; a wrong token is refused.
        for path in ["/", "/dashboard/panels", "/dashboard/endpoints/ep_x"] {
            let page = http.get(server.url(path)).send().await?;
            ensure!(page.status() == StatusCode::SEE_OTHER, "{path}: {}", page.status());
            ensure!(page.headers()["location"] == "/dashboard/sign-in", "{path}");
        }
        let refused = http
            .post(server.url("/dashboard/sign-in"))
            .form(&[("token", "op_wrong")])
            .send()
            .await?;
        ensure!(refused.status() == StatusCode::UNAUTHORIZED);
        ensure!(refused.text().await?.contains("not signed in"));
        let signed_in = http
            .post(server.url("/dashboard/sign-in"))
            .form(&[("token", server.admin())])
            .send()
            .await?;
        ensure!(signed_in.status() == StatusCode::SEE_OTHER);
        let cookie = signed_in.headers()["set-cookie"].to_str()?.to_owned();
        ensure!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let session = cookie.split(';').next().context("a cookie")?.to_owned();
        let overview = http
            .get(server.url("/"))
            .header("cookie", &session)
            .send()
            .await?;
        ensure!(overview.status() == StatusCode::OK);
        ensure!(overview.headers()["x-frame-options"] == "DENY");
        let csp = overview.headers()["content-security-policy"].to_str()?.to_owned();
        ensure!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));

        // An endpoint whose receiver fails: one attempt, then a dead letter.
        let endpoint: Value = http
            .post(server.url("/v1/webhooks/endpoints"))
            .bearer_auth(server.admin())
            .json(&json!({"url": rx.url("down")}))
            .send()
            .await?
            .json()
            .await?;
        let id = endpoint["id"].as_str().context("an id")?.to_owned();
        let sent: Value = http
            .post(server.url("/v1/webhooks/messages"))
            .bearer_auth(server.admin())
            .json(&json!({"event_type": "x", "payload": {"n": 1}}))
            .send()
            .await?
            .json()
            .await?;
        let message = sent["id"].as_str().context("a message id")?;
        settled_message(&http, &server, message).await?;
        let dead = |http: reqwest::Client, url: String, admin: String| async move {
            let list: Value = http.get(url).bearer_auth(admin).send().await?.json().await?;
            anyhow::Ok(list.as_array().map_or(0, Vec::len))
        };
        let dead_url = server.url(&format!("/v1/webhooks/dead-letters?endpoint_id={id}"));
        ensure!(dead(http.clone(), dead_url.clone(), server.admin().to_owned()).await? == 1);

        // The overview links to the endpoint; its page offers the replay, with this session's
        // CSRF token.
        let panels = http
            .get(server.url("/dashboard/panels"))
            .header("cookie", &session)
            .send()
            .await?
            .text()
            .await?;
        ensure!(panels.contains(&format!("/dashboard/endpoints/{id}")), "{panels}");
        for chart in ["Delivered per 30 s", "Mean latency", "Runs"] {
            ensure!(
                panels.contains(&format!("aria-label=\"{chart}\"")),
                "no {chart} chart"
            );
        }
        let page_url = server.url(&format!("/dashboard/endpoints/{id}"));
        let page = http.get(&page_url).header("cookie", &session).send().await?.text().await?;
        ensure!(page.contains("Replay 1 dead letter<") && page.contains("500"), "{page}");
        let csrf = csrf_of(&page)?;
        let replay_url = server.url(&format!("/dashboard/endpoints/{id}/replay"));

        // A form without this session's CSRF token changes nothing.
        for bad in ["", "0123456789abcdef0123456789abcdef"] {
            let forged = http
                .post(&replay_url)
                .header("cookie", &session)
                .form(&[("csrf", bad)])
                .send()
                .await?;
            ensure!(forged.status() == StatusCode::FORBIDDEN, "{}", forged.status());
        }
        // A client token's session may look, not act.
        let client_session = format!("onephase_session={client}");
        let client_page = http
            .get(&page_url)
            .header("cookie", &client_session)
            .send()
            .await?
            .text()
            .await?;
        ensure!(!client_page.contains("Replay"), "a client session is offered actions");
        let client_csrf = csrf_of(&client_page)?; // the sign-out form's
        let as_client = http
            .post(&replay_url)
            .header("cookie", &client_session)
            .form(&[("csrf", client_csrf.as_str())])
            .send()
            .await?;
        ensure!(as_client.status() == StatusCode::FORBIDDEN);
        ensure!(dead(http.clone(), dead_url.clone(), server.admin().to_owned()).await? == 1);

        // The admin replays: the delivery is pending again and is attempted again.
        let replayed = http
            .post(&replay_url)
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await?;
        ensure!(replayed.status() == StatusCode::SEE_OTHER);
        let back = replayed.headers()["location"].to_str()?.to_owned();
        ensure!(back == format!("/dashboard/endpoints/{id}?done=replayed"), "{back}");
        for _ in 0..400 {
            if rx.arrivals().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ensure!(rx.arrivals().len() >= 2, "the replay was not attempted");

        // Disable and enable from the page.
        let disabled = http
            .post(server.url(&format!("/dashboard/endpoints/{id}/disable")))
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str()), ("reason", "receiver on fire")])
            .send()
            .await?;
        ensure!(disabled.status() == StatusCode::SEE_OTHER);
        let shown: Value = http
            .get(server.url(&format!("/v1/webhooks/endpoints/{id}")))
            .bearer_auth(server.admin())
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            shown["enabled"] == false && shown["disabled_reason"] == "receiver on fire",
            "{shown}"
        );

        // Signing out clears the cookie.
        let out = http
            .post(server.url("/dashboard/sign-out"))
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await?;
        ensure!(out.status() == StatusCode::SEE_OTHER);
        ensure!(out.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_run_retrying_one_step_shows_on_the_dashboard_with_its_last_error(db) -> anyhow::Result<()> {
        let mut config = config_for(&db);
        config.saga.allow_networks = vec!["127.0.0.0/8".into()];
        config.saga.poll_interval_ms = Some(20);
        let server = Running::start(config).await?;
        let http = reqwest::Client::new();
        let rx = receiver::TestReceiver::start().await;
        rx.script(|_, _| receiver::Answer::status(503));
        let definition = json!({"name": "flaky", "version": 1, "steps": [
            {"name": "charge", "kind": "pivot", "action": {
                "method": "POST", "url": rx.url("charge"), "max_attempts": "unlimited",
                "backoff_base_ms": 10, "backoff_cap_ms": 20}}]});
        let registered = http
            .post(server.url("/v1/sagas"))
            .bearer_auth(server.admin())
            .json(&definition)
            .send()
            .await?;
        ensure!(registered.status() == StatusCode::CREATED);
        let run: Value = http
            .post(server.url("/v1/sagas/flaky/runs"))
            .bearer_auth(server.admin())
            .json(&json!({"input": {}}))
            .send()
            .await?
            .json()
            .await?;
        let id = run["id"].as_str().context("a run id")?.to_owned();
        for _ in 0..400 {
            if rx.arrivals().len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ensure!(rx.arrivals().len() >= 4, "the step was not retried");

        let panels = http
            .get(server.url("/dashboard/panels"))
            .header("cookie", server.session())
            .send()
            .await?
            .text()
            .await?;
        let sagas = panels
            .split("<section")
            .find(|s| s.contains("<h2>Sagas"))
            .context("a saga panel")?;
        ensure!(
            sagas.contains("needs attention")
                && sagas.contains("Retrying the same step")
                && sagas.contains(&format!("/dashboard/runs/{id}"))
                && sagas.contains("charge (action)")
                && sagas.contains("503"),
            "{sagas}"
        );
        // Charts of the last hour, drawn by the server (sampled at start, then every 30 s).
        ensure!(panels.contains("aria-label=\"Runs\""), "no chart of runs");
        // The panel with the problem comes first.
        ensure!(
            panels.find("<h2>Sagas") < panels.find("<h2>Server"),
            "the saga panel is not first"
        );
        server.stop().await?;
        db.close().await?;
        Ok(())
    }
}

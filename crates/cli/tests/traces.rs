//! Traces from outside: `onephase serve` exports its spans over OTLP/HTTP to a receiver in
//! this test, which decodes them with the OpenTelemetry protocol's own message types. One
//! trace, started by the client, must follow the request through an outbox event, a saga's
//! step, the participant's own call back, and a webhook delivery, with every span's parent the
//! span that caused it, and the `traceparent` each participant receives naming the span that
//! called it.

mod common;
#[path = "../../webhook/tests/common/mod.rs"]
mod receiver;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use axum::body::Bytes;
use axum::http::HeaderMap;
use common::{Api, Serve, serve_with};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::{Value, json};

/// A span as the receiver got it: ids in hex, as in a `traceparent`.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP traces receiver: decodes each export request and keeps its spans.
struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    async fn start() -> anyhow::Result<Self> {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (kept, seen) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (kept, seen) = (kept.clone(), seen.clone());
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    lock(&seen).push(content_type);
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    lock(&kept).extend(spans_of(request));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/traces", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url,
            spans,
            requests,
        })
    }

    fn spans(&self) -> Vec<Received> {
        lock(&self.spans).clone()
    }

    /// Waits (up to 20 s) for a span named `name` in trace `trace_id`.
    async fn span(&self, trace_id: &str, name: &str) -> anyhow::Result<Received> {
        self.span_where(trace_id, name, |_| true).await
    }

    /// Waits (up to 20 s) for a span named `name` in trace `trace_id` that `matches`.
    async fn span_where(
        &self,
        trace_id: &str,
        name: &str,
        matches: impl Fn(&Received) -> bool,
    ) -> anyhow::Result<Received> {
        for _ in 0..400 {
            if let Some(span) = self
                .spans()
                .into_iter()
                .find(|s| s.trace_id == trace_id && s.name == name && matches(s))
            {
                return Ok(span);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "no span {name:?} in trace {trace_id} within 20 s; received: {:#?}",
            self.spans()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Received> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let text = |value: Option<&Any>| match value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    };
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    service: service.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// A `traceparent` of a new trace, as a client in its own trace would send it.
fn client_traceparent() -> (String, String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// The trace id and parent span id of a `traceparent`.
fn parts(traceparent: &str) -> anyhow::Result<(String, String)> {
    let fields: Vec<&str> = traceparent.split('-').collect();
    ensure!(
        fields.len() == 4 && fields[1].len() == 32 && fields[2].len() == 16,
        "not a traceparent: {traceparent:?}"
    );
    Ok((fields[1].to_owned(), fields[2].to_owned()))
}

/// A saga participant that continues the trace it was called in: it sends a webhook message
/// through the server with the `traceparent` it received, as a service instrumented with any
/// OpenTelemetry SDK would.
struct Participant {
    url: String,
    received: Arc<Mutex<Vec<String>>>,
}

impl Participant {
    async fn start(base: String, token: String) -> anyhow::Result<Self> {
        let server = Arc::new((base, token));
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/reserve",
            axum::routing::post(move |headers: HeaderMap| {
                let (kept, server) = (kept.clone(), server.clone());
                async move {
                    let traceparent = receiver::header(&headers, "traceparent");
                    lock(&kept).push(traceparent.clone());
                    let (base, token) = &*server;
                    let sent = reqwest::Client::new()
                        .post(format!("{base}/v1/webhooks/messages"))
                        .bearer_auth(token)
                        .header("traceparent", traceparent)
                        .header(
                            "idempotency-key",
                            receiver::header(&headers, "idempotency-key"),
                        )
                        .json(&json!({"event_type": "stock.reserved", "payload": {"sku": "A-1"}}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => axum::http::StatusCode::OK,
                        _ => axum::http::StatusCode::BAD_GATEWAY,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/reserve", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, received })
    }
}

/// Inserts an outbox row as an application in a trace would: its `traceparent` in the headers.
async fn insert_traced_row(path: &Path, traceparent: &str) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    sqlx::query(
        "INSERT INTO onephase_outbox (id, topic, key, payload, headers) VALUES ($1, 'orders.created', 'o-1', $2, $3)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(br#"{"order":1}"#.as_slice())
    .bind(json!({"traceparent": traceparent}).to_string())
    .execute(&mut conn)
    .await?;
    Ok(())
}

async fn wait_for_table(path: &Path) -> anyhow::Result<()> {
    for _ in 0..400 {
        if insert_probe(path).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the relay did not create the outbox table in {}",
        path.display()
    )
}

async fn insert_probe(path: &Path) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await?;
    sqlx::query("SELECT 1 FROM onephase_outbox LIMIT 1")
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// POSTs `body` to `path` with the admin token, in the trace of `traceparent` when given.
async fn post(
    api: &Api,
    path: &str,
    body: Value,
    traceparent: Option<&str>,
) -> anyhow::Result<Value> {
    let mut request = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .json(&body);
    if let Some(t) = traceparent {
        request = request.header("traceparent", t);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "POST {path}: {status} {body}");
    Ok(body)
}

/// Starts a run of the saga in the trace of `traceparent` and waits until it completes;
/// returns its id.
async fn run_traced(api: &Api, input: Value, traceparent: &str) -> anyhow::Result<String> {
    let run = post(
        api,
        "/v1/sagas/reserve/runs",
        json!({ "input": input }),
        Some(traceparent),
    )
    .await?;
    let id = run["id"].as_str().context("run id")?.to_owned();
    wait_completed(api, &id).await?;
    Ok(id)
}

/// Waits (up to 20 s) until run `id` completes.
async fn wait_completed(api: &Api, id: &str) -> anyhow::Result<()> {
    let path = format!("/v1/saga-runs/{id}");
    for _ in 0..400 {
        if api.get(&path).await?["state"] == "completed" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "run {id} did not complete within 20 s: {}",
        api.get(&path).await?
    )
}

fn config(app_db: &Path, traces: &str) -> String {
    format!(
        "[[outbox.relay]]\nname = \"app\"\nsource = \"sqlite://{}\"\nsink = \"log\"\n\
         [[outbox.relay]]\nname = \"server\"\nsink = \"log\"\n\
         [webhook]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n\
         [saga]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n{traces}",
        app_db.display()
    )
}

/// Starts the server, the participant and a webhook endpoint, defines the saga; returns the
/// API, the participant and the webhook receiver.
async fn ground(
    dir: &Path,
    traces: &str,
) -> anyhow::Result<(Serve, Api, Participant, receiver::TestReceiver)> {
    let server = serve_with(dir, &config(&dir.join("app.db"), traces)).await?;
    let api = Api::of(&server)?;
    let participant = Participant::start(api.base.clone(), api.token.clone()).await?;
    let hooks = receiver::TestReceiver::start().await;
    post(
        &api,
        "/v1/webhooks/endpoints",
        json!({"url": hooks.url("hook")}),
        None,
    )
    .await?;
    let definition = json!({"name": "reserve", "version": 1, "steps": [
        {"name": "stock", "kind": "pivot", "action": {"method": "POST", "url": participant.url}}]});
    post(&api, "/v1/sagas", definition, None).await?;
    Ok((server, api, participant, hooks))
}

async fn webhook_traceparent(hooks: &receiver::TestReceiver) -> anyhow::Result<String> {
    for _ in 0..400 {
        if let Some(arrival) = hooks.arrivals_at("hook").first() {
            return Ok(receiver::header(&arrival.headers, "traceparent"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no webhook delivery within 20 s")
}

#[tokio::test]
async fn one_trace_follows_a_request_through_an_outbox_event_a_saga_step_and_a_webhook()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let otlp = OtlpReceiver::start().await?;
    let traces = format!(
        "[traces]\notlp_endpoint = \"{}\"\nservice_name = \"onephase-under-test\"\n",
        otlp.url
    );
    let (server, api, participant, hooks) = ground(dir.path(), &traces).await?;
    let (traceparent, trace, client_span) = client_traceparent();

    // The outbox: an application writes a row in its trace; the relay's publish is a child of
    // the writer's span, and the event keeps the writer's context for its consumers.
    wait_for_table(&dir.path().join("app.db")).await?;
    insert_traced_row(&dir.path().join("app.db"), &traceparent).await?;
    let publish = otlp.span(&trace, "outbox publish").await?;
    ensure!(publish.parent == client_span, "{publish:?}");
    ensure!(
        publish.attribute("topic") == Some("orders.created"),
        "{publish:?}"
    );
    let events: Value = api
        .http
        .get(format!("{}/v1/outbox/orders.created", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        events.to_string().contains(&traceparent),
        "the relayed event lost its traceparent: {events}"
    );

    // The saga: the client starts a run in its trace.
    let run_id = run_traced(&api, json!({}), &traceparent).await?;

    let start = otlp.span(&trace, "POST /v1/sagas/{name}/runs").await?;
    ensure!(start.parent == client_span, "the request span: {start:?}");
    ensure!(start.service == "onephase-under-test", "{start:?}");
    ensure!(
        start.attribute("http.response.status_code") == Some("201"),
        "{start:?}"
    );
    let driven = otlp.span(&trace, "saga run").await?;
    ensure!(driven.parent == start.span_id, "the run's span: {driven:?}");
    ensure!(
        driven.attribute("run") == Some(run_id.as_str()),
        "{driven:?}"
    );
    // The run's own events (the saga's outbox topic) carry its context: their publish by
    // the relay reading the server's store is a child of the starting request.
    let event = otlp
        .span_where(&trace, "outbox publish", |s| {
            s.attribute("topic") == Some("onephase.saga")
        })
        .await?;
    ensure!(
        event.parent == start.span_id,
        "the run event's publish: {event:?}"
    );
    let step = otlp.span(&trace, "saga step").await?;
    ensure!(step.parent == driven.span_id, "the step's span: {step:?}");
    ensure!(step.attribute("step") == Some("stock"), "{step:?}");

    // The participant was called in the step's span, and continued it.
    let called = lock(&participant.received)
        .first()
        .cloned()
        .unwrap_or_default();
    ensure!(
        parts(&called)? == (trace.clone(), step.span_id.clone()),
        "the participant got {called:?}; the step span is {step:?}"
    );
    let send = otlp.span(&trace, "POST /v1/webhooks/messages").await?;
    ensure!(
        send.parent == step.span_id,
        "the participant's call: {send:?}"
    );

    // The webhook: delivered in a span that is a child of the send, whose id the receiver got.
    let delivery = otlp.span(&trace, "webhook delivery").await?;
    ensure!(
        delivery.parent == send.span_id,
        "the delivery's span: {delivery:?}"
    );
    ensure!(
        delivery.attribute("http.response.status_code") == Some("200"),
        "{delivery:?}"
    );
    let received = webhook_traceparent(&hooks).await?;
    ensure!(
        parts(&received)? == (trace.clone(), delivery.span_id.clone()),
        "the endpoint got {received:?}; the delivery span is {delivery:?}"
    );

    // A malformed traceparent is ignored, as the W3C specification asks: the run starts a
    // trace of its own and still completes.
    let before: std::collections::HashSet<String> =
        otlp.spans().into_iter().map(|s| s.trace_id).collect();
    run_traced(&api, json!({"n": 2}), "00-zz-not-a-trace-01").await?;
    let mut fresh = None;
    for _ in 0..400 {
        fresh = otlp
            .spans()
            .into_iter()
            .find(|s| s.name == "POST /v1/sagas/{name}/runs" && !before.contains(&s.trace_id));
        if fresh.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = fresh.context("no span for the start with a malformed traceparent")?;
    ensure!(fresh.parent.is_empty(), "a root span: {fresh:?}");
    otlp.span(&fresh.trace_id, "saga step").await?;

    ensure!(
        lock(&otlp.requests)
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "export content types: {:?}",
        lock(&otlp.requests)
    );
    let status = server.terminate().await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// Without an exporter, the client's `traceparent` still reaches the participant and the
/// webhook endpoint, unchanged: the context travels through a server that records nothing.
#[tokio::test]
async fn without_an_exporter_the_clients_traceparent_travels_on_unchanged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api, participant, hooks) = ground(dir.path(), "").await?;
    let (traceparent, ..) = client_traceparent();
    run_traced(&api, json!({}), &traceparent).await?;
    let called = lock(&participant.received)
        .first()
        .cloned()
        .unwrap_or_default();
    ensure!(
        called == traceparent,
        "the participant got {called:?}, not {traceparent:?}"
    );
    let received = webhook_traceparent(&hooks).await?;
    ensure!(
        received == traceparent,
        "the endpoint got {received:?}, not {traceparent:?}"
    );
    let status = server.terminate().await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// A collector that is down costs spans, never requests: the server answers and the saga
/// completes, and an invalid endpoint is refused at start with the setting named.
#[tokio::test]
async fn a_collector_that_is_down_does_not_slow_or_fail_the_work() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dead = format!("http://127.0.0.1:{}/v1/traces", common::free_port()?);
    let traces = format!("[traces]\notlp_endpoint = \"{dead}\"\n");
    let (server, api, ..) = ground(dir.path(), &traces).await?;
    let (traceparent, ..) = client_traceparent();
    for n in 0..5 {
        run_traced(&api, json!({"n": n}), &traceparent).await?;
    }
    let status = server.terminate().await?;
    ensure!(status.success(), "exit status {status}");

    let bad = tempfile::tempdir()?;
    let path = bad.path().join("onephase.toml");
    std::fs::write(
        &path,
        "[traces]\notlp_endpoint = \"grpc://collector:4317\"\n",
    )?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_onephase"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .current_dir(bad.path())
        .env_remove("ONEPHASE_STORE")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "an invalid endpoint was accepted");
    ensure!(
        stderr.contains("traces.otlp_endpoint") && stderr.contains("http://"),
        "the error: {stderr}"
    );
    Ok(())
}

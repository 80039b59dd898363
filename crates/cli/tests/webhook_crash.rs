//! Fault test: `onephase serve` delivering 10,000 webhook messages over 20 endpoints of a
//! chaos receiver (random 500s, 429s with Retry-After, 503s, slow answers, answers that come
//! after the sender gave up, one endpoint that always fails, one that turns 410) is killed with
//! SIGKILL several times while messages are still being sent (each send retried under its
//! idempotency key until the server answers) and delivered.
//!
//! Afterwards: exactly 10,000 messages exist; no delivery is pending; every delivery is either
//! delivered, and then the receiver's inbox holds its webhook-id, or in the dead letters; the
//! receiver applied no webhook-id twice and never saw a bad signature; and the ordered
//! endpoints applied each partition key's messages in send order.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{free_port, spawn_server, wait_until_up};
use onephase_core::rand::rngs::StdRng;
use onephase_core::rand::{RngExt, SeedableRng};
use onephase_testkit::TestDb;
use onephase_webhook::signature::{Verifier, VerifyKey};
use serde_json::{Value, json};

const MESSAGES: usize = 10_000;
const ENDPOINTS: usize = 20;
const ORDERED: usize = 4;
/// Answers 500 to everything: its deliveries exhaust the schedule.
const ALWAYS_FAILING: usize = 18;
/// Turns 410 once it has applied this many messages.
const GONE: usize = 19;
const GONE_AFTER: usize = 100;
const KILLS: usize = 5;
const TOKEN: &str = "op_webhook_crash_test_token";

fn write_config(dir: &Path, store: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("onephase.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"{store}\"\n\
             [[auth.tokens]]\nname = \"crash-test\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [webhook]\nallow_networks = [\"127.0.0.0/8\"]\n\
             schedule_secs = [0, 1, 1, 2, 2, 3, 3, 5]\n\
             attempt_timeout_secs = 3\nlease_margin_secs = 2\nslow_down_secs = 3\n\
             poll_interval_ms = 50\n",
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

/// What the chaos receiver saw.
#[derive(Default)]
struct Inbox {
    /// (endpoint, webhook-id) applied.
    applied: HashSet<(usize, String)>,
    /// Per ordered endpoint and partition key, the message numbers in the order applied.
    order: HashMap<(usize, String), Vec<u64>>,
    applied_per_endpoint: HashMap<usize, usize>,
    repeats: usize,
    bad_signatures: usize,
}

struct Chaos {
    verifiers: Mutex<HashMap<usize, Verifier>>,
    inbox: Mutex<Inbox>,
    rng: Mutex<StdRng>,
    requests: AtomicUsize,
}

async fn receive(
    State(chaos): State<Arc<Chaos>>,
    UrlPath(endpoint): UrlPath<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chaos.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let verified = chaos
        .verifiers
        .lock()
        .expect("lock")
        .get(&endpoint)
        .map(|v| {
            v.verify_at(
                &id,
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &body,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )
        });
    if !matches!(verified, Some(Ok(_))) {
        chaos.inbox.lock().expect("lock").bad_signatures += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if endpoint == ALWAYS_FAILING {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let roll: u32 = chaos.rng.lock().expect("lock").random_range(0..1000);
    let (refuse, delay) = match roll {
        0..80 => (Some((StatusCode::INTERNAL_SERVER_ERROR, None)), 0),
        80..110 => (Some((StatusCode::TOO_MANY_REQUESTS, Some("1"))), 0),
        110..130 => (Some((StatusCode::SERVICE_UNAVAILABLE, None)), 0),
        // Slow, but within the attempt timeout.
        130..160 => (None, 1500),
        // Applied, but answered after the sender gave up: it will come again.
        160..165 => (None, 4000),
        _ => (None, 0),
    };
    if let Some((status, retry_after)) = refuse {
        let mut response = status.into_response();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static(after));
        }
        return response;
    }
    {
        let mut inbox = chaos.inbox.lock().expect("lock");
        if endpoint == GONE
            && inbox.applied_per_endpoint.get(&GONE).copied().unwrap_or(0) >= GONE_AFTER
        {
            return StatusCode::GONE.into_response();
        }
        if inbox.applied.insert((endpoint, id)) {
            *inbox.applied_per_endpoint.entry(endpoint).or_default() += 1;
            if endpoint < ORDERED {
                let message: Value = serde_json::from_slice(&body).unwrap_or_default();
                let key = message["data"]["key"].as_str().unwrap_or("").to_owned();
                let n = message["data"]["n"].as_u64().unwrap_or(u64::MAX);
                inbox.order.entry((endpoint, key)).or_default().push(n);
            }
        } else {
            inbox.repeats += 1;
        }
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn start_receiver(chaos: Arc<Chaos>) -> anyhow::Result<String> {
    let app = axum::Router::new()
        .route("/hooks/{endpoint}", axum::routing::post(receive))
        .with_state(chaos);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn crash_and_restart(db: TestDb) -> anyhow::Result<()> {
    let chaos = Arc::new(Chaos {
        verifiers: Mutex::new(HashMap::new()),
        inbox: Mutex::new(Inbox::default()),
        rng: Mutex::new(StdRng::seed_from_u64(0xC4A05)),
        requests: AtomicUsize::new(0),
    });
    let receiver = start_receiver(chaos.clone()).await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), db.url())?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut server = spawn_server(&config, port, "error")?;
    wait_until_up(&http, &base).await?;

    // Endpoint i takes type.i and the broadcast type; the first ORDERED keep key order.
    let mut endpoint_ids = Vec::new();
    for i in 0..ENDPOINTS {
        let created: Value = http
            .post(format!("{base}/v1/webhooks/endpoints"))
            .bearer_auth(TOKEN)
            .json(&json!({
                "url": format!("{receiver}/hooks/{i}"),
                "event_types": [format!("type.{i}"), "broadcast"],
                "ordered": i < ORDERED,
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"].as_str().context("an id")?.to_owned();
        let keys: Value = http
            .get(format!("{base}/v1/webhooks/endpoints/{id}/keys"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let key = VerifyKey::parse(keys[0]["key"].as_str().context("a key")?)?;
        chaos
            .verifiers
            .lock()
            .expect("lock")
            .insert(i, Verifier::new(vec![key]));
        endpoint_ids.push(id);
    }

    // Sends stream in from four tasks while the server is killed; each is retried under its
    // idempotency key until the server answers.
    let mut senders = Vec::new();
    for task in 0..4 {
        let (http, base) = (http.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut retries = 0_u32;
            for n in (task..MESSAGES).step_by(4) {
                let event_type = if n % 100 == 0 {
                    "broadcast".to_owned()
                } else {
                    format!("type.{}", n % ENDPOINTS)
                };
                // A key belongs to one task (n % 8 fixes n % 4), whose sends are sequential:
                // send order is n order within a key.
                let key = format!("k{}", n % 8);
                let body = json!({"event_type": event_type, "payload": {"n": n, "key": key}, "partition_key": key});
                loop {
                    let answer = http
                        .post(format!("{base}/v1/webhooks/messages"))
                        .bearer_auth(TOKEN)
                        .header("Idempotency-Key", format!("m-{n}"))
                        .json(&body)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await?;
                            sent.push((n, v["id"].as_str().context("an id")?.to_owned()));
                            break;
                        }
                        Ok(r) if r.status().is_client_error() => {
                            anyhow::bail!("send {n} refused: {}", r.text().await?);
                        }
                        _ => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            anyhow::Ok((sent, retries))
        }));
    }

    let mut rng = StdRng::seed_from_u64(0xDEAD);
    let mut pending_at_kills = Vec::new();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        ensure!(
            server.try_wait()?.is_none(),
            "the server exited by itself before kill {kill}"
        );
        server.start_kill()?; // SIGKILL
        server.wait().await?;
        pending_at_kills.push(pending(&db).await?);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        server = spawn_server(&config, port, "error")?;
        wait_until_up(&http, &base).await?;
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut send_retries = 0;
    for sender in senders {
        let (sent, retries) = sender.await??;
        send_retries += retries;
        for (n, id) in sent {
            ids.insert(id, n);
        }
    }
    eprintln!(
        "{KILLS} kills with {pending_at_kills:?} deliveries pending; {send_retries} sends retried"
    );
    ensure!(
        ids.len() == MESSAGES,
        "{} distinct ids for {MESSAGES} sends",
        ids.len()
    );

    // The last server finishes everything.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_report = Instant::now();
    loop {
        let left = pending(&db).await?;
        if left == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "{left} deliveries pending, {} requests so far",
                chaos.requests.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "{left} deliveries still pending after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let messages: i64 = scalar(&db, "SELECT COUNT(*) FROM onephase_webhook_messages").await?;
    ensure!(
        messages == i64::try_from(MESSAGES)?,
        "{messages} messages stored for {MESSAGES} sends"
    );
    let endpoint_index: HashMap<&str, usize> = endpoint_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let deliveries = deliveries(&db).await?;
    let dead_api: Value = http_dead(&base, &endpoint_ids[ALWAYS_FAILING]).await?;
    let gone: i64 = scalar(
        &db,
        "SELECT COUNT(*) FROM onephase_webhook_endpoints WHERE disabled_at_ms IS NOT NULL",
    )
    .await?;
    let inbox = std::mem::take(&mut *chaos.inbox.lock().expect("lock"));
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (message, endpoint, status) in &deliveries {
        ensure!(
            ids.contains_key(message),
            "a delivery of an unknown message {message}"
        );
        let i = *endpoint_index
            .get(endpoint.as_str())
            .context("a known endpoint")?;
        match status.as_str() {
            "delivered" => ensure!(
                inbox.applied.contains(&(i, message.clone())),
                "{message} is delivered to endpoint {i} but its inbox never applied it"
            ),
            "dead" => {}
            other => anyhow::bail!("{message} at endpoint {i} is {other}"),
        }
        *by_status
            .entry(format!(
                "{status}@{}",
                if i == ALWAYS_FAILING || i == GONE {
                    i.to_string()
                } else {
                    "others".into()
                }
            ))
            .or_default() += 1;
    }
    let stored: HashSet<(usize, String)> = deliveries
        .iter()
        .filter_map(|(m, e, _)| endpoint_index.get(e.as_str()).map(|i| (*i, m.clone())))
        .collect();
    for applied in &inbox.applied {
        ensure!(
            stored.contains(applied),
            "applied {applied:?} without a delivery"
        );
    }
    ensure!(
        inbox.bad_signatures == 0,
        "{} requests had a bad signature",
        inbox.bad_signatures
    );
    for ((endpoint, key), order) in &inbox.order {
        ensure!(
            order.windows(2).all(|w| w[0] < w[1]),
            "ordered endpoint {endpoint} applied key {key} out of order: {order:?}"
        );
    }
    // What the dead letters hold: the always-failing endpoint's, and the gone endpoint's.
    ensure!(
        dead_api.as_array().is_some_and(|d| !d.is_empty()),
        "{dead_api}"
    );
    let others_dead = deliveries
        .iter()
        .filter(|(_, e, s)| {
            s == "dead" && ![ALWAYS_FAILING, GONE].contains(&endpoint_index[e.as_str()])
        })
        .count();
    ensure!(
        others_dead == 0,
        "{others_dead} deliveries to healthy endpoints were dead-lettered"
    );
    let gone_applied = inbox.applied_per_endpoint.get(&GONE).copied().unwrap_or(0);
    ensure!(
        gone_applied == GONE_AFTER,
        "the gone endpoint applied {gone_applied}"
    );
    ensure!(
        gone == 1,
        "{gone} endpoints disabled; only the 410 one should be"
    );
    eprintln!(
        "deliveries {by_status:?}; {} requests, {} repeats of applied ids (at-least-once)",
        chaos.requests.load(Ordering::Relaxed),
        inbox.repeats
    );
    ensure!(
        pending_at_kills.iter().any(|p| *p > 0),
        "no kill landed with deliveries pending; the test proved nothing"
    );

    server.start_kill()?;
    server.wait().await?;
    db.close().await?;
    Ok(())
}

async fn http_dead(base: &str, endpoint: &str) -> anyhow::Result<Value> {
    Ok(reqwest::Client::new()
        .get(format!(
            "{base}/v1/webhooks/dead-letters?endpoint_id={endpoint}&limit=1000"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .json()
        .await?)
}

async fn scalar(db: &TestDb, sql: &'static str) -> anyhow::Result<i64> {
    Ok(match db.store().db() {
        onephase_store::Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        onephase_store::Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await?,
    })
}

async fn pending(db: &TestDb) -> anyhow::Result<i64> {
    scalar(
        db,
        "SELECT COUNT(*) FROM onephase_webhook_deliveries WHERE status = 'pending'",
    )
    .await
}

async fn deliveries(db: &TestDb) -> anyhow::Result<Vec<(String, String, String)>> {
    let sql = "SELECT message_id, endpoint_id, status FROM onephase_webhook_deliveries";
    Ok(match db.store().db() {
        onephase_store::Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        onephase_store::Db::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.reader()).await?,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_survive_sigkill_on_sqlite() -> anyhow::Result<()> {
    crash_and_restart(TestDb::sqlite().await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_survive_sigkill_on_postgres() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    crash_and_restart(db).await
}

//! Webhook delivery throughput and added latency on SQLite and PostgreSQL, against a raw
//! client doing the same HTTP work in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"        # for PostgreSQL; SQLite always runs
//! cargo bench -p onephase-webhook --bench delivery
//! ```
//!
//! A local receiver answers 204 at once. One endpoint with concurrency 256.
//!
//! - **Throughput**: N messages are sent (committed), then a dispatcher (256 attempts in
//!   flight, the default claims of 64) delivers them all; deliveries/s is N over the time from
//!   its start to the last delivery recorded. Each delivery is a claim, a signed POST and a
//!   recorded attempt. The end is watched in the receiver's memory first, so that no polling
//!   query competes for the cores.
//! - **Raw baseline**: a plain `reqwest` client firing the same signed requests, 256 at a time,
//!   with no store: the HTTP limit of this machine. Three rounds warm up, and the median of the
//!   next three is the baseline.
//! - **Ratio**: dispatcher deliveries/s over raw requests/s.
//! - **Store floor**: the same number of deliveries claimed, recorded as attempts and marked
//!   delivered by plain SQL in batches of 64, with no HTTP: the store's own limit.
//! - **Ceiling ratio**: what the two limits leave when their costs per delivery add up on the
//!   same cores, `1 / (1/raw + 1/floor)`, over raw.
//! - **Added latency**: messages sent at a fixed rate for a few seconds with the dispatcher
//!   running; latency from `send` returning (committed) to the receiver seeing the request,
//!   against the raw client's latency from firing to the receiver seeing it, at p50 and p99.
//!
//! Results go to `bench/results/webhook.json` and a Markdown table on stdout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use onephase_store::{Db, Store};
use onephase_testkit::TestDb;
use onephase_webhook::destination::AddressPolicy;
use onephase_webhook::signature::{Secret, Signer};
use onephase_webhook::{Dispatcher, DispatcherConfig, EndpointSpec, NewMessage, Webhooks};
use serde_json::{Value, json};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MESSAGES: usize = 20_000;
const CONCURRENCY: usize = 256;

/// When the receiver first saw each webhook-id.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<String, Instant>>,
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id)
        .or_insert_with(Instant::now);
    StatusCode::NO_CONTENT
}

async fn receiver(seen: Arc<Seen>) -> AnyResult<String> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

fn seen_count(seen: &Seen) -> usize {
    seen.at.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn body(n: usize) -> String {
    json!({"type": "bench.event", "timestamp": "2026-11-28T00:00:00Z", "data": {"n": n, "pad": "x".repeat(200)}})
        .to_string()
}

/// The raw client: `count` signed POSTs, `CONCURRENCY` at a time; requests/s.
async fn raw_throughput(url: &str, seen: &Arc<Seen>, count: usize) -> AnyResult<f64> {
    let client = reqwest::Client::new();
    let signer = Signer::new(vec![
        Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?.into(),
    ]);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, signer, next, url) =
            (client.clone(), signer.clone(), next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, reqwest::Error>(());
                }
                let id = format!("raw_{n}");
                let body = body(n);
                let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                client
                    .post(&url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signer.sign(&id, ts, body.as_bytes()))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = seen;
    Ok(count as f64 / elapsed)
}

/// The raw client's latency: one request every `1/rate` s for `secs`; milliseconds from
/// firing to the receiver seeing it.
async fn raw_latency(url: &str, seen: &Arc<Seen>, rate: f64, secs: f64) -> AnyResult<Vec<f64>> {
    let client = reqwest::Client::new();
    let signer = Signer::new(vec![
        Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?.into(),
    ]);
    let total = (rate * secs) as usize;
    let mut fired = Vec::with_capacity(total);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let id = format!("rawlat_{n}");
        let body = body(n);
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let request = client
            .post(url)
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signer.sign(&id, ts, body.as_bytes()))
            .body(body);
        fired.push((id, Instant::now()));
        tasks.push(tokio::spawn(request.send()));
    }
    for t in tasks {
        t.await??;
    }
    let at = seen.at.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<f64> = fired
        .iter()
        .filter_map(|(id, t)| {
            at.get(id)
                .map(|seen| seen.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

struct Measured {
    backend: &'static str,
    deliveries_per_sec: f64,
    raw_per_sec: f64,
    latency_ms: (f64, f64),
    raw_latency_ms: (f64, f64),
    latency_rate: f64,
    floor_per_sec: f64,
}

async fn measure(db: &TestDb, backend: &'static str) -> AnyResult<Measured> {
    let store = db.store().clone();
    store
        .migrate(&[
            onephase_outbox::migrations(),
            onephase_webhook::migrations(),
        ])
        .await?;
    let seen = Arc::new(Seen::default());
    let url = receiver(seen.clone()).await?;
    let policy = AddressPolicy::default().allow("127.0.0.0/8")?;
    let webhooks = Webhooks::new(store.clone(), policy.clone());
    let mut spec = EndpointSpec::new(url.clone());
    spec.max_concurrency = Some(u32::try_from(CONCURRENCY)?);
    let endpoint = webhooks.create_endpoint(spec).await?;

    // Raw first, on a warm receiver: three rounds warm it, and the baseline is the median of
    // the next three (this machine's raw rate moves between rounds; see docs/performance.md).
    for _ in 0..3 {
        raw_throughput(&url, &seen, MESSAGES).await?;
    }
    let mut raws = Vec::new();
    for _ in 0..3 {
        raws.push(raw_throughput(&url, &seen, MESSAGES).await?);
    }
    raws.sort_by(f64::total_cmp);
    eprintln!("{backend}: raw rounds {raws:.0?} requests/s");
    let raw_per_sec = raws[1];

    // Durable: send everything, then deliver it all.
    send_all(&store, MESSAGES).await?;
    let base = seen_count(&seen);
    let dispatcher = Dispatcher::new(
        store.clone(),
        DispatcherConfig {
            policy: policy.clone(),
            max_in_flight: CONCURRENCY,
            poll_interval: Duration::from_millis(5),
            ..DispatcherConfig::default()
        },
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = {
        let dispatcher = dispatcher.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            dispatcher
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        })
    };
    let started = Instant::now();
    // The receiver's count first (in memory): a query polled meanwhile would take the cores
    // the dispatcher and the database share. Then until the last outcome is recorded.
    while seen_count(&seen) < base + MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while pending(&store).await? > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = seen_count(&seen) - base;
    if delivered < MESSAGES {
        return Err(format!("{delivered} of {MESSAGES} delivered").into());
    }
    let deliveries_per_sec = MESSAGES as f64 / elapsed;

    // Latency at a fixed rate, a quarter of the measured throughput (at most 1000/s).
    let rate = (deliveries_per_sec / 4.0).min(1000.0);
    let secs = 4.0;
    let total = (rate * secs) as usize;
    let mut committed = Vec::with_capacity(total);
    let start = Instant::now();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let sent = webhooks
            .send(&NewMessage::new(
                "bench.event",
                json!({"n": n, "pad": "x".repeat(200)}),
            ))
            .await?;
        committed.push((sent.id, Instant::now()));
    }
    while pending(&store).await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<f64> = {
        let at = seen.at.lock().unwrap_or_else(|p| p.into_inner());
        committed
            .iter()
            .filter_map(|(id, t)| {
                at.get(id)
                    .map(|seen| seen.duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let raw = raw_latency(&url, &seen, rate, secs).await?;
    let _ = stop.send(true);
    running.await?;

    // The store's floor: as many deliveries claimed, recorded as attempts and marked
    // delivered, with no HTTP.
    send_all(&store, MESSAGES).await?;
    let floor_per_sec = store_floor(&store, &endpoint.id, MESSAGES).await?;
    Ok(Measured {
        backend,
        deliveries_per_sec,
        raw_per_sec,
        latency_ms: (percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
        raw_latency_ms: (percentile(&raw, 0.5), percentile(&raw, 0.99)),
        latency_rate: rate,
        floor_per_sec,
    })
}

/// Deliveries per claim in the floor, as the dispatcher's default claims.
const FLOOR_BATCH: i64 = 64;

/// The least the store does per delivery, with no HTTP: batches of 64 due rows claimed (attempt
/// counted, locked) in one transaction, then recorded (an attempt row each, marked delivered) in
/// another, as the dispatcher's claims and records are; two workers at once on PostgreSQL (the
/// dispatcher claims and records concurrently), one on SQLite (one writer). Deliveries/s.
async fn store_floor(store: &Store, endpoint: &str, count: usize) -> AnyResult<f64> {
    // The same claim on both, PostgreSQL's workers skipping each other's rows.
    macro_rules! claim {
        ($skip:literal) => {
            concat!(
                "UPDATE onephase_webhook_deliveries \
                 SET attempts = attempts + 1, locked_until_ms = $1, next_at_ms = $1 \
                 WHERE id IN (SELECT id FROM onephase_webhook_deliveries \
                   WHERE endpoint_id = $4 AND status = 'pending' AND next_at_ms <= $2 \
                   ORDER BY next_at_ms, id LIMIT $3 ",
                $skip,
                ") RETURNING id, message_id, endpoint_id, attempts"
            )
        };
    }
    const CLAIM_PG: &str = claim!("FOR UPDATE SKIP LOCKED");
    const CLAIM_SQLITE: &str = claim!("");
    type Row = (i64, String, String, i32);
    let workers = if matches!(store.db(), Db::Postgres(_)) {
        2
    } else {
        1
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (store, endpoint) = (store.clone(), endpoint.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let now = time::OffsetDateTime::now_utc();
                let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000)?;
                let lease = now_ms + 30_000;
                macro_rules! round {
                    ($pool:expr, $claim:expr, $db:ty) => {{
                        let mut tx = $pool.begin().await?;
                        let rows: Vec<Row> = sqlx::query_as($claim)
                            .bind(lease)
                            .bind(now_ms)
                            .bind(FLOOR_BATCH)
                            .bind(&endpoint)
                            .fetch_all(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        if rows.is_empty() {
                            break;
                        }
                        let mut tx = $pool.begin().await?;
                        let mut insert = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO onephase_webhook_attempts (delivery_id, message_id, \
                             endpoint_id, attempt, at_ms, outcome, status_code, latency_ms) ",
                        );
                        insert.push_values(&rows, |mut b, (id, message, endpoint, attempt)| {
                            b.push_bind(*id)
                                .push_bind(message.clone())
                                .push_bind(endpoint.clone())
                                .push_bind(*attempt)
                                .push_bind(now_ms)
                                .push_bind("delivered")
                                .push_bind(204_i32)
                                .push_bind(0_i64);
                        });
                        insert.build().execute(&mut *tx).await?;
                        let mut update = sqlx::QueryBuilder::<$db>::new(
                            "UPDATE onephase_webhook_deliveries SET status = 'delivered', \
                             locked_until_ms = 0, updated_at_ms = ",
                        );
                        update.push_bind(now_ms).push(" WHERE id IN ");
                        update.push_tuples(&rows, |mut b, row| {
                            b.push_bind(row.0);
                        });
                        update.build().execute(&mut *tx).await?;
                        tx.commit().await?;
                        done += rows.len();
                    }};
                }
                match store.db() {
                    Db::Postgres(pool) => round!(pool, CLAIM_PG, sqlx::Postgres),
                    Db::Sqlite(s) => round!(s.writer(), CLAIM_SQLITE, sqlx::Sqlite),
                }
            }
            Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    if done < count {
        return Err(format!("the floor recorded {done} of {count}").into());
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn send_all(store: &Store, count: usize) -> AnyResult<()> {
    let now = time::OffsetDateTime::now_utc();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for n in chunk {
                    let m = NewMessage::new("bench.event", json!({"n": n, "pad": "x".repeat(200)}));
                    onephase_webhook::send(&mut tx, &m, now).await?;
                }
                tx.commit().await?;
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                for n in chunk {
                    let m = NewMessage::new("bench.event", json!({"n": n, "pad": "x".repeat(200)}));
                    onephase_webhook::send(&mut tx, &m, now).await?;
                }
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

async fn pending(store: &Store) -> AnyResult<i64> {
    let sql = "SELECT COUNT(*) FROM onephase_webhook_deliveries WHERE status = 'pending'";
    Ok(match store.db() {
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await?,
    })
}

fn main() -> AnyResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut results = Vec::new();
        let sqlite = TestDb::sqlite().await?;
        results.push(measure(&sqlite, "sqlite").await?);
        sqlite.close().await?;
        if let Some(pg) = TestDb::postgres().await {
            results.push(measure(&pg, "postgres").await?);
            pg.close().await?;
        }
        println!("| backend | deliveries/s | raw requests/s | ratio | store floor/s | ceiling ratio | rate | p50 ms | p99 ms | raw p50 ms | raw p99 ms | added p50 ms | added p99 ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut json_rows: Vec<Value> = Vec::new();
        for m in &results {
            let ratio = m.deliveries_per_sec / m.raw_per_sec;
            // HTTP and store work share the same two cores, each at its own limit: their costs
            // per delivery add up, and this is the most that the raw rate leaves.
            let ceiling = 1.0 / (1.0 / m.raw_per_sec + 1.0 / m.floor_per_sec) / m.raw_per_sec;
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0}/s | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                m.backend,
                m.deliveries_per_sec,
                m.raw_per_sec,
                ratio,
                m.floor_per_sec,
                ceiling,
                m.latency_rate,
                m.latency_ms.0,
                m.latency_ms.1,
                m.raw_latency_ms.0,
                m.raw_latency_ms.1,
                m.latency_ms.0 - m.raw_latency_ms.0,
                m.latency_ms.1 - m.raw_latency_ms.1,
            );
            json_rows.push(json!({
                "backend": m.backend,
                "messages": MESSAGES,
                "concurrency": CONCURRENCY,
                "deliveries_per_sec": m.deliveries_per_sec,
                "raw_requests_per_sec": m.raw_per_sec,
                "ratio": ratio,
                "store_floor_per_sec": m.floor_per_sec,
                "ceiling_ratio": ceiling,
                "latency_rate_per_sec": m.latency_rate,
                "latency_ms": {"p50": m.latency_ms.0, "p99": m.latency_ms.1},
                "raw_latency_ms": {"p50": m.raw_latency_ms.0, "p99": m.raw_latency_ms.1},
                "added_latency_ms": {
                    "p50": m.latency_ms.0 - m.raw_latency_ms.0,
                    "p99": m.latency_ms.1 - m.raw_latency_ms.1,
                },
            }));
        }
        let out = json!({
            "bench": "webhook delivery",
            "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
            "results": json_rows,
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results/webhook.json");
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
        eprintln!("wrote {path}");
        Ok(())
    })
}

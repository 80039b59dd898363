//! Post 8 of the seed, *Webhook Reliability: The Lost Art*: a sender, a flaky receiver and an attacker, over
//! real HTTP on loopback, on the real clock. The receiver's books are a SQLite table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::FutureExt;
use onephase_core::Random;
use onephase_outbox::Processed;
use onephase_store::Store;
use onephase_webhook::destination::AddressPolicy;
use onephase_webhook::policy::RetrySchedule;
use onephase_webhook::receiver::Receiver;
use onephase_webhook::signature::{Secret, Verifier, VerifyKey};
use onephase_webhook::{Dispatcher, DispatcherConfig, EndpointSpec, NewMessage, Webhooks};
use serde_json::{Value, json};
use sqlx::SqlitePool;

use crate::herd::{BUCKET, Timeline};
use crate::report::seconds;
use crate::{Failed, Report};

const EVENTS: u32 = 200;
/// One event every 10 ms: 10 per 100 ms.
const EVENT_EVERY: Duration = Duration::from_millis(10);
/// The receiver answers 503 to everything from 0.5 s to 1.5 s.
const OUTAGE: (Duration, Duration) = (Duration::from_millis(500), Duration::from_millis(1500));
/// The share of requests the receiver processes but whose answer is lost (it says 500).
const ANSWER_LOST: f64 = 0.1;
const FORGED: u32 = 20;
/// How long each answer takes, as over a network rather than loopback.
const LATENCY: Duration = Duration::from_millis(20);
/// The naive sender's attempts per event, back to back.
const NAIVE_ATTEMPTS: u32 = 4;
/// The longest either run may take to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// Requests per 100 ms a sender may make while the receiver is down: the rate events are sent
/// at. More is retries piling onto a service that is trying to recover.
const DOWN_BOUND: u64 = 10;

/// Who sends, and who checks what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Immediate retries, no signature; a receiver that applies whatever arrives.
    Naive,
    /// [`Webhooks`] and its [`Dispatcher`]; a [`Receiver`] that verifies and de-duplicates.
    Onephase,
}

/// The receiving service.
struct Endpoint {
    side: Side,
    start: Instant,
    books: SqlitePool,
    /// Set for onephase's side: the receiver with the endpoint's key.
    receiver: std::sync::Mutex<Option<Receiver>>,
    fate: Random,
    requests: Timeline,
    request_count: AtomicU64,
    forged_refused: AtomicU64,
}

impl Endpoint {
    fn down(&self) -> bool {
        let at = self.start.elapsed();
        (OUTAGE.0..OUTAGE.1).contains(&at)
    }
}

/// The payment a body is about.
fn payment(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(body).ok()?["data"]["payment"].as_i64()
}

async fn hook(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    endpoint.requests.add(endpoint.start.elapsed());
    endpoint.request_count.fetch_add(1, Ordering::Relaxed);
    // Every answer takes a round trip of a real network.
    tokio::time::sleep(LATENCY).await;
    if endpoint.down() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Processed, and then the answer is lost on the way back (a timeout, a reset).
    let answer_lost = endpoint.fate.chance(ANSWER_LOST);
    let applied = match endpoint.side {
        Side::Naive => match payment(&body) {
            Some(payment) => apply(&endpoint.books, payment).await.is_ok(),
            None => return StatusCode::BAD_REQUEST,
        },
        Side::Onephase => {
            let Some(receiver) = crate::herd::lock(&endpoint.receiver).clone() else {
                return StatusCode::SERVICE_UNAVAILABLE;
            };
            let Ok(webhook) = receiver.verify(&headers, body.clone()) else {
                endpoint.forged_refused.fetch_add(1, Ordering::Relaxed);
                return StatusCode::UNAUTHORIZED;
            };
            let Some(payment) = payment(&body) else {
                return StatusCode::BAD_REQUEST;
            };
            process(&endpoint.books, &receiver, &webhook, payment)
                .await
                .is_ok()
        }
    };
    match (applied, answer_lost) {
        (true, false) => StatusCode::NO_CONTENT,
        (true, true) | (false, _) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn apply(books: &SqlitePool, payment: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (payment) VALUES ($1)")
        .bind(payment)
        .execute(books)
        .await?;
    Ok(())
}

/// The effect and the `webhook-id`, in one transaction: a repeat changes nothing.
async fn process(
    books: &SqlitePool,
    receiver: &Receiver,
    webhook: &onephase_webhook::receiver::Webhook,
    payment: i64,
) -> Result<(), Failed> {
    let mut tx = books.begin().await?;
    let outcome: Processed<()> = receiver
        .process(&mut *tx, webhook, |tx| {
            async move {
                sqlx::query("INSERT INTO effects (payment) VALUES ($1)")
                    .bind(payment)
                    .execute(&mut *tx)
                    .await
                    .map_err(onephase_outbox::OutboxError::from)?;
                Ok::<_, onephase_outbox::OutboxError>(())
            }
            .boxed()
        })
        .await?;
    let _ = outcome;
    tx.commit().await?;
    Ok(())
}

/// What one side's run left behind.
#[derive(Default)]
struct Outcome {
    lost: u64,
    applied_twice: u64,
    forged_applied: u64,
    forged_refused: u64,
    requests: u64,
    /// The most requests in one 100 ms while the receiver was down, and after.
    peak_down: u64,
    peak_after: u64,
    by_bucket: Timeline,
    /// From the first event to the last one applied.
    settled_in: Duration,
}

/// Webhooks.
///
/// 200 `payment.succeeded` events, one every 10 ms. Every answer takes 20 ms. The receiver
/// answers 503 to everything from 0.5 s to 1.5 s, and one request in ten it processes but
/// answers 500 (the answer was lost). Once it is back, an attacker posts 20 made-up
/// `payment.succeeded` requests to it.
///
/// - **Naive**: the sender posts each event and retries at once, 4 attempts in all, then
///   gives up; it signs nothing. The receiver applies whatever arrives, as often as it
///   arrives.
/// - **onephase**: [`Webhooks::send`] stores each event and the [`Dispatcher`] delivers it,
///   signed, retrying on a schedule with jitter (0, 250 ms, 500 ms, 1 s, 2 s, 4 s, ±50 %), at
///   half the endpoint's concurrency after each 503 (down to one attempt in flight). The
///   receiver checks the signature ([`Receiver::verify`]) and applies each `webhook-id` once
///   ([`Receiver::process`]) in the transaction of its effect.
pub async fn webhooks(seed: u64) -> Report {
    let mut report = Report::new(
        "webhooks",
        seed,
        "200 events, one every 10 ms; the receiver is down from 0.5 s to 1.5 s and loses 1 answer in 10; 20 forged requests; HTTP on loopback, SQLite books",
    );
    let outcomes = async {
        let naive = run(Side::Naive, seed).await?;
        let onephase = run(Side::Onephase, seed).await?;
        Ok::<_, Failed>((naive, onephase))
    };
    let Some((naive, onephase)) = report.ran_to_end(outcomes.await) else {
        return report;
    };
    report.row(
        "events never applied",
        naive.lost as f64,
        onephase.lost as f64,
    );
    report.row(
        "events applied twice or more",
        naive.applied_twice as f64,
        onephase.applied_twice as f64,
    );
    report.row(
        "forged requests applied",
        naive.forged_applied as f64,
        onephase.forged_applied as f64,
    );
    report.row(
        "forged requests refused",
        naive.forged_refused as f64,
        onephase.forged_refused as f64,
    );
    report.row(
        "requests the receiver got",
        naive.requests as f64,
        onephase.requests as f64,
    );
    report.row(
        "most requests in one 100 ms while the receiver was down",
        naive.peak_down as f64,
        onephase.peak_down as f64,
    );
    report.row(
        "most requests in one 100 ms once it was back",
        naive.peak_after as f64,
        onephase.peak_after as f64,
    );
    report.row(
        "seconds until every event was applied",
        seconds(naive.settled_in),
        seconds(onephase.settled_in),
    );
    let kept = |o: &Outcome| {
        o.lost == 0 && o.applied_twice == 0 && o.forged_applied == 0 && o.peak_down <= DOWN_BOUND
    };
    report.invariant(
        format!(
            "every event applied exactly once, no forged request applied, and no more than {DOWN_BOUND} requests in any 100 ms while the receiver is down (the rate events are sent at)"
        ),
        kept(&naive),
        kept(&onephase),
    );
    let len = naive.by_bucket.len().max(onephase.by_bucket.len());
    report.chart(
        "requests to the receiver per 100 ms",
        "",
        BUCKET,
        naive.by_bucket.counts(len),
        onephase.by_bucket.counts(len),
    );
    report
}

/// The most requests in one bucket within `[from, to)`.
fn peak(requests: &Timeline, from: Duration, to: Duration) -> u64 {
    let (first, end) = (
        (from.as_millis() / BUCKET.as_millis()) as usize,
        (to.as_millis() / BUCKET.as_millis()) as usize,
    );
    requests
        .counts(end)
        .iter()
        .skip(first)
        .take(end - first)
        .fold(0.0_f64, |a, b| a.max(*b)) as u64
}

async fn run(side: Side, seed: u64) -> Result<Outcome, Failed> {
    // A file, not `sqlite::memory:`: that database lives in one connection, and a handler
    // dropped mid-query (its client gave up) may take the connection with it.
    let dir = tempfile::tempdir()?;
    let books = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("books.db").display()
    ))
    .await?;
    books.migrate(&[onephase_outbox::migrations()]).await?;
    let pool = books
        .as_sqlite()
        .ok_or("a sqlite:// URL opens a SQLite store")?
        .writer()
        .clone();
    sqlx::query("CREATE TABLE effects (payment INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let start = Instant::now();
    let endpoint = Arc::new(Endpoint {
        side,
        start,
        books: pool.clone(),
        receiver: std::sync::Mutex::new(None),
        fate: Random::seeded(seed),
        requests: Timeline::default(),
        request_count: AtomicU64::new(0),
        forged_refused: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let app = Router::new()
        .route("/hooks", post(hook))
        .with_state(endpoint.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;

    let attacker = tokio::spawn(forge(http.clone(), url.clone(), start));
    match side {
        Side::Naive => naive_sender(&http, &url, start).await?,
        Side::Onephase => onephase_sender(&endpoint, &url, start, seed).await?,
    }
    attacker.await??;

    let settled_in = wait_until_applied(&pool, start, side).await?;
    // Stragglers (retries already on their way) land before the books are read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.abort();
    let counts: Vec<(i64, i64)> =
        sqlx::query_as("SELECT payment, COUNT(*) FROM effects GROUP BY payment")
            .fetch_all(&pool)
            .await?;
    let genuine = |p: i64| (0..i64::from(EVENTS)).contains(&p);
    let applied = counts.iter().filter(|(p, _)| genuine(*p)).count() as u64;
    let outcome = Outcome {
        lost: u64::from(EVENTS) - applied,
        applied_twice: counts.iter().filter(|(p, n)| genuine(*p) && *n > 1).count() as u64,
        forged_applied: counts
            .iter()
            .filter(|(p, _)| !genuine(*p))
            .map(|(_, n)| *n as u64)
            .sum(),
        forged_refused: endpoint.forged_refused.load(Ordering::Relaxed),
        requests: endpoint.request_count.load(Ordering::Relaxed),
        peak_down: peak(&endpoint.requests, OUTAGE.0, OUTAGE.1),
        peak_after: endpoint.requests.peak_from(OUTAGE.1),
        by_bucket: endpoint.requests.clone(),
        settled_in,
    };
    books.close().await;
    Ok(outcome)
}

/// The same body the dispatcher sends: Standard Webhooks' `type`, `timestamp`, `data`.
fn body(event: u32) -> Value {
    json!({
        "type": "payment.succeeded",
        "timestamp": "2026-12-06T12:00:00Z",
        "data": {"payment": event},
    })
}

/// Posts each event at its time, retrying at once until [`NAIVE_ATTEMPTS`], then gives up.
async fn naive_sender(http: &reqwest::Client, url: &str, start: Instant) -> Result<(), Failed> {
    let mut sends = Vec::new();
    for event in 0..EVENTS {
        tokio::time::sleep_until((start + EVENT_EVERY * event).into()).await;
        let (http, url) = (http.clone(), url.to_owned());
        sends.push(tokio::spawn(async move {
            for _ in 0..NAIVE_ATTEMPTS {
                let sent = http.post(&url).json(&body(event)).send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
            }
            // `log.error("webhook failed")`, and the event is gone.
        }));
    }
    for send in sends {
        send.await?;
    }
    Ok(())
}

async fn onephase_sender(
    endpoint: &Endpoint,
    url: &str,
    start: Instant,
    seed: u64,
) -> Result<(), Failed> {
    let store = Store::connect("sqlite::memory:").await?;
    store
        .migrate(&[
            onephase_outbox::migrations(),
            onephase_webhook::migrations(),
        ])
        .await?;
    let loopback = AddressPolicy::default().allow("127.0.0.0/8")?;
    let webhooks = Webhooks::new(store.clone(), loopback.clone());
    let created = webhooks.create_endpoint(EndpointSpec::new(url)).await?;
    let keys = webhooks.verifying_keys(&created.id).await?;
    let key = keys.first().ok_or("a new endpoint has a key")?;
    let secret = Secret::parse(&key.key)?;
    *crate::herd::lock(&endpoint.receiver) = Some(Receiver::new(
        "payments",
        Verifier::new(vec![VerifyKey::from(secret)]),
    ));
    let schedule = RetrySchedule::new(
        [0, 250, 500, 1000, 2000, 4000]
            .into_iter()
            .map(Duration::from_millis)
            .collect(),
        0.5,
    )?;
    let dispatcher = Dispatcher::new(
        store.clone(),
        DispatcherConfig {
            schedule,
            policy: loopback,
            attempt_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(10),
            slow_down_for: Duration::from_secs(1),
            seed: Some(seed),
            ..DispatcherConfig::default()
        },
    )?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driving = dispatcher.clone();
    let driver = tokio::spawn(async move {
        driving
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    for event in 0..EVENTS {
        tokio::time::sleep_until((start + EVENT_EVERY * event).into()).await;
        webhooks
            .send(&NewMessage::new(
                "payment.succeeded",
                json!({"payment": event}),
            ))
            .await?;
    }
    // Deliveries go on after the last send; the books say when they are done.
    let books = endpoint.books.clone();
    wait_until_applied(&books, start, Side::Onephase).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    driver.await?;
    store.close().await;
    Ok(())
}

/// Posts [`FORGED`] requests about payments that never happened, one every 25 ms once the
/// receiver is back, with headers shaped like a signed webhook's and a signature made without
/// the key.
async fn forge(http: reqwest::Client, url: String, start: Instant) -> Result<(), Failed> {
    for n in 0..FORGED {
        let at = OUTAGE.1 + Duration::from_millis(25) * n + Duration::from_millis(5);
        tokio::time::sleep_until((start + at).into()).await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let _ = http
            .post(&url)
            .header("webhook-id", format!("msg_forged_{n}"))
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
            )
            .json(&body(1_000_000 + n))
            .send()
            .await;
    }
    Ok(())
}

/// Waits until every genuine event is in the books, or [`SETTLE_WITHIN`] passed (for the naive
/// side, until a second after its last send passed quietly: it has given up on the rest); how
/// long after `start` the last one arrived.
async fn wait_until_applied(
    books: &SqlitePool,
    start: Instant,
    side: Side,
) -> Result<Duration, Failed> {
    let mut last = 0;
    let mut settled = start.elapsed();
    while start.elapsed() < SETTLE_WITHIN {
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(DISTINCT payment) FROM effects WHERE payment < $1")
                .bind(i64::from(EVENTS))
                .fetch_one(books)
                .await?;
        if applied != last {
            last = applied;
            settled = start.elapsed();
        }
        if applied == i64::from(EVENTS) {
            return Ok(settled);
        }
        if side == Side::Naive
            && start.elapsed() > EVENT_EVERY * EVENTS + Duration::from_secs(1)
            && settled + Duration::from_secs(1) < start.elapsed()
        {
            return Ok(settled);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(settled)
}

//! Relay throughput and latency, with their baselines measured in the same run.
//!
//! ```text
//! eval "$(scripts/engines.sh)"
//! cargo bench -p onephase-outbox --bench relay                         # PostgreSQL to NATS
//! cargo bench -p onephase-outbox --bench relay --features kafka-tests  # and to Kafka
//! ```
//!
//! Throughput: N rows are loaded into a fresh PostgreSQL outbox, then relays drain it; events/s
//! is N over the time until the table is empty. Baselines:
//! - **raw SQL**: the relay's own claim and delete statements with a publisher that accepts
//!   everything at once: the database's limit for this work;
//! - **raw broker**: the same envelopes published straight to the broker, no database;
//! - **naive relay**: poll every 100 ms, claim one row (`FOR UPDATE SKIP LOCKED`), publish it,
//!   delete it, commit.
//!
//! Latency: events enqueued at a fixed rate, each carrying its commit time; a subscriber
//! records receipt minus commit.
//!
//! Results go to `bench/results/outbox-relay.json` and a Markdown table on stdout.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use onephase_broker::nats::{NatsPublisher, NatsSubscriber, NatsSubscription};
use onephase_broker::{Publisher, Subscriber};
use onephase_core::Envelope;
use onephase_outbox::{Relay, RelayConfig};
use onephase_store::Store;
use onephase_testkit::{Engine, TestDb, engine_url};
use serde_json::json;
use sqlx::PgPool;
use support::{AnyResult, NoBroker};
use tokio::sync::watch;
use uuid::Uuid;

async fn load(pool: &PgPool, topic: &str, rows: i64, keys: i64) -> AnyResult<()> {
    sqlx::query(
        "INSERT INTO onephase_outbox (id, topic, key, payload, headers) \
         SELECT gen_random_uuid(), $1, 'key-' || (i % $3), convert_to('{\"i\":' || i || '}', 'UTF8'), '{}' \
         FROM generate_series(1, $2) AS i",
    )
    .bind(topic)
    .bind(rows)
    .bind(keys)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE onephase_outbox").execute(pool).await?;
    Ok(())
}

async fn wait_empty(pool: &PgPool) -> AnyResult<()> {
    loop {
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM onephase_outbox)")
            .fetch_one(pool)
            .await?;
        if !left {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn drain<P: Publisher + Clone + 'static>(
    store: &Store,
    publisher: P,
    relays: usize,
    batch: u32,
    rows: i64,
    topic: &str,
) -> AnyResult<f64> {
    let pool = store.as_postgres().ok_or("PostgreSQL store")?.clone();
    load(&pool, topic, rows, 500).await?;
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..relays {
        let relay = Relay::new(
            store.clone(),
            publisher.clone(),
            RelayConfig {
                batch_size: batch,
                housekeeping_interval: Duration::from_secs(3600),
                ..RelayConfig::default()
            },
        );
        let mut stopped = stopped.clone();
        handles.push(tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    wait_empty(&pool).await?;
    let took = started.elapsed();
    stop.send(true)?;
    for h in handles {
        h.await?;
    }
    Ok(rows as f64 / took.as_secs_f64())
}

/// The naive relay: one row per transaction, a 100 ms nap whenever the table looks empty.
async fn naive<P: Publisher>(
    pool: &PgPool,
    publisher: &P,
    rows: i64,
    topic: &str,
) -> AnyResult<f64> {
    load(pool, topic, rows, 500).await?;
    let started = Instant::now();
    loop {
        let mut tx = pool.begin().await?;
        let row: Option<(i64, Uuid, Option<String>, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, id, key, payload FROM onephase_outbox ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq, id, key, payload)) = row else {
            tx.commit().await?;
            let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM onephase_outbox)")
                .fetch_one(pool)
                .await?;
            if !left {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut b = Envelope::builder(topic, payload).id(onephase_core::MessageId::from_uuid(id)?);
        if let Some(key) = key {
            b = b.key(key);
        }
        let envelope = b.build()?;
        for r in publisher.publish(std::slice::from_ref(&envelope)).await {
            r?;
        }
        sqlx::query("DELETE FROM onephase_outbox WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The broker alone: the same envelopes, published in batches of 1,000, no database.
async fn raw_broker<P: Publisher>(publisher: &P, rows: usize, topic: &str) -> AnyResult<f64> {
    let envelopes: Vec<Envelope> = (0..rows)
        .map(|i| {
            Envelope::builder(topic, format!("{{\"i\":{i}}}"))
                .key(format!("key-{}", i % 500))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in envelopes.chunks(1000) {
        for r in publisher.publish(chunk).await {
            r?;
        }
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn latency(
    store: &Store,
    publisher: NatsPublisher,
    sub: &mut NatsSubscriber,
    topic: &str,
    rate: u32,
    seconds: u32,
) -> AnyResult<(f64, f64, f64)> {
    let pool = store.as_postgres().ok_or("PostgreSQL store")?.clone();
    let relay = Relay::new(store.clone(), publisher, RelayConfig::default());
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = (rate * seconds) as usize;
    let writer = {
        let pool = pool.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            // One event per transaction, paced by an interval: a steady `rate` per second.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..total {
                tick.tick().await;
                let e = Envelope::builder(&topic, format!("{i}"))
                    .key(format!("key-{}", i % 500))
                    .build()?;
                let mut tx = pool.begin().await?;
                onephase_outbox::enqueue(&mut tx, &e).await?;
                tx.commit().await?;
                COMMITTED
                    .lock()
                    .map_err(|_| "poisoned")?
                    .insert(e.id(), Instant::now());
            }
            AnyResult::Ok(())
        })
    };
    let mut samples = Vec::with_capacity(total);
    while samples.len() < total {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next()).await??;
        let received = Instant::now();
        let committed = COMMITTED
            .lock()
            .map_err(|_| "poisoned")?
            .get(&d.envelope().id())
            .copied();
        if let Some(at) = committed {
            samples.push(received.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
        d.ack().await?;
    }
    writer.await??;
    stop.send(true)?;
    task.await?;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    Ok((pct(0.50), pct(0.99), pct(0.999)))
}

static COMMITTED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<onephase_core::MessageId, Instant>>,
> = std::sync::LazyLock::new(Default::default);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let Some(db) = TestDb::postgres().await else {
        return Err("set ONEPHASE_TEST_POSTGRES_URL (eval \"$(scripts/engines.sh)\")".into());
    };
    let nats = engine_url(Engine::Nats).ok_or("set ONEPHASE_TEST_NATS_URL")?;
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    let pool = store.as_postgres().ok_or("PostgreSQL")?.clone();
    let suffix = Uuid::now_v7().simple().to_string();
    let topic = format!("bench.t{suffix}");
    let stream = format!("BENCH_{suffix}");
    let nats_pub = NatsPublisher::connect(&nats).await?;
    nats_pub
        .ensure_stream(&stream, vec![topic.clone()], Duration::from_secs(120))
        .await?;

    let big: i64 = std::env::var("ONEPHASE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let small: i64 = big / 10;
    let mut results = Vec::new();
    let mut row = |name: &str, sink: &str, relays: usize, batch: u32, rows: i64, eps: f64| {
        println!("| {name} | {sink} | {relays} | {batch} | {rows} | {eps:.0} |");
        results.push(json!({"case": name, "sink": sink, "relays": relays, "batch": batch, "rows": rows, "events_per_second": eps.round()}));
    };
    println!("| case | sink | relays | batch | rows | events/s |\n|---|---|---|---|---|---|");

    let raw_sql = drain(&store, NoBroker, 1, 1000, big, &topic).await?;
    row(
        "raw SQL (claim + delete, no publish)",
        "none",
        1,
        1000,
        big,
        raw_sql,
    );
    let raw_sql4 = drain(&store, NoBroker, 4, 1000, big, &topic).await?;
    row(
        "raw SQL (claim + delete, no publish)",
        "none",
        4,
        1000,
        big,
        raw_sql4,
    );
    let raw_nats = raw_broker(&nats_pub, big as usize, &topic).await?;
    row("raw broker (publish only)", "nats", 0, 1000, big, raw_nats);
    let naive_nats = naive(&pool, &nats_pub, small / 5, &topic).await?;
    row(
        "naive relay (100 ms poll, 1 row per tx)",
        "nats",
        1,
        1,
        small / 5,
        naive_nats,
    );
    let mut relay_nats_1000 = 0.0;
    for (relays, batch, rows) in [
        (1, 1, small / 5),
        (4, 1, small / 5),
        (1, 100, big),
        (4, 100, big),
        (1, 1000, big),
        (4, 1000, big),
    ] {
        let eps = drain(&store, nats_pub.clone(), relays, batch, rows, &topic).await?;
        if relays == 1 && batch == 1000 {
            relay_nats_1000 = eps;
        }
        row("onephase relay", "nats", relays, batch, rows, eps);
    }

    #[cfg(feature = "kafka-tests")]
    let kafka = {
        use onephase_broker::kafka::KafkaPublisher;
        let brokers = engine_url(Engine::Kafka).ok_or("set ONEPHASE_TEST_KAFKA_BROKERS")?;
        let kafka = KafkaPublisher::connect(&brokers, Duration::from_secs(30))?;
        kafka.ensure_topic(&topic, 8).await?;
        let raw_kafka = raw_broker(&kafka, big as usize, &topic).await?;
        row(
            "raw broker (publish only)",
            "kafka",
            0,
            1000,
            big,
            raw_kafka,
        );
        let naive_kafka = naive(&pool, &kafka, small / 5, &topic).await?;
        row(
            "naive relay (100 ms poll, 1 row per tx)",
            "kafka",
            1,
            1,
            small / 5,
            naive_kafka,
        );
        for (relays, batch, rows) in [
            (1, 1, small / 5),
            (4, 1, small / 5),
            (1, 100, big),
            (4, 100, big),
            (1, 1000, big),
            (4, 1000, big),
        ] {
            let eps = drain(&store, kafka.clone(), relays, batch, rows, &topic).await?;
            row("onephase relay", "kafka", relays, batch, rows, eps);
        }
        raw_kafka
    };
    #[cfg(not(feature = "kafka-tests"))]
    let kafka = 0.0_f64;

    let mut sub = NatsSubscriber::subscribe(
        nats_pub.jetstream(),
        NatsSubscription {
            stream: stream.clone(),
            durable: "latency".into(),
            filter_subject: topic.clone(),
            ack_wait: Duration::from_secs(30),
        },
    )
    .await?;
    // Drain what the throughput runs left in the stream before measuring.
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        d.ack().await?;
    }
    let (p50, p99, p999) = latency(&store, nats_pub.clone(), &mut sub, &topic, 2_000, 10).await?;
    println!(
        "\nend-to-end latency at 2,000 events/s to NATS: p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms"
    );
    println!(
        "relay (1 relay, batch 1000) / raw SQL: {:.2}",
        relay_nats_1000 / raw_sql
    );
    println!(
        "relay (1 relay, batch 1000) / raw NATS publish: {:.2}",
        relay_nats_1000 / raw_nats
    );
    println!(
        "relay (1 relay, batch 1000) / naive relay: {:.1}",
        relay_nats_1000 / naive_nats
    );

    let summary = json!({
        "benchmark": "outbox-relay",
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "postgres": sqlx::query_scalar::<_, String>("SHOW server_version").fetch_one(&pool).await?,
        "throughput": results,
        "latency_ms_at_2000_per_s": {"p50": p50, "p99": p99, "p99_9": p999},
        "ratios": {
            "relay_batch1000_over_raw_sql": relay_nats_1000 / raw_sql,
            "relay_batch1000_over_raw_nats": relay_nats_1000 / raw_nats,
            "relay_batch1000_over_naive": relay_nats_1000 / naive_nats,
        },
        "raw_kafka_events_per_second": kafka,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/results/outbox-relay.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary)?)?;
    println!("\nwrote {}", out.display());
    drop(sub);
    nats_pub.jetstream().delete_stream(&stream).await?;
    db.close().await?;
    Ok(())
}

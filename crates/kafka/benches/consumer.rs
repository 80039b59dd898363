//! The consumer runtime against a bare `rdkafka` `StreamConsumer` loop doing the same work, in
//! the same run, on the same topic.
//!
//! ```text
//! eval "$(scripts/engines.sh)"      # the Kafka-compatible broker on 127.0.0.1:9092
//! cargo bench -p onephase-kafka --features client --bench consumer
//! ```
//!
//! - **no-op handler**: 100,000 messages on 6 partitions read from the start by a new group;
//!   the bare loop receives each message and drops it (librdkafka commits on its own every
//!   5 s); the runtime dispatches each to a task, tracks it per key and commits what is done.
//!   Messages per second until the last one is handled; three interleaved rounds, the median.
//! - **1 ms handler**: 4,000 messages, each handled by a 1 ms sleep: the bare loop awaits the
//!   handler inside the loop (what a naive consumer does), the runtime runs 64 at a time (keys
//!   are distinct). Three interleaved rounds, the median.
//!
//! The runtime's pause threshold is set past the topic's size: the messages are produced in
//! batches, and tansu answers a fetch resumed inside a batch with nothing.
//!
//! Results go to `bench/results/kafka.json` and a Markdown table on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onephase_kafka::rdkafka;
use onephase_kafka::{Consumer, ConsumerConfig, Message};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos:x}")
}

async fn topic_with(brokers: &str, messages: u32) -> AnyResult<String> {
    let topic = unique("bench-consumer");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    admin
        .create_topics(
            &[NewTopic::new(&topic, 6, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::new();
    for i in 0..messages {
        let key = format!("k{i}");
        let record = FutureRecord::to(&topic).key(&key).payload("x");
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| format!("producing: {e}"))?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| format!("delivery: {e}"))?;
    }
    Ok(topic)
}

/// Messages per second of a bare `StreamConsumer` loop that awaits `work` per message.
async fn bare(brokers: &str, topic: &str, messages: u32, work: Duration) -> AnyResult<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bench-bare"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut start = None;
    let mut seen = 0;
    while seen < messages {
        let m = consumer.recv().await?;
        start.get_or_insert_with(Instant::now);
        drop(m);
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        seen += 1;
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(f64::from(messages) / elapsed.as_secs_f64())
}

/// Messages per second of the runtime with a handler that waits `work`.
async fn runtime(brokers: &str, topic: &str, messages: u32, work: Duration) -> AnyResult<f64> {
    let handled = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let consumer = Consumer::new(
        ConsumerConfig::new(brokers, unique("bench-onephase"), [topic])
            .with_max_in_flight(64)
            // Never paused here: the bench produces batches of many messages, and tansu
            // answers a fetch resumed inside a batch with nothing (docs/kafka.md, limits).
            .with_capacity_per_partition(1_000_000)
            .with_assignment_strategy("range"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (counter, started) = (Arc::clone(&handled), Arc::clone(&first));
    let runner = consumer.clone();
    let task = tokio::spawn(async move {
        runner
            .run(
                move |_m: Message| {
                    let (counter, started) = (Arc::clone(&counter), Arc::clone(&started));
                    async move {
                        started.get_or_init(Instant::now);
                        if !work.is_zero() {
                            tokio::time::sleep(work).await;
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, String>(())
                    }
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });
    while handled.load(Ordering::Relaxed) < u64::from(messages) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.get().map_or(Duration::ZERO, |s| s.elapsed());
    let _ = stop.send(());
    task.await??;
    Ok(f64::from(messages) / elapsed.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> AnyResult<()> {
    let brokers = std::env::var("ONEPHASE_TEST_KAFKA_BROKERS")
        .map_err(|_| "set ONEPHASE_TEST_KAFKA_BROKERS (eval \"$(scripts/engines.sh)\")")?;
    let mut rows = Vec::new();
    for (case, messages, work, baseline) in [
        (
            "no-op handler, 100,000 messages, 6 partitions",
            100_000,
            Duration::ZERO,
            "bare StreamConsumer loop, no-op",
        ),
        (
            "1 ms handler, 4,000 messages, 64 at a time",
            4_000,
            Duration::from_millis(1),
            "bare StreamConsumer loop awaiting the handler",
        ),
    ] {
        let topic = topic_with(&brokers, messages).await?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            theirs.push(bare(&brokers, &topic, messages, work).await?);
            ours.push(runtime(&brokers, &topic, messages, work).await?);
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "| {case} | {ours:.0} msg/s | {baseline}: {theirs:.0} msg/s | {:.2} |",
            ours / theirs
        );
        rows.push(json!({
            "case": case,
            "unit": "messages/s",
            "onephase": ours,
            "baseline": baseline,
            "baseline_value": theirs,
            "ratio": ours / theirs,
        }));
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/results/kafka.json"
    );
    std::fs::write(
        path,
        serde_json::to_string_pretty(&json!({ "rows": rows }))?,
    )?;
    println!("written to bench/results/kafka.json");
    Ok(())
}

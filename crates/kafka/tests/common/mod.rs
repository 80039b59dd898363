//! What the Kafka suites share: topics with unique names, a fast producer, a wait.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context as _;
use onephase_kafka::rdkafka;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await?
    {
        result.map_err(|(t, code)| anyhow::anyhow!("creating {t}: {code}"))?;
    }
    Ok(())
}

/// An idempotent producer that sends every message in a batch of its own: tansu 0.6 answers
/// a fetch from an offset inside a batch with nothing (a consumer resuming at a commit in the
/// middle of one would wait forever there), and a real broker does not care.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Produces `messages` (key, payload) to `topic`, all delivery reports awaited.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    messages: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for (key, payload) in messages {
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
        pending.push(delivery);
        if pending.len() >= 5_000 {
            for d in pending.drain(..) {
                d.await
                    .context("producer gone")?
                    .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
            }
        }
    }
    for d in pending {
        d.await
            .context("producer gone")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(())
}

/// Polls `check` every 100 ms until it is true or `limit` passes.
pub async fn eventually(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what}: not within {limit:?}")
}

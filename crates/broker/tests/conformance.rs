//! One conformance suite for every adapter: what a publisher/subscriber pair must do, written
//! once. An adapter is proven by one `conformance!` line naming how to build its harness.
//!
//! The invariants: every published envelope arrives (at-least-once); envelopes with the same key
//! arrive in publish order; id, key, payload bytes, headers and creation time arrive unchanged;
//! what a subscriber received but did not acknowledge is delivered again to the next subscriber
//! of its group; a re-published envelope keeps its id (and adapters that de-duplicate deliver
//! it once).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, ensure};
use onephase_broker::{Delivery, Publisher, Subscriber};
use onephase_core::{Envelope, headers};
use time::OffsetDateTime;
use uuid::Uuid;

/// How the suite gets a publisher and subscribers of one adapter.
trait Harness: Sync {
    /// Whether the adapter drops a re-published envelope with an id it has already seen.
    const DEDUPLICATES: bool;
    /// A publisher able to publish to `topic` (creating streams or topics as needed).
    fn publisher(
        &self,
        topic: &str,
    ) -> impl Future<Output = anyhow::Result<Box<dyn Publisher>>> + Send;
    /// A subscriber of `group` on `topic`.
    fn subscriber(
        &self,
        topic: &str,
        group: &str,
    ) -> impl Future<Output = anyhow::Result<Box<dyn Subscriber>>> + Send;
}

fn unique_topic() -> String {
    format!("conformance.t{}", Uuid::now_v7().simple())
}

/// Creation times at whole milliseconds: every transport keeps at least that precision.
fn envelope(topic: &str, key: Option<&str>, n: usize) -> Envelope {
    let at = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("valid time")
        + time::Duration::milliseconds(n as i64);
    let mut builder = Envelope::builder(topic, format!("event-{n}").into_bytes())
        .header("seq", n.to_string())
        .created_at(at);
    if let Some(key) = key {
        builder = builder.key(key);
    }
    builder.build().expect("valid envelope")
}

async fn publish_all(publisher: &dyn Publisher, batch: &[Envelope]) -> anyhow::Result<()> {
    for (i, result) in publisher.publish(batch).await.into_iter().enumerate() {
        result.with_context(|| format!("publishing envelope {i}"))?;
    }
    Ok(())
}

async fn receive(subscriber: &mut dyn Subscriber) -> anyhow::Result<Delivery> {
    tokio::time::timeout(Duration::from_secs(30), subscriber.next())
        .await
        .context("nothing delivered within 30 s")?
        .context("receiving")
}

async fn order_per_key<H: Harness>(h: &H) -> anyhow::Result<()> {
    let topic = unique_topic();
    let mut sub = h.subscriber(&topic, "order").await?;
    let publisher = h.publisher(&topic).await?;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    let all: Vec<Envelope> = (0..200)
        .map(|n| envelope(&topic, Some(keys[n % 5]), n))
        .collect();
    for batch in all.chunks(50) {
        publish_all(publisher.as_ref(), batch).await?;
    }
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut seen = BTreeSet::new();
    while seen.len() < all.len() {
        let delivery = receive(sub.as_mut()).await?;
        let e = delivery.envelope().clone();
        let n: usize = e.header("seq").context("seq header")?.parse()?;
        let key = e.key().context("key")?.to_owned();
        if seen.insert(n)
            && let Some(prev) = last.insert(key.clone(), n)
        {
            ensure!(prev < n, "key {key}: event {n} arrived after {prev}");
        }
        delivery.ack().await?;
    }
    Ok(())
}

async fn at_least_once<H: Harness>(h: &H) -> anyhow::Result<()> {
    let topic = unique_topic();
    let mut sub = h.subscriber(&topic, "all").await?;
    let publisher = h.publisher(&topic).await?;
    let all: Vec<Envelope> = (0..500).map(|n| envelope(&topic, None, n)).collect();
    for batch in all.chunks(100) {
        publish_all(publisher.as_ref(), batch).await?;
    }
    let want: BTreeSet<_> = all.iter().map(Envelope::id).collect();
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let delivery = receive(sub.as_mut()).await?;
        ensure!(
            want.contains(&delivery.envelope().id()),
            "an envelope nobody published"
        );
        got.insert(delivery.envelope().id());
        delivery.ack().await?;
    }
    Ok(())
}

async fn envelope_survives_the_trip<H: Harness>(h: &H) -> anyhow::Result<()> {
    let topic = unique_topic();
    let mut sub = h.subscriber(&topic, "fidelity").await?;
    let publisher = h.publisher(&topic).await?;
    let sent = Envelope::builder(&topic, vec![0_u8, 159, 146, 150, 255, b'\n', 0])
        .key("customer-7")
        .header(headers::CORRELATION_ID, "req-1f3a")
        .header(headers::CAUSATION_ID, "cmd-9")
        .header(
            headers::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-tenant", "acme corp")
        .created_at(
            OffsetDateTime::from_unix_timestamp(1_790_000_000)? + time::Duration::milliseconds(123),
        )
        .build()?;
    let unkeyed = envelope(&topic, None, 1);
    publish_all(publisher.as_ref(), &[sent.clone(), unkeyed.clone()]).await?;
    // Different keys carry no order between them (Kafka may put them in two partitions).
    for _ in 0..2 {
        let delivery = receive(sub.as_mut()).await?;
        let expected = if delivery.envelope().id() == sent.id() {
            &sent
        } else {
            &unkeyed
        };
        ensure!(
            delivery.envelope() == expected,
            "sent {expected:?}\nreceived {:?}",
            delivery.envelope()
        );
        delivery.ack().await?;
    }
    Ok(())
}

async fn unacknowledged_are_redelivered<H: Harness>(h: &H) -> anyhow::Result<()> {
    let topic = unique_topic();
    let mut first = h.subscriber(&topic, "redeliver").await?;
    let publisher = h.publisher(&topic).await?;
    let all: Vec<Envelope> = (0..3).map(|n| envelope(&topic, Some("k"), n)).collect();
    // One call each: tansu 0.6.0, the Kafka-compatible broker of this suite, cannot fetch from
    // an offset inside a multi-record batch, which is where a restarted reader resumes here.
    for e in &all {
        publish_all(publisher.as_ref(), std::slice::from_ref(e)).await?;
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(receive(first.as_mut()).await?);
    }
    let mut received = received.into_iter();
    let acked = received.next().context("first delivery")?;
    ensure!(
        acked.envelope().id() == all[0].id(),
        "first delivery is not the first envelope"
    );
    acked.ack().await?;
    drop(received);
    drop(first);

    let mut second = h.subscriber(&topic, "redeliver").await?;
    let mut again = BTreeSet::new();
    while !(again.contains(&all[1].id()) && again.contains(&all[2].id())) {
        let delivery = receive(second.as_mut()).await?;
        again.insert(delivery.envelope().id());
        delivery.ack().await?;
    }
    Ok(())
}

async fn republished_keeps_its_id<H: Harness>(h: &H) -> anyhow::Result<()> {
    let topic = unique_topic();
    let mut sub = h.subscriber(&topic, "dup").await?;
    let publisher = h.publisher(&topic).await?;
    let e = envelope(&topic, Some("k"), 0);
    let marker = envelope(&topic, Some("k"), 1);
    publish_all(publisher.as_ref(), std::slice::from_ref(&e)).await?;
    publish_all(publisher.as_ref(), std::slice::from_ref(&e)).await?;
    publish_all(publisher.as_ref(), std::slice::from_ref(&marker)).await?;
    let mut copies = 0;
    loop {
        let delivery = receive(sub.as_mut()).await?;
        let id = delivery.envelope().id();
        delivery.ack().await?;
        if id == marker.id() {
            break;
        }
        ensure!(
            id == e.id(),
            "a re-published envelope arrived with a different id"
        );
        copies += 1;
    }
    if H::DEDUPLICATES {
        ensure!(
            copies == 1,
            "the adapter de-duplicates, yet delivered {copies} copies"
        );
    } else {
        ensure!((1..=2).contains(&copies), "{copies} copies");
    }
    Ok(())
}

/// Proves one adapter: `conformance!(module_name, async { Some(harness) })`, where the
/// expression yields `None` when the adapter's engine suite is skipped.
macro_rules! conformance {
    ($name:ident, $harness:expr) => {
        mod $name {
            use super::*;

            macro_rules! case {
                ($case:ident) => {
                    #[tokio::test]
                    async fn $case() -> anyhow::Result<()> {
                        #[allow(clippy::redundant_closure_call)]
                        let Some(h) = $harness.await else {
                            return Ok(());
                        };
                        super::$case(&h).await
                    }
                };
            }
            case!(order_per_key);
            case!(at_least_once);
            case!(envelope_survives_the_trip);
            case!(unacknowledged_are_redelivered);
            case!(republished_keeps_its_id);
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The embedded log, on SQLite and PostgreSQL.

mod log_harness {
    use super::*;
    use onephase_broker::log::{self, EmbeddedLog};
    use onephase_testkit::TestDb;

    pub struct LogHarness {
        _db: TestDb,
        log: EmbeddedLog,
    }

    impl LogHarness {
        pub async fn new(db: Option<TestDb>) -> Option<Self> {
            let db = db?;
            db.store()
                .migrate(&[log::migrations()])
                .await
                .expect("migrate the log");
            let log =
                EmbeddedLog::new(db.store().clone()).with_poll_interval(Duration::from_millis(50));
            Some(Self { _db: db, log })
        }
    }

    impl Harness for LogHarness {
        const DEDUPLICATES: bool = true;
        async fn publisher(&self, _topic: &str) -> anyhow::Result<Box<dyn Publisher>> {
            Ok(Box::new(self.log.publisher()))
        }
        async fn subscriber(
            &self,
            topic: &str,
            group: &str,
        ) -> anyhow::Result<Box<dyn Subscriber>> {
            Ok(Box::new(self.log.subscribe(topic, group).await?))
        }
    }
}

conformance!(
    log_sqlite,
    log_harness::LogHarness::new(Some(
        onephase_testkit::TestDb::sqlite()
            .await
            .expect("a SQLite database")
    ))
);
conformance!(
    log_postgres,
    log_harness::LogHarness::new(onephase_testkit::TestDb::postgres().await)
);

// ---------------------------------------------------------------------------------------------
// NATS JetStream.

#[cfg(feature = "nats")]
mod nats_harness {
    use super::*;
    use onephase_broker::nats::{NatsPublisher, NatsSubscriber, NatsSubscription};
    use onephase_testkit::{Engine, engine_url};

    pub struct NatsHarness {
        publisher: NatsPublisher,
    }

    fn stream_name(topic: &str) -> String {
        topic.replace('.', "_").to_uppercase()
    }

    impl NatsHarness {
        pub async fn new() -> Option<Self> {
            let url = engine_url(Engine::Nats)?;
            Some(Self {
                publisher: NatsPublisher::connect(&url).await.expect("connect to NATS"),
            })
        }
    }

    impl Harness for NatsHarness {
        const DEDUPLICATES: bool = true;
        async fn publisher(&self, topic: &str) -> anyhow::Result<Box<dyn Publisher>> {
            self.publisher
                .ensure_stream(
                    &stream_name(topic),
                    vec![topic.to_owned()],
                    Duration::from_secs(120),
                )
                .await?;
            Ok(Box::new(self.publisher.clone()))
        }
        async fn subscriber(
            &self,
            topic: &str,
            group: &str,
        ) -> anyhow::Result<Box<dyn Subscriber>> {
            self.publisher
                .ensure_stream(
                    &stream_name(topic),
                    vec![topic.to_owned()],
                    Duration::from_secs(120),
                )
                .await?;
            Ok(Box::new(
                NatsSubscriber::subscribe(
                    self.publisher.jetstream(),
                    NatsSubscription {
                        stream: stream_name(topic),
                        durable: group.to_owned(),
                        filter_subject: topic.to_owned(),
                        ack_wait: Duration::from_secs(1),
                    },
                )
                .await?,
            ))
        }
    }
}

#[cfg(feature = "nats")]
conformance!(nats, nats_harness::NatsHarness::new());

// ---------------------------------------------------------------------------------------------
// RabbitMQ.

#[cfg(feature = "amqp")]
mod amqp_harness {
    use super::*;
    use onephase_broker::amqp::{AmqpPublisher, AmqpSubscriber};
    use onephase_testkit::{Engine, engine_url};

    pub struct AmqpHarness {
        url: String,
        exchange: String,
    }

    impl AmqpHarness {
        pub async fn new() -> Option<Self> {
            let url = engine_url(Engine::RabbitMq)?;
            Some(Self {
                url,
                exchange: "onephase.conformance".to_owned(),
            })
        }
    }

    impl Harness for AmqpHarness {
        const DEDUPLICATES: bool = false;
        async fn publisher(&self, _topic: &str) -> anyhow::Result<Box<dyn Publisher>> {
            Ok(Box::new(
                AmqpPublisher::connect(&self.url, &self.exchange).await?,
            ))
        }
        async fn subscriber(
            &self,
            topic: &str,
            group: &str,
        ) -> anyhow::Result<Box<dyn Subscriber>> {
            let queue = format!("{topic}.{group}");
            Ok(Box::new(
                AmqpSubscriber::subscribe(&self.url, &self.exchange, &queue, topic, 64).await?,
            ))
        }
    }
}

#[cfg(feature = "amqp")]
conformance!(amqp, amqp_harness::AmqpHarness::new());

// ---------------------------------------------------------------------------------------------
// Redis Streams.

#[cfg(feature = "redis")]
mod redis_harness {
    use super::*;
    use onephase_broker::redis::{RedisPublisher, RedisSubscriber, RedisSubscription};
    use onephase_testkit::{Engine, engine_url};

    pub struct RedisHarness {
        url: String,
    }

    impl RedisHarness {
        pub async fn new() -> Option<Self> {
            Some(Self {
                url: engine_url(Engine::Redis)?,
            })
        }
    }

    impl Harness for RedisHarness {
        const DEDUPLICATES: bool = false;
        async fn publisher(&self, _topic: &str) -> anyhow::Result<Box<dyn Publisher>> {
            Ok(Box::new(
                RedisPublisher::connect(&self.url, "onephase:")
                    .await?
                    .with_max_len(10_000),
            ))
        }
        async fn subscriber(
            &self,
            topic: &str,
            group: &str,
        ) -> anyhow::Result<Box<dyn Subscriber>> {
            Ok(Box::new(
                RedisSubscriber::subscribe(
                    &self.url,
                    RedisSubscription {
                        prefix: "onephase:".to_owned(),
                        topic: topic.to_owned(),
                        group: group.to_owned(),
                        consumer: "c1".to_owned(),
                        claim_idle: Duration::from_secs(30),
                    },
                )
                .await?,
            ))
        }
    }
}

#[cfg(feature = "redis")]
conformance!(redis, redis_harness::RedisHarness::new());

// ---------------------------------------------------------------------------------------------
// Kafka.

#[cfg(feature = "kafka")]
mod kafka_harness {
    use super::*;
    use onephase_broker::kafka::{KafkaPublisher, KafkaSubscriber};
    use onephase_testkit::{Engine, engine_url};

    pub struct KafkaHarness {
        brokers: String,
    }

    impl KafkaHarness {
        pub async fn new() -> Option<Self> {
            Some(Self {
                brokers: engine_url(Engine::Kafka)?,
            })
        }
    }

    impl Harness for KafkaHarness {
        const DEDUPLICATES: bool = false;
        async fn publisher(&self, topic: &str) -> anyhow::Result<Box<dyn Publisher>> {
            let publisher = KafkaPublisher::connect(&self.brokers, Duration::from_secs(30))?;
            publisher.ensure_topic(topic, 3).await?;
            Ok(Box::new(publisher))
        }
        async fn subscriber(
            &self,
            topic: &str,
            group: &str,
        ) -> anyhow::Result<Box<dyn Subscriber>> {
            KafkaPublisher::connect(&self.brokers, Duration::from_secs(30))?
                .ensure_topic(topic, 3)
                .await?;
            let group = format!("{topic}.{group}");
            Ok(Box::new(KafkaSubscriber::subscribe(
                &self.brokers,
                &group,
                &[topic],
            )?))
        }
    }
}

#[cfg(feature = "kafka")]
conformance!(kafka, kafka_harness::KafkaHarness::new());

#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_conformance() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Kafka, "onephase-broker", "kafka");
}

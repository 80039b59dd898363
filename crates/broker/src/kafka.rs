//! Kafka (through librdkafka).
//!
//! Publishing uses an idempotent producer (`enable.idempotence=true`, hence `acks=all` and at
//! most five requests in flight with retries that cannot reorder or duplicate within a
//! partition). The envelope key is the record key, so the key decides the partition and order
//! per key holds within it. The envelope id and creation time travel as the
//! [`onephase-id`](crate::wire::ID_HEADER) and
//! [`onephase-created-at`](crate::wire::CREATED_AT_HEADER) headers beside the envelope headers.
//! Every delivery report is awaited.
//!
//! Subscribing joins a consumer group with `enable.auto.offset.store=false`: acknowledging a
//! record stores its offset, and librdkafka commits stored offsets every `auto.commit.interval.ms`
//! and when the consumer closes (on drop). Offsets are stored only past a contiguous run of
//! acknowledged records of a partition, so an unacknowledged record is read again by whoever
//! owns the partition next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use onephase_core::{Envelope, ErrorKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

use crate::ack::AckTracker;
use crate::wire::{self, Parts};
use crate::{Acknowledge, BrokerError, Delivery, Publisher, Subscriber};

const TRANSPORT: &str = "kafka";

fn kafka_error(context: &str, e: &KafkaError) -> BrokerError {
    let kind = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            ErrorKind::TooLarge
        }
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
            ErrorKind::Timeout
        }
        Some(RDKafkaErrorCode::InvalidTopic) => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    };
    BrokerError::new(kind, TRANSPORT, format!("{context}: {e}"))
}

/// Publishes to Kafka with an idempotent producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    brokers: String,
}

impl KafkaPublisher {
    /// An idempotent producer for `brokers` (`host:9092,host2:9092`). A delivery not
    /// acknowledged within `delivery_timeout` (librdkafka retries until then) is reported as a
    /// timeout.
    pub fn connect(brokers: &str, delivery_timeout: Duration) -> Result<Self, BrokerError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().max(1).to_string(),
            )
            .create()
            .map_err(|e| kafka_error("creating the producer", &e))?;
        Ok(Self {
            producer,
            brokers: brokers.to_owned(),
        })
    }

    /// Creates `topic` with `partitions` partitions if it does not exist.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(|e| kafka_error("creating the admin client", &e))?;
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .map_err(|e| kafka_error("creating topic", &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::unavailable(
                        TRANSPORT,
                        format!("creating topic {name}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Publisher for KafkaPublisher {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let mut pending = Vec::with_capacity(batch.len());
            for envelope in batch {
                let id = envelope.id().to_string();
                let created_at = wire::format_time(envelope.created_at());
                let mut headers = OwnedHeaders::new_with_capacity(envelope.headers().len() + 2)
                    .insert(Header {
                        key: wire::ID_HEADER,
                        value: Some(id.as_bytes()),
                    })
                    .insert(Header {
                        key: wire::CREATED_AT_HEADER,
                        value: Some(created_at.as_bytes()),
                    });
                for (name, value) in envelope.headers() {
                    headers = headers.insert(Header {
                        key: name.as_str(),
                        value: Some(value.as_bytes()),
                    });
                }
                let mut record = FutureRecord::<str, [u8]>::to(envelope.topic())
                    .payload(envelope.payload().as_ref())
                    .headers(headers);
                if let Some(key) = envelope.key() {
                    record = record.key(key);
                }
                // The local queue may be full when the broker is slow; wait for room rather
                // than failing the batch.
                let mut record = record;
                let sent = loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => break Ok(delivery),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => break Err(kafka_error("producing", &e)),
                    }
                };
                pending.push(sent);
            }
            join_all(pending.into_iter().map(|sent| async move {
                match sent?.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(kafka_error("delivery", &e)),
                    Err(_) => Err(BrokerError::unavailable(
                        TRANSPORT,
                        "the producer shut down before reporting delivery",
                    )),
                }
            }))
            .await
        }
        .boxed()
    }
}

fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000");
    config
}

type Trackers = Arc<Mutex<HashMap<(String, i32), AckTracker>>>;

/// Reads Kafka topics as a member of a consumer group.
pub struct KafkaSubscriber {
    consumer: Arc<StreamConsumer>,
    trackers: Trackers,
}

impl KafkaSubscriber {
    /// Joins consumer group `group` on `brokers` and subscribes to `topics`, starting from the
    /// earliest offset when the group has none committed.
    pub fn subscribe(brokers: &str, group: &str, topics: &[&str]) -> Result<Self, BrokerError> {
        let consumer: StreamConsumer = consumer_config(brokers, group)
            .create()
            .map_err(|e| kafka_error("creating the consumer", &e))?;
        consumer
            .subscribe(topics)
            .map_err(|e| kafka_error("subscribing", &e))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            trackers: Arc::default(),
        })
    }
}

impl Subscriber for KafkaSubscriber {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>> {
        async move {
            let message = self
                .consumer
                .recv()
                .await
                .map_err(|e| kafka_error("receiving", &e))?;
            let topic = message.topic().to_owned();
            let (partition, offset) = (message.partition(), message.offset());
            let locator = format!("{topic}/{partition}@{offset}");
            let mut parts = Parts {
                topic: topic.clone(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: message.payload().unwrap_or_default().to_vec().into(),
                ..Parts::default()
            };
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    let value =
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                    match header.key {
                        wire::ID_HEADER => parts.id = Some(value),
                        wire::CREATED_AT_HEADER => parts.created_at = Some(value),
                        name => parts.headers.push((name.to_owned(), value)),
                    }
                }
            }
            drop(message);
            if let Ok(mut trackers) = self.trackers.lock() {
                trackers
                    .entry((topic.clone(), partition))
                    .or_insert_with(|| AckTracker::new(offset - 1))
                    .delivered(offset);
            }
            let ack = KafkaAck {
                consumer: Arc::clone(&self.consumer),
                trackers: Arc::clone(&self.trackers),
                topic,
                partition,
                offset,
            };
            match parts.into_envelope(TRANSPORT, &locator) {
                Ok(envelope) => Ok(Delivery::new(envelope, false, Box::new(ack))),
                Err(e) => {
                    Box::new(ack).ack().await?;
                    Err(e)
                }
            }
        }
        .boxed()
    }
}

struct KafkaAck {
    consumer: Arc<StreamConsumer>,
    trackers: Trackers,
    topic: String,
    partition: i32,
    offset: i64,
}

impl Acknowledge for KafkaAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        async move {
            let to_store = self
                .trackers
                .lock()
                .map_err(|_| {
                    BrokerError::new(ErrorKind::Internal, TRANSPORT, "ack tracker poisoned")
                })?
                .get_mut(&(self.topic.clone(), self.partition))
                .and_then(|t| t.ack(self.offset));
            if let Some(offset) = to_store {
                self.consumer
                    .store_offset(&self.topic, self.partition, offset)
                    .map_err(|e| kafka_error("storing the offset", &e))?;
            }
            Ok(())
        }
        .boxed()
    }
}

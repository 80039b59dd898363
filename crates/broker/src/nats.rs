//! NATS JetStream.
//!
//! Publishing uses the envelope's topic as the subject, the envelope id as `Nats-Msg-Id` (so
//! JetStream drops a re-published duplicate inside the stream's duplicate window) and awaits
//! every publish acknowledgement. The key and creation time travel as the
//! [`onephase-key`](crate::wire::KEY_HEADER) and
//! [`onephase-created-at`](crate::wire::CREATED_AT_HEADER) headers. The stream that captures
//! the subjects must exist; [`NatsPublisher::ensure_stream`] creates one.
//!
//! Subscribing uses a durable pull consumer with explicit acks: an unacknowledged message is
//! delivered again once the consumer's `ack_wait` has passed.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, consumer, context::PublishErrorKind, message::PublishMessage, stream,
};
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use onephase_core::Envelope;

use crate::wire::{self, Parts};
use crate::{Acknowledge, BrokerError, Delivery, Publisher, Subscriber};

const TRANSPORT: &str = "nats";
const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes to NATS JetStream.
#[derive(Clone)]
pub struct NatsPublisher {
    js: jetstream::Context,
}

impl NatsPublisher {
    /// A publisher over an existing client connection.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
        }
    }

    /// Connects to `url` (`nats://host:4222`).
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let client = async_nats::connect(url).await.map_err(|e| {
            BrokerError::unavailable(TRANSPORT, format!("connecting to {url}: {e}"))
        })?;
        Ok(Self::new(client))
    }

    /// Waits at most `timeout` for each publish acknowledgement (default 5 s) before reporting
    /// the envelope as timed out. While the connection is down the client buffers publishes
    /// and resends them on reconnect; this bounds how long the relay waits on that.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.js.set_timeout(timeout);
        self
    }

    /// The JetStream context, for managing streams and consumers.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates stream `name` capturing `subjects` (wildcards allowed) with a duplicate window
    /// of `dedup_window`, or returns the existing stream of that name unchanged.
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        dedup_window: Duration,
    ) -> Result<stream::Stream, BrokerError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects,
                duplicate_window: dedup_window,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                BrokerError::unavailable(TRANSPORT, format!("creating stream {name}: {e}"))
            })
    }
}

fn to_message(envelope: &Envelope) -> PublishMessage {
    let mut headers = HeaderMap::new();
    for (name, value) in envelope.headers() {
        headers.insert(name.as_str(), value.as_str());
    }
    if let Some(key) = envelope.key() {
        headers.insert(wire::KEY_HEADER, key);
    }
    headers.insert(
        wire::CREATED_AT_HEADER,
        wire::format_time(envelope.created_at()),
    );
    PublishMessage::build()
        .payload(envelope.payload().clone())
        .headers(headers)
        .message_id(envelope.id().to_string())
}

fn publish_error(e: &async_nats::jetstream::context::PublishError) -> BrokerError {
    match e.kind() {
        PublishErrorKind::TimedOut => BrokerError::timeout(TRANSPORT, e),
        PublishErrorKind::MaxPayloadExceeded => BrokerError::new(
            onephase_core::ErrorKind::TooLarge,
            TRANSPORT,
            format!("{e}; raise the server's max_payload or send smaller payloads"),
        ),
        PublishErrorKind::StreamNotFound => BrokerError::unavailable(
            TRANSPORT,
            format!("{e}: create a JetStream stream that captures this subject"),
        ),
        _ => BrokerError::unavailable(TRANSPORT, e),
    }
}

impl Publisher for NatsPublisher {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            // Send everything first (pipelined, in order on one connection), then await acks.
            let mut pending = Vec::with_capacity(batch.len());
            for envelope in batch {
                let sent = self
                    .js
                    .send_publish(envelope.topic().to_owned(), to_message(envelope))
                    .await;
                pending.push(sent);
            }
            join_all(pending.into_iter().map(|sent| async move {
                match sent {
                    Ok(ack) => ack.await.map(drop).map_err(|e| publish_error(&e)),
                    Err(e) => Err(publish_error(&e)),
                }
            }))
            .await
        }
        .boxed()
    }
}

/// Subscription settings for [`NatsSubscriber`].
#[derive(Debug, Clone)]
pub struct NatsSubscription {
    /// The stream to read.
    pub stream: String,
    /// The durable consumer's name: the consumer group.
    pub durable: String,
    /// Only subjects matching this filter (empty: the whole stream).
    pub filter_subject: String,
    /// How long the server waits for an ack before delivering a message again.
    pub ack_wait: Duration,
}

/// Reads a JetStream stream through a durable pull consumer.
pub struct NatsSubscriber {
    messages: consumer::pull::Stream,
}

impl NatsSubscriber {
    /// Creates (or reuses) the durable consumer and starts pulling.
    pub async fn subscribe(
        js: &jetstream::Context,
        subscription: NatsSubscription,
    ) -> Result<Self, BrokerError> {
        let stream = js.get_stream(&subscription.stream).await.map_err(|e| {
            BrokerError::unavailable(TRANSPORT, format!("stream {}: {e}", subscription.stream))
        })?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &subscription.durable,
                consumer::pull::Config {
                    durable_name: Some(subscription.durable.clone()),
                    filter_subject: subscription.filter_subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: subscription.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                BrokerError::unavailable(
                    TRANSPORT,
                    format!("consumer {}: {e}", subscription.durable),
                )
            })?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BrokerError::unavailable(TRANSPORT, e))?;
        Ok(Self { messages })
    }
}

impl Subscriber for NatsSubscriber {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>> {
        async move {
            let message = self
                .messages
                .next()
                .await
                .ok_or_else(|| {
                    BrokerError::unavailable(TRANSPORT, "the consumer's message stream ended")
                })?
                .map_err(|e| BrokerError::unavailable(TRANSPORT, e))?;
            let (redelivered, locator) = match message.info() {
                Ok(info) => (
                    info.delivered > 1,
                    format!("{} sequence {}", info.stream, info.stream_sequence),
                ),
                Err(_) => (false, "an unknown sequence".to_owned()),
            };
            let (message, acker) = message.split();
            let mut parts = Parts {
                topic: message.subject.to_string(),
                payload: message.payload,
                ..Parts::default()
            };
            if let Some(headers) = &message.headers {
                for (name, values) in headers.iter() {
                    let name = name.to_string();
                    let Some(value) = values.first().map(|v| v.as_str().to_owned()) else {
                        continue;
                    };
                    match name.as_str() {
                        MSG_ID => parts.id = Some(value),
                        wire::KEY_HEADER => parts.key = Some(value),
                        wire::CREATED_AT_HEADER => parts.created_at = Some(value),
                        _ => parts.headers.push((name, value)),
                    }
                }
            }
            match parts.into_envelope(TRANSPORT, &locator) {
                Ok(envelope) => Ok(Delivery::new(
                    envelope,
                    redelivered,
                    Box::new(NatsAck(acker)),
                )),
                Err(e) => {
                    // Not ours to handle; acknowledge so it cannot wedge the consumer.
                    let _ = acker.ack().await;
                    Err(e)
                }
            }
        }
        .boxed()
    }
}

struct NatsAck(jetstream::message::Acker);

impl Acknowledge for NatsAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        async move {
            self.0
                .ack()
                .await
                .map_err(|e| BrokerError::unavailable(TRANSPORT, format!("ack: {e}")))
        }
        .boxed()
    }
}

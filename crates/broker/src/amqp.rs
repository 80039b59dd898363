//! RabbitMQ (AMQP 0-9-1).
//!
//! Publishing goes to a durable topic exchange with the envelope's topic as routing key,
//! `delivery_mode = 2` (persistent), the envelope id as the AMQP `message-id` property and the
//! envelope headers as AMQP headers; every publish waits for its publisher confirm. Publishes
//! are `mandatory`: a message no queue is bound to receive is reported as a failure instead of
//! being silently dropped by the exchange.
//!
//! Subscribing declares a durable queue (the consumer group), binds it to the exchange and
//! consumes with manual acks; messages unacknowledged when the channel closes are requeued.

use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use onephase_core::Envelope;
use tokio::sync::Mutex;

use crate::wire::{self, Parts};
use crate::{Acknowledge, BrokerError, Delivery, Publisher, Subscriber};

const TRANSPORT: &str = "amqp";

fn unavailable(context: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::unavailable(TRANSPORT, format!("{context}: {e}"))
}

async fn open_channel(url: &str, exchange: &str) -> Result<(Connection, Channel), BrokerError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| unavailable("connecting", e))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", e))?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable(&format!("declaring exchange {exchange}"), e))?;
    Ok((connection, channel))
}

/// Publishes to a RabbitMQ topic exchange with publisher confirms. Reconnects on the next
/// publish after the connection is lost.
pub struct AmqpPublisher {
    url: String,
    exchange: String,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpPublisher {
    /// Connects to `url` (`amqp://user:pass@host:5672/%2f`) and declares the durable topic
    /// exchange `exchange`.
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, BrokerError> {
        let publisher = Self {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            channel: Mutex::new(None),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.channel.lock().await;
        if let Some((connection, channel)) = slot.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let (connection, channel) = open_channel(&self.url, &self.exchange).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("enabling publisher confirms", e))?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }
}

fn properties(envelope: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in envelope.headers() {
        headers.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    if let Some(key) = envelope.key() {
        headers.insert(
            ShortString::from(wire::KEY_HEADER),
            AMQPValue::LongString(LongString::from(key.as_bytes())),
        );
    }
    headers.insert(
        ShortString::from(wire::CREATED_AT_HEADER),
        AMQPValue::LongString(LongString::from(wire::format_time(envelope.created_at()))),
    );
    let seconds = u64::try_from(envelope.created_at().unix_timestamp()).unwrap_or(0);
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(envelope.id().to_string()))
        .with_timestamp(seconds)
        .with_headers(headers)
}

impl Publisher for AmqpPublisher {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let channel = match self.channel().await {
                Ok(channel) => channel,
                Err(e) => return vec![Err(e); batch.len()],
            };
            let mut pending = Vec::with_capacity(batch.len());
            for envelope in batch {
                let sent = channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        envelope.topic().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        envelope.payload(),
                        properties(envelope),
                    )
                    .await;
                pending.push(sent);
            }
            join_all(pending.into_iter().zip(batch).map(|(sent, envelope)| async move {
                let confirm = sent.map_err(|e| unavailable("publishing", e))?;
                match confirm.await.map_err(|e| unavailable("awaiting the confirm", e))? {
                    Confirmation::Ack(None) => Ok(()),
                    Confirmation::Ack(Some(_)) => Err(BrokerError::unavailable(
                        TRANSPORT,
                        format!(
                            "no queue is bound to exchange {:?} for routing key {:?}; bind one \
                             before publishing, or the message would be dropped",
                            self.exchange,
                            envelope.topic()
                        ),
                    )),
                    Confirmation::Nack(_) => Err(BrokerError::unavailable(
                        TRANSPORT,
                        "the broker refused the message (nack)",
                    )),
                    Confirmation::NotRequested => Err(BrokerError::new(
                        onephase_core::ErrorKind::Internal,
                        TRANSPORT,
                        "publisher confirms are not enabled on the channel",
                    )),
                }
            }))
            .await
        }
        .boxed()
    }
}

/// Consumes a durable RabbitMQ queue bound to a topic exchange, with manual acks.
pub struct AmqpSubscriber {
    _connection: Connection,
    consumer: lapin::Consumer,
}

impl AmqpSubscriber {
    /// Declares durable queue `queue`, binds it to `exchange` for routing key pattern `binding`
    /// (AMQP topic syntax: `orders.*`, `#`), and starts consuming with up to `prefetch`
    /// unacknowledged messages.
    pub async fn subscribe(
        url: &str,
        exchange: &str,
        queue: &str,
        binding: &str,
        prefetch: u16,
    ) -> Result<Self, BrokerError> {
        let (connection, channel) = open_channel(url, exchange).await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("declaring queue {queue}"), e))?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("binding queue {queue}"), e))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable("setting prefetch", e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "onephase".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("consuming {queue}"), e))?;
        Ok(Self {
            _connection: connection,
            consumer,
        })
    }
}

fn field_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl Subscriber for AmqpSubscriber {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>> {
        async move {
            let delivery = self
                .consumer
                .next()
                .await
                .ok_or_else(|| BrokerError::unavailable(TRANSPORT, "the consumer was cancelled"))?
                .map_err(|e| unavailable("receiving", e))?;
            let locator = format!("delivery tag {}", delivery.delivery_tag);
            let mut parts = Parts {
                topic: delivery.routing_key.as_str().to_owned(),
                id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned()),
                payload: delivery.data.into(),
                ..Parts::default()
            };
            if let Some(headers) = delivery.properties.headers() {
                for (name, value) in headers {
                    let Some(value) = field_text(value) else {
                        continue;
                    };
                    match name.as_str() {
                        wire::KEY_HEADER => parts.key = Some(value),
                        wire::CREATED_AT_HEADER => parts.created_at = Some(value),
                        other => parts.headers.push((other.to_owned(), value)),
                    }
                }
            }
            let acker = delivery.acker;
            match parts.into_envelope(TRANSPORT, &locator) {
                Ok(envelope) => Ok(Delivery::new(
                    envelope,
                    delivery.redelivered,
                    Box::new(AmqpAck(acker)),
                )),
                Err(e) => {
                    let _ = acker.ack(BasicAckOptions::default()).await;
                    Err(e)
                }
            }
        }
        .boxed()
    }
}

struct AmqpAck(lapin::Acker);

impl Acknowledge for AmqpAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        async move {
            self.0
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| unavailable("ack", e))
        }
        .boxed()
    }
}

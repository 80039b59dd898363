use futures::future::BoxFuture;
use onephase_core::Envelope;

use crate::BrokerError;

/// Receives envelopes from a broker, one at a time, until each is acknowledged.
///
/// Delivery is at-least-once on every adapter: an envelope that was received but not
/// [acknowledged](Delivery::ack) before the subscriber went away (dropped, crashed, lost its
/// connection) is delivered again to the next subscriber of the same group. Pair a subscriber
/// with an inbox (`onephase-outbox`'s `Inbox`) to apply each message's effect once.
///
/// Within one group, envelopes with the same key arrive in the order they were published
/// (Kafka: one partition per key; JetStream, RabbitMQ, Redis Streams and the embedded log: one
/// ordered stream per topic), as long as each is acknowledged before the next is requested.
pub trait Subscriber: Send {
    /// A short name for logs: `"nats"`, `"kafka"`, ...
    fn transport(&self) -> &'static str;

    /// Waits for the next envelope.
    ///
    /// A message on the wire that is not a valid envelope (written by another producer, or
    /// corrupted) is returned as an error of kind `InvalidInput` and acknowledged by the
    /// adapter, so that one bad message cannot wedge the subscription; the error says where it
    /// was.
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>>;
}

/// One received envelope and the means to acknowledge it.
#[derive(derive_more::Debug)]
pub struct Delivery {
    envelope: Envelope,
    redelivered: bool,
    #[debug(skip)]
    acker: Box<dyn Acknowledge>,
}

impl Delivery {
    /// Wraps a received envelope; `acker` tells the broker it was handled. For adapters.
    pub fn new(envelope: Envelope, redelivered: bool, acker: Box<dyn Acknowledge>) -> Self {
        Self {
            envelope,
            redelivered,
            acker,
        }
    }

    /// The envelope, as published: same id, topic, key, payload and headers.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Whether the broker says it delivered this message before. A hint only: `false` does not
    /// prove a first delivery (not every broker tracks it), which is why the inbox exists.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Tells the broker the envelope was handled, so it is not delivered to this group again.
    /// Acknowledge only after the effect is committed.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }
}

/// How an adapter acknowledges one delivery. Implemented by adapters.
pub trait Acknowledge: Send {
    /// Acknowledges the delivery.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>>;
}

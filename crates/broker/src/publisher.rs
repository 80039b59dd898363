use std::sync::Arc;

use futures::future::BoxFuture;
use onephase_core::Envelope;

use crate::BrokerError;

/// Sends envelopes to a broker and reports, for each one, whether the broker durably accepted it.
///
/// `publish` sends the whole batch concurrently (pipelined on one connection where the broker
/// allows it) and resolves only when every envelope has an answer: a broker acknowledgement
/// (Kafka delivery report, JetStream publish ack, AMQP publisher confirm, Redis `XADD` reply, a
/// committed row in the embedded log) or an error. `results[i]` answers `batch[i]`.
///
/// An `Ok` means the broker has the message and a subscriber will see it. An `Err` means it may
/// or may not have landed (a timeout after sending), so the caller publishes it again and
/// relies on the message id for de-duplication: every adapter carries [`Envelope::id`] where
/// the broker or the consumer can see it.
///
/// Adapters keep the order of envelopes within a batch on the wire. They do not promise order
/// across a failure: if `batch[0]` fails and `batch[1]` succeeds, the broker has `batch[1]`
/// only. The outbox relay therefore never puts two envelopes with the same key in one call.
pub trait Publisher: Send + Sync {
    /// A short name for logs and metrics labels: `"nats"`, `"kafka"`, `"amqp"`, `"redis"`,
    /// `"log"`.
    fn transport(&self) -> &'static str;

    /// Publishes `batch`; see the trait documentation for what each result means.
    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>>;
}

impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn transport(&self) -> &'static str {
        (**self).transport()
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        (**self).publish(batch)
    }
}

impl<P: Publisher + ?Sized> Publisher for Box<P> {
    fn transport(&self) -> &'static str {
        (**self).transport()
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        (**self).publish(batch)
    }
}

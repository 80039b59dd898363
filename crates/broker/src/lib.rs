//! Publishers and subscribers over the brokers people already run, behind one pair of traits.
//!
//! Everything onephase sends to another system is an [`Envelope`](onephase_core::Envelope);
//! a [`Publisher`] hands a batch of envelopes to a broker and reports, for each one, whether
//! the broker durably accepted it; a [`Subscriber`] hands envelopes out one
//! [`Delivery`] at a time until each is acknowledged. The outbox relay is written against
//! these traits only, so every adapter gets the same relay, and one conformance suite
//! (`tests/conformance.rs`) proves every adapter against the same invariants: order per key,
//! at-least-once, ids and headers preserved, redelivery of what was not acknowledged.
//!
//! | adapter | feature | publish is durable when | de-duplicates on the id |
//! |---|---|---|---|
//! | [`log::EmbeddedLog`] | (always) | the append transaction commits | yes, per topic |
//! | `nats::NatsPublisher` | `nats` | JetStream's publish ack arrives | yes, `Nats-Msg-Id` in the duplicate window |
//! | `kafka::KafkaPublisher` | `kafka` | the delivery report (`acks=all`) arrives | producer retries only (idempotent producer) |
//! | `amqp::AmqpPublisher` | `amqp` | the publisher confirm arrives | no; `message-id` is set for consumers |
//! | `redis::RedisPublisher` | `redis` | `XADD` replies | no; the id is a field for consumers |
//!
//! Where the broker cannot de-duplicate, a relay that re-publishes after a crash produces a
//! duplicate, and the consumer's inbox absorbs it. The id is on every message so that it can.

mod ack;
mod error;
pub mod log;
mod publisher;
mod subscriber;
pub mod wire;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

pub use error::BrokerError;
pub use publisher::Publisher;
pub use subscriber::{Acknowledge, Delivery, Subscriber};

//! Kafka consumer groups that keep consuming, and a doctor for the ones that don't.
//!
//! A consumer group can stop consuming while the process is up and every dashboard is green:
//! a handler slower than `max.poll.interval.ms` gets its member thrown out, the group
//! rebalances, the member rejoins and is thrown out again; a message that fails forever holds
//! its partition while the others move; lag grows evenly because the group is simply too
//! slow. This crate has two halves.
//!
//! **The consumer runtime** ([`Consumer`], feature `client`, on librdkafka):
//!
//! - The poll loop runs on a thread of its own and never waits for a handler. Work is
//!   dispatched per partition onto tokio tasks: one message at a time per key, in offset order,
//!   keys concurrently up to a bound. A partition whose in-flight messages reach its capacity is
//!   paused and resumed when half of them are done, so slow work slows fetching, never polling.
//! - Commits carry only offsets below which every message is done ([`progress`]); a crash
//!   re-reads from there (at-least-once). On revoke the runtime stops starting messages of the
//!   revoked partitions, waits for the running ones up to a bound, commits, then gives the
//!   partitions up. Cooperative-sticky assignment by default; static membership on request.
//! - A failing message is retried with backoff a bounded number of times (a handler timeout is
//!   a failure), then produced to a dead-letter topic with the error and its origin in headers,
//!   and its offset is committed past. Other partitions and keys go on meanwhile.
//! - Effects once: [`Message::id`] is stable across redeliveries, ready for
//!   `onephase_outbox::Inbox::process_id` in the handler's transaction.
//! - Its own health ([`Consumer::health`]): per partition, in flight, paused, and stuck when it
//!   has lag or work and its commit did not move for a while.
//!
//! **The doctor** ([`rules`] and [`diagnosis`] are pure; [`Probe`] and [`Doctor`] read a
//! live cluster, feature `client`): every group's state, members, rebalances within a window,
//! each partition's committed offset, log end, lag in messages and in seconds, a status per
//! partition by Burrow's rules without its false STOP on idle topics, and a diagnosis in words:
//! a rebalance storm, one stuck partition (with its offset), a stalled group, a group falling
//! behind, an empty group, a rewind.
//!
//! ```
//! use onephase_kafka::diagnosis::{GroupHistory, Observation, Reading, TopicPartition, diagnose, FindingKind};
//!
//! // Three readings a second apart: partition 0 is stuck at offset 41, partition 1 advances.
//! let mut history = GroupHistory::new("billing", 60_000);
//! for i in 0..3 {
//!     let at_ms = 1_000 * i;
//!     let mut partitions = std::collections::BTreeMap::new();
//!     partitions.insert(TopicPartition::new("orders", 0), Reading { committed: Some(41), end: 60 + i, waiting_since_ms: Some(0) });
//!     partitions.insert(TopicPartition::new("orders", 1), Reading { committed: Some(10 * i), end: 10 * i + 2, waiting_since_ms: Some(at_ms) });
//!     let members = vec![onephase_kafka::diagnosis::Member {
//!         id: "m-1".into(), client_id: "billing".into(), host: "/10.0.0.7".into(), partitions: vec![],
//!     }];
//!     history.record(Observation { at_ms, state: "Stable".into(), members, partitions });
//! }
//! let diagnosis = diagnose(&history).unwrap();
//! assert_eq!(diagnosis.findings[0].kind, FindingKind::StuckPartition);
//! assert!(diagnosis.findings[0].summary.contains("offset 41"));
//! ```

pub mod assignment;
pub mod diagnosis;
mod findings;
pub mod progress;
pub mod rules;

#[cfg(feature = "client")]
mod consumer;
#[cfg(feature = "client")]
pub mod doctor;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod topics;

#[cfg(feature = "client")]
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerHealth, DEAD_LETTER_HEADERS, Message, PartitionHealth,
};
#[cfg(feature = "client")]
pub use doctor::{Doctor, DoctorConfig, Probe};
#[cfg(feature = "client")]
pub use error::KafkaError;
/// The librdkafka binding the runtime is built on, for settings and admin calls of one's own.
#[cfg(feature = "client")]
pub use rdkafka;

//! The shared vocabulary of onephase.
//!
//! Every pattern onephase implements moves a message from one local commit to another: an
//! outbox row becomes a broker record, a webhook, a saga step. This crate holds what all of them
//! agree on, and nothing that needs a database or a network:
//!
//! - [`Envelope`]: one message, with a [`MessageId`] (UUIDv7), a topic, an optional partition
//!   key, opaque payload bytes, string headers and a creation time. Header names for the
//!   correlation id, the causation id and the W3C `traceparent` live in [`headers`].
//! - [`Clock`]: time as an input. Production code takes a [`SystemClock`]; tests and the failure
//!   lab take a [`ManualClock`] and pause a lease holder for thirty seconds, or drift its wall
//!   clock, in microseconds of real time.
//! - [`Backoff`]: exponential backoff with the jitter strategies from AWS's *Exponential Backoff
//!   And Jitter* (full, equal, decorrelated). Randomness is an input too: pass any
//!   [`rand::Rng`], seeded when you need a reproducible schedule; [`Random`] is the lock-free,
//!   seedable one the workers and herd protection share.
//! - [`ErrorKind`] and [`Classify`]: how every library error in onephase says what kind of
//!   failure it is, so the server can map it to an HTTP problem document in one place.
//!
//! ```
//! use onephase_core::{Envelope, headers};
//!
//! let envelope = Envelope::builder("orders.created", r#"{"order":42}"#)
//!     .key("customer-7")
//!     .header(headers::CORRELATION_ID, "req-1f3a")
//!     .build()?;
//! assert_eq!(envelope.topic(), "orders.created");
//! assert_eq!(envelope.key(), Some("customer-7"));
//! assert_eq!(envelope.header(headers::CORRELATION_ID), Some("req-1f3a"));
//! # Ok::<(), onephase_core::ValidationError>(())
//! ```

mod backoff;
mod clock;
mod envelope;
mod error;
pub mod headers;
mod id;
pub mod json;
mod random;

pub use backoff::{Backoff, BackoffSchedule, InvalidBackoff, Jitter};
pub use clock::{Clock, ManualClock, SharedClock, Sleep, SystemClock};
pub use envelope::{Envelope, EnvelopeBuilder, limits, validate_topic};
pub use error::{Classify, ErrorKind, ProblemType, ValidationError};
pub use id::MessageId;
pub use random::Random;

/// Re-exported so that callers pass the same RNG traits this crate samples with.
pub use rand;

//! Webhooks per the [Standard Webhooks] specification: durable signed delivery that survives
//! bad endpoints, and receivers that verify, de-duplicate and acknowledge fast.
//!
//! A webhook is a message sent over HTTP to someone else's server, and both ends fail in
//! familiar ways: the sender retries and the receiver sees the same event twice; the receiver
//! is slow and the sender times out and retries; an endpoint is down for a day; an attacker
//! replays a captured request; a customer registers `http://169.254.169.254/` as their
//! endpoint. The pieces here:
//!
//! - Sending: [`send`] writes a message and one delivery per matching endpoint in the
//!   caller's transaction; [`Webhooks`] manages endpoints and keys, and lists messages,
//!   attempts and dead letters; a [`Dispatcher`] signs and delivers, retrying on the schedule
//!   and respecting each endpoint's concurrency, rate and ordering.
//! - [`signature`]: `v1` (HMAC-SHA256, `whsec_` secrets) and `v1a` (ed25519, `whsk_`/`whpk_`
//!   keys), several signatures per message while keys rotate, timestamp tolerance.
//! - [`receiver`]: an axum extractor that verifies, and a [`Receiver`](receiver::Receiver) that
//!   de-duplicates on `webhook-id` through the inbox in the receiver's own transaction.
//! - [`destination`]: the address policy and the delivery client that enforces it after DNS
//!   resolution, with redirects off.
//! - [`policy`]: the retry schedule with jitter, and what each answer means (delivered, gone,
//!   retry, retry after what the endpoint asked, slow down).
//!
//! # Guarantees
//!
//! - A message exists if and only if the transaction that sent it committed; once it exists,
//!   each matching endpoint gets it at least once, or it lands in the dead letters (schedule
//!   exhausted, or endpoint disabled), from where it can be replayed.
//! - Every attempt of a message carries the same `webhook-id`, so a receiver that
//!   de-duplicates on it applies each message once.
//! - On an ordered endpoint, a message is not attempted before every earlier message (by send
//!   order) with the same partition key was delivered or dead-lettered.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

pub mod destination;
mod dispatcher;
mod endpoint;
mod error;
mod message;
pub mod policy;
pub mod receiver;
pub mod signature;
mod sql;
mod webhooks;

use onephase_store::{Migrations, sqlx};

pub use dispatcher::{Dispatcher, DispatcherConfig, RESPONSE_SNIPPET, Round};
pub use endpoint::{
    DEFAULT_APP, DEFAULT_CONCURRENCY, Endpoint, EndpointPatch, EndpointSpec, KeyInfo,
    MAX_CONCURRENCY, VerifyingKey, parse_key,
};
pub use error::WebhookError;
pub use message::{DEFAULT_MAX_BODY, NewMessage, Sent, WebhookConnection, send, send_with_limit};
pub use sql::{AttemptView, DeliveryView, EndpointStats, MessageView, Replay};
pub use webhooks::{DEFAULT_ROTATION_OVERLAP, MAX_LIST, Webhooks};

/// The webhook tables. Disabled endpoints are announced through the outbox, so migrate
/// `onephase_outbox::migrations()` first.
pub fn migrations() -> Migrations {
    Migrations::new(
        "webhook",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

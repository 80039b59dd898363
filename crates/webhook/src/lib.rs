//! Webhooks per the [Standard Webhooks] specification: signing with key rotation, a receiver
//! that verifies, de-duplicates and acknowledges fast, and a delivery client that refuses
//! internal addresses.
//!
//! A webhook is a message sent over HTTP to someone else's server, and both ends fail in
//! familiar ways: the sender retries and the receiver sees the same event twice; the receiver
//! is slow and the sender times out and retries; an attacker replays a captured request; a
//! customer registers `http://169.254.169.254/` as their endpoint. The pieces here:
//!
//! - [`signature`]: `v1` (HMAC-SHA256, `whsec_` secrets) and `v1a` (ed25519, `whsk_`/`whpk_`
//!   keys), several signatures per message while keys rotate, timestamp tolerance.
//! - [`receiver`]: an axum extractor that verifies, and a [`Receiver`](receiver::Receiver) that
//!   de-duplicates on `webhook-id` through the inbox in the receiver's own transaction.
//! - [`destination`]: the address policy and the delivery client that enforces it after DNS
//!   resolution, with redirects off.
//! - [`policy`]: the retry schedule with jitter, and what each answer means (delivered, gone,
//!   retry, retry after what the endpoint asked, slow down).
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

pub mod destination;
pub mod policy;
pub mod receiver;
pub mod signature;

//! The receiving side: verify, de-duplicate on `webhook-id` in the receiver's own transaction,
//! and acknowledge fast.
//!
//! In an axum handler, [`Webhook`] is an extractor: it reads the raw body, verifies the
//! signature (constant-time) and the timestamp (±5 min by default) with the [`Receiver`] in the
//! router's state, and rejects anything else with a problem document that says what was wrong.
//! Then, in the handler's transaction, [`Receiver::process`] runs the effect only for a
//! `webhook-id` it has not seen (through the outbox crate's inbox), or [`Receiver::accept`]
//! stores the webhook in the receiver's own outbox table and lets the handler return at once:
//! the acknowledgement then costs one commit, and the work happens after it, from the outbox.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, extract::State, routing::post};
//! use onephase_webhook::receiver::{Receiver, Webhook};
//! use onephase_webhook::signature::{Secret, Verifier};
//!
//! async fn hook(State(receiver): State<Arc<Receiver>>, webhook: Webhook) -> &'static str {
//!     // receiver.process(&mut tx, &webhook, |tx| ...) inside your transaction
//!     "ok"
//! }
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::new(vec![Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?.into()]);
//! let app: Router = Router::new()
//!     .route("/hooks", post(hook))
//!     .with_state(Arc::new(Receiver::new("payments-hooks", verifier)));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use derive_setters::Setters;
use futures::future::BoxFuture;
use onephase_core::{Clock, Envelope, MessageId, SharedClock, SystemClock};
use onephase_outbox::{Inbox, InboxConnection, OutboxConnection, OutboxError, Processed};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::signature::{Verifier, VerifyError, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};

/// Largest body the extractor reads: 1 MiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Verifies and de-duplicates webhooks for one receiving endpoint.
#[derive(Debug, Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct Receiver {
    verifier: Verifier,
    inbox: Inbox,
    /// Reads time from `clock` (the timestamp tolerance).
    #[setters(generate)]
    clock: SharedClock,
}

impl Receiver {
    /// A receiver named `name` (its inbox consumer: ids are de-duplicated per name) that
    /// verifies with `verifier`.
    pub fn new(name: impl Into<String>, verifier: Verifier) -> Self {
        Self {
            verifier,
            inbox: Inbox::new(name),
            clock: Arc::new(SystemClock),
        }
    }

    /// Verifies a request's headers and raw body.
    pub fn verify(&self, headers: &HeaderMap, body: Bytes) -> Result<Webhook, VerifyError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        };
        let id = header(WEBHOOK_ID)?;
        let timestamp = header(WEBHOOK_TIMESTAMP)?;
        let signature = header(WEBHOOK_SIGNATURE)?;
        let now = self.clock.now().unix_timestamp();
        let sent = self
            .verifier
            .verify_at(id, timestamp, signature, &body, now)?;
        Ok(Webhook {
            id: id.to_owned(),
            timestamp: OffsetDateTime::from_unix_timestamp(sent)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            body,
        })
    }

    /// Runs `handler` in `tx` unless this `webhook-id` was already processed, and records it.
    /// Commit `tx`, then answer 2xx; a duplicate is answered 2xx too (the sender stops
    /// retrying), without its effect.
    pub async fn process<C, T, E, F>(
        &self,
        tx: &mut C,
        webhook: &Webhook,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        C: InboxConnection + ?Sized,
        E: From<OutboxError>,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T, E>>,
    {
        self.inbox
            .process_id(tx, webhook.message_id(), handler)
            .await
    }

    /// Acknowledges fast: records the `webhook-id` and stores the webhook in the receiver's
    /// outbox (topic `topic`, no key, the webhook headers as envelope headers) in `tx`. Commit and
    /// answer 2xx; a relay then hands it to whatever processes it, after the acknowledgement.
    /// Returns false for a duplicate (nothing stored).
    pub async fn accept<C>(
        &self,
        tx: &mut C,
        webhook: &Webhook,
        topic: &str,
    ) -> Result<bool, OutboxError>
    where
        C: OutboxConnection + ?Sized,
    {
        if !self.inbox.record(tx, webhook.message_id()).await? {
            return Ok(false);
        }
        let envelope = Envelope::builder(topic.to_owned(), webhook.body.clone())
            .id(webhook.message_id())
            .header(WEBHOOK_ID, webhook.id.clone())
            .header(
                WEBHOOK_TIMESTAMP,
                webhook.timestamp.unix_timestamp().to_string(),
            )
            .created_at(webhook.timestamp)
            .build()
            .map_err(OutboxError::Invalid)?;
        onephase_outbox::enqueue(tx, &envelope).await?;
        Ok(true)
    }
}

/// A verified webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `webhook-id`: the same for every delivery attempt of one message.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: OffsetDateTime,
    /// The raw body that was signed.
    pub body: Bytes,
}

impl Webhook {
    /// The inbox id of this `webhook-id`: a UUID (version 8) derived from SHA-256 of the id, so
    /// that any string id de-duplicates through the inbox.
    pub fn message_id(&self) -> MessageId {
        let digest = Sha256::digest(self.id.as_bytes());
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        MessageId::from_uuid(uuid::Uuid::from_bytes(bytes))
            .unwrap_or_else(|_| unreachable!("the version bits make it non-nil"))
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why the extractor refused a request; a problem document with the reason.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRejection {
    /// Verification failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The body could not be read (too large, or cut off).
    #[error("the body could not be read: {0}")]
    Body(String),
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        let (status, slug) = match &self {
            WebhookRejection::Verify(
                VerifyError::NoValidSignature | VerifyError::StaleTimestamp { .. },
            ) => (StatusCode::UNAUTHORIZED, "invalid-webhook-signature"),
            WebhookRejection::Verify(_) => (StatusCode::BAD_REQUEST, "malformed-webhook"),
            WebhookRejection::Body(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large"),
        };
        let body = serde_json::json!({
            "type": format!("urn:onephase:problem:{slug}"),
            "title": status.canonical_reason().unwrap_or("Rejected"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl<S> FromRequest<S> for Webhook
where
    S: Send + Sync,
    Arc<Receiver>: FromRef<S>,
{
    type Rejection = WebhookRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let receiver = Arc::<Receiver>::from_ref(state);
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| WebhookRejection::Body(format!("{e} (the limit is {MAX_BODY} bytes)")))?;
        Ok(receiver.verify(&parts.headers, body)?)
    }
}

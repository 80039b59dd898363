//! Sending: a message is written, with one pending delivery per matching endpoint, in the
//! caller's transaction.

use derive_setters::Setters;
use onephase_store::Conn;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::WebhookError;
use crate::endpoint::{DEFAULT_APP, validate_app, validate_event_type};
use crate::sql::{self, PreparedMessage, Written};

/// The largest message body (the JSON endpoints receive) accepted by default: 256 KiB.
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// A message to send.
#[derive(Debug, Clone, Deserialize, Serialize, Setters)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[setters(generate = false)]
pub struct NewMessage {
    /// The application whose endpoints receive it (default `default`).
    #[serde(default)]
    #[setters(generate, strip_option, into)]
    pub app: Option<String>,
    /// Its type, like `invoice.paid`; endpoints filter on it.
    pub event_type: String,
    /// The event's data, sent as the body's `data` exactly as written (every digit of every
    /// number; whitespace between tokens removed).
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: Box<RawValue>,
    /// Messages with the same key reach an ordered endpoint one after another.
    #[serde(default)]
    #[setters(generate, strip_option, into)]
    pub partition_key: Option<String>,
    /// Sending again with the same key (and the same message) creates nothing new.
    #[serde(default)]
    #[setters(generate, strip_option, into)]
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` of the work that sends it (the server takes it from the
    /// request's `traceparent` header): each delivery attempt's span continues that trace,
    /// and the endpoint receives the attempt's own `traceparent`. Not part of the message
    /// itself: a repeat under the same idempotency key may come from another trace.
    #[serde(skip)]
    #[setters(generate, strip_option, into)]
    pub traceparent: Option<String>,
}

impl PartialEq for NewMessage {
    fn eq(&self, other: &Self) -> bool {
        self.app == other.app
            && self.event_type == other.event_type
            && self.payload.get() == other.payload.get()
            && self.partition_key == other.partition_key
            && self.idempotency_key == other.idempotency_key
    }
}

impl NewMessage {
    /// A message of the default application.
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        Self::raw(event_type, onephase_core::json::to_raw(&payload))
    }

    /// A message whose payload is JSON text, sent as written (a number with more digits than
    /// a `Value` keeps, say).
    pub fn raw(event_type: impl Into<String>, payload: Box<RawValue>) -> Self {
        Self {
            app: None,
            event_type: event_type.into(),
            payload,
            partition_key: None,
            idempotency_key: None,
            traceparent: None,
        }
    }

    fn prepare(
        &self,
        now: OffsetDateTime,
        max_body: usize,
    ) -> Result<PreparedMessage, WebhookError> {
        let app = self.app.as_deref().unwrap_or(DEFAULT_APP);
        validate_app(app)?;
        validate_event_type(&self.event_type)?;
        for (name, value) in [
            ("partition_key", &self.partition_key),
            ("idempotency_key", &self.idempotency_key),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 256)
            {
                return Err(WebhookError::invalid(format!("{name} is 1 to 256 bytes")));
            }
        }
        let timestamp = now
            .format(&Rfc3339)
            .map_err(|e| WebhookError::invalid(format!("time: {e}")))?;
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            event_type: &'a str,
            timestamp: &'a str,
            data: &'a RawValue,
        }
        let data = onephase_core::json::compact(&self.payload);
        let body = serde_json::to_string(&Body {
            event_type: &self.event_type,
            timestamp: &timestamp,
            data: &data,
        })
        .map_err(|e| WebhookError::invalid(format!("payload: {e}")))?;
        if body.len() > max_body {
            return Err(WebhookError::TooLarge {
                size: body.len(),
                limit: max_body,
            });
        }
        Ok(PreparedMessage {
            id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
            app: app.to_owned(),
            event_type: self.event_type.clone(),
            partition_key: self.partition_key.clone(),
            idempotency_key: self.idempotency_key.clone(),
            digest: self.digest(),
            body,
            created_at_ms: sql::ms(now),
            traceparent: self
                .traceparent
                .clone()
                .filter(|t| onephase_trace::is_valid(t)),
        })
    }

    /// What tells a repeat of this message from another message under the same key.
    fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.event_type.as_str(),
            self.partition_key.as_deref().unwrap_or("\u{0}"),
            &onephase_core::json::canonical(&self.payload),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

/// What [`send`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sent {
    /// The message's id (`msg_...`), the `webhook-id` every endpoint receives.
    pub id: String,
    /// How many endpoints it goes to (0 for a repeat).
    pub endpoints: u32,
    /// Whether the idempotency key named an existing message, which is what `id` is.
    pub duplicate: bool,
}

/// A connection or transaction a message can be written with: PostgreSQL or SQLite, a bare
/// connection or a [`Transaction`](sqlx::Transaction). The store's one connection bound.
pub use onephase_store::Connection as WebhookConnection;

/// Writes `message` as part of the caller's transaction, with one pending delivery to each
/// enabled endpoint of its application whose filter accepts its type. It is delivered only
/// if the transaction commits; a running [`Dispatcher`](crate::Dispatcher) in this process is
/// woken, others find it on their next poll.
///
/// With an idempotency key already used in this application: the same message returns the
/// first one's id (`duplicate`), a different one fails with [`WebhookError::KeyReused`].
/// Keys are kept as long as the message is.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use onephase_store::Store;
/// use onephase_webhook::{NewMessage, send};
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate(&[onephase_outbox::migrations(), onephase_webhook::migrations()]).await?;
/// let pool = store.as_sqlite().expect("sqlite").writer();
/// let mut tx = pool.begin().await?;
/// // ... the business change, in the same transaction ...
/// let message = NewMessage::new("invoice.paid", serde_json::json!({"invoice": 42}))
///     .idempotency_key("invoice-42-paid");
/// let sent = send(&mut tx, &message, time::OffsetDateTime::now_utc()).await?;
/// tx.commit().await?;
/// assert!(sent.id.starts_with("msg_"));
/// # Ok(()) }
/// ```
pub async fn send<C: WebhookConnection + ?Sized>(
    conn: &mut C,
    message: &NewMessage,
    now: OffsetDateTime,
) -> Result<Sent, WebhookError> {
    send_with_limit(conn, message, now, DEFAULT_MAX_BODY).await
}

/// [`send`] with a body limit of `max_body` bytes.
pub async fn send_with_limit<C: WebhookConnection + ?Sized>(
    conn: &mut C,
    message: &NewMessage,
    now: OffsetDateTime,
    max_body: usize,
) -> Result<Sent, WebhookError> {
    let prepared = message.prepare(now, max_body)?;
    let written = match conn.connection() {
        Conn::Postgres(c) => sql::write_pg(c, &prepared).await?,
        Conn::Sqlite(c) => sql::write_sqlite(c, &prepared).await?,
    };
    match written {
        Written::New { endpoints } => {
            if endpoints > 0 {
                crate::dispatcher::wake();
            }
            Ok(Sent {
                id: prepared.id,
                endpoints,
                duplicate: false,
            })
        }
        Written::Existing { id, digest } if digest == prepared.digest => Ok(Sent {
            id,
            endpoints: 0,
            duplicate: true,
        }),
        Written::Existing { id, .. } => Err(WebhookError::KeyReused {
            key: prepared.idempotency_key.unwrap_or_default(),
            message: id,
        }),
    }
}

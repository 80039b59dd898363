//! How an envelope travels on transports that have no field for some of its parts.
//!
//! Kafka, NATS and Redis Streams carry the envelope's id, creation time and key (where the
//! transport has no key) as headers with reserved names; envelope headers travel as they are.
//! Consumers written in any language read them by these names.

use bytes::Bytes;
use onephase_core::{Envelope, MessageId, ValidationError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::BrokerError;

/// Header carrying [`Envelope::id`] (a UUIDv7 in hyphenated form).
pub const ID_HEADER: &str = "onephase-id";
/// Header carrying [`Envelope::created_at`] (RFC 3339).
pub const CREATED_AT_HEADER: &str = "onephase-created-at";
/// Header carrying [`Envelope::key`] on transports without a key field (NATS, AMQP).
pub const KEY_HEADER: &str = "onephase-key";

/// Whether `name` is in onephase's reserved namespace (the headers above, and any other name
/// starting with [`RESERVED_HEADER_PREFIX`](onephase_core::limits::RESERVED_HEADER_PREFIX)),
/// which never becomes an envelope header. A reserved name this version does not know (from
/// a newer one) is skipped on receipt rather than refused.
pub fn is_reserved(name: &str) -> bool {
    let prefix = onephase_core::limits::RESERVED_HEADER_PREFIX;
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Formats a creation time for [`CREATED_AT_HEADER`].
pub fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::UNIX_EPOCH.to_string())
}

/// The parts of an envelope as a transport delivered them.
#[derive(Debug, Default)]
pub struct Parts {
    /// The topic it arrived on.
    pub topic: String,
    /// The id, as text.
    pub id: Option<String>,
    /// The key, if any.
    pub key: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// The creation time, as RFC 3339 text.
    pub created_at: Option<String>,
    /// Every other header.
    pub headers: Vec<(String, String)>,
}

impl Parts {
    /// Rebuilds and validates the envelope; `transport` and `locator` (an offset, a sequence)
    /// go into the error so an operator can find the bad message.
    pub fn into_envelope(
        self,
        transport: &'static str,
        locator: &str,
    ) -> Result<Envelope, BrokerError> {
        let bad = |why: String| {
            BrokerError::rejected(
                transport,
                format!("message at {locator} is not an onephase envelope: {why}"),
            )
        };
        let id = self
            .id
            .ok_or_else(|| bad(format!("it has no {ID_HEADER} header")))?;
        let id = Uuid::parse_str(&id)
            .map_err(|e| bad(format!("{ID_HEADER} {id:?}: {e}")))
            .and_then(|u| MessageId::from_uuid(u).map_err(|e| bad(e.to_string())))?;
        let created_at = match self.created_at {
            Some(text) => OffsetDateTime::parse(&text, &Rfc3339)
                .map_err(|e| bad(format!("{CREATED_AT_HEADER} {text:?}: {e}")))?,
            None => OffsetDateTime::UNIX_EPOCH,
        };
        let mut builder = Envelope::builder(self.topic, self.payload)
            .id(id)
            .created_at(created_at);
        if let Some(key) = self.key {
            builder = builder.key(key);
        }
        for (name, value) in self.headers {
            if !is_reserved(&name) {
                builder = builder.header(name, value);
            }
        }
        builder
            .build()
            .map_err(|e: ValidationError| bad(e.to_string()))
    }
}

//! Events as they are appended and as they are read back.

use std::collections::BTreeMap;
use std::fmt;

use onephase_core::json::RawJson;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::EventsError;

/// The longest stream name or event type accepted.
pub const MAX_NAME: usize = 200;

/// What the writer believes the stream's version is, checked atomically with the append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ExpectedVersion {
    /// No check: append whatever the stream holds (for streams with one writer, or events
    /// whose order does not matter).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must hold exactly this many events (its version). `Exact(0)` is `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(n) => actual == n,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// The metadata stored with an event: where it came from, for tracing and debugging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metadata {
    /// The id shared by everything one request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message or command that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The W3C trace context of the request that appended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Anything else the writer wants kept with the event.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// An event to append.
///
/// ```
/// use onephase_events::NewEvent;
///
/// let event = NewEvent::new("OrderPlaced", r#"{"order":42,"email":"ada@example.com"}"#)?
///     .with_schema_version(2)
///     .with_personal_data("customer-7", ["email"]);
/// assert_eq!(event.event_type(), "OrderPlaced");
/// # Ok::<(), onephase_events::EventsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: Option<u32>,
    pub(crate) data: RawJson,
    pub(crate) metadata: Metadata,
    pub(crate) subject: Option<String>,
    pub(crate) personal: Vec<String>,
}

impl NewEvent {
    /// An event of `event_type` with `data` (a JSON text, kept as written) and a fresh UUIDv7
    /// id, at its type's current schema version (see [`Upcasters`](crate::Upcasters); 1 for a
    /// type not registered). Fails if the data is not JSON.
    pub fn new(event_type: impl Into<String>, data: &str) -> Result<Self, EventsError> {
        let data = RawJson::parse(data)
            .map_err(|e| EventsError::invalid("data", format!("not JSON: {e}")))?;
        Ok(Self::from_json(event_type, data))
    }

    /// An event of `event_type` with `data` already parsed.
    pub fn from_json(event_type: impl Into<String>, data: RawJson) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: None,
            data,
            metadata: Metadata::default(),
            subject: None,
            personal: Vec::new(),
        }
    }

    /// The same event with this id. A retried append must carry the ids of the first
    /// attempt; that is what makes it idempotent.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// The same event at this schema version of its type (for a writer that produces an older
    /// shape on purpose; a version newer than the store's upcasters know is refused).
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = Some(version);
        self
    }

    /// The same event with this metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Marks top-level `fields` of the data as personal data of `subject`: they are stored
    /// sealed with the subject's key, and read back as `null` once the subject is forgotten.
    pub fn with_personal_data<S: Into<String>>(
        mut self,
        subject: impl Into<String>,
        fields: impl IntoIterator<Item = S>,
    ) -> Self {
        self.subject = Some(subject.into());
        self.personal = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Its id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Its type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Its data.
    pub fn data(&self) -> &RawJson {
        &self.data
    }
}

/// The events to append to one stream, and the version the writer expects it at.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream.
    pub stream: String,
    /// Its expected version.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Events for `stream`, checked against `expected`.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            stream: stream.into(),
            expected,
            events,
        }
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Appended {
    /// The global position of its last event: the consistency token. A read model that has
    /// applied this position reflects the append.
    pub position: u64,
    /// The global position of its first event.
    pub first_position: u64,
    /// Each stream's version after the append.
    pub streams: Vec<StreamVersion>,
    /// Whether this was a repeat of an earlier append (the same event ids): nothing was
    /// written, and the positions are the earlier append's.
    #[serde(default)]
    pub repeated: bool,
}

/// A stream and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamVersion {
    /// The stream.
    pub stream: String,
    /// Its version: the number of events in it.
    pub version: u64,
}

/// An event as it is stored and read back (upcast to its type's current schema version, and
/// with personal fields opened or, if the subject was forgotten, redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordedEvent {
    /// Its id.
    pub id: Uuid,
    /// Its stream.
    pub stream: String,
    /// Its version in the stream (the first event is 1).
    pub version: u64,
    /// Its global position: the order of commit across all streams, numbered 1, 2, 3, ...
    /// without gaps (an append that fails or rolls back gives its numbers back).
    pub position: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema version of `data` (after upcasting, the type's current one).
    pub schema_version: u32,
    /// Its data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: RawJson,
    /// Its metadata.
    pub metadata: Metadata,
    /// The data subject whose personal fields it holds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Personal fields that read as `null` because their subject was forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    /// When it was appended, on the appending process's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

impl RecordedEvent {
    /// The category of its stream: the part before the first `-` (`order` for `order-42`).
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }
}

/// The category of `stream`: the part before the first `-`, or the whole name.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// Checks a stream name or event type: 1 to [`MAX_NAME`] characters of letters, digits and
/// `-_.:@`.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), EventsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(ok_char) {
        return Err(EventsError::invalid(
            field,
            format!(
                "{name:?} is not a name: use 1 to {MAX_NAME} letters, digits and - _ . : @ \
                 (a stream is <category>-<id>, such as order-42)"
            ),
        ));
    }
    Ok(())
}

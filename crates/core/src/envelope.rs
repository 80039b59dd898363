use std::collections::BTreeMap;

use bytes::Bytes;
use derive_setters::Setters;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::error::ValidationError;
use crate::id::MessageId;

/// The limits every [`Envelope`] satisfies, chosen so that any envelope fits every transport
/// onephase speaks without translation.
pub mod limits {
    /// Longest topic name: Kafka's own limit (249 characters).
    pub const MAX_TOPIC_LEN: usize = 249;
    /// Longest partition key, in bytes.
    pub const MAX_KEY_LEN: usize = 1024;
    /// Most headers on one envelope.
    pub const MAX_HEADERS: usize = 64;
    /// Longest header name, in bytes.
    pub const MAX_HEADER_NAME_LEN: usize = 128;
    /// Longest header value, in bytes.
    pub const MAX_HEADER_VALUE_LEN: usize = 4096;
    /// Header names starting with this are onephase's own: on transports without a field for
    /// them, the envelope's id, key and creation time travel as `onephase-id`, `onephase-key`
    /// and `onephase-created-at`. An envelope header may not start with it, so that an
    /// application's header can neither overwrite those nor travel beside them.
    pub const RESERVED_HEADER_PREFIX: &str = "onephase-";
}

/// One message on its way from a local commit to somewhere else.
///
/// - `id`: stable across every retry, so consumers de-duplicate on it.
/// - `topic`: where it goes. Letters, digits, `.`, `_` and `-`; no empty dot-separated segment.
///   That is the intersection of what Kafka topics, NATS subjects, AMQP routing keys and Redis
///   keys accept, so one name works on every transport.
/// - `key`: the partition key. Messages with the same key keep their order; messages without
///   a key have no order relative to each other.
/// - `payload`: opaque bytes; onephase never parses them.
/// - `headers`: lowercase names, printable ASCII values, carried end to end (see
///   [`headers`](crate::headers)).
/// - `created_at`: wall-clock time of creation, informational. Never order by it.
///
/// An `Envelope` is valid by construction: the builder and `Deserialize` both check
/// [`limits`](crate::limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEnvelope", into = "RawEnvelope")]
pub struct Envelope {
    id: MessageId,
    topic: String,
    key: Option<String>,
    payload: Bytes,
    headers: BTreeMap<String, String>,
    created_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct RawEnvelope {
    id: MessageId,
    topic: String,
    #[serde(default)]
    key: Option<String>,
    payload: Bytes,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl TryFrom<RawEnvelope> for Envelope {
    type Error = ValidationError;

    fn try_from(raw: RawEnvelope) -> Result<Self, Self::Error> {
        validate_topic(&raw.topic)?;
        if let Some(key) = &raw.key {
            validate_key(key)?;
        }
        validate_headers(&raw.headers)?;
        Ok(Self {
            id: raw.id,
            topic: raw.topic,
            key: raw.key,
            payload: raw.payload,
            headers: raw.headers,
            created_at: raw.created_at,
        })
    }
}

impl From<Envelope> for RawEnvelope {
    fn from(e: Envelope) -> Self {
        Self {
            id: e.id,
            topic: e.topic,
            key: e.key,
            payload: e.payload,
            headers: e.headers,
            created_at: e.created_at,
        }
    }
}

impl Envelope {
    /// Starts an envelope for `topic` carrying `payload`.
    pub fn builder(topic: impl Into<String>, payload: impl Into<Bytes>) -> EnvelopeBuilder {
        EnvelopeBuilder {
            topic: topic.into(),
            payload: payload.into(),
            key: None,
            headers: Vec::new(),
            id: None,
            created_at: None,
        }
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// One header's value, by its (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Every header, sorted by name.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// When the envelope was created, by the wall clock of the process that created it.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }
}

/// Builds a validated [`Envelope`]. Created by [`Envelope::builder`].
#[derive(Debug, Clone, Setters)]
#[must_use = "an envelope builder does nothing until `build` is called"]
#[setters(generate = false)]
pub struct EnvelopeBuilder {
    topic: String,
    payload: Bytes,
    /// Sets the partition key.
    #[setters(generate, strip_option, into)]
    key: Option<String>,
    headers: Vec<(String, String)>,
    /// Uses this id instead of generating one: for re-sending a message that already has one.
    #[setters(generate, strip_option)]
    id: Option<MessageId>,
    /// Uses this creation time instead of the system clock's.
    #[setters(generate, strip_option)]
    created_at: Option<OffsetDateTime>,
}

impl EnvelopeBuilder {
    /// Adds a header. Names are case-insensitive and stored lowercase; a repeated name keeps
    /// the last value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Validates and builds, taking the id (UUIDv7) and creation time from the system clock
    /// where they were not set.
    pub fn build(self) -> Result<Envelope, ValidationError> {
        let id = self.id.unwrap_or_else(MessageId::now_v7);
        let created_at = self.created_at.unwrap_or_else(OffsetDateTime::now_utc);
        self.finish(id, created_at)
    }

    /// Validates and builds, taking the id and creation time from `clock` and `rng` where they
    /// were not set, so that tests produce the same envelope every run.
    pub fn build_with(
        self,
        clock: &dyn Clock,
        rng: &mut impl rand::Rng,
    ) -> Result<Envelope, ValidationError> {
        let id = match self.id {
            Some(id) => id,
            None => MessageId::generate(clock, rng),
        };
        let created_at = self.created_at.unwrap_or_else(|| clock.now());
        self.finish(id, created_at)
    }

    fn finish(
        self,
        id: MessageId,
        created_at: OffsetDateTime,
    ) -> Result<Envelope, ValidationError> {
        validate_topic(&self.topic)?;
        if let Some(key) = &self.key {
            validate_key(key)?;
        }
        let headers: BTreeMap<String, String> = self
            .headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        validate_headers(&headers)?;
        Ok(Envelope {
            id,
            topic: self.topic,
            key: self.key,
            payload: self.payload,
            headers,
            created_at,
        })
    }
}

/// Checks a topic name against the rules every [`Envelope`] obeys, for code that takes a topic
/// without building an envelope (reading a topic, subscribing).
pub fn validate_topic(topic: &str) -> Result<(), ValidationError> {
    use limits::MAX_TOPIC_LEN;
    if topic.is_empty() {
        return Err(ValidationError::new("topic", "must not be empty"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(ValidationError::new(
            "topic",
            format!(
                "is {} characters; the limit is {MAX_TOPIC_LEN}",
                topic.len()
            ),
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ValidationError::new(
            "topic",
            format!("{topic:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"),
        ));
    }
    if topic.split('.').any(str::is_empty) {
        return Err(ValidationError::new(
            "topic",
            format!("{topic:?} has an empty segment; dots must separate non-empty names"),
        ));
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), ValidationError> {
    use limits::MAX_KEY_LEN;
    if key.is_empty() {
        return Err(ValidationError::new(
            "key",
            "must not be empty; leave the key out for unordered messages",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ValidationError::new(
            "key",
            format!("is {} bytes; the limit is {MAX_KEY_LEN}", key.len()),
        ));
    }
    Ok(())
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    use limits::{MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS};
    if headers.len() > MAX_HEADERS {
        return Err(ValidationError::new(
            "headers",
            format!("{} headers; the limit is {MAX_HEADERS}", headers.len()),
        ));
    }
    for (name, value) in headers {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_HEADER_NAME_LEN
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if !name_ok {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header name {name:?} must be 1 to {MAX_HEADER_NAME_LEN} lowercase letters, digits, '-', '_' or '.'"
                ),
            ));
        }
        if name.starts_with(limits::RESERVED_HEADER_PREFIX) {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header name {name:?} is reserved: names starting with {:?} carry the envelope's own id, key and creation time on the wire; rename the header",
                    limits::RESERVED_HEADER_PREFIX
                ),
            ));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "header {name:?} is {} bytes; the limit is {MAX_HEADER_VALUE_LEN}",
                    value.len()
                ),
            ));
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(ValidationError::new(
                "headers",
                format!("header {name:?} must be printable ASCII (it travels as an HTTP header)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, headers};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use time::macros::datetime;

    #[test]
    fn builds_with_lowercased_headers_and_generated_id() {
        let e = Envelope::builder("orders.created", "{}")
            .key("c-1")
            .header("Correlation-ID", "abc")
            .build()
            .unwrap();
        assert_eq!(e.header(headers::CORRELATION_ID), Some("abc"));
        assert_eq!(e.id().as_uuid().get_version_num(), 7);
    }

    #[test]
    fn build_with_is_deterministic() {
        let clock = ManualClock::new(datetime!(2026-03-04 05:06:07 UTC));
        let make = || {
            Envelope::builder("t", "x")
                .build_with(&clock, &mut StdRng::seed_from_u64(5))
                .unwrap()
        };
        assert_eq!(make(), make());
        assert_eq!(make().created_at(), datetime!(2026-03-04 05:06:07 UTC));
    }

    #[test]
    fn rejects_bad_topics_keys_and_headers_with_reasons() {
        let cases: Vec<(EnvelopeBuilder, &str)> = vec![
            (Envelope::builder("", "x"), "must not be empty"),
            (Envelope::builder("a".repeat(250), "x"), "limit is 249"),
            (Envelope::builder("orders created", "x"), "contains ' '"),
            (Envelope::builder("orders.>", "x"), "contains '>'"),
            (Envelope::builder("orders..created", "x"), "empty segment"),
            (Envelope::builder(".orders", "x"), "empty segment"),
            (Envelope::builder("t", "x").key(""), "leave the key out"),
            (
                Envelope::builder("t", "x").key("k".repeat(1025)),
                "limit is 1024",
            ),
            (
                Envelope::builder("t", "x").header("bad name", "v"),
                "header name",
            ),
            (
                Envelope::builder("t", "x").header("h", "line\nbreak"),
                "printable ASCII",
            ),
            (
                Envelope::builder("t", "x").header("h", "v".repeat(4097)),
                "limit is 4096",
            ),
        ];
        for (builder, expected) in cases {
            let err = builder.build().unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} lacks {expected:?}"
            );
        }
        let mut many = Envelope::builder("t", "x");
        for i in 0..65 {
            many = many.header(format!("h{i}"), "v");
        }
        assert!(
            many.build()
                .unwrap_err()
                .to_string()
                .contains("limit is 64")
        );
    }

    #[test]
    fn serde_round_trips_and_revalidates() {
        let e = Envelope::builder("t.x", vec![0u8, 159, 146, 150])
            .key("k")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .build()
            .unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(serde_json::from_value::<Envelope>(json.clone()).unwrap(), e);

        let mut bad = json;
        bad["topic"] = serde_json::Value::from("no spaces allowed");
        let err = serde_json::from_value::<Envelope>(bad).unwrap_err();
        assert!(err.to_string().contains("invalid topic"), "{err}");
    }
}

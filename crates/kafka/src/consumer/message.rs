//! A record as a handler sees it.

use std::sync::Arc;

use bytes::Bytes;
use onephase_core::MessageId;
use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Headers};
use sha2::{Digest, Sha256};

static NO_HEADERS: std::sync::LazyLock<Arc<[(String, Bytes)]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

/// The header carrying an onephase envelope's id (set by the outbox relay's Kafka publisher).
const ID_HEADER: &str = "onephase-id";

/// A Kafka record handed to a handler. Cheap to clone: the payload is shared.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) payload: Bytes,
    pub(crate) headers: Arc<[(String, Bytes)]>,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) attempt: u32,
}

impl Message {
    pub(crate) fn from_borrowed(message: &BorrowedMessage<'_>, topic: Arc<str>) -> Self {
        let headers: Arc<[(String, Bytes)]> = match message.headers() {
            Some(h) if h.count() > 0 => h
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        Bytes::copy_from_slice(header.value.unwrap_or_default()),
                    )
                })
                .collect(),
            // Shared: most records carry no headers, and this is per message.
            _ => Arc::clone(&NO_HEADERS),
        };
        Self {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            payload: message
                .payload()
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
            attempt: 1,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The key, if the record has one. Records of one key are handled one at a time, in order.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The payload (empty for a tombstone).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers, in record order.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.headers
    }

    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The record's timestamp in Unix milliseconds, when it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Which attempt this is: 1 the first time, 2 on the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// An id that is the same every time this record is delivered, for an inbox
    /// (`onephase_outbox::Inbox::process_id`): the `onephase-id` header when a onephase outbox
    /// published it (so a message published twice is one message), else a UUID derived from
    /// the topic, partition and offset.
    pub fn id(&self) -> MessageId {
        if let Some(id) = self
            .header(ID_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<MessageId>().ok())
        {
            return id;
        }
        let mut hash = Sha256::new();
        hash.update(self.topic.as_bytes());
        hash.update([0]);
        hash.update(self.partition.to_be_bytes());
        hash.update(self.offset.to_be_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
        // A random-version UUID is never nil: its version nibble is 4.
        MessageId::from_uuid(uuid).unwrap_or_else(|_| MessageId::now_v7())
    }
}

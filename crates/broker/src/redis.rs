//! Redis Streams.
//!
//! Each topic is one stream (key = optional prefix + topic). Publishing pipelines one `XADD`
//! per envelope in one round trip; the fields are `onephase-id`, `onephase-key` (absent when
//! the envelope has none), `onephase-created-at`, `headers` (a JSON object) and `payload`.
//! Redis has no de-duplication on publish, so a re-published envelope appears twice and the
//! consumer's inbox absorbs it.
//!
//! Subscribing uses a consumer group: a new subscriber first re-reads its own pending entries
//! (delivered before a crash, never acknowledged), then claims entries another consumer of the
//! group left pending longer than `claim_idle`, then reads new ones. `XACK` acknowledges.

use std::collections::BTreeMap;
use std::time::Duration;

use derive_setters::Setters;
use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::{Envelope, ErrorKind};
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use crate::wire::{self, Parts};
use crate::{Acknowledge, BrokerError, Delivery, Publisher, Subscriber};

const TRANSPORT: &str = "redis";
const HEADERS_FIELD: &str = "headers";
const PAYLOAD_FIELD: &str = "payload";

fn redis_error(context: &str, e: &RedisError) -> BrokerError {
    // Everything but a timeout is "unavailable": connection loss, and server refusals such as
    // OOM or WRONGTYPE that an operator can fix without changing the message.
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    BrokerError::new(kind, TRANSPORT, format!("{context}: {e}"))
}

async fn connect(url: &str) -> Result<ConnectionManager, BrokerError> {
    let client = redis::Client::open(url)
        .map_err(|e| BrokerError::rejected(TRANSPORT, format!("redis URL {url:?}: {e}")))?;
    ConnectionManager::new(client)
        .await
        .map_err(|e| redis_error("connecting", &e))
}

/// Appends to Redis Streams with `XADD`. Reconnects by itself after a lost connection.
#[derive(Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct RedisPublisher {
    conn: ConnectionManager,
    prefix: String,
    /// Trims each stream to about `max_len` entries on every append (`MAXLEN ~`). Without it
    /// streams grow until something else trims them.
    #[setters(generate, strip_option)]
    max_len: Option<u64>,
}

impl RedisPublisher {
    /// Connects to `url` (`redis://host:6379`); stream keys are `prefix` followed by the topic.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        Ok(Self {
            conn: connect(url).await?,
            prefix: prefix.to_owned(),
            max_len: None,
        })
    }
}

impl Publisher for RedisPublisher {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for envelope in batch {
                let headers = serde_json::to_string(envelope.headers()).unwrap_or_default();
                let cmd = pipe
                    .cmd("XADD")
                    .arg(format!("{}{}", self.prefix, envelope.topic()));
                if let Some(max_len) = self.max_len {
                    cmd.arg("MAXLEN").arg("~").arg(max_len);
                }
                cmd.arg("*")
                    .arg(wire::ID_HEADER)
                    .arg(envelope.id().to_string())
                    .arg(wire::CREATED_AT_HEADER)
                    .arg(wire::format_time(envelope.created_at()));
                if let Some(key) = envelope.key() {
                    cmd.arg(wire::KEY_HEADER).arg(key);
                }
                cmd.arg(HEADERS_FIELD)
                    .arg(headers)
                    .arg(PAYLOAD_FIELD)
                    .arg(envelope.payload().as_ref());
            }
            let mut conn = self.conn.clone();
            let replies: Result<Vec<redis::RedisResult<String>>, RedisError> =
                pipe.query_async(&mut conn).await;
            match replies {
                Ok(replies) if replies.len() == batch.len() => replies
                    .into_iter()
                    .map(|r| r.map(drop).map_err(|e| redis_error("XADD", &e)))
                    .collect(),
                Ok(replies) => vec![
                    Err(BrokerError::new(
                        ErrorKind::Internal,
                        TRANSPORT,
                        format!("{} replies to {} XADDs", replies.len(), batch.len()),
                    ));
                    batch.len()
                ],
                Err(e) => vec![Err(redis_error("XADD pipeline", &e)); batch.len()],
            }
        }
        .boxed()
    }
}

/// Where a Redis Streams subscriber reads.
#[derive(Debug, Clone)]
pub struct RedisSubscription {
    /// Stream key prefix, as given to the publisher.
    pub prefix: String,
    /// The topic (stream key without the prefix).
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name within the group; a restarted consumer should reuse its name so
    /// that it re-reads what it left pending.
    pub consumer: String,
    /// Entries another consumer left unacknowledged this long are claimed by this one.
    pub claim_idle: Duration,
}

type Entry = (String, Option<Vec<Vec<u8>>>);

/// Reads a Redis stream through a consumer group.
pub struct RedisSubscriber {
    reader: ConnectionManager,
    acker: ConnectionManager,
    key: String,
    subscription: RedisSubscription,
    /// Re-reading this consumer's own pending entries, from this id.
    pending_from: Option<String>,
    buffered: std::collections::VecDeque<(Entry, bool)>,
}

impl RedisSubscriber {
    /// Creates the group (at the start of the stream) if it does not exist and subscribes.
    pub async fn subscribe(
        url: &str,
        subscription: RedisSubscription,
    ) -> Result<Self, BrokerError> {
        let mut reader = connect(url).await?;
        let acker = connect(url).await?;
        let key = format!("{}{}", subscription.prefix, subscription.topic);
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(&subscription.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut reader)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(redis_error("XGROUP CREATE", &e));
        }
        Ok(Self {
            reader,
            acker,
            key,
            subscription,
            pending_from: Some("0".to_owned()),
            buffered: Default::default(),
        })
    }

    async fn fill(&mut self) -> Result<(), BrokerError> {
        if let Some(from) = self.pending_from.clone() {
            let entries = self.read_group(&from, None).await?;
            match entries.last() {
                Some((id, _)) => self.pending_from = Some(id.clone()),
                None => self.pending_from = None,
            }
            self.buffered.extend(entries.into_iter().map(|e| (e, true)));
            return Ok(());
        }
        let claimed: (String, Vec<Entry>, Value) = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.subscription.group)
            .arg(&self.subscription.consumer)
            .arg(u64::try_from(self.subscription.claim_idle.as_millis()).unwrap_or(u64::MAX))
            .arg("0")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut self.reader)
            .await
            .map_err(|e| redis_error("XAUTOCLAIM", &e))?;
        if !claimed.1.is_empty() {
            self.buffered
                .extend(claimed.1.into_iter().map(|e| (e, true)));
            return Ok(());
        }
        let entries = self.read_group(">", Some(1000)).await?;
        self.buffered
            .extend(entries.into_iter().map(|e| (e, false)));
        Ok(())
    }

    async fn read_group(
        &mut self,
        from: &str,
        block_ms: Option<u64>,
    ) -> Result<Vec<Entry>, BrokerError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.subscription.group)
            .arg(&self.subscription.consumer)
            .arg("COUNT")
            .arg(100);
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        let reply: Option<Vec<(String, Vec<Entry>)>> = cmd
            .query_async(&mut self.reader)
            .await
            .map_err(|e| redis_error("XREADGROUP", &e))?;
        Ok(reply
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    fn decode(&self, id: &str, fields: Vec<Vec<u8>>) -> Result<Envelope, BrokerError> {
        let mut parts = Parts {
            topic: self.subscription.topic.clone(),
            ..Parts::default()
        };
        let mut headers = None;
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match name.as_slice() {
                b"onephase-id" => parts.id = Some(text()),
                b"onephase-key" => parts.key = Some(text()),
                b"onephase-created-at" => parts.created_at = Some(text()),
                b"headers" => headers = Some(text()),
                b"payload" => parts.payload = value.into(),
                _ => {}
            }
        }
        if let Some(json) = headers {
            let map: BTreeMap<String, String> = serde_json::from_str(&json).map_err(|e| {
                BrokerError::rejected(
                    TRANSPORT,
                    format!("entry {id} of {}: headers: {e}", self.key),
                )
            })?;
            parts.headers = map.into_iter().collect();
        }
        parts.into_envelope(TRANSPORT, &format!("entry {id} of {}", self.key))
    }
}

impl Subscriber for RedisSubscriber {
    fn transport(&self) -> &'static str {
        TRANSPORT
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, BrokerError>> {
        async move {
            loop {
                let Some(((id, fields), redelivered)) = self.buffered.pop_front() else {
                    self.fill().await?;
                    continue;
                };
                let ack = RedisAck {
                    conn: self.acker.clone(),
                    key: self.key.clone(),
                    group: self.subscription.group.clone(),
                    id: id.clone(),
                };
                // An entry deleted from the stream while pending has no fields: nothing to
                // deliver, only to acknowledge.
                let Some(fields) = fields else {
                    Box::new(ack).ack().await?;
                    continue;
                };
                return match self.decode(&id, fields) {
                    Ok(envelope) => Ok(Delivery::new(envelope, redelivered, Box::new(ack))),
                    Err(e) => {
                        Box::new(ack).ack().await?;
                        Err(e)
                    }
                };
            }
        }
        .boxed()
    }
}

struct RedisAck {
    conn: ConnectionManager,
    key: String,
    group: String,
    id: String,
}

impl Acknowledge for RedisAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        async move {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("XACK")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.id)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error("XACK", &e))?;
            Ok(())
        }
        .boxed()
    }
}

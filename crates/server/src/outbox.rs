//! The outbox inside `onephase serve`: relays from configured source databases to configured
//! sinks, and the embedded log that `POST /v1/outbox/{topic}` appends to.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use onephase_broker::Publisher;
use onephase_broker::log::EmbeddedLog;
use onephase_outbox::{OutboxAdmin, Relay, RelayConfig, RelayStats};
use onephase_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One relay of the configuration file's `[[outbox.relay]]` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// The relay's name: the `source` of its metrics and of the API's status.
    pub name: String,
    /// The database holding the outbox table (`postgres://...` or `sqlite://...`); the
    /// server's own store when omitted. Its outbox tables are created if missing.
    #[serde(default)]
    pub source: Option<String>,
    /// Where to publish: `log` (the embedded log), `nats://host:4222`, `amqp://user:pass@host/vhost`,
    /// `redis://host:6379` or `kafka://host:9092[,host2:9092]`.
    pub sink: String,
    /// Rows per round (default 500).
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// Attempts before a row is dead-lettered (default 12).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Seconds a relay's claim on its rows lasts (default 30): how long the rows of a relay
    /// that died wait before another relay takes them.
    #[serde(default)]
    pub claim_timeout_secs: Option<u64>,
}

/// What a sink URL names, before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// The embedded log in the server's store.
    Log,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ.
    Amqp,
    /// Redis Streams.
    Redis,
    /// Kafka.
    Kafka,
}

impl SinkKind {
    /// Reads the kind from a sink URL, or says what is wrong with it.
    pub fn parse(sink: &str) -> Result<Self, String> {
        let kind = match sink.split_once("://").map(|(scheme, _)| scheme) {
            _ if sink == "log" => SinkKind::Log,
            Some("nats") => SinkKind::Nats,
            Some("amqp" | "amqps") => SinkKind::Amqp,
            Some("redis" | "rediss") => SinkKind::Redis,
            Some("kafka") => SinkKind::Kafka,
            _ => {
                return Err(format!(
                    "sink {sink:?} is not log, nats://, amqp://, redis:// or kafka://"
                ));
            }
        };
        let built = match kind {
            SinkKind::Log => true,
            SinkKind::Nats => cfg!(feature = "nats"),
            SinkKind::Amqp => cfg!(feature = "amqp"),
            SinkKind::Redis => cfg!(feature = "redis"),
            SinkKind::Kafka => cfg!(feature = "kafka"),
        };
        if !built {
            return Err(format!(
                "sink {sink:?} needs onephase built with the `{}` feature (cargo install onephase --features {})",
                kind.feature(),
                kind.feature()
            ));
        }
        Ok(kind)
    }

    fn feature(self) -> &'static str {
        match self {
            SinkKind::Log => "",
            SinkKind::Nats => "nats",
            SinkKind::Amqp => "amqp",
            SinkKind::Redis => "redis",
            SinkKind::Kafka => "kafka",
        }
    }
}

/// Why an outbox relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutboxStartError {
    /// The source database could not be opened or migrated.
    #[error("outbox relay {name}: source database: {source}")]
    Source {
        /// The relay.
        name: String,
        /// The store error.
        #[source]
        source: onephase_store::StoreError,
    },
    /// The sink could not be reached or is not built in.
    #[error("outbox relay {name}: sink: {message}")]
    Sink {
        /// The relay.
        name: String,
        /// What went wrong.
        message: String,
    },
}

async fn connect_sink(sink: &str, log: &EmbeddedLog) -> Result<Box<dyn Publisher>, String> {
    match SinkKind::parse(sink)? {
        SinkKind::Log => Ok(Box::new(log.publisher())),
        #[cfg(feature = "nats")]
        SinkKind::Nats => Ok(Box::new(
            onephase_broker::nats::NatsPublisher::connect(sink)
                .await
                .map_err(|e| e.to_string())?,
        )),
        #[cfg(feature = "amqp")]
        SinkKind::Amqp => Ok(Box::new(
            onephase_broker::amqp::AmqpPublisher::connect(sink, "onephase")
                .await
                .map_err(|e| e.to_string())?,
        )),
        #[cfg(feature = "redis")]
        SinkKind::Redis => Ok(Box::new(
            onephase_broker::redis::RedisPublisher::connect(sink, "onephase:")
                .await
                .map_err(|e| e.to_string())?,
        )),
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => Ok(Box::new(
            onephase_broker::kafka::KafkaPublisher::connect(
                sink.trim_start_matches("kafka://"),
                std::time::Duration::from_secs(30),
            )
            .map_err(|e| e.to_string())?,
        )),
        #[allow(unreachable_patterns)]
        _ => Err(format!("sink {sink:?} is not built in")),
    }
}

/// Opens an application database and creates or updates its outbox tables.
async fn open_source(url: &str) -> Result<Store, onephase_store::StoreError> {
    let source = Store::connect(url).await?;
    source.migrate(&[onephase_outbox::migrations()]).await?;
    Ok(source)
}

/// One configured source: its name, its admin handle, its relay's totals.
#[derive(Clone)]
pub struct OutboxSource {
    /// The relay's name.
    pub name: String,
    /// Where it publishes.
    pub sink: String,
    /// Status, dead letters and retries of its outbox.
    pub admin: OutboxAdmin,
    /// Its relay's running totals.
    pub stats: RelayStats,
    rate: Arc<Mutex<Option<(Instant, u64)>>>,
}

impl OutboxSource {
    /// Events published per second since the previous call (`None` on the first).
    pub fn published_rate(&self) -> Option<f64> {
        let now = Instant::now();
        let total = self.stats.published();
        let mut last = self.rate.lock().ok()?;
        let rate = last.and_then(|(at, before)| {
            let secs = now.duration_since(at).as_secs_f64();
            (secs > 0.0).then(|| total.saturating_sub(before) as f64 / secs)
        });
        *last = Some((now, total));
        rate
    }
}

/// A relay waiting to be spawned, with its source store when that is not the server's own
/// (closed when the relay stops).
type PendingRelay = (Relay<Box<dyn Publisher>>, Option<Store>);

/// The outbox side of the server: the embedded log and the configured relays.
#[derive(Clone)]
pub struct OutboxService {
    log: EmbeddedLog,
    sources: Vec<OutboxSource>,
    relays: Arc<Mutex<Vec<PendingRelay>>>,
}

impl OutboxService {
    /// Opens each relay's source (migrating its outbox tables) and connects its sink; nothing
    /// runs until [`OutboxService::spawn`].
    pub async fn open(store: &Store, settings: &[RelaySettings]) -> Result<Self, OutboxStartError> {
        let log = EmbeddedLog::new(store.clone());
        let mut sources = Vec::new();
        let mut relays = Vec::new();
        for s in settings {
            let source = match &s.source {
                Some(url) => open_source(url)
                    .await
                    .map_err(|e| OutboxStartError::Source {
                        name: s.name.clone(),
                        source: e,
                    })?,
                None => store.clone(),
            };
            let publisher =
                connect_sink(&s.sink, &log)
                    .await
                    .map_err(|message| OutboxStartError::Sink {
                        name: s.name.clone(),
                        message,
                    })?;
            let defaults = RelayConfig::default();
            let relay = Relay::new(
                source.clone(),
                publisher,
                RelayConfig {
                    source: s.name.clone(),
                    batch_size: s.batch_size.unwrap_or(defaults.batch_size),
                    max_attempts: s.max_attempts.unwrap_or(defaults.max_attempts),
                    claim_timeout: s
                        .claim_timeout_secs
                        .map_or(defaults.claim_timeout, std::time::Duration::from_secs),
                    ..defaults
                },
            );
            sources.push(OutboxSource {
                name: s.name.clone(),
                sink: s.sink.clone(),
                admin: OutboxAdmin::new(source.clone()),
                stats: relay.stats(),
                rate: Arc::default(),
            });
            let own = s.source.as_ref().map(|_| source);
            relays.push((relay, own));
        }
        Ok(Self {
            log,
            sources,
            relays: Arc::new(Mutex::new(relays)),
        })
    }

    /// The embedded log in the server's store.
    pub fn log(&self) -> &EmbeddedLog {
        &self.log
    }

    /// The configured sources.
    pub fn sources(&self) -> &[OutboxSource] {
        &self.sources
    }

    /// One source by name.
    pub fn source(&self, name: &str) -> Option<&OutboxSource> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Starts every relay; each stops when `stop` turns true, and its source store (if it is
    /// not the server's) is closed after.
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let relays = match self.relays.lock() {
            Ok(mut relays) => std::mem::take(&mut *relays),
            Err(_) => Vec::new(),
        };
        relays
            .into_iter()
            .map(|(relay, own_source)| {
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    relay
                        .run(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await;
                    drop(relay);
                    if let Some(source) = own_source {
                        source.close().await;
                    }
                })
            })
            .collect()
    }
}

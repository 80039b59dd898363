//! The outbox inside `onephase serve`: relays from configured source databases to configured
//! sinks, and the embedded log that `POST /v1/outbox/{topic}` appends to.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use onephase_broker::Publisher;
use onephase_broker::log::EmbeddedLog;
use onephase_outbox::{OutboxAdmin, Relay, RelayConfig, RelayStats};
use onephase_store::{Store, redact_url};
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

/// Why the outbox relays' configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxStartError {
    /// Two relays read one outbox table.
    #[error(
        "outbox relays {first:?} and {second:?} both read the outbox of {source_db}: one outbox table feeds one relay (rows are claimed and removed as they are published, so two relays would split the events between their sinks). Publish to one sink and fan out from there, or give each sink its own outbox table in its own database"
    )]
    SharedSource {
        /// The relay configured first.
        first: String,
        /// The relay configured second.
        second: String,
        /// The source, password redacted.
        source_db: String,
    },
}

/// What the two relays' sources both are: the same database, however its URL is spelled.
fn source_identity(url: &str) -> String {
    use std::str::FromStr as _;
    match onephase_store::Backend::from_url(url) {
        Ok(onephase_store::Backend::Sqlite) => {
            let Ok(options) = onephase_store::sqlx::sqlite::SqliteConnectOptions::from_str(url)
            else {
                return url.to_owned();
            };
            let path = options.get_filename();
            if path.as_os_str() == ":memory:" {
                // Every in-memory database is its own.
                return format!("memory:{}", uuid::Uuid::now_v7());
            }
            let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| {
                std::env::current_dir()
                    .map(|d| d.join(path))
                    .unwrap_or_else(|_| path.to_owned())
            });
            format!("sqlite:{}", absolute.display())
        }
        Ok(onephase_store::Backend::Postgres) => {
            match onephase_store::sqlx::postgres::PgConnectOptions::from_str(url) {
                Ok(o) => format!(
                    "postgres://{}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or(o.get_username())
                ),
                Err(_) => url.to_owned(),
            }
        }
        Err(_) => url.to_owned(),
    }
}

/// Refuses a configuration where two relays read one outbox table (`None` is the server's own
/// store at `store_url`).
pub fn check_sources(relays: &[RelaySettings], store_url: &str) -> Result<(), OutboxStartError> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for relay in relays {
        let url = relay.source.as_deref().unwrap_or(store_url);
        let identity = source_identity(url);
        if let Some((_, first)) = seen.iter().find(|(id, _)| *id == identity) {
            return Err(OutboxStartError::SharedSource {
                first: (*first).to_owned(),
                second: relay.name.clone(),
                source_db: redact_url(url),
            });
        }
        seen.push((identity, relay.name.as_str()));
    }
    Ok(())
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
    if let Err(e) = source.migrate(&[onephase_outbox::migrations()]).await {
        source.close().await;
        return Err(e);
    }
    Ok(source)
}

/// Where a relay is: reaching its source and sink, or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    /// Connecting for the first time.
    Starting,
    /// Relaying.
    Running,
    /// Its source database or its sink does not answer; it keeps trying.
    Unavailable {
        /// What does not answer, and why (credentials redacted).
        error: String,
    },
}

impl RelayState {
    /// `starting`, `running` or `unavailable`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RelayState::Starting => "starting",
            RelayState::Running => "running",
            RelayState::Unavailable { .. } => "unavailable",
        }
    }
}

/// One configured source: its name, its admin handle, its relay's totals.
#[derive(Clone)]
pub struct OutboxSource {
    /// The relay's name.
    pub name: String,
    /// Where it publishes, with any password replaced by `***`.
    pub sink: String,
    /// Its relay's running totals.
    pub stats: RelayStats,
    settings: RelaySettings,
    admin: Arc<OnceLock<OutboxAdmin>>,
    state: Arc<Mutex<RelayState>>,
    rate: Arc<Mutex<Option<(Instant, u64)>>>,
}

impl OutboxSource {
    /// Status, dead letters and retries of its outbox, once its source database was opened.
    pub fn admin(&self) -> Result<&OutboxAdmin, String> {
        self.admin.get().ok_or_else(|| match self.state() {
            RelayState::Unavailable { error } => error,
            _ => format!(
                "relay {:?} has not opened its source database yet",
                self.name
            ),
        })
    }

    /// Where the relay is.
    pub fn state(&self) -> RelayState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(RelayState::Starting)
    }

    fn set_state(&self, state: RelayState) {
        let up = f64::from(u8::from(state == RelayState::Running));
        metrics::gauge!("onephase_outbox_relay_up", "source" => self.name.clone()).set(up);
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    /// Events published per second between the previous call and `now` (the clock's monotonic
    /// time; `None` on the first call).
    pub fn published_rate(&self, now: Instant) -> Option<f64> {
        let total = self.stats.published();
        let mut last = self.rate.lock().ok()?;
        let rate = last.and_then(|(at, before)| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            (secs > 0.0).then(|| total.saturating_sub(before) as f64 / secs)
        });
        *last = Some((now, total));
        rate
    }
}

/// The outbox side of the server: the embedded log and the configured relays.
#[derive(Clone)]
pub struct OutboxService {
    store: Store,
    log: EmbeddedLog,
    sources: Vec<OutboxSource>,
}

impl OutboxService {
    /// The embedded log and one source per configured relay. Nothing is connected yet: each
    /// relay reaches its source and sink when [spawned](OutboxService::spawn), and keeps
    /// trying while they do not answer, so that a broker that is down stops only its relay.
    pub fn open(store: &Store, settings: &[RelaySettings]) -> Result<Self, OutboxStartError> {
        check_sources(settings, store.url())?;
        let sources = settings
            .iter()
            .map(|s| {
                let source = OutboxSource {
                    name: s.name.clone(),
                    sink: redact_url(&s.sink),
                    stats: RelayStats::default(),
                    settings: s.clone(),
                    admin: Arc::default(),
                    state: Arc::new(Mutex::new(RelayState::Starting)),
                    rate: Arc::default(),
                };
                if s.source.is_none() {
                    let _ = source.admin.set(OutboxAdmin::new(store.clone()));
                }
                source.set_state(RelayState::Starting);
                source
            })
            .collect();
        Ok(Self {
            store: store.clone(),
            log: EmbeddedLog::new(store.clone()),
            sources,
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

    /// Starts every relay: each opens its source, connects its sink (retrying with backoff,
    /// reported in its [state](OutboxSource::state) and the log, while either does not
    /// answer) and relays until `stop` turns true; its source store (if it is not the
    /// server's) is closed after.
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.sources
            .iter()
            .cloned()
            .map(|source| {
                let store = self.store.clone();
                let log = self.log.clone();
                tokio::spawn(run_relay(source, store, log, stop.clone()))
            })
            .collect()
    }
}

/// How long a relay waits before trying its source or sink again, at most.
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// One relay's life: reach the source and the sink (trying again with jittered backoff while
/// they do not answer), then relay until `stop`.
async fn run_relay(
    source: OutboxSource,
    store: Store,
    log: EmbeddedLog,
    mut stop: watch::Receiver<bool>,
) {
    let s = &source.settings;
    let backoff = onephase_core::Backoff::new(
        Duration::from_millis(500),
        RECONNECT_CAP,
        onephase_core::Jitter::Full,
    );
    let random = onephase_core::Random::from_entropy();
    let mut attempt: u32 = 0;
    let mut own_source: Option<Store> = None;
    let publisher = loop {
        if *stop.borrow() {
            return;
        }
        let reaching = async {
            let db = match (&s.source, &own_source) {
                (None, _) => store.clone(),
                (Some(_), Some(db)) => db.clone(),
                (Some(url), None) => {
                    let db = open_source(url)
                        .await
                        .map_err(|e| format!("source database {}: {e}", redact_url(url)))?;
                    let _ = source.admin.set(OutboxAdmin::new(db.clone()));
                    own_source = Some(db.clone());
                    db
                }
            };
            let publisher = connect_sink(&s.sink, &log)
                .await
                .map_err(|e| format!("sink {}: {}", redact_url(&s.sink), redact_in(&e, &s.sink)))?;
            Ok::<_, String>((db, publisher))
        };
        // A connection attempt may hang (a host that drops packets): a stop does not wait.
        let reached = tokio::select! {
            reached = reaching => reached,
            _ = stop.wait_for(|s| *s) => return,
        };
        match reached {
            Ok(reached) => break reached,
            Err(error) => {
                let wait = match &backoff {
                    Ok(b) => b.delay(attempt, None, &mut &random),
                    Err(_) => RECONNECT_CAP,
                };
                // Every failure while it is new, then one line a minute or so.
                if attempt < 3 || attempt.is_multiple_of(8) {
                    tracing::warn!(
                        relay = %source.name,
                        error = %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "outbox relay cannot start: {error}; retrying (the rest of the server is unaffected)"
                    );
                }
                source.set_state(RelayState::Unavailable { error });
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    let (db, publisher) = publisher;
    if attempt > 0 {
        tracing::info!(relay = %source.name, "outbox relay reached its source and sink; relaying");
    }
    let relay = Relay::new(db, publisher, relay_config(s)).with_stats(source.stats.clone());
    // The id is what the source's rows name in `claimed_by` while this relay holds them.
    tracing::info!(relay = %source.name, claimed_by = %relay.id(), "outbox relay running");
    source.set_state(RelayState::Running);
    relay
        .run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    drop(relay);
    if let Some(db) = own_source {
        db.close().await;
    }
}

/// A relay's configuration: the settings given, defaults for the rest.
fn relay_config(s: &RelaySettings) -> RelayConfig {
    let defaults = RelayConfig::default();
    RelayConfig {
        source: s.name.clone(),
        batch_size: s.batch_size.unwrap_or(defaults.batch_size),
        max_attempts: s.max_attempts.unwrap_or(defaults.max_attempts),
        claim_timeout: s
            .claim_timeout_secs
            .map_or(defaults.claim_timeout, Duration::from_secs),
        ..defaults
    }
}

/// `text` with the password of `url` (which a driver may quote in its error) redacted.
fn redact_in(text: &str, url: &str) -> String {
    let redacted = redact_url(url);
    let mut out = text.replace(url, &redacted);
    if let Some(password) = onephase_store::url_password(url) {
        out = out.replace(&password, "***");
    }
    out
}

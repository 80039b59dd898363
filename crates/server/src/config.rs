//! Server configuration: flags over `ONEPHASE_*` environment variables over a TOML file over
//! defaults.
//!
//! The binary's flags and environment variables are both read by `clap` (a flag wins over its
//! variable) and arrive here as [`ConfigOverrides`]; [`ServerConfig::load`] lays them over the
//! file and the defaults. Every key of the file:
//!
//! ```toml
//! listen = "127.0.0.1:7700"          # --listen, ONEPHASE_LISTEN
//! store = "sqlite://onephase.db"     # --store, ONEPHASE_STORE
//! body_limit = 1048576               # --body-limit, ONEPHASE_BODY_LIMIT (bytes)
//! log = "info"                       # --log, ONEPHASE_LOG (a tracing filter)
//! log_format = "text"                # --log-format, ONEPHASE_LOG_FORMAT (text or json)
//! shutdown_grace_secs = 30           # ONEPHASE_SHUTDOWN_GRACE_SECS
//!
//! [[auth.tokens]]                    # tokens managed outside onephase, by SHA-256
//! name = "deploy-bot"
//! role = "client"                    # or "admin"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! [[outbox.relay]]                   # relay an application's outbox table to a sink
//! name = "orders"
//! source = "postgres://app@db/orders"  # default: the server's own store
//! sink = "nats://127.0.0.1:4222"     # log | nats:// | amqp:// | redis:// | kafka://
//! batch_size = 500                   # optional
//! max_attempts = 12                  # optional
//!
//! [saga]                             # the saga orchestrator (all optional)
//! orchestrator = true                # run it in this server
//! events_topic = "onephase.saga"     # outbox topic of run transitions ("" = none)
//! concurrency = 64                   # runs driven at once
//! lease_margin_secs = 10             # how long a dead server's runs wait for another
//! poll_interval_ms = 50
//!
//! [webhook]                          # webhook delivery (all optional)
//! dispatcher = true                  # deliver from this server
//! allow_networks = ["127.0.0.0/8"]   # internal networks endpoints may be in (default none)
//! events_topic = "onephase.webhook"  # outbox topic of endpoint_disabled events ("" = none)
//! schedule_secs = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
//! jitter = 0.2
//! attempt_timeout_secs = 15
//! lease_margin_secs = 15             # how long a dead server's deliveries wait for another
//! max_retry_after_secs = 3600        # the longest Retry-After honoured
//! slow_down_secs = 30                # reduced concurrency after a 429 or 5xx overload answer
//! disable_after_secs = 432000        # disable an endpoint failing this long
//! max_in_flight = 256
//! poll_interval_ms = 250
//! max_body_bytes = 262144
//!
//! [lease]                            # fenced leases (all optional)
//! etcd_endpoints = []                # keep leases in etcd (needs the `etcd` feature); default: the store
//! max_wait_ms = 30000                # the longest an acquire request may wait
//!
//! [limit]                            # rate limits (all optional)
//! store = "redis"                    # local | database | redis; default: redis with redis_url, else local
//! redis_url = "redis://127.0.0.1:6379/"  # for store = "redis"
//! [[limit.policy]]
//! name = "api"
//! algorithm = "gcra"                 # gcra | fixed_window | sliding_log | sliding_window
//! limit = 100                        # units per period
//! period_ms = 60000
//! burst = 20                         # gcra only; default: the limit
//! fail_mode = "open"                 # or "closed": when Redis or the database cannot answer
//! chunk = 10                         # hybrid: decide in process on leases of 10 units; default: ask the store
//!
//! [[replica]]                       # a PostgreSQL primary and its streaming replicas to watch
//! cluster = "orders"
//! primary = "postgres://app@db-primary/orders"
//! replicas = { r1 = "postgres://app@db-replica-1/orders" }
//! poll_interval_ms = 250             # optional
//! heartbeat_interval_ms = 1000       # optional; the heartbeat table is made on the primary
//! max_lag_ms = 5000                  # optional; staler replicas leave rotation
//! heartbeat = true                   # optional; false where another monitor writes it
//!
//! [[kafka.watch]]                    # Kafka consumer groups to diagnose (needs --features kafka)
//! brokers = "127.0.0.1:9092"
//! groups = ["billing"]               # optional; default: every group the brokers list
//! topics = []                        # optional; topics to read beyond those members own
//! interval_ms = 5000                 # optional; time between observations
//! window_ms = 300000                 # optional; the window the rules judge
//!
//! [traces]                           # span export over OTLP/HTTP (all optional)
//! otlp_endpoint = "http://127.0.0.1:4318/v1/traces"  # --otlp-endpoint, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; default: no export
//! service_name = "onephase"          # OTEL_SERVICE_NAME
//! sample_ratio = 1.0                 # share of new traces recorded
//! headers = { "x-api-key" = "..." }  # sent with every export request
//! ```
//!
//! Unknown keys are errors, so that a typo cannot silently leave a setting at its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::ConfiguredToken;
use crate::kafka::KafkaSettings;
use crate::lease::LeaseSettings;
use crate::limit::LimitSettings;
use crate::outbox::RelaySettings;
use crate::partition::PartitionSettings;
use crate::replica::ReplicaSettings;
use crate::saga::SagaSettings;
use crate::traces::TracesSettings;
use crate::webhook::WebhookSettings;

/// The default listen address: loopback only, so a fresh start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "sqlite://onephase.db";
/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// The settings given on the command line or in the environment; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// The address to listen on.
    pub listen: Option<SocketAddr>,
    /// The store URL.
    pub store: Option<String>,
    /// The largest request body accepted, in bytes.
    pub body_limit: Option<usize>,
    /// The tracing filter.
    pub log: Option<String>,
    /// The log format.
    pub log_format: Option<LogFormat>,
    /// How long shutdown waits for requests in flight, in seconds.
    pub shutdown_grace_secs: Option<u64>,
    /// The OTLP/HTTP traces URL spans are exported to.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    store: Option<String>,
    body_limit: Option<usize>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    shutdown_grace_secs: Option<u64>,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    outbox: FileOutbox,
    #[serde(default)]
    saga: SagaSettings,
    #[serde(default)]
    webhook: WebhookSettings,
    #[serde(default)]
    lease: LeaseSettings,
    #[serde(default)]
    limit: LimitSettings,
    #[serde(default)]
    traces: TracesSettings,
    #[serde(default)]
    replica: Vec<ReplicaSettings>,
    #[serde(default)]
    kafka: KafkaSettings,
    #[serde(default)]
    partition: PartitionSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutbox {
    #[serde(default)]
    relay: Vec<RelaySettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    #[serde(default)]
    tokens: Vec<ConfiguredToken>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The server's resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The store URL.
    pub store: String,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// The tracing filter (`RUST_LOG` syntax).
    pub log: String,
    /// The log format.
    pub log_format: LogFormat,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Tokens defined by hash in the configuration file.
    pub tokens: Vec<ConfiguredToken>,
    /// Outbox relays to run.
    pub outbox_relays: Vec<RelaySettings>,
    /// The `[saga]` table.
    pub saga: SagaSettings,
    /// The `[webhook]` table.
    pub webhook: WebhookSettings,
    /// The `[lease]` table.
    pub lease: LeaseSettings,
    /// The `[limit]` table.
    pub limit: LimitSettings,
    /// The `[traces]` table, with the overrides laid over it.
    pub traces: TracesSettings,
    /// The `[[replica]]` tables: replica clusters to watch.
    pub replicas: Vec<ReplicaSettings>,
    /// The `[kafka]` table: consumer groups to watch.
    pub kafka: KafkaSettings,
    /// The `[partition]` table: the shards online moves read and write.
    pub partition: PartitionSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            store: DEFAULT_STORE.to_owned(),
            body_limit: DEFAULT_BODY_LIMIT,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            shutdown_grace: Duration::from_secs(30),
            tokens: Vec::new(),
            outbox_relays: Vec::new(),
            saga: SagaSettings::default(),
            webhook: WebhookSettings::default(),
            lease: LeaseSettings::default(),
            limit: LimitSettings::default(),
            traces: TracesSettings::default(),
            replicas: Vec::new(),
            kafka: KafkaSettings::default(),
            partition: PartitionSettings::default(),
        }
    }
}

impl ServerConfig {
    /// Lays `overrides` over the file at `file` (if any) over the defaults.
    pub fn load(file: Option<&Path>, overrides: ConfigOverrides) -> Result<Self, ConfigError> {
        let file_config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let defaults = Self::default();
        let listen = match (overrides.listen, file_config.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|e| ConfigError::Invalid {
                key: "listen",
                message: format!("{text:?} is not an address like {DEFAULT_LISTEN}: {e}"),
            })?,
            (None, None) => defaults.listen,
        };
        let body_limit = overrides
            .body_limit
            .or(file_config.body_limit)
            .unwrap_or(defaults.body_limit);
        if body_limit == 0 {
            return Err(ConfigError::Invalid {
                key: "body_limit",
                message: "must be at least 1 byte".to_owned(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for relay in &file_config.outbox.relay {
            if !names.insert(relay.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "outbox.relay.name",
                    message: format!("{:?} names two relays; names must be unique", relay.name),
                });
            }
            crate::outbox::SinkKind::parse(&relay.sink).map_err(|message| {
                ConfigError::Invalid {
                    key: "outbox.relay.sink",
                    message,
                }
            })?;
        }
        file_config.webhook.validate(&file_config.outbox.relay)?;
        file_config.saga.policy()?;
        file_config.lease.validate()?;
        file_config.limit.validate()?;
        ReplicaSettings::validate(&file_config.replica)?;
        file_config.kafka.validate()?;
        file_config.partition.validate()?;
        let mut traces = file_config.traces;
        traces.otlp_endpoint = overrides.otlp_endpoint.or(traces.otlp_endpoint);
        traces.service_name = overrides.service_name.or(traces.service_name);
        traces.validate()?;
        let store = overrides
            .store
            .or(file_config.store)
            .unwrap_or(defaults.store);
        crate::outbox::check_sources(&file_config.outbox.relay, &store).map_err(|e| {
            ConfigError::Invalid {
                key: "outbox.relay.source",
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            listen,
            store,
            body_limit,
            log: overrides.log.or(file_config.log).unwrap_or(defaults.log),
            log_format: overrides
                .log_format
                .or(file_config.log_format)
                .unwrap_or(defaults.log_format),
            shutdown_grace: overrides
                .shutdown_grace_secs
                .or(file_config.shutdown_grace_secs)
                .map_or(defaults.shutdown_grace, Duration::from_secs),
            tokens: file_config.auth.tokens,
            outbox_relays: file_config.outbox.relay,
            saga: file_config.saga,
            webhook: file_config.webhook,
            lease: file_config.lease,
            limit: file_config.limit,
            traces,
            replicas: file_config.replica,
            kafka: file_config.kafka,
            partition: file_config.partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_without_file_or_overrides() {
        let config = ServerConfig::load(None, ConfigOverrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.store, DEFAULT_STORE);
        assert_eq!(config.body_limit, DEFAULT_BODY_LIMIT);
    }

    #[test]
    fn overrides_beat_the_file_which_beats_defaults() {
        let f = file(
            "listen = \"0.0.0.0:9000\"\nstore = \"sqlite://file.db\"\nbody_limit = 10\n\
             [[auth.tokens]]\nname = \"bot\"\nrole = \"client\"\nsha256 = \"ab\"\n",
        );
        let overrides = ConfigOverrides {
            store: Some("sqlite://flag.db".into()),
            ..Default::default()
        };
        let config = ServerConfig::load(Some(f.path()), overrides).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.store, "sqlite://flag.db");
        assert_eq!(config.body_limit, 10);
        assert_eq!(config.tokens.len(), 1);
    }

    #[test]
    fn typos_and_bad_values_are_errors_that_point_at_them() {
        let f = file("listn = \"0.0.0.0:9000\"\n");
        let err = ServerConfig::load(Some(f.path()), ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");

        let f = file("listen = \"localhost\"\n");
        let err = ServerConfig::load(Some(f.path()), ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("invalid listen"), "{err}");

        let f = file("body_limit = 0\n");
        let err = ServerConfig::load(Some(f.path()), ConfigOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("body_limit"), "{err}");

        for (text, says) in [
            ("[limit]\nstore = \"redis\"\n", "needs redis_url"),
            (
                "[limit]\nstore = \"database\"\nredis_url = \"redis://127.0.0.1/\"\n",
                "remove one",
            ),
            ("[limit]\nstore = \"memcached\"\n", "memcached"),
            (
                "[[limit.policy]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 5\n\
                 period_ms = 1000\nchunk = 6\n",
                "chunk 6",
            ),
        ] {
            let f = file(text);
            let err = ServerConfig::load(Some(f.path()), ConfigOverrides::default()).unwrap_err();
            assert!(err.to_string().contains(says), "{text}: {err}");
        }

        let err = ServerConfig::load(Some(Path::new("/no/such/file.toml")), Default::default())
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/file.toml"), "{err}");
    }

    #[test]
    fn two_relays_on_one_outbox_table_are_refused_however_its_url_is_written() {
        for (first, second) in [
            ("", ""),
            ("source = \"sqlite://onephase.db\"\n", ""),
            (
                "source = \"postgres://app:one@db:5432/shop\"\n",
                "source = \"postgresql://app:two@db/shop?sslmode=disable\"\n",
            ),
        ] {
            let f = file(&format!(
                "[[outbox.relay]]\nname = \"a\"\nsink = \"log\"\n{first}\
                 [[outbox.relay]]\nname = \"b\"\nsink = \"log\"\n{second}"
            ));
            let err = ServerConfig::load(Some(f.path()), ConfigOverrides::default()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("\"a\" and \"b\" both read"), "{text}");
            assert!(!text.contains("one@") && !text.contains("two@"), "{text}");
        }
        let f = file(
            "[[outbox.relay]]\nname = \"a\"\nsink = \"log\"\n\
             [[outbox.relay]]\nname = \"b\"\nsink = \"log\"\nsource = \"sqlite://other.db\"\n",
        );
        ServerConfig::load(Some(f.path()), ConfigOverrides::default())
            .expect("two relays on two databases");
    }
}

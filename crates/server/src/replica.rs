//! The replica clusters the server watches: the `[[replica]]` settings, and the routers the
//! routes, the dashboard and the metrics read.

use std::collections::BTreeMap;
use std::time::Duration;

use onephase_replica::{ClusterStatus, ReplicaError, Router, RouterConfig, Thresholds};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;

/// One `[[replica]]` table: a PostgreSQL primary and its streaming replicas to watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    /// The cluster's name, in the API and the metrics.
    pub cluster: String,
    /// The primary's URL (`postgres://...`). The heartbeat table is made in its database.
    pub primary: String,
    /// The replicas, by name.
    pub replicas: BTreeMap<String, String>,
    /// How often every server is read, in milliseconds (default 250).
    pub poll_interval_ms: Option<u64>,
    /// How often the heartbeat is written, in milliseconds (default 1,000).
    pub heartbeat_interval_ms: Option<u64>,
    /// A replica staler than this leaves rotation, in milliseconds (default 5,000).
    pub max_lag_ms: Option<u64>,
    /// Whether this server writes the heartbeat (default true).
    pub heartbeat: Option<bool>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ReplicaSettings {
    pub(crate) fn validate(all: &[ReplicaSettings]) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for settings in all {
            let name_ok = !settings.cluster.is_empty()
                && settings.cluster.len() <= 64
                && settings
                    .cluster
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(invalid(
                    "replica.cluster",
                    format!(
                        "{:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                        settings.cluster
                    ),
                ));
            }
            if !names.insert(settings.cluster.as_str()) {
                return Err(invalid(
                    "replica.cluster",
                    format!("{:?} is configured twice", settings.cluster),
                ));
            }
            settings
                .primary
                .parse::<PgConnectOptions>()
                .map_err(|e| invalid("replica.primary", format!("{:?}: {e}", settings.cluster)))?;
            if settings.replicas.is_empty() {
                return Err(invalid(
                    "replica.replicas",
                    format!("cluster {:?} lists no replica", settings.cluster),
                ));
            }
            for (name, url) in &settings.replicas {
                if name == "primary" || name.is_empty() {
                    return Err(invalid(
                        "replica.replicas",
                        format!("{name:?} cannot name a replica"),
                    ));
                }
                url.parse::<PgConnectOptions>()
                    .map_err(|e| invalid("replica.replicas", format!("{name}: {e}")))?;
            }
            for (key, value, range) in [
                (
                    "replica.poll_interval_ms",
                    settings.poll_interval_ms,
                    10..=60_000,
                ),
                (
                    "replica.heartbeat_interval_ms",
                    settings.heartbeat_interval_ms,
                    10..=60_000,
                ),
                ("replica.max_lag_ms", settings.max_lag_ms, 10..=3_600_000),
            ] {
                if value.is_some_and(|v| !range.contains(&v)) {
                    return Err(invalid(
                        key,
                        format!("from {} to {}", range.start(), range.end()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn router(&self) -> Result<Router, ConfigError> {
        // Lazy pools: the server starts while a cluster is down, and the monitor shows it.
        let pool = |key: &'static str, url: &str| {
            let options = url
                .parse::<PgConnectOptions>()
                .map_err(|e| invalid(key, e.to_string()))?;
            Ok::<_, ConfigError>(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy_with(options),
            )
        };
        let primary = pool("replica.primary", &self.primary)?;
        let replicas = self
            .replicas
            .iter()
            .map(|(name, url)| Ok((name.clone(), pool("replica.replicas", url)?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let defaults = RouterConfig::default();
        let thresholds = Thresholds {
            max_lag: self
                .max_lag_ms
                .map_or(defaults.thresholds.max_lag, Duration::from_millis),
            ..defaults.thresholds
        };
        let config = RouterConfig::default()
            .with_poll_interval(
                self.poll_interval_ms
                    .map_or(defaults.poll_interval, Duration::from_millis),
            )
            .with_heartbeat_interval(
                self.heartbeat_interval_ms
                    .map_or(defaults.heartbeat_interval, Duration::from_millis),
            )
            .with_thresholds(thresholds)
            .with_heartbeat(self.heartbeat.unwrap_or(true));
        Ok(Router::new(self.cluster.clone(), primary, replicas).with_config(config))
    }
}

/// The clusters the server watches.
#[derive(Debug, Clone, Default)]
pub struct ReplicaService {
    routers: Vec<Router>,
}

impl ReplicaService {
    /// A router per configured cluster (no connection is made yet).
    pub fn new(settings: &[ReplicaSettings]) -> Result<Self, ConfigError> {
        Ok(Self {
            routers: settings
                .iter()
                .map(ReplicaSettings::router)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every cluster, as last polled.
    pub fn status(&self) -> Vec<ClusterStatus> {
        self.routers.iter().map(Router::status).collect()
    }

    /// The cluster named `name`, or the only one when `name` is absent.
    pub fn router(&self, name: Option<&str>) -> Result<&Router, ReplicaError> {
        let known = || {
            self.routers
                .iter()
                .map(|r| r.cluster().to_owned())
                .collect()
        };
        match name {
            Some(name) => self
                .routers
                .iter()
                .find(|r| r.cluster() == name)
                .ok_or_else(|| ReplicaError::UnknownCluster {
                    name: name.to_owned(),
                    known: known(),
                }),
            None if self.routers.len() == 1 => Ok(&self.routers[0]),
            None => Err(ReplicaError::ClusterNeeded { known: known() }),
        }
    }

    /// Whether any cluster is configured.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    /// Runs every cluster's monitor until `stop` turns true.
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.routers
            .iter()
            .map(|router| {
                let router = router.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    router
                        .run(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await;
                })
            })
            .collect()
    }
}

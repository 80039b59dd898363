//! The Kafka clusters whose consumer groups the server watches: the `[[kafka.watch]]`
//! settings, and the doctors whose diagnoses the routes, the dashboard and the metrics read.
//!
//! The doctor needs librdkafka (feature `kafka`); a server built without it refuses a
//! configuration that asks for a watch, rather than silently watching nothing.

use std::sync::{Arc, Mutex};

use onephase_kafka::diagnosis::Diagnosis;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::config::ConfigError;

/// The `[kafka]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `[[kafka.watch]]`: clusters whose groups to watch.
    #[serde(default)]
    pub watch: Vec<KafkaWatchSettings>,
}

/// One `[[kafka.watch]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaWatchSettings {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// Groups to watch; empty or absent: every group the brokers list.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Topics to read for every group beyond those its members own.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Time between observations, in milliseconds (default 5,000).
    pub interval_ms: Option<u64>,
    /// The window the rules judge, in milliseconds (default 300,000).
    pub window_ms: Option<u64>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl KafkaSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.watch.is_empty() && !cfg!(feature = "kafka") {
            return Err(invalid(
                "kafka.watch",
                "this onephase was built without Kafka support: build it with --features kafka, \
                 or remove the [[kafka.watch]] tables",
            ));
        }
        for w in &self.watch {
            if w.brokers.trim().is_empty() {
                return Err(invalid("kafka.watch.brokers", "empty: give host:port"));
            }
            let interval = w.interval_ms.unwrap_or(5_000);
            if !(100..=600_000).contains(&interval) {
                return Err(invalid("kafka.watch.interval_ms", "from 100 to 600000"));
            }
            let window = w.window_ms.unwrap_or(300_000);
            if !(interval..=86_400_000).contains(&window) {
                return Err(invalid(
                    "kafka.watch.window_ms",
                    format!("from interval_ms ({interval}) to 86400000"),
                ));
            }
            if w.groups.iter().any(|g| g.is_empty()) {
                return Err(invalid("kafka.watch.groups", "a group name is empty"));
            }
        }
        Ok(())
    }
}

/// One watched cluster as last observed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WatchStatus {
    /// The brokers.
    pub brokers: String,
    /// Each group's diagnosis, worst first.
    pub groups: Vec<Diagnosis>,
    /// Why the last observation failed, if it did (the groups are then from the one before).
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct Watched {
    settings: Vec<KafkaWatchSettings>,
    status: Vec<Mutex<WatchStatus>>,
}

/// The watched clusters.
#[derive(Debug, Clone, Default)]
pub struct KafkaService(Arc<Watched>);

impl KafkaService {
    /// A service for `settings` (validated); nothing connects until [`spawn`](Self::spawn).
    pub fn new(settings: &KafkaSettings) -> Self {
        let status = settings
            .watch
            .iter()
            .map(|w| {
                Mutex::new(WatchStatus {
                    brokers: w.brokers.clone(),
                    groups: Vec::new(),
                    error: Some("not observed yet".to_owned()),
                })
            })
            .collect();
        Self(Arc::new(Watched {
            settings: settings.watch.clone(),
            status,
        }))
    }

    /// Every watched cluster.
    pub fn status(&self) -> Vec<WatchStatus> {
        self.0
            .status
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Whether any cluster is watched.
    pub fn is_empty(&self) -> bool {
        self.0.settings.is_empty()
    }

    /// Runs a doctor per watched cluster until `stop` turns true.
    #[cfg(feature = "kafka")]
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        (0..self.0.settings.len())
            .map(|i| {
                let service = self.clone();
                let stop = stop.clone();
                tokio::spawn(async move { service.watch(i, stop).await })
            })
            .collect()
    }

    /// Without Kafka support there is nothing to run (a watch is refused by the configuration).
    #[cfg(not(feature = "kafka"))]
    pub fn spawn(&self, _stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        Vec::new()
    }

    #[cfg(feature = "kafka")]
    async fn watch(&self, i: usize, mut stop: watch::Receiver<bool>) {
        use std::time::Duration;

        use onephase_kafka::{Doctor, DoctorConfig};

        let settings = &self.0.settings[i];
        let set = |f: &dyn Fn(&mut WatchStatus)| {
            let mut status = self.0.status[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&mut status);
        };
        let interval = Duration::from_millis(settings.interval_ms.unwrap_or(5_000));
        let config = DoctorConfig::new(&settings.brokers)
            .with_groups(settings.groups.clone())
            .with_topics(settings.topics.clone())
            .with_interval(interval)
            .with_window(Duration::from_millis(settings.window_ms.unwrap_or(300_000)));
        // librdkafka reconnects by itself once connected; only the first contact is retried here.
        let doctor = loop {
            match Doctor::connect(config.clone()).await {
                Ok(doctor) => break doctor,
                Err(e) => {
                    let error = e.to_string();
                    set(&|s| s.error = Some(error.clone()));
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            }
        };
        loop {
            match doctor.observe().await {
                Ok(groups) => set(&|s| {
                    s.groups = groups.clone();
                    s.error = None;
                }),
                Err(e) => {
                    let error = e.to_string();
                    set(&|s| s.error = Some(error.clone()));
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

//! The doctor on a live cluster: observes groups at an interval, keeps a window of
//! observations per group, diagnoses them and exports the figures as Prometheus gauges.

mod probe;
pub mod report;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};

pub use probe::Probe;

use crate::KafkaError;
use crate::diagnosis::{Diagnosis, GroupHistory, diagnose};

/// What a [`Doctor`] watches and how often.
#[derive(Debug, Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct DoctorConfig {
    brokers: String,
    /// The groups to watch; empty: every group the brokers list.
    #[setters(generate)]
    groups: Vec<String>,
    /// Topics to read for every group beyond those its members own.
    #[setters(generate)]
    topics: Vec<String>,
    /// Time between observations (default 5 s).
    #[setters(generate)]
    interval: Duration,
    /// The sliding window the rules judge (default 5 minutes).
    #[setters(generate)]
    window: Duration,
    /// How long one request may take (default 10 s).
    #[setters(generate)]
    timeout: Duration,
}

impl DoctorConfig {
    /// Watches every group on `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            groups: Vec::new(),
            topics: Vec::new(),
            interval: Duration::from_secs(5),
            window: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }

    /// The brokers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Watches consumer groups and diagnoses them.
#[derive(derive_more::Debug, Clone)]
pub struct Doctor {
    config: Arc<DoctorConfig>,
    probe: Arc<Probe>,
    histories: Arc<Mutex<HashMap<String, GroupHistory>>>,
    latest: Arc<Mutex<Vec<Diagnosis>>>,
    #[debug(skip)]
    clock: SharedClock,
}

impl Doctor {
    /// Connects to the brokers (their metadata must answer within the timeout).
    pub async fn connect(config: DoctorConfig) -> Result<Self, KafkaError> {
        if config.interval.is_zero() || config.window < config.interval {
            return Err(KafkaError::Config(
                "the interval must be above zero and the window at least one interval".into(),
            ));
        }
        let (brokers, timeout) = (config.brokers.clone(), config.timeout);
        let probe = tokio::task::spawn_blocking(move || Probe::connect(&brokers, timeout))
            .await
            .map_err(|e| KafkaError::Runtime(format!("the probe thread failed: {e}")))??;
        Ok(Self {
            config: Arc::new(config),
            probe: Arc::new(probe),
            histories: Arc::default(),
            latest: Arc::default(),
            clock: Arc::new(SystemClock),
        })
    }

    /// Uses this clock for observation times.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DoctorConfig {
        &self.config
    }

    /// Observes every watched group once, records the observations and returns the
    /// diagnoses, worst first. A group named in the configuration that the brokers do not
    /// know is diagnosed as unknown rather than failing the round.
    pub async fn observe(&self) -> Result<Vec<Diagnosis>, KafkaError> {
        let result = self.observe_groups().await;
        metrics::gauge!("onephase_kafka_doctor_up", "brokers" => self.config.brokers.clone())
            .set(if result.is_ok() { 1.0 } else { 0.0 });
        result
    }

    async fn observe_groups(&self) -> Result<Vec<Diagnosis>, KafkaError> {
        let probe = Arc::clone(&self.probe);
        let config = Arc::clone(&self.config);
        let at_ms =
            i64::try_from(self.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let observations = tokio::task::spawn_blocking(move || {
            let groups = if config.groups.is_empty() {
                probe.groups()?
            } else {
                config.groups.clone()
            };
            groups
                .into_iter()
                .map(|g| {
                    let o = probe.observe(&g, &config.topics, at_ms)?;
                    Ok((g, o))
                })
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await
        .map_err(|e| KafkaError::Runtime(format!("the probe thread failed: {e}")))??;
        // One interval more than the window, so that a window of one interval holds two
        // observations that span it.
        let window_ms = i64::try_from((self.config.window + self.config.interval).as_millis())
            .unwrap_or(i64::MAX);
        let mut diagnoses = Vec::new();
        {
            let mut histories = self.histories.lock().unwrap_or_else(|e| e.into_inner());
            for (group, observation) in observations {
                let history = histories
                    .entry(group.clone())
                    .or_insert_with(|| GroupHistory::new(group, window_ms));
                history.record(observation);
                diagnoses.extend(diagnose(history));
            }
        }
        diagnoses.sort_by(|a, b| b.status.cmp(&a.status).then(a.group.cmp(&b.group)));
        export(&diagnoses);
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = diagnoses.clone();
        Ok(diagnoses)
    }

    /// The diagnoses of the last round, worst first.
    pub fn latest(&self) -> Vec<Diagnosis> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Observes every interval until `shutdown` completes. A failed round is logged and the
    /// next one tried; the last diagnoses stay readable meanwhile.
    pub async fn run(&self, shutdown: impl Future<Output = impl Sized>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.observe().await {
                tracing::warn!(%e, brokers = %self.config.brokers, "Kafka doctor round failed");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.clock.sleep(self.config.interval) => {}
            }
        }
    }
}

/// The status as a number for a gauge: 0 ok, 1 warn, 2 rewind, 3 stall, 4 stop.
fn code(status: crate::rules::Status) -> f64 {
    crate::rules::Status::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0) as f64
}

fn export(diagnoses: &[Diagnosis]) {
    for d in diagnoses {
        let group = d.group.clone();
        metrics::gauge!("onephase_kafka_group_status", "group" => group.clone())
            .set(code(d.status));
        metrics::gauge!("onephase_kafka_group_members", "group" => group.clone())
            .set(d.members.len() as f64);
        metrics::gauge!("onephase_kafka_group_rebalances", "group" => group.clone())
            .set(f64::from(d.rebalances));
        metrics::gauge!("onephase_kafka_group_lag", "group" => group.clone()).set(d.lag as f64);
        metrics::gauge!("onephase_kafka_group_lag_seconds", "group" => group.clone())
            .set(d.lag_seconds);
        for p in &d.partitions {
            let labels = [
                ("group", group.clone()),
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            metrics::gauge!("onephase_kafka_partition_lag", &labels).set(p.lag.unwrap_or(0) as f64);
            metrics::gauge!("onephase_kafka_partition_lag_seconds", &labels)
                .set(p.lag_seconds.unwrap_or(0.0));
            metrics::gauge!("onephase_kafka_partition_status", &labels).set(code(p.status));
        }
    }
}

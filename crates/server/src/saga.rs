//! Sagas inside `onephase serve`: an orchestrator over the server's store that runs the HTTP
//! definitions registered through `POST /v1/sagas`.

use std::time::Duration;

use onephase_saga::{Orchestrator, OrchestratorConfig};
use onephase_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::outbox::RelaySettings;

/// The configuration file's `[saga]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    /// Run the orchestrator in this server (default true). With several servers on one
    /// PostgreSQL store, each one's orchestrator takes a share of the runs.
    #[serde(default)]
    pub orchestrator: Option<bool>,
    /// Outbox topic for every run transition. Default: `onephase.saga` when an
    /// `[[outbox.relay]]` reads the server's own store (no `source`), so that the events are
    /// published; otherwise no events, since nothing would drain them. `""` turns them off.
    #[serde(default)]
    pub events_topic: Option<String>,
    /// Runs driven at once (default 64).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Seconds a claim outlives the longest call in flight (default 10): how long the runs of
    /// a server that died wait before another takes them.
    #[serde(default)]
    pub lease_margin_secs: Option<u64>,
    /// Milliseconds between looks for due runs (default 50 on SQLite, 500 on PostgreSQL).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
}

impl SagaSettings {
    /// The orchestrator configuration these settings describe, given the relays.
    pub fn orchestrator_config(&self, relays: &[RelaySettings]) -> OrchestratorConfig {
        let defaults = OrchestratorConfig::default();
        let drained = relays.iter().any(|r| r.source.is_none());
        let events_topic = match &self.events_topic {
            Some(t) if t.is_empty() => None,
            Some(t) => Some(t.clone()),
            None if drained => defaults.events_topic.clone(),
            None => None,
        };
        OrchestratorConfig {
            concurrency: self.concurrency.unwrap_or(defaults.concurrency).max(1),
            poll_interval: self.poll_interval_ms.map(Duration::from_millis),
            lease_margin: self
                .lease_margin_secs
                .map_or(defaults.lease_margin, Duration::from_secs),
            events_topic,
            stored_definitions: true,
        }
    }

    fn enabled(&self) -> bool {
        self.orchestrator.unwrap_or(true)
    }
}

/// The server's orchestrator.
#[derive(Debug, Clone)]
pub struct SagaService {
    orchestrator: Orchestrator,
    enabled: bool,
}

impl SagaService {
    /// The orchestrator over `store`.
    pub fn new(store: &Store, settings: &SagaSettings, relays: &[RelaySettings]) -> Self {
        let config = settings.orchestrator_config(relays);
        if config.events_topic.is_none() {
            tracing::info!(
                "saga transitions are not published: no [[outbox.relay]] reads the server's store (set saga.events_topic to force)"
            );
        }
        Self {
            orchestrator: Orchestrator::new(store.clone(), config),
            enabled: settings.enabled(),
        }
    }

    /// The orchestrator (also what starts runs and registers definitions).
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// Runs the orchestrator until `stop` turns true; it then records the outcomes of the
    /// calls in flight before the task ends.
    pub fn spawn(&self, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let orchestrator = self.orchestrator.clone();
        Some(tokio::spawn(async move {
            orchestrator
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }))
    }
}

//! Sagas inside `onephase serve`: an orchestrator over the server's store that runs the HTTP
//! definitions registered through `POST /v1/sagas`.

use std::time::Duration;

use onephase_saga::{Orchestrator, OrchestratorConfig, SagaSpec};
use onephase_webhook::destination::{AddressPolicy, DestinationError};

use crate::config::ConfigError;
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
    /// Networks participants may be in although they are internal (loopback, private,
    /// link-local), like `["10.0.0.0/8"]`. Empty by default: as for webhooks, a definition
    /// whose calls go to an internal address is refused, and calls never connect to one.
    #[serde(default)]
    pub allow_networks: Vec<String>,
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

    /// Where participants may be: public addresses plus `allow_networks`.
    pub fn policy(&self) -> Result<AddressPolicy, ConfigError> {
        self.allow_networks
            .iter()
            .try_fold(AddressPolicy::default(), |policy, network| {
                policy.allow(network).map_err(|e| ConfigError::Invalid {
                    key: "saga.allow_networks",
                    message: e.to_string(),
                })
            })
    }
}

/// The server's orchestrator.
#[derive(Debug, Clone)]
pub struct SagaService {
    orchestrator: Orchestrator,
    enabled: bool,
    policy: AddressPolicy,
}

impl SagaService {
    /// The orchestrator over `store`, its calls confined to the addresses `settings` allow.
    pub fn new(
        store: &Store,
        settings: &SagaSettings,
        relays: &[RelaySettings],
    ) -> Result<Self, ConfigError> {
        let config = settings.orchestrator_config(relays);
        if config.events_topic.is_none() {
            tracing::info!(
                "saga transitions are not published: no [[outbox.relay]] reads the server's store (set saga.events_topic to force)"
            );
        }
        let policy = settings.policy()?;
        let client = policy
            .client_builder()
            .build()
            .map_err(|e| ConfigError::Invalid {
                key: "saga",
                message: format!("the HTTP client for participants: {e}"),
            })?;
        Ok(Self {
            orchestrator: Orchestrator::new(store.clone(), config).with_http_client(client, {
                let policy = policy.clone();
                std::sync::Arc::new(move |ip| policy.permits(ip))
            }),
            enabled: settings.enabled(),
            policy,
        })
    }

    /// Refuses a definition whose calls go where participants may not be (the server's own
    /// host, private networks, the metadata service) unless `saga.allow_networks` admits it.
    /// A host that does not resolve yet is let through: its calls fail until it resolves, and
    /// never connect to a refused address.
    pub async fn check_destinations(&self, spec: &SagaSpec) -> Result<(), DestinationError> {
        for url in spec.destinations() {
            match self.policy.check(&url).await {
                Ok(()) | Err(DestinationError::Unresolvable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

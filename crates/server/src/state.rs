//! What every handler can reach: [`AppState`], made once by `serve` from the store, the
//! token registry, the configuration, the clock and the capability [`Services`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use onephase_core::SharedClock;
use onephase_store::Store;

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::dashboard::{
    LeasePanel, LimitPanel, OutboxPanel, Panel, SagaPanel, ServerPanel, WebhookPanel,
};
use crate::events::EventsService;
use crate::kafka::KafkaService;
use crate::lease::LeaseService;
use crate::limit::LimitService;
use crate::outbox::OutboxService;
use crate::partition::PartitionService;
use crate::replica::ReplicaService;
use crate::saga::SagaService;
use crate::webhook::WebhookService;

/// The capability services a server runs.
pub struct Services {
    /// The embedded log and the outbox relays.
    pub outbox: OutboxService,
    /// The saga orchestrator.
    pub saga: SagaService,
    /// Webhooks.
    pub webhook: WebhookService,
    /// Fenced leases.
    pub lease: LeaseService,
    /// The event store and its projections.
    pub events: EventsService,
    /// Rate limits.
    pub limit: LimitService,
    /// The replica clusters watched.
    pub replica: ReplicaService,
    /// The Kafka consumer groups watched.
    pub kafka: KafkaService,
    /// Partition maps and online moves.
    pub partition: PartitionService,
}

/// What every handler can reach: the store, the token registry, the clock, the dashboard's
/// panels. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

struct StateInner {
    store: Store,
    tokens: Tokens,
    config: ServerConfig,
    clock: SharedClock,
    started: Instant,
    panels: Vec<Arc<dyn Panel>>,
    history: crate::dashboard::history::History,
    lab: crate::dashboard::lab::LabRuns,
    outbox: OutboxService,
    saga: SagaService,
    webhook: WebhookService,
    lease: LeaseService,
    limit: LimitService,
    events: EventsService,
    replica: ReplicaService,
    kafka: KafkaService,
    partition: PartitionService,
}

impl AppState {
    /// State over an open, migrated `store`.
    pub fn new(
        store: Store,
        tokens: Tokens,
        config: ServerConfig,
        clock: SharedClock,
        services: Services,
    ) -> Self {
        let Services {
            outbox,
            saga,
            webhook,
            lease,
            limit,
            events,
            replica,
            kafka,
            partition,
        } = services;
        let started = clock.monotonic();
        Self(Arc::new(StateInner {
            store,
            tokens,
            config,
            clock,
            started,
            panels: vec![
                Arc::new(ServerPanel),
                Arc::new(OutboxPanel),
                Arc::new(SagaPanel),
                Arc::new(WebhookPanel),
                Arc::new(LeasePanel),
                Arc::new(LimitPanel),
                Arc::new(crate::dashboard::events::EventsPanel),
                Arc::new(crate::dashboard::replica::ReplicaPanel),
                Arc::new(crate::dashboard::kafka::KafkaPanel),
                Arc::new(crate::dashboard::partition::PartitionPanel),
            ],
            history: crate::dashboard::history::History::default(),
            lab: crate::dashboard::lab::LabRuns::default(),
            outbox,
            saga,
            webhook,
            lease,
            limit,
            events,
            replica,
            kafka,
            partition,
        }))
    }

    /// The last hour, sampled, for the dashboard's charts.
    pub fn history(&self) -> &crate::dashboard::history::History {
        &self.0.history
    }

    /// The failure lab's last run in this server.
    pub fn lab(&self) -> &crate::dashboard::lab::LabRuns {
        &self.0.lab
    }

    /// The embedded log and the configured outbox relays.
    pub fn outbox(&self) -> &OutboxService {
        &self.0.outbox
    }

    /// The saga orchestrator.
    pub fn saga(&self) -> &SagaService {
        &self.0.saga
    }

    /// Webhook endpoints, sending and the dispatcher.
    pub fn webhook(&self) -> &WebhookService {
        &self.0.webhook
    }

    /// Fenced leases.
    pub fn lease(&self) -> &LeaseService {
        &self.0.lease
    }

    /// Rate limits.
    pub fn limit(&self) -> &LimitService {
        &self.0.limit
    }

    /// The event store and its projections.
    pub fn events(&self) -> &EventsService {
        &self.0.events
    }

    /// The replica clusters watched.
    pub fn replica(&self) -> &ReplicaService {
        &self.0.replica
    }

    /// The Kafka consumer groups watched.
    pub fn kafka(&self) -> &KafkaService {
        &self.0.kafka
    }

    /// Partition maps and online moves.
    pub fn partition(&self) -> &PartitionService {
        &self.0.partition
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The token registry.
    pub fn tokens(&self) -> &Tokens {
        &self.0.tokens
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// The clock handlers read time from.
    pub fn clock(&self) -> &SharedClock {
        &self.0.clock
    }

    /// How long this server has been up.
    pub fn uptime(&self) -> Duration {
        self.0
            .clock
            .monotonic()
            .saturating_duration_since(self.0.started)
    }

    /// The dashboard's panels, in display order.
    pub fn panels(&self) -> &[Arc<dyn Panel>] {
        &self.0.panels
    }
}

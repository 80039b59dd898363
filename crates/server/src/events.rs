//! The event store the server offers: streams over HTTP, and the document projections every
//! server of a fleet runs.

use onephase_events::{EventStore, Projections, Projector};
use onephase_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The server's event store and its projections.
#[derive(Debug, Clone)]
pub struct EventsService {
    events: EventStore,
    projections: Projections,
}

impl EventsService {
    /// Events in `store`.
    pub fn new(store: &Store) -> Self {
        let events = EventStore::new(store.clone());
        Self {
            projections: Projections::new(events.clone()),
            events,
        }
    }

    /// The event store.
    pub fn events(&self) -> &EventStore {
        &self.events
    }

    /// Its projections.
    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Runs the document projections defined in the store until `stop` turns true.
    pub fn spawn(&self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let projector = Projector::new(self.events.clone()).with_documents();
        tokio::spawn(async move {
            projector
                .run(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
        })
    }
}

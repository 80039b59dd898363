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

    /// Runs the document projections defined in the store, and refreshes the head and lag
    /// gauges every five seconds, until `stop` turns true.
    pub fn spawn(&self, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let projector = Projector::new(self.events.clone()).with_documents();
        let (events, projections) = (self.events.clone(), self.projections.clone());
        let mut stopped = stop.clone();
        let gauges = async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
                // `list` sets the lag gauges as it computes them.
                if let (Ok(head), Ok(_)) = (events.head().await, projections.list().await) {
                    metrics::gauge!("onephase_events_head").set(head as f64);
                }
            }
        };
        let mut stop = stop;
        tokio::spawn(async move {
            let run = projector.run(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            });
            tokio::join!(run, gauges);
        })
    }
}

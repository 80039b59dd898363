//! What both outbox benchmarks share.

use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_broker::{BrokerError, Publisher};
use onephase_core::Envelope;

/// Errors of a benchmark run.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Accepts everything at once: what is left to measure is the database work.
#[derive(Clone)]
pub struct NoBroker;

impl Publisher for NoBroker {
    fn transport(&self) -> &'static str {
        "none"
    }
    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move { vec![Ok(()); batch.len()] }.boxed()
    }
}

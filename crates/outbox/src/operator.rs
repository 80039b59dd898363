use std::sync::Arc;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};
use onephase_store::Store;
use uuid::Uuid;

use crate::OutboxError;
use crate::sql::{DeadRow, OutboxStatus, Sql};

/// Operator actions on an outbox: status, dead letters, retries.
#[derive(Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct OutboxAdmin {
    store: Store,
    /// Measures the oldest pending row's age on `clock` (SQLite; PostgreSQL uses its own).
    #[setters(generate)]
    clock: SharedClock,
}

impl OutboxAdmin {
    /// The outbox in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Pending and dead-lettered counts and the age of the oldest pending row.
    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        Ok(Sql::new(&self.store).status(self.clock.now()).await?)
    }

    /// Dead-lettered rows after `after_seq`, oldest first, at most `limit`.
    pub async fn dead(&self, after_seq: i64, limit: u32) -> Result<Vec<DeadRow>, OutboxError> {
        Ok(Sql::new(&self.store).dead(after_seq, limit).await?)
    }

    /// Returns the dead-lettered row `id` to pending, with a fresh attempt count.
    pub async fn retry(&self, id: Uuid) -> Result<(), OutboxError> {
        match Sql::new(&self.store).retry(Some(&[id])).await? {
            0 => Err(OutboxError::NotDead(id)),
            _ => Ok(()),
        }
    }

    /// Returns every dead-lettered row to pending; returns how many.
    pub async fn retry_all(&self) -> Result<u64, OutboxError> {
        Ok(Sql::new(&self.store).retry(None).await?)
    }

    /// Deletes the dead-lettered row `id` for good, releasing the later rows of its key.
    pub async fn discard(&self, id: Uuid) -> Result<(), OutboxError> {
        match Sql::new(&self.store).discard(&[id]).await? {
            0 => Err(OutboxError::NotDead(id)),
            _ => Ok(()),
        }
    }
}

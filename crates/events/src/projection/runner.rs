//! The projector: catches each projection's generations up with the events, parks them on a
//! poison event, and switches a caught-up rebuild live.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};

use onephase_store::worker::{Pace, Wake, WorkerLoop};
use onephase_store::{Db, on_store};
use tokio::sync::Notify;

use super::document::{DocumentDefinition, DocumentProjection};
use super::{Projection, ProjectionTx, Tx};
use crate::sql::{position, stored};
use crate::{EventStore, EventsError};

static PROGRESSED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Resolves when a projector in this process has moved a checkpoint.
pub(crate) fn progressed() -> tokio::sync::futures::Notified<'static> {
    PROGRESSED.notified()
}

/// Runs `body` with `c` bound to a [`ProjectionTx`]'s connection.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx.connection() {
            onephase_store::Conn::Postgres($c) => $body,
            onephase_store::Conn::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_tx;

/// A generation of a projection, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TrackRow {
    pub generation: i64,
    pub role: String,
    pub position: i64,
    pub parked_position: Option<i64>,
}

/// Keeps projections up to date; see the [module documentation](super).
///
/// Several projectors (in several processes) may run the same projections: each batch locks
/// its checkpoint row, so a batch is applied by one of them, once.
#[derive(Clone, derive_more::Debug)]
pub struct Projector {
    events: EventStore,
    #[debug("{} projections", projections.len())]
    projections: Vec<Arc<dyn Projection>>,
    documents: bool,
    batch: u32,
}

impl Projector {
    /// A projector over `events` with no projections yet, applying batches of 500 events.
    pub fn new(events: EventStore) -> Self {
        Self {
            events,
            projections: Vec::new(),
            documents: false,
            batch: 500,
        }
    }

    /// Also runs `projection`.
    pub fn with(mut self, projection: impl Projection) -> Self {
        self.projections.push(Arc::new(projection));
        self
    }

    /// Also runs the document projections defined in the store
    /// ([`Projections::define`](super::Projections::define)), as the server does.
    pub fn with_documents(mut self) -> Self {
        self.documents = true;
        self
    }

    /// Applies at most `events` per transaction (at least 1).
    pub fn with_batch(mut self, events: u32) -> Self {
        self.batch = events.max(1);
        self
    }

    /// Registers the projections (a live generation at position 0 for a new one).
    pub async fn register(&self) -> Result<(), EventsError> {
        for p in &self.projections {
            crate::event::check_name("projection", p.name())?;
            register(&self.events, p.name()).await?;
        }
        Ok(())
    }

    /// One round: a batch for each generation of each projection that is not parked, and the
    /// switch of any rebuild that has caught up. `true` if some batch was full (more waits).
    pub async fn run_once(&self) -> Result<bool, EventsError> {
        let mut projections = self.projections.clone();
        if self.documents {
            projections.extend(self.documents().await?);
        }
        let mut more = false;
        for p in &projections {
            let before = tracks(&self.events, p.name()).await?;
            for track in before.iter().filter(|t| t.parked_position.is_none()) {
                more |= self
                    .apply_batch(p.as_ref(), position(track.generation)?)
                    .await?;
            }
            if before.iter().any(|t| t.role == "building") {
                // As they are after this round's batches: a rebuild that just caught up
                // switches now, not a poll interval later.
                let after = tracks(&self.events, p.name()).await?;
                self.switch_if_caught_up(p.as_ref(), &after).await?;
            }
        }
        Ok(more)
    }

    /// Runs rounds until `shutdown` resolves: at once while batches are full, on an append in
    /// this process, on `NOTIFY` from another (PostgreSQL), or every poll interval.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if let Err(e) = self.register().await {
            tracing::error!(error = %e, "projections could not be registered; the projector stops");
            return;
        }
        let mut worker = WorkerLoop::new(self.events.store(), self.events.clock.clone())
            .listen_on("onephase_events");
        worker.start().await;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let pace = match self.run_once().await {
                Ok(true) => Pace::Now,
                Ok(false) => {
                    worker.succeeded();
                    Pace::Poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "projector round failed; retrying");
                    Pace::After(worker.failed())
                }
            };
            let signal = crate::store::appended_here();
            let wake = worker
                .wait(
                    pace,
                    signal,
                    std::future::pending::<()>(),
                    shutdown.as_mut(),
                )
                .await;
            if matches!(wake, Wake::Stop) {
                break;
            }
        }
    }

    async fn documents(&self) -> Result<Vec<Arc<dyn Projection>>, EventsError> {
        let rows: Vec<(String, i64, String)> = on_store!(read self.events.store().db(), pool => {
            sqlx::query_as("SELECT name, generation, definition FROM onephase_events_definitions")
                .fetch_all(pool)
                .await?
        });
        let mut by_name: BTreeMap<String, BTreeMap<u64, DocumentDefinition>> = BTreeMap::new();
        for (name, generation, definition) in rows {
            let definition = serde_json::from_str(&definition)
                .map_err(|e| EventsError::corrupt(format!("definition of {name}"), e))?;
            by_name
                .entry(name)
                .or_default()
                .insert(position(generation)?, definition);
        }
        Ok(by_name
            .into_iter()
            .map(|(name, definitions)| {
                Arc::new(DocumentProjection::new(name, definitions)) as Arc<dyn Projection>
            })
            .collect())
    }

    /// Applies the next batch of one generation; parks it at the first event that fails.
    async fn apply_batch(&self, p: &dyn Projection, generation: u64) -> Result<bool, EventsError> {
        let mut tx = begin(&self.events, generation).await?;
        let Some(from) = lock_track(&mut tx, p.name(), generation).await? else {
            return Ok(false);
        };
        let rows = self.events.rows_after(from, self.batch, None).await?;
        let Some(last) = rows.last() else {
            return Ok(false);
        };
        let full = rows.len() == self.batch as usize;
        let (last_position, last_ms) = (position(last.position)?, last.recorded_ms);
        let positions: Vec<u64> = rows
            .iter()
            .map(|r| position(r.position))
            .collect::<Result<_, _>>()?;
        let events = self.events.decode_each(rows).await?;
        let mut failure = None;
        for (i, event) in events.iter().enumerate() {
            let outcome = match event {
                Ok(event) => {
                    tx.position = event.position;
                    p.apply(&mut tx, event).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = outcome {
                failure = Some((i, error));
                break;
            }
        }
        let Some((failed, error)) = failure else {
            flush(p, &mut tx).await?;
            checkpoint(
                &mut tx,
                p.name(),
                generation,
                last_position,
                Some(last_ms),
                None,
            )
            .await?;
            commit(tx).await?;
            progressed_to(p.name(), generation, last_position);
            return Ok(full);
        };
        // Undo the batch, then apply what came before the poison event and park at it.
        rollback(tx).await?;
        let mut tx = begin(&self.events, generation).await?;
        if lock_track(&mut tx, p.name(), generation).await? != Some(from) {
            return Ok(true); // someone else moved it meanwhile
        }
        for event in events[..failed].iter().flatten() {
            tx.position = event.position;
            if let Err(e) = p.apply(&mut tx, event).await {
                return Err(EventsError::ProjectionState {
                    projection: p.name().to_owned(),
                    message: format!(
                        "event at position {} failed on the second pass only ({e}): the \
                         projection is not deterministic",
                        event.position
                    ),
                });
            }
        }
        flush(p, &mut tx).await?;
        let done = failed.checked_sub(1).map_or(from, |i| positions[i]);
        let at = positions[failed];
        let parked = Some((at, error.as_str(), self.events.now_ms()));
        checkpoint(&mut tx, p.name(), generation, done, None, parked).await?;
        commit(tx).await?;
        tracing::warn!(projection = p.name(), generation, position = at, error = %error,
            "projection parked on an event it cannot apply");
        metrics::counter!("onephase_events_projection_parked_total", "projection" => p.name().to_owned())
            .increment(1);
        progressed_to(p.name(), generation, done);
        Ok(false)
    }

    /// Makes a rebuild live once it has applied as much as the live generation, and drops the
    /// old generation, in one transaction.
    async fn switch_if_caught_up(
        &self,
        p: &dyn Projection,
        tracks: &[TrackRow],
    ) -> Result<(), EventsError> {
        let (Some(live), Some(building)) = (
            tracks.iter().find(|t| t.role == "live"),
            tracks.iter().find(|t| t.role == "building"),
        ) else {
            return Ok(());
        };
        if building.parked_position.is_some() || building.position < live.position {
            return Ok(());
        }
        let (old, new) = (position(live.generation)?, position(building.generation)?);
        let mut tx = begin(&self.events, old).await?;
        // The live one may be parked: a rebuild past its poison event is how it recovers.
        let (Some(old_at), Some(new_at)) = (
            lock_generation(&mut tx, p.name(), old, true).await?,
            lock_generation(&mut tx, p.name(), new, false).await?,
        ) else {
            return Ok(());
        };
        if new_at < old_at {
            return Ok(());
        }
        let now = self.events.now_ms();
        on_tx!(tx, c => {
            sqlx::query("DELETE FROM onephase_events_projections WHERE name = $1 AND generation = $2")
                .bind(p.name()).bind(stored(old)?).execute(&mut *c).await?;
            sqlx::query("UPDATE onephase_events_projections SET role = 'live', updated_ms = $3 WHERE name = $1 AND generation = $2")
                .bind(p.name()).bind(stored(new)?).bind(now).execute(&mut *c).await?;
            sqlx::query("DELETE FROM onephase_events_lineage WHERE projection = $1 AND generation = $2")
                .bind(p.name()).bind(stored(old)?).execute(&mut *c).await?;
            // The definition the new generation was built with is the latest at or below it
            // (a plain rebuild has none of its own): keep that one, drop the older.
            sqlx::query(
                "DELETE FROM onephase_events_definitions WHERE name = $1 AND generation < \
                 (SELECT MAX(generation) FROM onephase_events_definitions WHERE name = $1 AND generation <= $2)",
            )
            .bind(p.name()).bind(stored(new)?).execute(&mut *c).await?;
            sqlx::query("INSERT INTO onephase_events_audit (projection, action, position, actor, reason, at_ms) VALUES ($1, 'switch', $2, 'projector', $3, $4)")
                .bind(p.name()).bind(stored(new_at)?)
                .bind(format!("generation {new} caught up at position {new_at} and replaced generation {old}"))
                .bind(now).execute(c).await?;
        });
        tx.generation = old;
        if let Err(e) = p.drop_generation(&mut tx, old).await {
            return Err(EventsError::ProjectionState {
                projection: p.name().to_owned(),
                message: format!("dropping generation {old} failed: {e}"),
            });
        }
        commit(tx).await?;
        tracing::info!(
            projection = p.name(),
            old,
            new,
            position = new_at,
            "rebuild switched live"
        );
        PROGRESSED.notify_waiters();
        Ok(())
    }
}

/// The projection's [`flush`](Projection::flush); a failure fails the batch (it is retried).
async fn flush(p: &dyn Projection, tx: &mut ProjectionTx) -> Result<(), EventsError> {
    p.flush(tx).await.map_err(|e| EventsError::ProjectionState {
        projection: p.name().to_owned(),
        message: format!("writing the batch's rows failed: {e}"),
    })
}

fn progressed_to(name: &str, generation: u64, at: u64) {
    metrics::gauge!("onephase_events_projection_position", "projection" => name.to_owned(),
        "generation" => generation.to_string())
    .set(at as f64);
    PROGRESSED.notify_waiters();
}

/// Creates the live generation of a projection that has none.
pub(crate) async fn register(events: &EventStore, name: &str) -> Result<(), EventsError> {
    let now = events.now_ms();
    on_store!(events.store().db(), pool => {
        sqlx::query(
            "INSERT INTO onephase_events_projections (name, generation, role, position, started_ms, updated_ms) \
             SELECT $1, 1, 'live', 0, $2, $2 WHERE NOT EXISTS \
             (SELECT 1 FROM onephase_events_projections WHERE name = $1) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub(crate) async fn tracks(events: &EventStore, name: &str) -> Result<Vec<TrackRow>, EventsError> {
    Ok(on_store!(read events.store().db(), pool => {
        sqlx::query_as(
            "SELECT generation, role, position, parked_position FROM onephase_events_projections \
             WHERE name = $1 ORDER BY generation",
        )
        .bind(name)
        .fetch_all(pool)
        .await?
    }))
}

pub(crate) async fn begin(
    events: &EventStore,
    generation: u64,
) -> Result<ProjectionTx, EventsError> {
    let tx = match events.store().db() {
        Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        Db::Sqlite(lite) => Tx::Sqlite(lite.writer().begin().await?),
    };
    Ok(ProjectionTx {
        tx,
        generation,
        position: 0,
        touched: Vec::new(),
        documents: std::collections::HashMap::new(),
    })
}

pub(crate) async fn commit(tx: ProjectionTx) -> Result<(), EventsError> {
    match tx.tx {
        Tx::Postgres(t) => t.commit().await?,
        Tx::Sqlite(t) => t.commit().await?,
    }
    Ok(())
}

async fn rollback(tx: ProjectionTx) -> Result<(), EventsError> {
    match tx.tx {
        Tx::Postgres(t) => t.rollback().await?,
        Tx::Sqlite(t) => t.rollback().await?,
    }
    Ok(())
}

/// Locks a generation's checkpoint for this transaction and returns it; `None` if the
/// generation is gone (switched out) or parked.
pub(crate) async fn lock_track(
    tx: &mut ProjectionTx,
    name: &str,
    generation: u64,
) -> Result<Option<u64>, EventsError> {
    lock_generation(tx, name, generation, false).await
}

/// [`lock_track`], also of a parked generation if `even_parked`.
async fn lock_generation(
    tx: &mut ProjectionTx,
    name: &str,
    generation: u64,
    even_parked: bool,
) -> Result<Option<u64>, EventsError> {
    let at: Option<i64> = on_tx!(tx, c => {
        sqlx::query_scalar(
            "UPDATE onephase_events_projections SET updated_ms = updated_ms \
             WHERE name = $1 AND generation = $2 AND ($3 OR parked_position IS NULL) \
             RETURNING position",
        )
        .bind(name)
        .bind(stored(generation)?)
        .bind(even_parked)
        .fetch_optional(c)
        .await?
    });
    at.map(position).transpose()
}

/// Writes the lineage recorded in `tx` and moves the checkpoint to `at`; parks it if `parked`.
async fn checkpoint(
    tx: &mut ProjectionTx,
    name: &str,
    generation: u64,
    at: u64,
    last_ms: Option<i64>,
    parked: Option<(u64, &str, i64)>,
) -> Result<(), EventsError> {
    let touched = std::mem::take(&mut tx.touched);
    for chunk in touched.chunks(1000) {
        on_tx!(tx, c => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO onephase_events_lineage (projection, generation, row_key, position) ",
            );
            q.push_values(chunk, |mut b, (key, at)| {
                b.push_bind(name)
                    .push_bind(generation as i64)
                    .push_bind(key)
                    .push_bind(*at as i64);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(c).await?;
        });
    }
    let (parked_at, parked_error, parked_ms) = match parked {
        Some((at, error, ms)) => (Some(stored(at)?), Some(error), Some(ms)),
        None => (None, None, None),
    };
    let now = parked_ms.unwrap_or(0);
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE onephase_events_projections SET position = $3, \
             last_event_ms = COALESCE($4, last_event_ms), parked_position = $5, parked_error = $6, \
             parked_ms = $7, updated_ms = CASE WHEN $8 > 0 THEN $8 ELSE updated_ms END \
             WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(stored(generation)?)
        .bind(stored(at)?)
        .bind(last_ms)
        .bind(parked_at)
        .bind(parked_error)
        .bind(parked_ms)
        .bind(now)
        .execute(c)
        .await?;
    });
    Ok(())
}

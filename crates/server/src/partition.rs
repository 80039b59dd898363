//! Partition maps and online moves in the server: the `[partition]` settings (the shards),
//! the maps in the store, and the move saga that the orchestrator drives across crashes.
//!
//! A move is a saga run (`onephase.partition.move`): prepare (compensated by the rollback),
//! backfill, verify, then the cutover as the pivot and the clean-up as a retriable step. Each
//! step is a phase of [`Mover`], idempotent and resumed from the checkpoints the source
//! shard keeps, so a server killed in any phase is replaced by the next claim of the run, on
//! this server after a restart or on another one with the same shards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use onephase_core::{Backoff, Jitter, SharedClock};
use onephase_partition::online::{MoveError, MoveSpec, MoveStatus, Mover};
use onephase_partition::store::{StoreMapStore, StoreMaps};
use onephase_saga::{Call, Definition, Saga, StepError, step};
use onephase_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::ConfigError;

/// The saga that drives moves.
pub const MOVE_SAGA: &str = "onephase.partition.move";

/// The `[partition]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    /// The shards moves may read and write, by name (the owner names of maps):
    /// PostgreSQL URLs.
    #[serde(default)]
    pub shards: BTreeMap<String, String>,
}

impl PartitionSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, url) in &self.shards {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "partition.shards",
                    message: format!("{name:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
                });
            }
            url.parse::<PgConnectOptions>()
                .map_err(|e| ConfigError::Invalid {
                    key: "partition.shards",
                    message: format!("{name}: {e} (a shard is a postgres:// URL)"),
                })?;
        }
        Ok(())
    }
}

/// Maps, shards and moves.
#[derive(Clone)]
pub struct PartitionService {
    maps: StoreMaps,
    shards: Arc<BTreeMap<String, PgPool>>,
    clock: SharedClock,
}

impl PartitionService {
    /// The service over `store`, with lazy pools to the configured shards (the server starts
    /// while a shard is down; a move to it fails with the shard named).
    pub fn new(
        store: &Store,
        settings: &PartitionSettings,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        let mut shards = BTreeMap::new();
        for (name, url) in &settings.shards {
            let options = url
                .parse::<PgConnectOptions>()
                .map_err(|e| ConfigError::Invalid {
                    key: "partition.shards",
                    message: format!("{name}: {e}"),
                })?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options);
            shards.insert(name.clone(), pool);
        }
        Ok(Self {
            maps: StoreMaps::new(store.clone()),
            shards: Arc::new(shards),
            clock,
        })
    }

    /// The maps.
    pub fn maps(&self) -> &StoreMaps {
        &self.maps
    }

    /// The configured shards' names.
    pub fn shard_names(&self) -> Vec<String> {
        self.shards.keys().cloned().collect()
    }

    /// The pool of shard `name`.
    pub fn shard(&self, name: &str) -> Result<&PgPool, MoveError> {
        self.shards.get(name).ok_or_else(|| {
            MoveError::Invalid(format!(
                "no shard {name:?} is configured; the shards are {:?} ([partition.shards])",
                self.shard_names()
            ))
        })
    }

    /// A mover for `spec` over the configured shards.
    pub async fn mover(&self, spec: MoveSpec) -> Result<Mover, MoveError> {
        let source = self.shard(&spec.source)?.clone();
        let target = self.shard(&spec.target)?.clone();
        let maps = Arc::new(StoreMapStore::new(self.maps.clone(), self.clock.clone()));
        Ok(Mover::new(spec, source, target, maps)
            .await?
            .with_clock(self.clock.clone()))
    }

    /// A move's progress, from its source shard.
    pub async fn status(&self, spec: &MoveSpec) -> Result<MoveStatus, MoveError> {
        onephase_partition::online::status(self.shard(&spec.source)?, spec.id).await
    }

    /// Keeps the partition gauges current (every 2 s) until `stop` turns true.
    pub fn spawn(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                service.gauges().await;
                tokio::select! {
                    () = service.clock.sleep(Duration::from_secs(2)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// Sets the map-version and move gauges from the store and the source shards.
    async fn gauges(&self) {
        if let Ok(maps) = self.maps.list().await {
            for map in maps {
                metrics::gauge!("onephase_partition_map_version", "map" => map.name.clone())
                    .set(map.version as f64);
            }
        }
        let Ok(moves) = self.maps.moves(None, 100).await else {
            return;
        };
        let mut active = 0;
        for m in moves.iter().filter(|m| !m.ended) {
            active += 1;
            let labels = [
                ("map", m.spec.map.clone()),
                ("partition", m.spec.partition.to_string()),
            ];
            if let Ok(status) = self.status(&m.spec).await {
                metrics::gauge!("onephase_partition_move_rows_copied", &labels)
                    .set(status.copied_rows as f64);
                metrics::gauge!("onephase_partition_move_catch_up_lag", &labels)
                    .set(status.catch_up_lag as f64);
                if let Some(pause) = status.pause_ms {
                    metrics::gauge!("onephase_partition_move_pause_ms", &labels).set(pause as f64);
                }
            }
        }
        metrics::gauge!("onephase_partition_moves_active").set(f64::from(active));
    }

    /// The move saga, whose steps run the phases of this service's movers.
    pub fn saga(&self) -> Result<Definition, onephase_saga::DefinitionError> {
        let quick = || {
            Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Jitter::Full,
            )
            .expect("200 ms doubling to 5 s is a valid backoff")
        };
        Saga::builder(MOVE_SAGA, 1)
            .step(
                step::compensatable(
                    "prepare",
                    self.phase(Phase::Prepare),
                    self.phase(Phase::RollBack),
                )
                .timeout(Duration::from_secs(60))
                .max_attempts(Some(20))
                .backoff(quick()),
            )
            .step(
                // A long backfill outlives one attempt's timeout: the next attempt resumes at
                // the last chunk copied.
                step::compensatable("backfill", self.phase(Phase::Backfill), noop)
                    .timeout(Duration::from_secs(20))
                    .max_attempts(Some(10_000))
                    .backoff(quick()),
            )
            .step(
                step::compensatable("verify", self.phase(Phase::Verify), noop)
                    .timeout(Duration::from_secs(60))
                    .max_attempts(Some(100))
                    .backoff(quick()),
            )
            .pivot(
                // Short: if the server dies while the range is fenced, writes to it are
                // refused until this timeout and the lease margin lapse and the step resumes.
                step::pivot("cut_over", self.phase(Phase::CutOver))
                    .timeout(Duration::from_secs(15))
                    .max_attempts(Some(20))
                    .backoff(quick()),
            )
            .retriable(
                step::retriable("clean_up", self.phase(Phase::CleanUp))
                    .timeout(Duration::from_secs(60))
                    .backoff(quick()),
            )
            .build()
    }

    fn phase(
        &self,
        phase: Phase,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Value, StepError>>
    + Send
    + Sync
    + 'static {
        let service = self.clone();
        move |call: Call| {
            let service = service.clone();
            Box::pin(async move {
                let spec: MoveSpec = serde_json::from_value(call.input["spec"].clone())
                    .map_err(|e| StepError::fail(format!("the run's input is not a move: {e}")))?;
                let id = spec.id;
                let mover = service.mover(spec).await.map_err(step_error)?;
                match phase {
                    Phase::Prepare => mover.prepare().await,
                    Phase::Backfill => mover.backfill().await,
                    Phase::Verify => mover.catch_up_and_verify().await,
                    Phase::CutOver => mover.cut_over().await,
                    Phase::CleanUp => mover.clean_up().await,
                    Phase::RollBack => mover.roll_back().await,
                }
                .map_err(step_error)?;
                if matches!(phase, Phase::CleanUp | Phase::RollBack) {
                    service
                        .maps
                        .end_move(id)
                        .await
                        .map_err(|e| StepError::retry(e.to_string()))?;
                }
                let status = mover.status().await.map_err(step_error)?;
                Ok(json!({ "phase": status.phase, "copied_rows": status.copied_rows }))
            })
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Prepare,
    Backfill,
    Verify,
    CutOver,
    CleanUp,
    RollBack,
}

async fn noop(_: Call) -> Result<Value, StepError> {
    Ok(Value::Null)
}

/// A refusal fails the step (the saga then rolls the move back); anything a retry may cure
/// (a shard that does not answer) is retried.
fn step_error(e: MoveError) -> StepError {
    match e {
        MoveError::Shard { .. } | MoveError::MapStore(_) => StepError::retry(e.to_string()),
        other => StepError::fail(other.to_string()),
    }
}

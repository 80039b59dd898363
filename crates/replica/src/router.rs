//! The router: one primary, its replicas, what the monitor last saw of them.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use onephase_core::{SharedClock, SystemClock};
use onephase_herd::RetryBudget;
use sqlx::PgPool;

use crate::error::ReplicaError;
use crate::health::{Health, PrimaryHistory, ReplicaSample, State, Thresholds};
use crate::token::{Lsn, Token};

/// How a [`Router`] watches and routes. Every field has a default.
#[derive(Debug, Clone, derive_setters::Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct RouterConfig {
    /// How often the heartbeat is written on the primary (default 1 s).
    #[setters(generate)]
    pub heartbeat_interval: Duration,
    /// How often the primary and every replica are read (default 250 ms). A replica's
    /// staleness is known to within this.
    #[setters(generate)]
    pub poll_interval: Duration,
    /// When a replica leaves and rejoins rotation.
    #[setters(generate)]
    pub thresholds: Thresholds,
    /// Share of replica-eligible reads that may go to the primary when no replica can serve
    /// them (default 0.2), over a ten-second window ...
    #[setters(generate)]
    pub fallback_ratio: f64,
    /// ... plus this many per second whatever the traffic (default 20).
    #[setters(generate)]
    pub fallback_floor_per_sec: u32,
    /// Whether this router writes the heartbeat (default true). Turn it off where another
    /// monitor of the cluster writes it, or the role may not create tables.
    #[setters(generate)]
    pub heartbeat: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            thresholds: Thresholds::default(),
            fallback_ratio: 0.2,
            fallback_floor_per_sec: 20,
            heartbeat: true,
        }
    }
}

/// One replica: its name and pool.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) pool: PgPool,
}

/// What the monitor knows of one replica.
#[derive(Debug, Default)]
pub(crate) struct ReplicaView {
    pub(crate) health: Health,
    pub(crate) last: Option<ReplicaSample>,
    pub(crate) staleness: Option<Duration>,
    /// The highest replay position seen, by a poll or a routed read's own check.
    pub(crate) replay: Lsn,
    pub(crate) lag_bytes: Option<u64>,
    pub(crate) error: Option<String>,
}

/// What the monitor knows of the cluster.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) system: Option<u64>,
    pub(crate) history: PrimaryHistory,
    pub(crate) primary_error: Option<String>,
    pub(crate) replicas: Vec<ReplicaView>,
}

#[derive(derive_more::Debug)]
pub(crate) struct Inner {
    pub(crate) cluster: String,
    pub(crate) primary: PgPool,
    pub(crate) replicas: Vec<Replica>,
    pub(crate) config: RouterConfig,
    #[debug(skip)]
    pub(crate) clock: SharedClock,
    pub(crate) budget: RetryBudget,
    pub(crate) view: RwLock<View>,
    pub(crate) next: AtomicUsize,
}

/// Reads routed over a PostgreSQL primary and its streaming replicas. See the
/// [crate docs](crate). Cheap to clone; configure before cloning.
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

/// A replica as the monitor last saw it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaStatus {
    /// Its name.
    pub name: String,
    /// Its state; only `healthy` replicas take reads.
    pub state: State,
    /// Whether reads go to it.
    pub in_rotation: bool,
    /// How stale it was at most at the last poll, in seconds (measured on the primary's
    /// clock); absent when not known.
    pub lag_seconds: Option<f64>,
    /// WAL bytes it has still to replay, at the last poll.
    pub lag_bytes: Option<u64>,
    /// Its replay position (PostgreSQL's text, `16/B374D848`).
    pub replay_position: Option<String>,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
}

/// The cluster as the monitor last saw it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The primary's WAL insert position at the last poll.
    pub primary_position: Option<String>,
    /// The primary's timeline.
    pub timeline: Option<u32>,
    /// Why the last poll of the primary failed, if it did.
    pub primary_error: Option<String>,
    /// A token at the primary's last polled position: what a reader that waits for it sees.
    pub token: Option<String>,
    /// The replicas.
    pub replicas: Vec<ReplicaStatus>,
}

impl Router {
    /// A router for cluster `cluster` over `primary` and `replicas` (name, pool). Nothing is
    /// read until [`Router::poll`] or [`Router::run`]: until the first poll, every read goes to
    /// the primary.
    pub fn new(
        cluster: impl Into<String>,
        primary: PgPool,
        replicas: impl IntoIterator<Item = (String, PgPool)>,
    ) -> Self {
        Self::build(
            cluster.into(),
            primary,
            replicas
                .into_iter()
                .map(|(name, pool)| Replica { name, pool })
                .collect(),
            RouterConfig::default(),
            Arc::new(SystemClock),
        )
    }

    fn build(
        cluster: String,
        primary: PgPool,
        replicas: Vec<Replica>,
        config: RouterConfig,
        clock: SharedClock,
    ) -> Self {
        let ratio = config.fallback_ratio.clamp(0.0, 1000.0);
        let budget = RetryBudget::new(
            Duration::from_secs(10),
            config.fallback_floor_per_sec,
            ratio,
        )
        .or_else(|_| RetryBudget::new(Duration::from_secs(10), 20, 0.2))
        .unwrap_or_else(|_| unreachable!("the default fallback budget is valid"))
        .with_clock(clock.clone());
        let view = View {
            system: None,
            history: PrimaryHistory::new(Duration::from_secs(600)),
            primary_error: None,
            replicas: replicas.iter().map(|_| ReplicaView::default()).collect(),
        };
        Self {
            inner: Arc::new(Inner {
                cluster,
                primary,
                replicas,
                config,
                clock,
                budget,
                view: RwLock::new(view),
                next: AtomicUsize::new(0),
            }),
        }
    }

    fn rebuild(self, change: impl FnOnce(&mut RouterConfig, &mut SharedClock)) -> Self {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                tracing::warn!(
                    cluster = %shared.cluster,
                    "replica router configured after it was cloned; the change is ignored"
                );
                return Self { inner: shared };
            }
        };
        let (mut config, mut clock) = (inner.config, inner.clock);
        change(&mut config, &mut clock);
        Self::build(inner.cluster, inner.primary, inner.replicas, config, clock)
    }

    /// Uses `config`.
    pub fn with_config(self, config: RouterConfig) -> Self {
        self.rebuild(|c, _| *c = config)
    }

    /// Reads time from `clock`.
    pub fn with_clock(self, clock: SharedClock) -> Self {
        self.rebuild(|_, c| *c = clock)
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// The primary's pool, for writes.
    pub fn primary(&self) -> &PgPool {
        &self.inner.primary
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Takes a token on the primary: call it after the commit a later reader must see.
    pub async fn token(&self) -> Result<Token, ReplicaError> {
        crate::sql::take_token(&self.inner.primary).await
    }

    /// The cluster as the monitor last saw it.
    pub fn status(&self) -> ClusterStatus {
        let view = self.view();
        let latest = view.history.latest().copied();
        ClusterStatus {
            cluster: self.inner.cluster.clone(),
            primary_position: latest.map(|p| p.position.to_string()),
            timeline: latest.map(|p| p.timeline),
            primary_error: view.primary_error.clone(),
            token: latest
                .zip(view.system)
                .map(|(p, system)| Token::new(system, p.timeline, p.position).to_string()),
            replicas: self
                .inner
                .replicas
                .iter()
                .zip(&view.replicas)
                .map(|(replica, seen)| ReplicaStatus {
                    name: replica.name.clone(),
                    state: seen.health.state(),
                    in_rotation: seen.health.in_rotation(),
                    lag_seconds: seen.staleness.map(|s| s.as_secs_f64()),
                    lag_bytes: seen.lag_bytes,
                    replay_position: seen.last.and_then(|s| s.replay).map(|l| l.to_string()),
                    error: seen.error.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn view(&self) -> RwLockReadGuard<'_, View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.inner
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A replica's staleness now: at its last poll, plus the time since (it cannot have fallen
/// further behind than that, and may have caught up).
pub(crate) fn current_staleness(seen: &ReplicaView, now: std::time::Instant) -> Option<Duration> {
    let at = seen.last?.at;
    seen.staleness
        .map(|s| s + now.saturating_duration_since(at))
}

//! The orchestrator: starts runs, claims due ones, drives each through its steps, and commits
//! every transition before the next call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use onephase_core::json::RawJson;
use onephase_core::{Clock, Random, SharedClock, SystemClock};
use onephase_store::worker::{Every, Pace, Wake, WorkerLoop};
use onephase_store::{Backend, Db, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use uuid::Uuid;

mod drive;

pub(crate) use drive::become_event;

use crate::admin::SagaAdmin;
use crate::definition::Definition;
use crate::http::SagaSpec;
use crate::invoke::Phase;
use crate::sql::{Claim, DefinitionInfo, Event, GroupCommit, Guard, NewRun, Sql, Transition};
use crate::state::{self, RunRecord, RunState};
use crate::{SagaError, metrics};

/// How an [`Orchestrator`] works.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Runs driven at once by this orchestrator (default 64).
    pub concurrency: usize,
    /// How often to look for due runs when nothing wakes it (default 50 ms on SQLite, 500 ms
    /// on PostgreSQL, which also wakes on `NOTIFY` when a run starts).
    pub poll_interval: Option<Duration>,
    /// A claim lasts for the longest timeout of the calls in flight plus this margin (default
    /// 10 s). Another orchestrator takes a run over only after its claim lapsed, so a call is
    /// never made by two orchestrators at once; a crashed orchestrator's runs wait this long.
    pub lease_margin: Duration,
    /// Outbox topic for every transition (default `onephase.saga`); `None` emits nothing.
    pub events_topic: Option<String>,
    /// Also run sagas whose definitions are stored in the database (registered with
    /// [`Orchestrator::register_spec`], by this process or another). Default false.
    pub stored_definitions: bool,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            poll_interval: None,
            lease_margin: Duration::from_secs(10),
            events_topic: Some("onephase.saga".to_owned()),
            stored_definitions: false,
        }
    }
}

/// A run to start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// The saga's name.
    pub saga: String,
    /// The definition version; the latest when `None`.
    pub version: Option<u32>,
    /// The run's input, available to every step, kept as written (templates pass numbers on
    /// with every digit).
    pub input: RawJson,
    /// Starting twice with the same key (per saga) starts one run; the second start returns
    /// it. Reusing a key with another input is refused.
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` of the work that starts the run (see `onephase_trace`): the
    /// orchestrator's spans for the run continue that trace, and each step's call carries it
    /// on. A malformed value is ignored.
    pub traceparent: Option<String>,
}

impl StartRequest {
    /// A start of the latest version of `saga` with `input`.
    pub fn new(saga: impl Into<String>, input: impl Into<RawJson>) -> Self {
        Self {
            saga: saga.into(),
            version: None,
            input: input.into(),
            idempotency_key: None,
            traceparent: None,
        }
    }

    /// Within the trace of `traceparent`.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// With an idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// On a given version.
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }
}

/// A started (or already started) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    /// The run's id.
    pub id: Uuid,
    /// The version it runs on.
    pub version: u32,
    /// False when the idempotency key had already started this run.
    pub created: bool,
    /// Its state now.
    pub state: RunState,
}

/// Whether a stored definition was new.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Registered {
    /// The saga.
    pub name: String,
    /// The version.
    pub version: u32,
    /// False when the same document was already registered under this version.
    pub created: bool,
}

/// Counters since the orchestrator was created.
#[derive(Debug, Clone, Default)]
pub struct OrchestratorStats {
    writes: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    attempts: Arc<AtomicU64>,
}

impl OrchestratorStats {
    /// Durable writes: starts, claims and transitions, each of which a naive orchestrator
    /// would commit on its own.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Database transactions committed for them: fewer than [`writes`](Self::writes) on
    /// SQLite, where transitions queued together share a commit.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs that reached a terminal state or needs-operator here.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// Step attempts made.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// Starts and drives saga runs. Cheap to clone; clones share everything.
///
/// Several orchestrators (in one process or many) can share a store: each claims due runs
/// for a lease, and every write checks that the claim is still its own. One whose process
/// dies leaves its runs claimed until the lease lapses; then another takes them over and
/// treats the attempt in flight as failed with an unknown outcome (retried under the same
/// idempotency key).
#[derive(Clone, derive_more::Debug)]
#[debug("Orchestrator {{ id: {}, config: {:?}, .. }}", inner.id, inner.config)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: OrchestratorConfig,
    id: Uuid,
    clock: SharedClock,
    random: Arc<Random>,
    definitions: RwLock<HashMap<(String, u32), Arc<Definition>>>,
    http: reqwest::Client,
    /// Where calls to literal addresses may go.
    permits: Option<crate::http::Permits>,
    wake: Notify,
    stopping: AtomicBool,
    stats: OrchestratorStats,
    /// SQLite's group commit, started on the first transition.
    group_commit: std::sync::OnceLock<GroupCommit>,
}

/// A copy is a separate orchestrator over the same store: a new id (so its claims are its
/// own), the definitions registered so far, the same counters; nothing in flight is shared.
impl Clone for Inner {
    fn clone(&self) -> Self {
        let definitions = self
            .definitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
            id: Uuid::now_v7(),
            clock: self.clock.clone(),
            random: self.random.clone(),
            definitions: RwLock::new(definitions),
            http: self.http.clone(),
            permits: self.permits.clone(),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            stats: self.stats.clone(),
            group_commit: std::sync::OnceLock::new(),
        }
    }
}

impl OrchestratorStats {
    /// A write committed on its own.
    fn wrote(&self, n: u64) {
        self.writes.fetch_add(n, Ordering::Relaxed);
        self.commits.fetch_add(n, Ordering::Relaxed);
    }
}

impl Orchestrator {
    /// An orchestrator over `store`, which must hold the saga and outbox tables
    /// ([`crate::migrations`] and `onephase_outbox::migrations`).
    pub fn new(store: Store, config: OrchestratorConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                id: Uuid::now_v7(),
                clock: Arc::new(SystemClock),
                random: Arc::new(Random::from_entropy()),
                definitions: RwLock::new(HashMap::new()),
                http: reqwest::Client::new(),
                permits: None,
                wake: Notify::new(),
                stopping: AtomicBool::new(false),
                stats: OrchestratorStats::default(),
                group_commit: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Makes the HTTP calls of stored definitions with `client` (one whose resolver refuses
    /// internal destinations, say), and to a literal address only where `permits` allows.
    /// Call before cloning.
    pub fn with_http_client(
        mut self,
        client: reqwest::Client,
        permits: crate::http::Permits,
    ) -> Self {
        let inner = self.inner_mut();
        inner.http = client;
        inner.permits = Some(permits);
        self
    }

    /// The inner state to configure: this orchestrator's own, or, when clones share it, a
    /// copy that becomes a separate orchestrator (see [`Inner`]'s `Clone`).
    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Reads time from `clock` (backoffs, leases, history). Configure before cloning: on an
    /// orchestrator whose clones are alive, this makes a separate orchestrator (its own id and
    /// claims, the same definitions and counters) and leaves the clones as they were.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.inner_mut().clock = clock;
        self
    }

    /// Draws the backoff jitter from `random` (seeded for reproducible tests); like
    /// [`with_clock`](Self::with_clock) on a shared orchestrator.
    pub fn with_random(mut self, random: Random) -> Self {
        self.inner_mut().random = Arc::new(random);
        self
    }

    /// Seeds the backoff jitter, for reproducible tests.
    pub fn with_seed(self, seed: u64) -> Self {
        self.with_random(Random::seeded(seed))
    }

    /// This orchestrator's id, as written in `claimed_by`.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// Counters.
    pub fn stats(&self) -> OrchestratorStats {
        self.inner.stats.clone()
    }

    /// Operator actions and queries over the same store.
    pub fn admin(&self) -> SagaAdmin {
        SagaAdmin::new(
            self.inner.store.clone(),
            self.inner.config.events_topic.clone(),
            self.inner.clock.clone(),
        )
    }

    /// Makes a Rust definition runnable here. Every orchestrator that may claim its runs must
    /// register it (same name and version, same steps). A (name, version) registers once:
    /// change a saga by registering a new version, so that runs in flight finish on theirs.
    pub fn register(&self, definition: Definition) -> Result<(), SagaError> {
        let key = (definition.name.to_string(), definition.version);
        let mut map = self
            .inner
            .definitions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&key) {
            return Err(SagaError::VersionConflict {
                next: map
                    .keys()
                    .filter(|(n, _)| *n == key.0)
                    .map(|(_, v)| *v)
                    .max()
                    .unwrap_or(key.1)
                    + 1,
                name: key.0,
                version: key.1,
            });
        }
        map.insert(key, Arc::new(definition));
        Ok(())
    }

    /// Validates an HTTP definition and stores it, so that every orchestrator with
    /// [`OrchestratorConfig::stored_definitions`] can run it. Registering the same document
    /// again is a no-op; a different document under an existing version is refused.
    pub async fn register_spec(&self, spec: &SagaSpec) -> Result<Registered, SagaError> {
        let definition = spec.compile_guarded(&self.inner.http, self.inner.permits.clone())?;
        let info = DefinitionInfo {
            name: spec.name().to_owned(),
            version: spec.version(),
            digest: spec.digest(),
            created_at: self.inner.clock.now(),
        };
        let sql = Sql::new(&self.inner.store);
        let existing = sql.insert_definition(&info, spec.to_value()).await?;
        self.inner.stats.wrote(1);
        match existing {
            Some(digest) if digest != info.digest => {
                let latest = sql
                    .definition(&info.name, None)
                    .await?
                    .map_or(info.version, |(v, _)| v);
                Err(SagaError::VersionConflict {
                    name: info.name,
                    version: info.version,
                    next: latest + 1,
                })
            }
            existing => {
                self.inner
                    .definitions
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((info.name.clone(), info.version), Arc::new(definition));
                Ok(Registered {
                    name: info.name,
                    version: info.version,
                    created: existing.is_none(),
                })
            }
        }
    }

    /// Stored definitions' metadata.
    pub async fn stored_definitions(&self) -> Result<Vec<DefinitionInfo>, SagaError> {
        Ok(Sql::new(&self.inner.store).definitions().await?)
    }

    /// The stored document of `name` at `version` (or its latest).
    pub async fn stored_definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(u32, Value), SagaError> {
        let unknown = || SagaError::UnknownSaga {
            name: name.to_owned(),
            version,
        };
        if version.is_some_and(|v| i32::try_from(v).is_err()) {
            return Err(unknown());
        }
        Sql::new(&self.inner.store)
            .definition(name, version)
            .await?
            .ok_or_else(unknown)
    }

    /// Starts a run, or returns the one its idempotency key already started. Checks, before
    /// writing anything, that the saga (and version) exists and that the input holds every
    /// value the definition's templates read.
    pub async fn start(&self, request: StartRequest) -> Result<Started, SagaError> {
        let definition = self
            .inner
            .resolve(&request.saga, request.version)
            .await?
            .ok_or_else(|| SagaError::UnknownSaga {
                name: request.saga.clone(),
                version: request.version,
            })?;
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(SagaError::InvalidInput(
                "an idempotency key is 1 to 255 characters".into(),
            ));
        }
        definition
            .check_input(&request.input)
            .map_err(SagaError::InvalidInput)?;
        // Two starts with one key repeat each other when their inputs say the same, however
        // they are spelled (key order, whitespace).
        let digest = hex::encode(Sha256::digest(
            onephase_core::json::canonical(request.input.as_raw()).as_bytes(),
        ));
        let now = self.inner.clock.now();
        let run = NewRun {
            id: Uuid::now_v7(),
            saga: request.saga.clone(),
            version: definition.version,
            input: request.input,
            key: request.idempotency_key.clone(),
            digest: digest.clone(),
            traceparent: request.traceparent.filter(|t| onephase_trace::is_valid(t)),
            now,
        };
        let record = RunRecord {
            id: run.id,
            saga: definition.name.clone(),
            version: definition.version,
            state: RunState::Running,
            input: Arc::new(RawJson::null()),
            error: None,
            fence: 0,
            traceparent: run.traceparent.clone(),
            steps: Default::default(),
        };
        let event = Event::new(&record, "run_started", now);
        let sql = Sql::new(&self.inner.store);
        let topic = self.inner.config.events_topic.as_deref();
        match sql.start(&run, &event, topic).await? {
            None => {
                self.inner.stats.wrote(1);
                metrics::started(&definition.name);
                self.inner.wake.notify_one();
                Ok(Started {
                    id: run.id,
                    version: definition.version,
                    created: true,
                    state: RunState::Running,
                })
            }
            Some(existing) => {
                let key = request.idempotency_key.unwrap_or_default();
                if existing.digest != digest {
                    return Err(SagaError::IdempotencyConflict {
                        key,
                        run: existing.id,
                        what: "input",
                    });
                }
                if request.version.is_some_and(|v| v != existing.version) {
                    return Err(SagaError::IdempotencyConflict {
                        key,
                        run: existing.id,
                        what: "version",
                    });
                }
                Ok(Started {
                    id: existing.id,
                    version: existing.version,
                    created: false,
                    state: existing.state,
                })
            }
        }
    }

    /// Claims due runs (up to the concurrency), drives each until it finishes or waits, and
    /// returns how many it claimed.
    pub async fn run_once(&self) -> Result<usize, SagaError> {
        let runs = self.inner.claim(self.inner.config.concurrency).await?;
        let n = runs.len();
        futures::future::join_all(runs.into_iter().map(|r| self.inner.clone().drive(r))).await;
        Ok(n)
    }

    /// Drives runs until `shutdown` completes, then lets the calls in flight finish and
    /// records their outcomes (bounded by the steps' timeouts) before returning.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let inner = &self.inner;
        let mut worker = WorkerLoop::new(&inner.store, inner.clock.clone())
            .listen_on("onephase_saga")
            .poll_interval(
                inner
                    .config
                    .poll_interval
                    .unwrap_or(match inner.store.backend() {
                        Backend::Postgres => Duration::from_millis(500),
                        Backend::Sqlite => Duration::from_millis(50),
                    }),
            )
            .with_random(inner.random.clone());
        worker.start().await;
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Once a quarter of the slots are free: one claim per several finished runs rather
        // than one per run, which matters on SQLite's single writer.
        let refill = (inner.config.concurrency / 4).max(1);
        let mut claim_now = true;
        // Keeps the onephase_saga_runs gauge of the active states current.
        let mut count = Every::new(Duration::from_secs(15));
        loop {
            if count.due(inner.clock.monotonic())
                && let Err(e) = self.admin().active_counts().await
            {
                tracing::warn!(error = %e, "counting saga runs by state failed");
            }
            while tasks.try_join_next().is_some() {}
            let free = inner.config.concurrency.saturating_sub(tasks.len());
            let mut pace = Pace::Poll;
            if free > 0 && claim_now {
                match inner.claim(free).await {
                    Ok(runs) => {
                        worker.succeeded();
                        if runs.len() == free {
                            pace = Pace::Now;
                        }
                        for run in runs {
                            tasks.spawn(inner.clone().drive(run));
                        }
                    }
                    Err(e) => {
                        metrics::round_error();
                        tracing::error!(orchestrator = %inner.id, error = %e, "claiming saga runs failed; retrying");
                        pace = Pace::After(worker.failed());
                    }
                }
            }
            let finished = async {
                if tasks.join_next().await.is_none() {
                    std::future::pending::<()>().await;
                }
            };
            let wake = worker
                .wait(pace, inner.wake.notified(), finished, shutdown.as_mut())
                .await;
            let worth_a_claim =
                tasks.is_empty() || inner.config.concurrency.saturating_sub(tasks.len()) >= refill;
            claim_now = match wake {
                Wake::Stop => break,
                Wake::Elapsed => true,
                Wake::Signal | Wake::Notify | Wake::Event(()) => worth_a_claim,
            };
        }
        inner.stopping.store(true, Ordering::SeqCst);
        while tasks.join_next().await.is_some() {}
        inner.stopping.store(false, Ordering::SeqCst);
    }
}

impl Inner {
    fn names(&self) -> Vec<String> {
        let map = self.definitions.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = map.keys().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The definition of `name` at `version` (or its latest), from memory or, with stored
    /// definitions, from the database.
    async fn resolve(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<Definition>>, SagaError> {
        // Versions are stored as 32-bit integers; a larger one cannot exist.
        if version.is_some_and(|v| i32::try_from(v).is_err()) {
            return Ok(None);
        }
        let in_memory = {
            let map = self.definitions.read().unwrap_or_else(|e| e.into_inner());
            match version {
                Some(v) => map.get(&(name.to_owned(), v)).cloned(),
                None => map
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .max_by_key(|((_, v), _)| *v)
                    .map(|(_, d)| d.clone()),
            }
        };
        if !self.config.stored_definitions {
            return Ok(in_memory);
        }
        if let (Some(d), Some(_)) = (&in_memory, version) {
            return Ok(Some(d.clone()));
        }
        let sql = Sql::new(&self.store);
        let Some((stored_version, document)) = sql.definition(name, version).await? else {
            return Ok(in_memory);
        };
        if let Some(d) = in_memory.filter(|d| d.version >= stored_version) {
            return Ok(Some(d));
        }
        let spec = SagaSpec::from_value(document)?;
        let definition = Arc::new(spec.compile_guarded(&self.http, self.permits.clone())?);
        self.definitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_owned(), stored_version), definition.clone());
        Ok(Some(definition))
    }

    async fn claim(&self, limit: usize) -> Result<Vec<RunRecord>, SagaError> {
        let now = self.clock.now();
        // Long enough to load the definition and record the first attempt's start, which
        // extends it to cover the call.
        let lease = self.config.lease_margin;
        let runs = Sql::new(&self.store)
            .claim(Claim {
                me: self.id,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                names: &self.names(),
                stored: self.config.stored_definitions,
                lease,
                now,
            })
            .await?;
        if !runs.is_empty() {
            self.stats.wrote(1);
        }
        Ok(runs)
    }

    fn backoff(&self, policy: &crate::definition::Policy, attempt: u32) -> Duration {
        policy
            .backoff
            .delay(attempt.saturating_sub(1), None, &mut &*self.random)
    }

    /// Writes `transition` if the run's fence is still `fence`, the one its claim raised it
    /// to; returns whether it did.
    async fn commit(&self, fence: i64, mut transition: Transition) -> Result<bool, SagaError> {
        // One row per (step, phase): an attempt taken for interrupted and retried at once is
        // recorded twice in one transition, and only the later record is the step's state
        // (PostgreSQL refuses an upsert that touches a row twice).
        let mut steps: Vec<(String, Phase, state::StepRecord)> =
            Vec::with_capacity(transition.steps.len());
        for step in transition.steps {
            match steps
                .iter_mut()
                .find(|(n, p, _)| *n == step.0 && *p == step.1)
            {
                Some(earlier) => *earlier = step,
                None => steps.push(step),
            }
        }
        transition.steps = steps;
        let id = transition.run.id;
        let topic = self.config.events_topic.as_deref();
        let guard = Guard::Claim(fence);
        let written = match self.store.db() {
            Db::Sqlite(s) => {
                let group = self.group_commit.get_or_init(|| {
                    GroupCommit::spawn(s.writer().clone(), self.stats.commits.clone())
                });
                let written = group.write(guard, transition, topic).await?;
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                written
            }
            Db::Postgres(_) => {
                let written = Sql::new(&self.store)
                    .write(guard, &transition, topic)
                    .await?;
                self.stats.wrote(1);
                written
            }
        };
        if !written {
            metrics::lost_claim();
            tracing::warn!(run = %id, orchestrator = %self.id, fence,
                "saga run was claimed again since this claim (it lapsed) or changed by an operator; this write was refused and the run is left to the newer claim");
        }
        Ok(written)
    }
}

//! The saga tables' SQL, once per backend. Both modules offer the same functions; [`Sql`]
//! dispatches on the store.

mod batch;
mod postgres;
mod sqlite;

pub(crate) use batch::GroupCommit;

use std::collections::BTreeMap;
use std::time::Duration;

use onephase_core::Envelope;
use onephase_core::json::RawJson;
use onephase_store::convert::narrow;
use onephase_store::{Db, Store, on_store};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::invoke::Phase;
use crate::state::{RunRecord, RunState, StepRecord, StepStatus};

/// A stored definition's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionInfo {
    /// The saga's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// SHA-256 of the canonical document.
    pub digest: String,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A run that keeps retrying one step: running or compensating, with a step that failed and
/// waits for, or is making, another attempt after several. What an operator should look at before the run
/// parks (a retriable step is retried forever by default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrying {
    /// The run.
    pub run: RunSummary,
    /// The step it keeps retrying.
    pub step: String,
    /// Its action or its compensation.
    pub phase: Phase,
    /// Attempts so far.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// The columns of [`Retrying`]: the run's summary and the step's, from a join.
pub(crate) const RETRYING_COLUMNS: &str = "r.id, r.saga, r.version, r.state, r.error, \
     r.idempotency_key, r.created_at, r.updated_at, r.finished_at, \
     s.step, s.phase, s.attempts, s.last_error";

/// A run, without its steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RunView))]
pub struct RunSummary {
    /// The run's id.
    pub id: Uuid,
    /// The saga's name.
    pub saga: String,
    /// The definition version it runs on.
    pub version: u32,
    /// running, compensating, completed, compensated, needs_operator or aborted.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, example = "needs_operator")
    )]
    pub state: RunState,
    /// Why it compensates or waits for an operator.
    pub error: Option<String>,
    /// The key it was started with, if any.
    pub idempotency_key: Option<String>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its last transition.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it reached a terminal state.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// One action or compensation of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The step.
    pub step: String,
    /// Action or compensation.
    pub phase: Phase,
    /// Where it stands.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The participant's answer, once it succeeded, as it answered it.
    pub output: Option<RawJson>,
    /// The last error.
    pub last_error: Option<String>,
    /// First attempt.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// Success or final failure.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When the next attempt is due, while backing off.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
}

/// One entry of a run's history: a transition or an operator action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Order within the store.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What: `run_started`, `step_started`, `step_succeeded`, `step_retrying`, `step_failed`,
    /// `run_compensating`, `run_completed`, `run_compensated`, `run_needs_operator`,
    /// `operator_retry`, `operator_resolve`, `run_aborted`.
    pub event: String,
    /// The step, for step events.
    pub step: Option<String>,
    /// Action or compensation, for step events.
    pub phase: Option<Phase>,
    /// The attempt, for step events.
    pub attempt: Option<u32>,
    /// How long the attempt took, for outcomes.
    pub elapsed_ms: Option<i64>,
    /// The error, the reason, or the operator's note.
    pub detail: Option<String>,
    /// The operator, for operator actions.
    pub actor: Option<String>,
}

/// A run with its steps and history (see the saga docs for the fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RunDetailView))]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunSummary,
    /// Its input, as it was given.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub input: RawJson,
    /// Each action and compensation attempted: step, phase, status, attempts, output (as
    /// the participant answered it), last_error, started_at, finished_at, due_at.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub steps: Vec<StepView>,
    /// Every transition and operator action, oldest first: seq, at, event, step, phase,
    /// attempt, elapsed_ms, detail, actor.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub history: Vec<HistoryEntry>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this saga.
    pub saga: Option<String>,
    /// Runs created before this run (paging, newest first).
    pub before: Option<Uuid>,
    /// At most this many (default 100).
    pub limit: u32,
}

/// A run being started.
#[derive(Debug, Clone)]
pub(crate) struct NewRun {
    pub id: Uuid,
    pub saga: String,
    pub version: u32,
    pub input: RawJson,
    pub key: Option<String>,
    pub digest: String,
    pub traceparent: Option<String>,
    pub now: OffsetDateTime,
}

/// A run that already holds an idempotency key.
#[derive(Debug, Clone)]
pub(crate) struct ExistingRun {
    pub id: Uuid,
    pub version: u32,
    pub digest: String,
    pub state: RunState,
}

/// What a write must still find true to go ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard {
    /// The run's fence is still the one this claim raised it to: no other claim (and no
    /// operator change) came between.
    Claim(i64),
    /// The run is (still) in this state; the caller holds its row lock.
    State(RunState),
}

/// A run's new state.
#[derive(Debug, Clone)]
pub(crate) struct RunWrite {
    pub id: Uuid,
    pub state: RunState,
    pub error: Option<String>,
    pub due_at: OffsetDateTime,
    /// Keep the claim this much longer, measured on the store's clock; `None` releases it.
    pub lease: Option<Duration>,
    pub now: OffsetDateTime,
}

/// One history entry to write (and to publish through the outbox).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    pub run_id: Uuid,
    pub saga: String,
    pub version: u32,
    pub state: RunState,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The run's W3C `traceparent`: the event's header, so that its publish and its
    /// consumers join the trace of the request that started the run.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl Event {
    pub(crate) fn new(run: &RunRecord, event: &'static str, at: OffsetDateTime) -> Self {
        Self {
            run_id: run.id,
            saga: run.saga.to_string(),
            version: run.version,
            state: run.state,
            event,
            step: None,
            phase: None,
            attempt: None,
            elapsed_ms: None,
            detail: None,
            actor: None,
            at,
            traceparent: run.traceparent.clone(),
        }
    }

    /// The outbox envelope announcing this event on `topic`, keyed by run so that a run's
    /// events keep their order.
    /// Fails rather than enqueue an empty event should the event not serialize.
    pub(crate) fn envelope(&self, topic: &str) -> Result<Envelope, crate::SagaError> {
        let payload = serde_json::to_vec(self).map_err(|e| {
            crate::SagaError::InvalidInput(format!("saga event does not serialize: {e}"))
        })?;
        let mut envelope = Envelope::builder(topic.to_owned(), payload)
            .key(self.run_id.to_string())
            .header("content-type", "application/json")
            .created_at(self.at);
        if let Some(traceparent) = &self.traceparent {
            envelope = envelope.header(onephase_trace::TRACEPARENT, traceparent.clone());
        }
        Ok(envelope.build()?)
    }
}

/// Everything one transition writes, in one transaction.
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub run: RunWrite,
    pub steps: Vec<(String, Phase, StepRecord)>,
    pub events: Vec<Event>,
}

/// What a claim asks for: up to `limit` due runs of the sagas in `names` (and of stored
/// definitions when `stored`), claimed by `me` for `lease` from `now`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    pub me: Uuid,
    pub limit: u32,
    pub names: &'a [String],
    pub stored: bool,
    pub lease: Duration,
    pub now: OffsetDateTime,
}

pub(crate) struct Sql<'a> {
    db: Db<'a>,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { db: store.db() }
    }

    /// Stores a definition; returns the digest already stored under (name, version) if one
    /// was (and stores nothing then).
    pub(crate) async fn insert_definition(
        &self,
        info: &DefinitionInfo,
        document: &Value,
    ) -> Result<Option<String>, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::insert_definition(pool, info, document).await)
    }

    /// The document of `name` at `version`, or at its latest version.
    pub(crate) async fn definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<(u32, Value)>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::definition(pool, name, version).await)
    }

    pub(crate) async fn definitions(&self) -> Result<Vec<DefinitionInfo>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::definitions(pool).await)
    }

    /// Inserts a run with its first history entry and event; or returns the run that already
    /// holds its idempotency key.
    pub(crate) async fn start(
        &self,
        run: &NewRun,
        event: &Event,
        topic: Option<&str>,
    ) -> Result<Option<ExistingRun>, crate::SagaError> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::start(pool, run, event, topic).await)
    }

    /// Claims up to `limit` due runs of the named sagas (and of stored definitions when
    /// `stored`), with their steps.
    pub(crate) async fn claim(&self, claim: Claim<'_>) -> Result<Vec<RunRecord>, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::claim(pool, claim).await)
    }

    /// Hands back a run whose claim is still the one with `fence`, due at `due_at`; what was
    /// committed stays (an attempt recorded as started is then taken for interrupted).
    pub(crate) async fn release(
        &self,
        id: Uuid,
        fence: i64,
        due_at: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::release(pool, id, fence, due_at).await)
    }

    /// Writes a transition if `guard` still holds; returns whether it did.
    pub(crate) async fn write(
        &self,
        guard: Guard,
        transition: &Transition,
        topic: Option<&str>,
    ) -> Result<bool, crate::SagaError> {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::write(pool, guard, transition, topic).await)
    }

    /// Loads a run, applies `change` to it and writes the result, all in one transaction
    /// holding the run's row; `change` returns `None` to write nothing.
    pub(crate) async fn modify<F>(
        &self,
        id: Uuid,
        topic: Option<&str>,
        change: F,
    ) -> Result<Option<RunRecord>, crate::SagaError>
    where
        F: FnOnce(RunRecord) -> Result<Transition, crate::SagaError> + Send,
    {
        on_store!(self.db, pool, sql: postgres | sqlite => sql::modify(pool, id, topic, change).await)
    }

    pub(crate) async fn list(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::list(pool, filter).await)
    }

    pub(crate) async fn detail(&self, id: Uuid) -> Result<Option<RunDetail>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::detail(pool, id).await)
    }

    /// Runs per state; with `active_only`, only the states a run leaves (running, compensating,
    /// needs_operator), which the state index answers without reading every finished run.
    pub(crate) async fn counts(
        &self,
        active_only: bool,
    ) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::counts(pool, active_only).await)
    }

    pub(crate) async fn retrying(
        &self,
        min_attempts: u32,
        limit: u32,
    ) -> Result<Vec<Retrying>, sqlx::Error> {
        on_store!(read self.db, pool, sql: postgres | sqlite => sql::retrying(pool, min_attempts, limit).await)
    }
}

pub(crate) fn parse_state(s: &str) -> Result<RunState, sqlx::Error> {
    RunState::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("unknown run state {s:?}").into()))
}

pub(crate) fn parse_status(s: &str) -> Result<StepStatus, sqlx::Error> {
    StepStatus::parse(s)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown step status {s:?}").into()))
}

pub(crate) fn parse_phase(s: &str) -> Result<Phase, sqlx::Error> {
    Phase::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("unknown phase {s:?}").into()))
}

/// A stored version or count read back: a negative value is damage, not a zero.
pub(crate) fn to_u32(v: i32) -> Result<u32, sqlx::Error> {
    Ok(narrow("saga integer column", v)?)
}

/// A version or count to store. Versions and attempts are bounded far below `i32::MAX` by the
/// definition's validation and retry limits, so the clamp never applies in practice.
pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

//! Queries and operator actions: what runs exist, what happened to one, and what an operator
//! can do about a run that waits for one.

use std::collections::BTreeMap;

use onephase_core::SharedClock;
use onephase_store::Store;
use uuid::Uuid;

use crate::SagaError;
use crate::invoke::Phase;
use crate::metrics;
use crate::orchestrator::become_event;
use crate::sql::{Event, Retrying, RunDetail, RunFilter, RunSummary, RunWrite, Sql, Transition};
use crate::state::{RunRecord, RunState, StepStatus};

/// Who did an operator action and why; written to the run's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The operator (the server uses the token's name).
    pub actor: String,
    /// Why, or what was done by hand. Required: it is the audit trail.
    pub note: String,
}

impl Audit {
    /// An audit entry.
    pub fn new(actor: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            note: note.into(),
        }
    }

    fn check(&self) -> Result<(), SagaError> {
        if self.actor.trim().is_empty() || self.note.trim().is_empty() {
            return Err(SagaError::InvalidInput(
                "an operator action needs who did it and why (a non-empty note)".into(),
            ));
        }
        if self.note.len() > 4096 {
            return Err(SagaError::InvalidInput(
                "the note is over 4096 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// Runs, their history, and the operator actions on parked runs.
#[derive(Debug, Clone)]
pub struct SagaAdmin {
    store: Store,
    topic: Option<String>,
    clock: SharedClock,
}

impl SagaAdmin {
    pub(crate) fn new(store: Store, topic: Option<String>, clock: SharedClock) -> Self {
        Self {
            store,
            topic,
            clock,
        }
    }

    /// Runs matching `filter`, newest first.
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, SagaError> {
        let mut filter = filter.clone();
        if filter.limit == 0 {
            filter.limit = 100;
        }
        Ok(Sql::new(&self.store).list(&filter).await?)
    }

    /// Runs that keep retrying a step (at least `min_attempts` attempts, waiting for the next),
    /// most attempts first: what the dashboard shows before they park or complete.
    pub async fn retrying(
        &self,
        min_attempts: u32,
        limit: u32,
    ) -> Result<Vec<Retrying>, SagaError> {
        Ok(Sql::new(&self.store)
            .retrying(min_attempts, limit.clamp(1, 100))
            .await?)
    }

    /// One run with its steps and history.
    pub async fn show(&self, id: Uuid) -> Result<RunDetail, SagaError> {
        Sql::new(&self.store)
            .detail(id)
            .await?
            .ok_or(SagaError::UnknownRun(id))
    }

    /// How many runs are in each state (and sets the `onephase_saga_runs` gauge). Reads every
    /// run; see [`active_counts`](Self::active_counts) for the cheap part.
    pub async fn counts(&self) -> Result<BTreeMap<RunState, i64>, SagaError> {
        self.count(false).await
    }

    /// How many runs are running, compensating or waiting for an operator (and sets those
    /// states' `onephase_saga_runs` gauges): the states runs leave, so the count stays small
    /// however many runs have finished.
    pub async fn active_counts(&self) -> Result<BTreeMap<RunState, i64>, SagaError> {
        self.count(true).await
    }

    async fn count(&self, active_only: bool) -> Result<BTreeMap<RunState, i64>, SagaError> {
        let raw = Sql::new(&self.store).counts(active_only).await?;
        let counts = raw
            .into_iter()
            .filter_map(|(s, n)| RunState::parse(&s).map(|s| (s, n)))
            .collect();
        let states = RunState::ALL
            .into_iter()
            .filter(|s| !active_only || !s.is_terminal());
        metrics::runs(states, &counts);
        Ok(counts)
    }

    /// Tries the failed compensation(s) of a parked run again, with a fresh attempt budget
    /// (or the failed retriable step, for a run parked after its pivot).
    pub async fn retry(&self, id: Uuid, audit: &Audit) -> Result<(), SagaError> {
        audit.check()?;
        self.act(id, "operator_retry", audit, |run, now| {
            let failed = failed_invocations(&run);
            Ok(reopen(run, &failed, false, now))
        })
        .await
    }

    /// Marks the failed compensation of `step` (or its failed retriable action) as done by
    /// hand, and lets the run go on.
    pub async fn resolve(&self, id: Uuid, step: &str, audit: &Audit) -> Result<(), SagaError> {
        audit.check()?;
        let step = step.to_owned();
        self.act(id, "operator_resolve", audit, move |run, now| {
            let failed = failed_invocations(&run);
            let Some(target) = failed.iter().find(|(s, _)| *s == step).cloned() else {
                let names: Vec<&str> = failed.iter().map(|(s, _)| s.as_str()).collect();
                return Err(SagaError::UnknownStep(format!(
                    "run {} has no failed step {step:?} to resolve; the failed one(s): {names:?}",
                    run.id
                )));
            };
            Ok(reopen(run, &[target], true, now))
        })
        .await
    }

    /// Gives up on a parked run: it ends `aborted`, with whatever compensations are left
    /// undone. The operator's note says what they did instead.
    pub async fn abort(&self, id: Uuid, audit: &Audit) -> Result<(), SagaError> {
        audit.check()?;
        self.act(id, "operator_abort", audit, |mut run, now| {
            run.state = RunState::Aborted;
            let event = Event::new(&run, become_event(RunState::Aborted), now);
            Ok((run, Vec::new(), vec![event]))
        })
        .await
    }

    async fn act<F>(
        &self,
        id: Uuid,
        action: &'static str,
        audit: &Audit,
        change: F,
    ) -> Result<(), SagaError>
    where
        F: FnOnce(RunRecord, time::OffsetDateTime) -> Result<Changed, SagaError> + Send,
    {
        let now = self.clock.now();
        let actor = audit.actor.clone();
        let note = audit.note.clone();
        let found = Sql::new(&self.store)
            .modify(id, self.topic.as_deref(), move |run| {
                if run.state != RunState::NeedsOperator {
                    return Err(SagaError::NotParked {
                        id: run.id,
                        state: run.state,
                    });
                }
                let mut audit_event = Event::new(&run, action, now);
                audit_event.actor = Some(actor.clone());
                audit_event.detail = Some(note);
                let (run, steps, events) = change(run, now)?;
                audit_event.state = run.state;
                let mut all = vec![audit_event];
                all.extend(events.into_iter().map(|mut e| {
                    e.actor = Some(actor.clone());
                    e
                }));
                Ok(Transition {
                    run: RunWrite {
                        id: run.id,
                        state: run.state,
                        error: run.error.clone(),
                        due_at: now,
                        lease: None,
                        now,
                    },
                    steps,
                    events: all,
                })
            })
            .await?;
        if found.is_none() {
            return Err(SagaError::UnknownRun(id));
        }
        metrics::operator_action(action);
        Ok(())
    }
}

type Changed = (
    RunRecord,
    Vec<(String, Phase, crate::state::StepRecord)>,
    Vec<Event>,
);

/// What an operator can act on: the failed compensations, if any; otherwise the failed
/// action of a retriable step (the run parked after its pivot).
fn failed_invocations(run: &RunRecord) -> Vec<(String, Phase)> {
    let failed = |phase: Phase| -> Vec<(String, Phase)> {
        run.steps
            .iter()
            .filter(|((_, p), r)| *p == phase && r.status == StepStatus::Failed)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let compensations = failed(Phase::Compensation);
    if compensations.is_empty() {
        failed(Phase::Action)
    } else {
        compensations
    }
}

/// Reopens `targets` (failed invocations): resolved by hand, or pending with a fresh attempt
/// budget. The run goes back to compensating if the targets are compensations, else to
/// running.
fn reopen(
    mut run: RunRecord,
    targets: &[(String, Phase)],
    by_hand: bool,
    now: time::OffsetDateTime,
) -> Changed {
    let mut steps = Vec::new();
    for key in targets {
        if let Some(record) = run.steps.get_mut(key) {
            if by_hand {
                record.status = StepStatus::Resolved;
                record.finished_at = Some(now);
                // Done, by the operator's hand: its failures stay in the history.
                record.last_error = None;
                record.due_at = None;
            } else {
                record.status = StepStatus::Pending;
                record.retry_base = record.attempts;
                record.definite = false;
                record.due_at = None;
            }
            steps.push((key.0.clone(), key.1, record.clone()));
        }
    }
    let compensating = targets.iter().any(|(_, p)| *p == Phase::Compensation);
    run.state = if compensating {
        RunState::Compensating
    } else {
        RunState::Running
    };
    // Back to work: the error says why the run compensates (its failed action), not what
    // parked it, which the history keeps.
    run.error = if compensating {
        run.steps
            .iter()
            .find(|((_, phase), r)| *phase == Phase::Action && r.status == StepStatus::Failed)
            .map(|((name, _), r)| {
                format!(
                    "step {name:?} failed: {}",
                    r.last_error.as_deref().unwrap_or("")
                )
            })
    } else {
        None
    };
    let event = Event::new(&run, become_event(run.state), now);
    (run, steps, vec![event])
}

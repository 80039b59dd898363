//! The saga state machine, as pure functions of a run's recorded state: what to do next, and
//! how an invocation's outcome changes a step. The orchestrator persists what these decide.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use onephase_core::json::RawJson;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::definition::{Definition, Policy, StepKind};
use crate::invoke::{Phase, StepError};

/// Where a run stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Executing actions.
    Running,
    /// An action failed; undoing the steps that may have taken effect, in reverse.
    Compensating,
    /// Every action succeeded. Terminal.
    Completed,
    /// Every needed compensation succeeded (or was resolved by an operator). Terminal.
    Compensated,
    /// A compensation (or a retriable step after the pivot) failed for good; waiting for an
    /// operator to retry it, resolve it by hand, or abort.
    NeedsOperator,
    /// An operator aborted the compensation. Terminal.
    Aborted,
}

impl RunState {
    /// All states, in display order.
    pub const ALL: [RunState; 6] = [
        RunState::NeedsOperator,
        RunState::Running,
        RunState::Compensating,
        RunState::Completed,
        RunState::Compensated,
        RunState::Aborted,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Compensating => "compensating",
            RunState::Completed => "completed",
            RunState::Compensated => "compensated",
            RunState::NeedsOperator => "needs_operator",
            RunState::Aborted => "aborted",
        }
    }

    /// Reads a stored name (`needs-operator` is accepted for `needs_operator`).
    pub fn parse(s: &str) -> Option<Self> {
        RunState::ALL
            .into_iter()
            .find(|r| r.as_str() == s || r.as_str().replace('_', "-") == s)
    }

    /// Whether nothing more will happen without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Compensated | RunState::Aborted
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one action or compensation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not attempted yet.
    Pending,
    /// An attempt was recorded as started and its outcome is not recorded: in flight, or its
    /// orchestrator died.
    Started,
    /// The last attempt failed transiently; the next is due at `due_at`.
    RetryWait,
    /// Done.
    Succeeded,
    /// Failed for good: refused by the participant, or out of attempts.
    Failed,
    /// Marked resolved by an operator.
    Resolved,
}

impl StepStatus {
    /// The stored name, as the API shows it (`retry_wait`, `failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Started => "started",
            StepStatus::RetryWait => "retry_wait",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Resolved => "resolved",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            StepStatus::Pending,
            StepStatus::Started,
            StepStatus::RetryWait,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Resolved,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    fn is_done(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Resolved)
    }
}

/// The recorded state of one action or compensation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepRecord {
    pub status: StepStatus,
    pub attempts: u32,
    /// Attempts made before the last operator retry; the limit counts from here.
    pub retry_base: u32,
    /// The participant refused: the action applied nothing and needs no compensation.
    pub definite: bool,
    pub due_at: Option<OffsetDateTime>,
    pub output: Option<RawJson>,
    pub last_error: Option<String>,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

impl Default for StepRecord {
    fn default() -> Self {
        Self {
            status: StepStatus::Pending,
            attempts: 0,
            retry_base: 0,
            definite: false,
            due_at: None,
            output: None,
            last_error: None,
            started_at: None,
            finished_at: None,
        }
    }
}

impl StepRecord {
    /// Whether the action may have taken effect at the participant, so that it must be
    /// compensated: it succeeded, or an attempt was made whose effect is unknown.
    pub(crate) fn may_have_applied(&self) -> bool {
        match self.status {
            StepStatus::Succeeded | StepStatus::Resolved => true,
            StepStatus::Pending => false,
            StepStatus::Failed => !self.definite,
            StepStatus::Started | StepStatus::RetryWait => self.attempts > 0,
        }
    }
}

/// A run as the orchestrator holds it while driving it.
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub id: Uuid,
    pub saga: Arc<str>,
    pub version: u32,
    pub state: RunState,
    pub input: Arc<RawJson>,
    pub error: Option<String>,
    /// The fence of the claim this record was read under (0 outside a claim).
    pub fence: i64,
    /// The W3C `traceparent` the run was started in, if any.
    pub traceparent: Option<String>,
    pub steps: BTreeMap<(String, Phase), StepRecord>,
}

impl RunRecord {
    pub(crate) fn step(&self, step: &str, phase: Phase) -> StepRecord {
        self.steps
            .get(&(step.to_owned(), phase))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn outputs(&self) -> BTreeMap<String, RawJson> {
        self.steps
            .iter()
            .filter(|((_, phase), r)| *phase == Phase::Action && r.status.is_done())
            .map(|((name, _), r)| (name.clone(), r.output.clone().unwrap_or_else(RawJson::null)))
            .collect()
    }
}

/// What the orchestrator should do with a run now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Start an attempt of each of these invocations, in parallel.
    Start(Vec<(Arc<str>, Phase)>),
    /// Nothing is due before this time.
    Wait(OffsetDateTime),
    /// Move the run to this state, for this reason.
    Become(RunState, Option<String>),
    /// Terminal or parked: nothing to do.
    Idle,
}

/// Decides the next move of `run` under `definition`.
pub(crate) fn next(definition: &Definition, run: &RunRecord, now: OffsetDateTime) -> Next {
    match run.state {
        RunState::Running => forward(definition, run, now),
        RunState::Compensating => backward(definition, run, now),
        _ => Next::Idle,
    }
}

fn forward(definition: &Definition, run: &RunRecord, now: OffsetDateTime) -> Next {
    for stage in &definition.stages {
        let records: Vec<_> = stage
            .iter()
            .map(|s| (s, run.step(&s.name, Phase::Action)))
            .collect();
        if records.iter().all(|(_, r)| r.status.is_done()) {
            continue;
        }
        if let Some((step, r)) = records.iter().find(|(_, r)| r.status == StepStatus::Failed) {
            let error = r.last_error.clone().unwrap_or_default();
            return if step.kind == StepKind::Retriable {
                Next::Become(
                    RunState::NeedsOperator,
                    Some(format!(
                        "retriable step {:?} failed after the pivot and the saga cannot go back: {error}",
                        step.name
                    )),
                )
            } else {
                Next::Become(
                    RunState::Compensating,
                    Some(format!("step {:?} failed: {error}", step.name)),
                )
            };
        }
        return due_or_wait(
            records
                .iter()
                .map(|(s, r)| (s.name.clone(), Phase::Action, r)),
            now,
        );
    }
    Next::Become(RunState::Completed, None)
}

fn backward(definition: &Definition, run: &RunRecord, now: OffsetDateTime) -> Next {
    for stage in definition.stages.iter().rev() {
        let records: Vec<_> = stage
            .iter()
            .filter(|s| s.kind == StepKind::Compensatable)
            .filter(|s| run.step(&s.name, Phase::Action).may_have_applied())
            .map(|s| (s, run.step(&s.name, Phase::Compensation)))
            .collect();
        if records.iter().all(|(_, r)| r.status.is_done()) {
            continue;
        }
        if let Some((step, r)) = records.iter().find(|(_, r)| r.status == StepStatus::Failed) {
            return Next::Become(
                RunState::NeedsOperator,
                Some(format!(
                    "compensation of step {:?} failed after {} attempt(s): {}",
                    step.name,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                )),
            );
        }
        return due_or_wait(
            records
                .iter()
                .map(|(s, r)| (s.name.clone(), Phase::Compensation, r)),
            now,
        );
    }
    // Compensated: why it had to be is the failed action, whatever the compensations went
    // through on the way (a failure an operator retried is in the history).
    Next::Become(RunState::Compensated, failed_action(definition, run))
}

/// Why a run compensates: the first failed action, in stage order.
fn failed_action(definition: &Definition, run: &RunRecord) -> Option<String> {
    definition.stages.iter().flatten().find_map(|step| {
        let r = run.step(&step.name, Phase::Action);
        (r.status == StepStatus::Failed).then(|| {
            format!(
                "step {:?} failed: {}",
                step.name,
                r.last_error.as_deref().unwrap_or("")
            )
        })
    })
}

fn due_or_wait<'a>(
    records: impl Iterator<Item = (Arc<str>, Phase, &'a StepRecord)>,
    now: OffsetDateTime,
) -> Next {
    let mut due = Vec::new();
    let mut earliest: Option<OffsetDateTime> = None;
    for (name, phase, r) in records {
        match r.status {
            StepStatus::Pending => due.push((name, phase)),
            StepStatus::RetryWait | StepStatus::Started => match r.due_at {
                Some(at) if at > now => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                _ => due.push((name, phase)),
            },
            _ => {}
        }
    }
    if due.is_empty() {
        Next::Wait(earliest.unwrap_or(now))
    } else {
        Next::Start(due)
    }
}

/// Records the start of an attempt.
pub(crate) fn start(record: &mut StepRecord, now: OffsetDateTime) {
    record.status = StepStatus::Started;
    record.attempts += 1;
    record.due_at = None;
    if record.started_at.is_none() {
        record.started_at = Some(now);
    }
}

/// Records an attempt's outcome; `retry_in` is the backoff before the next attempt.
pub(crate) fn finish(
    record: &mut StepRecord,
    policy: &Policy,
    outcome: Result<RawJson, StepError>,
    retry_in: Duration,
    now: OffsetDateTime,
) {
    match outcome {
        Ok(output) => {
            record.status = StepStatus::Succeeded;
            record.output = Some(output);
            record.finished_at = Some(now);
            // The step's state says what is true now; earlier failures are in the history.
            record.last_error = None;
            record.due_at = None;
        }
        Err(StepError::Fail(message)) => {
            record.status = StepStatus::Failed;
            record.definite = true;
            record.last_error = Some(message);
            record.finished_at = Some(now);
        }
        Err(StepError::Retry(message)) => {
            if let Some(max) = policy
                .max_attempts
                .filter(|max| record.attempts - record.retry_base.min(record.attempts) >= *max)
            {
                record.status = StepStatus::Failed;
                record.definite = false;
                let counted = record.attempts - record.retry_base.min(record.attempts);
                let since = if record.retry_base > 0 {
                    " since the operator's retry"
                } else {
                    ""
                };
                record.last_error = Some(format!(
                    "{message} (attempt {counted} of {max}{since}; giving up)"
                ));
                record.finished_at = Some(now);
            } else {
                record.status = StepStatus::RetryWait;
                record.last_error = Some(message);
                record.due_at = Some(now + retry_in);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;

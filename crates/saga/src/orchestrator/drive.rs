//! Driving one claimed run: ask the state machine what comes next, persist it, make the calls
//! it starts, record their outcomes, until the run waits, finishes or must be handed back.
//!
//! What a transition writes accumulates in [`Pending`] and is committed in one transaction,
//! guarded by the claim's fence, before any call it starts is made: a call is never sent for an
//! attempt that is not on record, and an orchestrator whose claim was taken over writes nothing.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use time::OffsetDateTime;

use super::Inner;
use crate::definition::{Definition, Policy};
use crate::invoke::{Call, Phase, SharedInvoke, StepError};
use crate::sql::{Event, RunWrite, Sql, Transition};
use crate::state::{self, Next, RunRecord, RunState, StepRecord, StepStatus};
use crate::{SagaError, metrics};
use tracing::Instrument as _;

/// The step records and events of the transition being built.
#[derive(Default)]
struct Pending {
    steps: Vec<(String, Phase, StepRecord)>,
    events: Vec<Event>,
}

impl Pending {
    /// Records `record` as the step's state, in the run and in what the transition writes.
    fn step(&mut self, run: &mut RunRecord, name: &str, phase: Phase, record: StepRecord) {
        run.steps.insert((name.to_owned(), phase), record.clone());
        self.steps.push((name.to_owned(), phase, record));
    }

    /// The transition writing `run` as `write` with everything pending.
    fn take(&mut self, run: RunWrite) -> Transition {
        Transition {
            run,
            steps: std::mem::take(&mut self.steps),
            events: std::mem::take(&mut self.events),
        }
    }
}

/// One call to make, recorded as started.
struct Planned {
    name: Arc<str>,
    phase: Phase,
    policy: Policy,
    invoker: SharedInvoke,
    call: Call,
}

/// What one call came back with.
struct Answered {
    name: Arc<str>,
    phase: Phase,
    policy: Policy,
    attempt: u32,
    result: Result<onephase_core::json::RawJson, StepError>,
    elapsed: Duration,
}

/// An event about one attempt of a step.
fn step_event(
    run: &RunRecord,
    event: &'static str,
    now: OffsetDateTime,
    (name, phase): (&str, Phase),
    attempt: u32,
) -> Event {
    let mut e = Event::new(run, event, now);
    e.step = Some(name.to_owned());
    e.phase = Some(phase);
    e.attempt = Some(attempt);
    e
}

impl Inner {
    /// Drives `run` until it waits or finishes; on an error hands it back, due in a second.
    pub(super) async fn drive(self: Arc<Self>, run: RunRecord) {
        let (id, fence) = (run.id, run.fence);
        // One span per round of driving, in the trace of the request that started the run.
        let span = tracing::info_span!("saga run", saga = %run.saga, run = %run.id);
        onephase_trace::follow(&span, run.traceparent.as_deref());
        if let Err(e) = self.drive_inner(run).instrument(span).await {
            metrics::round_error();
            // Hand the run back for a retry in a second rather than after the whole lease; if
            // the database is what failed, the lease still brings it back.
            let due = self.clock.now() + Duration::from_secs(1);
            let released = Sql::new(&self.store).release(id, fence, due).await;
            tracing::error!(run = %id, error = %e, released = released.is_ok(),
                "driving a saga run failed; it is retried in a second, or when its claim lapses");
        }
    }

    async fn drive_inner(&self, mut run: RunRecord) -> Result<(), SagaError> {
        let Some(definition) = self.resolve(&run.saga, Some(run.version)).await? else {
            // Another orchestrator may know this version; let the claim lapse for it.
            tracing::warn!(run = %run.id, saga = %run.saga, version = run.version,
                "no definition for this saga version here; leaving the run for an orchestrator that has it");
            return Ok(());
        };
        let mut pending = Pending::default();
        self.interrupted(&definition, &mut run, &mut pending);
        loop {
            let now = self.clock.now();
            let due_at = match state::next(&definition, &run, now) {
                Next::Become(state, reason) => {
                    self.become_state(&mut run, state, reason, now, &mut pending);
                    continue;
                }
                Next::Start(invocations) if !self.stopping.load(Ordering::SeqCst) => {
                    let (calls, longest) =
                        self.plan(&definition, &mut run, invocations, now, &mut pending);
                    let write = self.write_of(&run, now, Some(longest + self.config.lease_margin));
                    if !self.commit(run.fence, pending.take(write)).await? {
                        return Ok(());
                    }
                    let answers = self.call_all(&run.saga, calls).await;
                    self.record_answers(&mut run, answers, &mut pending);
                    continue;
                }
                // Stopping: record what is done and hand the run back, due now.
                Next::Start(_) | Next::Idle => now,
                Next::Wait(at) => at,
            };
            let mut write = self.write_of(&run, now, None);
            write.due_at = due_at;
            self.commit(run.fence, pending.take(write)).await?;
            return Ok(());
        }
    }

    /// Attempts recorded as started whose outcome was never recorded: their orchestrator died
    /// or lost the claim mid-call, and the participant may or may not have applied them. Each
    /// is recorded as failed with an unknown outcome, to be retried under the same key.
    fn interrupted(&self, definition: &Definition, run: &mut RunRecord, pending: &mut Pending) {
        let now = self.clock.now();
        let interrupted: Vec<(String, Phase)> = run
            .steps
            .iter()
            .filter(|(_, r)| r.status == StepStatus::Started)
            .map(|(k, _)| k.clone())
            .collect();
        for (name, phase) in interrupted {
            let Some((_, def)) = definition.step(&name) else {
                continue;
            };
            let policy = *def.policy(phase);
            let mut record = run.step(&name, phase);
            let message = format!(
                "attempt {} was interrupted (its orchestrator stopped before recording the outcome, which is unknown)",
                record.attempts
            );
            let delay = self.backoff(&policy, record.attempts);
            let failed = Err(StepError::Retry(message.clone()));
            state::finish(&mut record, &policy, failed, delay, now);
            let mut event = step_event(
                run,
                outcome_event(&record),
                now,
                (&name, phase),
                record.attempts,
            );
            event.detail = Some(message);
            pending.events.push(event);
            pending.step(run, &name, phase, record);
        }
    }

    /// The run moves to `state`.
    fn become_state(
        &self,
        run: &mut RunRecord,
        state: RunState,
        reason: Option<String>,
        now: OffsetDateTime,
        pending: &mut Pending,
    ) {
        run.state = state;
        // The run's error says why it is where it is now: none once completed.
        run.error = reason.clone();
        let mut event = Event::new(run, become_event(state), now);
        event.detail = reason;
        pending.events.push(event);
        if state != RunState::Compensating && state != RunState::Running {
            self.stats.finished.fetch_add(1, Ordering::Relaxed);
            metrics::finished(&run.saga, state);
        }
    }

    /// Records the start of each invocation's next attempt and prepares its call; returns the
    /// calls and the longest timeout among them.
    fn plan(
        &self,
        definition: &Definition,
        run: &mut RunRecord,
        invocations: Vec<(Arc<str>, Phase)>,
        now: OffsetDateTime,
        pending: &mut Pending,
    ) -> (Vec<Planned>, Duration) {
        let mut longest = Duration::ZERO;
        let mut calls = Vec::new();
        let outputs_json = Arc::new(run.outputs());
        let outputs = Arc::new(
            outputs_json
                .iter()
                .map(|(name, output)| (name.clone(), output.to_value()))
                .collect::<BTreeMap<_, _>>(),
        );
        let input = Arc::new(run.input.to_value());
        for (name, phase) in invocations {
            let Some((_, def)) = definition.step(&name) else {
                continue;
            };
            let Some(invoker) = def.invoker(phase).cloned() else {
                continue;
            };
            let policy = *def.policy(phase);
            longest = longest.max(policy.timeout);
            let mut record = run.step(&name, phase);
            state::start(&mut record, now);
            let event = step_event(run, "step_started", now, (&name, phase), record.attempts);
            pending.events.push(event);
            let call = Call {
                run_id: run.id,
                saga: run.saga.clone(),
                version: run.version,
                step: name.clone(),
                phase,
                attempt: record.attempts,
                // A claim's fence starts at 1 and only grows.
                fencing_token: u64::try_from(run.fence).unwrap_or(0),
                idempotency_key: Call::key_for(run.id, &name, phase),
                input: input.clone(),
                outputs: outputs.clone(),
                input_json: run.input.clone(),
                outputs_json: outputs_json.clone(),
                traceparent: run.traceparent.clone(),
            };
            pending.step(run, &name, phase, record);
            calls.push(Planned {
                name,
                phase,
                policy,
                invoker,
                call,
            });
        }
        (calls, longest)
    }

    /// Makes the calls at once, each bounded by its timeout; a panic or a timeout is a
    /// retryable failure.
    async fn call_all(&self, saga: &str, calls: Vec<Planned>) -> Vec<Answered> {
        futures::future::join_all(calls.into_iter().map(|planned| {
            let clock = self.clock.clone();
            async move {
                let Planned { name, phase, .. } = &planned;
                let (name, phase, policy) = (name.clone(), *phase, planned.policy);
                let started = clock.monotonic();
                let attempt = planned.call.attempt;
                let span = tracing::info_span!(
                    "saga step",
                    step = %name,
                    phase = %phase,
                    attempt,
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                );
                let mut call = planned.call;
                call.traceparent = onephase_trace::onward(&span, call.traceparent.as_deref());
                let invoked = AssertUnwindSafe(planned.invoker.invoke(call)).catch_unwind();
                let bounded =
                    tokio::time::timeout(policy.timeout, invoked).instrument(span.clone());
                let result = match bounded.await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(StepError::retry(format!(
                        "the {phase} of step {name:?} panicked"
                    ))),
                    Err(_) => Err(StepError::retry(format!(
                        "no answer within the {} ms timeout",
                        policy.timeout.as_millis()
                    ))),
                };
                let elapsed = clock.monotonic().saturating_duration_since(started);
                if let Err(e) = &result {
                    span.record("otel.status_code", "ERROR");
                    span.record("error", e.to_string());
                }
                metrics::attempt(saga, &name, phase, &result, elapsed);
                Answered {
                    name,
                    phase,
                    policy,
                    attempt,
                    result,
                    elapsed,
                }
            }
        }))
        .await
    }

    /// Records each call's outcome in the step's state, with its event.
    fn record_answers(&self, run: &mut RunRecord, answers: Vec<Answered>, pending: &mut Pending) {
        let now = self.clock.now();
        for answer in answers {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let (name, phase, policy) = (answer.name, answer.phase, answer.policy);
            let (result, elapsed) = (answer.result, answer.elapsed);
            let mut record = run.step(&name, phase);
            let detail = result.as_ref().err().map(ToString::to_string);
            let delay = self.backoff(&policy, record.attempts);
            state::finish(&mut record, &policy, result, delay, now);
            let event = outcome_event(&record);
            let mut event = step_event(run, event, now, (&name, phase), answer.attempt);
            event.elapsed_ms = Some(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
            event.detail = detail;
            pending.events.push(event);
            pending.step(run, &name, phase, record);
        }
    }

    fn write_of(&self, run: &RunRecord, now: OffsetDateTime, lease: Option<Duration>) -> RunWrite {
        RunWrite {
            id: run.id,
            state: run.state,
            error: run.error.clone(),
            due_at: now,
            lease,
            now,
        }
    }
}

fn outcome_event(record: &StepRecord) -> &'static str {
    match record.status {
        StepStatus::Succeeded => "step_succeeded",
        StepStatus::RetryWait => "step_retrying",
        _ => "step_failed",
    }
}

/// The event that announces a run entering `state`.
pub(crate) fn become_event(state: RunState) -> &'static str {
    match state {
        RunState::Running => "run_resumed",
        RunState::Compensating => "run_compensating",
        RunState::Completed => "run_completed",
        RunState::Compensated => "run_compensated",
        RunState::NeedsOperator => "run_needs_operator",
        RunState::Aborted => "run_aborted",
    }
}

//! Metrics, namespace `onephase_saga_*`.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use onephase_core::json::RawJson;

use crate::invoke::{Phase, StepError};
use crate::state::RunState;

pub(crate) fn started(saga: &str) {
    counter!("onephase_saga_runs_started_total", "saga" => saga.to_owned()).increment(1);
}

pub(crate) fn finished(saga: &str, state: RunState) {
    counter!("onephase_saga_runs_finished_total", "saga" => saga.to_owned(), "state" => state.as_str())
        .increment(1);
}

pub(crate) fn attempt(
    saga: &str,
    step: &str,
    phase: Phase,
    result: &Result<RawJson, StepError>,
    elapsed: Duration,
) {
    let outcome = match result {
        Ok(_) => "success",
        Err(StepError::Retry(_)) => "retry",
        Err(StepError::Fail(_)) => "fail",
    };
    let labels = [
        ("saga", saga.to_owned()),
        ("step", step.to_owned()),
        ("phase", phase.as_str().to_owned()),
    ];
    histogram!("onephase_saga_step_seconds", &labels).record(elapsed.as_secs_f64());
    let [saga, step, phase] = labels;
    let labels = [saga, step, phase, ("outcome", outcome.to_owned())];
    counter!("onephase_saga_step_attempts_total", &labels).increment(1);
}

pub(crate) fn lost_claim() {
    counter!("onephase_saga_lost_claims_total").increment(1);
}

pub(crate) fn round_error() {
    counter!("onephase_saga_round_errors_total").increment(1);
}

pub(crate) fn operator_action(action: &'static str) {
    counter!("onephase_saga_operator_actions_total", "action" => action).increment(1);
}

/// Sets `onephase_saga_runs{state}` for `states` from a count by state.
pub(crate) fn runs(
    states: impl Iterator<Item = RunState>,
    counts: &std::collections::BTreeMap<RunState, i64>,
) {
    for state in states {
        #[allow(clippy::cast_precision_loss)]
        let n = counts.get(&state).copied().unwrap_or(0) as f64;
        gauge!("onephase_saga_runs", "state" => state.as_str()).set(n);
    }
}

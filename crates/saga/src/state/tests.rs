//! The state machine's decisions, case by case.

use serde_json::Value;
use serde_json::json;

use super::*;
use crate::builder::{Saga, step};
use crate::invoke::Call;

async fn ok(_: Call) -> Result<Value, StepError> {
    Ok(Value::Null)
}

fn order() -> Definition {
    Saga::builder("order", 1)
        .step(step::compensatable("reserve", ok, ok))
        .parallel([
            step::compensatable("charge", ok, ok),
            step::compensatable("points", ok, ok),
        ])
        .pivot(step::pivot("ship", ok))
        .retriable(step::retriable("email", ok))
        .build()
        .expect("valid")
}

fn run() -> RunRecord {
    RunRecord {
        id: Uuid::nil(),
        saga: "order".into(),
        version: 1,
        state: RunState::Running,
        input: Arc::new(json!({}).into()),
        error: None,
        fence: 0,
        traceparent: None,
        steps: BTreeMap::new(),
    }
}

fn set(run: &mut RunRecord, step: &str, phase: Phase, status: StepStatus, definite: bool) {
    run.steps.insert(
        (step.to_owned(), phase),
        StepRecord {
            status,
            attempts: 1,
            definite,
            ..StepRecord::default()
        },
    );
}

fn names(next: &Next) -> Vec<String> {
    match next {
        Next::Start(v) => v.iter().map(|(n, p)| format!("{n}/{p}")).collect(),
        other => panic!("expected Start, got {other:?}"),
    }
}

#[test]
fn forward_runs_stages_in_order_and_groups_together() {
    let d = order();
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut r = run();
    assert_eq!(names(&next(&d, &r, now)), ["reserve/action"]);
    set(
        &mut r,
        "reserve",
        Phase::Action,
        StepStatus::Succeeded,
        false,
    );
    assert_eq!(
        names(&next(&d, &r, now)),
        ["charge/action", "points/action"]
    );
    set(
        &mut r,
        "charge",
        Phase::Action,
        StepStatus::Succeeded,
        false,
    );
    set(
        &mut r,
        "points",
        Phase::Action,
        StepStatus::Succeeded,
        false,
    );
    set(&mut r, "ship", Phase::Action, StepStatus::Succeeded, false);
    set(&mut r, "email", Phase::Action, StepStatus::Succeeded, false);
    assert_eq!(next(&d, &r, now), Next::Become(RunState::Completed, None));
}

#[test]
fn failure_compensates_in_reverse_only_what_may_have_applied() {
    let d = order();
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut r = run();
    set(
        &mut r,
        "reserve",
        Phase::Action,
        StepStatus::Succeeded,
        false,
    );
    set(&mut r, "charge", Phase::Action, StepStatus::Failed, false); // unknown effect
    set(&mut r, "points", Phase::Action, StepStatus::Failed, true); // refused
    assert!(matches!(
        next(&d, &r, now),
        Next::Become(RunState::Compensating, Some(_))
    ));
    r.state = RunState::Compensating;
    assert_eq!(names(&next(&d, &r, now)), ["charge/compensation"]);
    set(
        &mut r,
        "charge",
        Phase::Compensation,
        StepStatus::Succeeded,
        false,
    );
    assert_eq!(names(&next(&d, &r, now)), ["reserve/compensation"]);
    set(
        &mut r,
        "reserve",
        Phase::Compensation,
        StepStatus::Failed,
        false,
    );
    assert!(matches!(
        next(&d, &r, now),
        Next::Become(RunState::NeedsOperator, Some(_))
    ));
    set(
        &mut r,
        "reserve",
        Phase::Compensation,
        StepStatus::Resolved,
        false,
    );
    // Compensated, and why: the failed action, not the compensation an operator resolved.
    assert_eq!(
        next(&d, &r, now),
        Next::Become(
            RunState::Compensated,
            Some("step \"charge\" failed: ".to_owned())
        )
    );
}

#[test]
fn retriable_failure_after_the_pivot_parks() {
    let d = order();
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut r = run();
    for s in ["reserve", "charge", "points", "ship"] {
        set(&mut r, s, Phase::Action, StepStatus::Succeeded, false);
    }
    set(&mut r, "email", Phase::Action, StepStatus::Failed, true);
    assert!(matches!(
        next(&d, &r, now),
        Next::Become(RunState::NeedsOperator, Some(_))
    ));
}

#[test]
fn backoff_waits_and_attempt_limit_fails() {
    let now = OffsetDateTime::UNIX_EPOCH;
    let policy = Policy {
        max_attempts: Some(2),
        ..Policy::action()
    };
    let mut rec = StepRecord::default();
    start(&mut rec, now);
    finish(
        &mut rec,
        &policy,
        Err(StepError::retry("503")),
        Duration::from_secs(1),
        now,
    );
    assert_eq!(rec.status, StepStatus::RetryWait);
    let d = order();
    let mut r = run();
    r.steps
        .insert(("reserve".into(), Phase::Action), rec.clone());
    assert_eq!(next(&d, &r, now), Next::Wait(now + Duration::from_secs(1)));
    start(&mut rec, now);
    finish(
        &mut rec,
        &policy,
        Err(StepError::retry("503")),
        Duration::from_secs(1),
        now,
    );
    assert_eq!(rec.status, StepStatus::Failed);
    assert!(rec.may_have_applied());
}

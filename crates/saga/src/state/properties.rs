//! The state machine simulated with random outcomes: every run ends, compensations undo
//! exactly what may have happened, in reverse stage order.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::builder::{Saga, step};
use crate::invoke::Call;

async fn ok(_: Call) -> Result<Value, StepError> {
    Ok(Value::Null)
}

fn saga() -> Definition {
    let limited = |s: crate::builder::Compensatable| s.max_attempts(Some(3));
    Saga::builder("p", 1)
        .step(limited(step::compensatable("a", ok, ok)))
        .parallel([
            limited(step::compensatable("b", ok, ok)),
            limited(step::compensatable("c", ok, ok)),
        ])
        .pivot(step::pivot("d", ok).max_attempts(Some(3)))
        .retriable(step::retriable("e", ok).max_attempts(Some(3)))
        .build()
        .expect("valid")
}

fn outcome(code: u8) -> Result<Value, StepError> {
    match code % 4 {
        0 | 1 => Ok(json!(1)),
        2 => Err(StepError::retry("503")),
        _ => Err(StepError::fail("422")),
    }
}

proptest! {
    #[test]
    fn runs_end_and_compensate_in_reverse(codes in proptest::collection::vec(0_u8..8, 1..200)) {
        let d = saga();
        let mut run = RunRecord {
            id: Uuid::nil(),
            saga: "p".into(),
            version: 1,
            state: RunState::Running,
            input: Arc::new(RawJson::null()),
            error: None,
            fence: 0,
            traceparent: None,
            steps: BTreeMap::new(),
        };
        let mut now = OffsetDateTime::UNIX_EPOCH;
        let mut codes = codes.into_iter().cycle();
        let mut compensated: Vec<String> = Vec::new();
        let mut moves = 0;
        loop {
            moves += 1;
            prop_assert!(moves < 500, "the run does not end");
            match next(&d, &run, now) {
                Next::Become(state, _) => run.state = state,
                Next::Wait(at) => now = at,
                Next::Idle => break,
                Next::Start(invocations) => {
                    for (name, phase) in invocations {
                        let (_, def) = d.step(&name).expect("known step");
                        let mut rec = run.step(&name, phase);
                        start(&mut rec, now);
                        let code = codes.next().unwrap_or(0);
                        // Compensations fail only transiently, so runs can end compensated.
                        let result = match phase {
                            Phase::Compensation if code % 4 == 3 => Ok(json!(1)),
                            _ => outcome(code),
                        }
                        .map(RawJson::from);
                        finish(&mut rec, def.policy(phase), result, Duration::from_secs(1), now);
                        if phase == Phase::Compensation && rec.status == StepStatus::Succeeded {
                            compensated.push(name.to_string());
                        }
                        run.steps.insert((name.to_string(), phase), rec);
                    }
                }
            }
        }
        let action = |s: &str| run.step(s, Phase::Action);
        match run.state {
            RunState::Completed => {
                for s in ["a", "b", "c", "d", "e"] {
                    prop_assert_eq!(action(s).status, StepStatus::Succeeded);
                }
                prop_assert!(compensated.is_empty());
            }
            RunState::Compensated | RunState::NeedsOperator => {
                // Only compensatable steps that may have applied, each once, later stages first.
                let stage = |s: &str| match s { "a" => 0, _ => 1 };
                for pair in compensated.windows(2) {
                    prop_assert!(stage(&pair[0]) >= stage(&pair[1]), "order {:?}", compensated);
                }
                for s in &compensated {
                    prop_assert!(action(s).may_have_applied(), "{} compensated needlessly", s);
                }
                let mut unique = compensated.clone();
                unique.dedup();
                prop_assert_eq!(unique.len(), compensated.len());
                if run.state == RunState::Compensated {
                    for s in ["a", "b", "c"] {
                        prop_assert_eq!(
                            action(s).may_have_applied(),
                            compensated.iter().any(|c| c == s),
                            "{} applied but not compensated", s
                        );
                    }
                    prop_assert!(!action("e").may_have_applied(), "past the pivot but compensated");
                } else {
                    // Parked: a compensation ran out of attempts, or a retriable step was
                    // refused after the pivot.
                    let stuck = ["a", "b", "c"]
                        .iter()
                        .any(|s| run.step(s, Phase::Compensation).status == StepStatus::Failed);
                    let refused = action("d").status == StepStatus::Succeeded
                        && action("e").status == StepStatus::Failed;
                    prop_assert!(stuck != refused, "parked for no reason, or two");
                }
            }
            other => prop_assert!(false, "ended {other}"),
        }
    }
}

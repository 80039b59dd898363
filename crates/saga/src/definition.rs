//! A validated saga definition: stages of steps, each step of one of Richardson's kinds.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use onephase_core::{Backoff, Jitter};

use crate::invoke::{Phase, SharedInvoke};

/// Richardson's step kinds, which fix where a step may stand and whether it has a
/// compensation.
///
/// A saga is `compensatable* pivot? retriable*`: steps that can be undone, then at most one
/// go/no-go step, then steps that must eventually succeed. If the pivot succeeds the saga
/// runs to completion; if anything up to and including the pivot fails, the compensatable
/// steps before it are undone in reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = KindDocument))]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Has a compensation; stands before the pivot.
    Compensatable,
    /// The point of no return; no compensation (nothing after it is undone). At most one, alone
    /// in its stage.
    Pivot,
    /// After the pivot; no compensation; retried until it succeeds. A retriable step that
    /// fails for good parks the run for an operator, since the saga can no longer go back.
    Retriable,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Compensatable => "compensatable",
            StepKind::Pivot => "pivot",
            StepKind::Retriable => "retriable",
        })
    }
}

/// How one invocation (an action or a compensation) is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long one attempt may take; a timeout counts as a transient failure.
    pub timeout: Duration,
    /// Attempts before giving up; `None` retries forever (the default for retriable steps).
    pub max_attempts: Option<u32>,
    /// Delay between attempts.
    pub backoff: Backoff,
}

impl Policy {
    /// 30 s per attempt, 5 attempts, backoff from 100 ms to 30 s with full jitter.
    pub fn action() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_attempts: Some(5),
            backoff: default_backoff(),
        }
    }

    /// Like [`Policy::action`] with 10 attempts: a compensation is worth more persistence,
    /// and after the last one the run waits for an operator.
    pub fn compensation() -> Self {
        Self {
            max_attempts: Some(10),
            ..Self::action()
        }
    }

    /// Like [`Policy::action`] with no attempt limit.
    pub fn retriable() -> Self {
        Self {
            max_attempts: None,
            ..Self::action()
        }
    }
}

fn default_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(30),
        Jitter::Full,
    )
    .expect("100 ms to 30 s is a valid backoff")
}

/// One step of a definition.
#[derive(Clone)]
pub struct StepDef {
    pub(crate) name: Arc<str>,
    pub(crate) kind: StepKind,
    pub(crate) action: SharedInvoke,
    pub(crate) action_policy: Policy,
    pub(crate) compensation: Option<SharedInvoke>,
    pub(crate) compensation_policy: Policy,
}

impl StepDef {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// Whether it has a compensation.
    pub fn is_compensatable(&self) -> bool {
        self.compensation.is_some()
    }

    pub(crate) fn policy(&self, phase: Phase) -> &Policy {
        match phase {
            Phase::Action => &self.action_policy,
            Phase::Compensation => &self.compensation_policy,
        }
    }

    pub(crate) fn invoker(&self, phase: Phase) -> Option<&SharedInvoke> {
        match phase {
            Phase::Action => Some(&self.action),
            Phase::Compensation => self.compensation.as_ref(),
        }
    }
}

impl fmt::Debug for StepDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDef")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("action_policy", &self.action_policy)
            .field("compensation_policy", &self.compensation_policy)
            .finish_non_exhaustive()
    }
}

/// A saga definition that passed validation: a name, a version, and stages run in order,
/// the steps of one stage in parallel.
#[derive(Debug, Clone)]
pub struct Definition {
    pub(crate) name: Arc<str>,
    pub(crate) version: u32,
    pub(crate) stages: Vec<Vec<StepDef>>,
    /// Paths into the input that the definition's templates read (`input.a.b` as `["a","b"]`):
    /// a run whose input lacks one is refused at start.
    pub(crate) required_input: Vec<Vec<String>>,
}

/// Why a definition was refused. The message names the step and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saga definition{}: {message}", name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default())]
pub struct DefinitionError {
    name: Option<String>,
    message: String,
}

impl DefinitionError {
    pub(crate) fn new(name: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            name: name.map(str::to_owned),
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl onephase_core::Classify for DefinitionError {
    fn kind(&self) -> onephase_core::ErrorKind {
        onephase_core::ErrorKind::InvalidInput
    }
}

pub(crate) fn valid_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

/// One step's own rules: its name, its kind within its group, its compensation, its policies.
fn check_step(step: &StepDef, first: &StepDef, seen: &mut HashSet<Arc<str>>) -> Result<(), String> {
    if !valid_name(&step.name, 64, &[]) {
        return Err(format!(
            "step name {:?} must be 1 to 64 letters, digits, '_' or '-' (it is part of idempotency keys and URLs)",
            step.name
        ));
    }
    if !seen.insert(step.name.clone()) {
        return Err(format!("step name {:?} is used twice", step.name));
    }
    if step.kind != first.kind {
        return Err(format!(
            "parallel group with {:?} mixes {} and {} steps; a group holds steps of one kind",
            first.name, first.kind, step.kind
        ));
    }
    match (step.kind, step.compensation.is_some()) {
        (StepKind::Compensatable, false) => {
            return Err(format!(
                "compensatable step {:?} has no compensation",
                step.name
            ));
        }
        (StepKind::Pivot | StepKind::Retriable, true) => {
            return Err(format!(
                "{} step {:?} has a compensation; only compensatable steps are undone (a {} step stands at or after the point of no return)",
                step.kind, step.name, step.kind
            ));
        }
        _ => {}
    }
    for phase in [Phase::Action, Phase::Compensation] {
        let p = step.policy(phase);
        if p.timeout.is_zero() {
            return Err(format!(
                "step {:?}: {phase} timeout must be above zero",
                step.name
            ));
        }
        if p.max_attempts
            .is_some_and(|n| n == 0 || i32::try_from(n).is_err())
        {
            return Err(format!(
                "step {:?}: {phase} max_attempts must be 1 to {} (or unlimited)",
                step.name,
                i32::MAX
            ));
        }
    }
    Ok(())
}

impl Definition {
    /// Checks the rules every saga obeys, whichever way it was written.
    pub(crate) fn new(
        name: &str,
        version: u32,
        stages: Vec<Vec<StepDef>>,
        required_input: Vec<Vec<String>>,
    ) -> Result<Self, DefinitionError> {
        let err = |m: String| DefinitionError::new(Some(name), m);
        if !valid_name(name, 128, &['.']) {
            return Err(DefinitionError::new(
                None,
                format!("saga name {name:?} must be 1 to 128 letters, digits, '.', '_' or '-'"),
            ));
        }
        if version == 0 || i32::try_from(version).is_err() {
            return Err(err(format!("version must be 1 to {}", i32::MAX)));
        }
        if stages.is_empty() {
            return Err(err("a saga needs at least one step".into()));
        }
        let mut seen = HashSet::new();
        // 0: compensatable steps allowed; 1: after the pivot; 2: after a retriable step.
        let mut position = 0;
        for (i, stage) in stages.iter().enumerate() {
            let Some(first) = stage.first() else {
                return Err(err(format!("stage {} is an empty parallel group", i + 1)));
            };
            for step in stage {
                check_step(step, first, &mut seen).map_err(&err)?;
            }
            match first.kind {
                StepKind::Compensatable if position > 0 => {
                    return Err(err(format!(
                        "compensatable step {:?} comes after the pivot or a retriable step; nothing after the point of no return can be undone",
                        first.name
                    )));
                }
                StepKind::Compensatable => {}
                StepKind::Pivot if position > 0 => {
                    return Err(err(format!(
                        "pivot {:?} comes after another pivot or a retriable step; a saga has at most one pivot, before its retriable steps",
                        first.name
                    )));
                }
                StepKind::Pivot if stage.len() > 1 => {
                    return Err(err(format!(
                        "pivot {:?} is in a parallel group; the pivot stands alone",
                        first.name
                    )));
                }
                StepKind::Pivot => position = 1,
                StepKind::Retriable => position = 2,
            }
        }
        Ok(Self {
            name: name.into(),
            version,
            stages,
            required_input,
        })
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Its stages in order; the steps of one stage run in parallel.
    pub fn stages(&self) -> &[Vec<StepDef>] {
        &self.stages
    }

    pub(crate) fn step(&self, name: &str) -> Option<(usize, &StepDef)> {
        self.stages
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.iter().find(|d| &*d.name == name).map(|d| (i, d)))
    }

    /// Checks that `input` holds every path the templates read.
    pub(crate) fn check_input(&self, input: &onephase_core::json::RawJson) -> Result<(), String> {
        for path in &self.required_input {
            if onephase_core::json::lookup(input.as_raw(), path).is_none() {
                return Err(format!(
                    "input has no value at input.{}, which the definition's templates use",
                    path.join(".")
                ));
            }
        }
        Ok(())
    }
}

//! Sagas written in Rust, with the step-kind rules in the types.
//!
//! [`Saga::builder`] starts in a state that accepts compensatable steps; [`SagaBuilder::pivot`]
//! and [`SagaBuilder::retriable`] move it to a state that does not. A compensatable step after
//! the pivot therefore does not compile:
//!
//! ```compile_fail
//! use onephase_saga::{Saga, step, StepError};
//! # async fn ok(_: onephase_saga::Call) -> Result<serde_json::Value, StepError> { Ok(serde_json::Value::Null) }
//! let saga = Saga::builder("order", 1)
//!     .pivot(step::pivot("charge", ok))
//!     .step(step::compensatable("reserve", ok, ok)); // no `step` after the pivot
//! ```
//!
//! Nor does a pivot with a compensation:
//!
//! ```compile_fail
//! use onephase_saga::{step, StepError};
//! # async fn ok(_: onephase_saga::Call) -> Result<serde_json::Value, StepError> { Ok(serde_json::Value::Null) }
//! let pivot = step::pivot("charge", ok).compensate(ok); // a pivot has no compensation
//! ```
//!
//! What the types cannot see (duplicate or malformed step names, a zero timeout) is checked
//! by [`SagaBuilder::build`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use onephase_core::Backoff;

use crate::definition::{Definition, DefinitionError, Policy, StepDef, StepKind};
use crate::invoke::{Invoke, SharedInvoke};

/// Entry point of the Rust definition API.
#[derive(Debug)]
pub struct Saga;

impl Saga {
    /// A builder for version `version` of saga `name`.
    ///
    /// ```
    /// use onephase_saga::{Call, Saga, StepError, step};
    /// use serde_json::{Value, json};
    ///
    /// async fn reserve(call: Call) -> Result<Value, StepError> {
    ///     // call.idempotency_key is stable across retries: pass it to the participant.
    ///     Ok(json!({"reservation": call.idempotency_key}))
    /// }
    /// async fn release(_: Call) -> Result<Value, StepError> { Ok(Value::Null) }
    /// async fn charge(_: Call) -> Result<Value, StepError> { Err(StepError::fail("card declined")) }
    /// async fn notify(_: Call) -> Result<Value, StepError> { Ok(Value::Null) }
    ///
    /// let saga = Saga::builder("order", 1)
    ///     .step(step::compensatable("reserve", reserve, release))
    ///     .pivot(step::pivot("charge", charge))
    ///     .retriable(step::retriable("notify", notify))
    ///     .build()?;
    /// assert_eq!(saga.stages().len(), 3);
    /// # Ok::<(), onephase_saga::DefinitionError>(())
    /// ```
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder<Open> {
        SagaBuilder {
            name: name.into(),
            version,
            stages: Vec::new(),
            state: PhantomData,
        }
    }
}

/// Builder state: compensatable steps may still be added.
#[derive(Debug)]
pub struct Open;
/// Builder state: past the pivot (or a retriable step); only retriable steps may follow.
#[derive(Debug)]
pub struct Committed;

/// Builds a [`Definition`]; see [`Saga::builder`].
#[derive(Debug)]
pub struct SagaBuilder<S> {
    name: String,
    version: u32,
    stages: Vec<Vec<StepDef>>,
    state: PhantomData<S>,
}

impl<S> SagaBuilder<S> {
    fn push<T>(mut self, stage: Vec<StepDef>) -> SagaBuilder<T> {
        self.stages.push(stage);
        SagaBuilder {
            name: self.name,
            version: self.version,
            stages: self.stages,
            state: PhantomData,
        }
    }

    /// Adds a retriable step: from here on only retriable steps may follow.
    pub fn retriable(self, step: Retriable) -> SagaBuilder<Committed> {
        self.push(vec![step.0])
    }

    /// Adds retriable steps that run in parallel.
    pub fn parallel_retriable(
        self,
        steps: impl IntoIterator<Item = Retriable>,
    ) -> SagaBuilder<Committed> {
        self.push(steps.into_iter().map(|s| s.0).collect())
    }

    /// Validates and returns the definition.
    pub fn build(self) -> Result<Definition, DefinitionError> {
        Definition::new(&self.name, self.version, self.stages, Vec::new())
    }
}

impl SagaBuilder<Open> {
    /// Adds a compensatable step.
    pub fn step(self, step: Compensatable) -> SagaBuilder<Open> {
        self.push(vec![step.0])
    }

    /// Adds compensatable steps that run in parallel. If one fails, the others are allowed to
    /// finish, then every one that may have taken effect is compensated.
    pub fn parallel(self, steps: impl IntoIterator<Item = Compensatable>) -> SagaBuilder<Open> {
        self.push(steps.into_iter().map(|s| s.0).collect())
    }

    /// Adds the pivot: the go/no-go step. Nothing after it is compensated.
    pub fn pivot(self, step: Pivot) -> SagaBuilder<Committed> {
        self.push(vec![step.0])
    }
}

macro_rules! policy_setters {
    ($ty:ident, $phase:ident) => {
        impl $ty {
            /// How long one attempt of the action may take (default 30 s).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.0.action_policy.timeout = timeout;
                self
            }

            /// Attempts of the action before it counts as failed.
            pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
                self.0.action_policy.max_attempts = attempts;
                self
            }

            /// Delay between attempts of the action.
            pub fn backoff(mut self, backoff: Backoff) -> Self {
                self.0.action_policy.backoff = backoff;
                self
            }
        }
    };
}

/// A step with a compensation, for [`SagaBuilder::step`] and [`SagaBuilder::parallel`].
#[derive(Debug)]
pub struct Compensatable(StepDef);
/// The pivot, for [`SagaBuilder::pivot`]. It has no `compensate`.
#[derive(Debug)]
pub struct Pivot(StepDef);
/// A retriable step, for [`SagaBuilder::retriable`]. It has no `compensate`.
#[derive(Debug)]
pub struct Retriable(StepDef);

policy_setters!(Compensatable, action);
policy_setters!(Pivot, action);
policy_setters!(Retriable, action);

impl Compensatable {
    /// The compensation's attempt policy (default [`Policy::compensation`]). After its last
    /// attempt fails, the run waits for an operator.
    pub fn compensation_policy(mut self, policy: Policy) -> Self {
        self.0.compensation_policy = policy;
        self
    }
}

/// Constructors for the three step kinds.
pub mod step {
    use super::*;

    fn def(
        name: &str,
        kind: StepKind,
        action: SharedInvoke,
        compensation: Option<SharedInvoke>,
    ) -> StepDef {
        StepDef {
            name: name.into(),
            kind,
            action,
            action_policy: if kind == StepKind::Retriable {
                Policy::retriable()
            } else {
                Policy::action()
            },
            compensation,
            compensation_policy: Policy::compensation(),
        }
    }

    /// A step that `compensation` undoes.
    pub fn compensatable(
        name: &str,
        action: impl Invoke,
        compensation: impl Invoke,
    ) -> Compensatable {
        Compensatable(def(
            name,
            StepKind::Compensatable,
            Arc::new(action),
            Some(Arc::new(compensation)),
        ))
    }

    /// The go/no-go step.
    pub fn pivot(name: &str, action: impl Invoke) -> Pivot {
        Pivot(def(name, StepKind::Pivot, Arc::new(action), None))
    }

    /// A step after the pivot, retried until it succeeds (no attempt limit by default).
    pub fn retriable(name: &str, action: impl Invoke) -> Retriable {
        Retriable(def(name, StepKind::Retriable, Arc::new(action), None))
    }
}

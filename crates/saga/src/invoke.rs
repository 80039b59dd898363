//! What a step does: an [`Invoke`] receives a [`Call`] and answers with an output or a
//! [`StepError`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::json::RawJson;
use serde_json::Value;
use uuid::Uuid;

/// Which half of a step is being invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The forward action.
    Action,
    /// The compensation that semantically undoes the action.
    Compensation,
}

impl Phase {
    /// `action` or `compensation`, as stored and as it appears in idempotency keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "action" => Some(Phase::Action),
            "compensation" => Some(Phase::Compensation),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invocation of a step's action or compensation.
#[derive(Debug, Clone)]
pub struct Call {
    /// The saga run.
    pub run_id: Uuid,
    /// The saga's name.
    pub saga: Arc<str>,
    /// The definition version the run started with.
    pub version: u32,
    /// The step's name.
    pub step: Arc<str>,
    /// Action or compensation.
    pub phase: Phase,
    /// 1 for the first attempt; counts attempts across orchestrator restarts.
    pub attempt: u32,
    /// The fence of the claim that makes this call: it grows with every claim of the run
    /// (and every operator change to it), and the attempt was recorded under it before the
    /// call. A participant that remembers the highest token it saw per run (or per
    /// idempotency key) and refuses a lower one cannot be reached by an orchestrator that
    /// was paused past its claim. Sent over HTTP as `Fencing-Token`.
    pub fencing_token: u64,
    /// `<run-id>/<step>/<action|compensation>`: the same for every attempt of this
    /// invocation, whichever orchestrator makes it. A participant that applies each key at
    /// most once makes retries harmless.
    pub idempotency_key: String,
    /// The input the run was started with.
    pub input: Arc<Value>,
    /// Outputs of the steps that succeeded so far, by step name.
    pub outputs: Arc<BTreeMap<String, Value>>,
    /// The input exactly as it was given (a `Value` rounds numbers beyond an `f64`'s
    /// precision); templates read this.
    pub input_json: Arc<RawJson>,
    /// The outputs exactly as the steps answered them.
    pub outputs_json: Arc<BTreeMap<String, RawJson>>,
    /// The W3C `traceparent` of this attempt's span (or, when no OpenTelemetry layer records
    /// spans, the one the run was started in): a participant that continues it joins the
    /// run's trace. Sent over HTTP as `traceparent`.
    pub traceparent: Option<String>,
}

impl Call {
    /// The key for `phase` of `step` in run `run_id`.
    pub fn key_for(run_id: Uuid, step: &str, phase: Phase) -> String {
        format!("{run_id}/{step}/{phase}")
    }
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Transient: try again after a backoff (until the attempt limit). Whether the
    /// participant applied anything is unknown, so a compensatable step that ends here is
    /// compensated.
    #[error("{0}")]
    Retry(String),
    /// The participant refused and applied nothing (a declined card, no stock). The action
    /// needs no compensation; the saga compensates the steps before it.
    #[error("{0}")]
    Fail(String),
}

impl StepError {
    /// A transient failure.
    pub fn retry(message: impl Into<String>) -> Self {
        StepError::Retry(message.into())
    }

    /// A definite refusal.
    pub fn fail(message: impl Into<String>) -> Self {
        StepError::Fail(message.into())
    }
}

/// An action or compensation. Implemented for async closures
/// `Fn(Call) -> impl Future<Output = Result<Value, StepError>>` and for
/// [`HttpCall`](crate::HttpCall).
pub trait Invoke: Send + Sync + 'static {
    /// Performs the call and answers the step's output as JSON text (kept as it is, so that
    /// an HTTP participant's numbers reach later steps with every digit). The orchestrator
    /// bounds it with the step's timeout (a timeout counts as [`StepError::Retry`]).
    fn invoke(&self, call: Call) -> BoxFuture<'static, Result<RawJson, StepError>>;
}

impl<F, Fut> Invoke for F
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
{
    fn invoke(&self, call: Call) -> BoxFuture<'static, Result<RawJson, StepError>> {
        self(call).map(|r| r.map(RawJson::from)).boxed()
    }
}

/// A shared [`Invoke`].
pub type SharedInvoke = Arc<dyn Invoke>;

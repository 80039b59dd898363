use onephase_core::{Classify, ErrorKind};
use uuid::Uuid;

use crate::definition::DefinitionError;
use crate::state::RunState;

/// What went wrong with a saga operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The definition breaks a rule.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// (name, version) is already registered with a different document.
    #[error(
        "saga {name:?} version {version} is already registered with a different definition; definitions are immutable: register it as version {next}"
    )]
    VersionConflict {
        /// The saga.
        name: String,
        /// The version.
        version: u32,
        /// A version that is free.
        next: u32,
    },
    /// No such saga (or no such version of it).
    #[error("no saga {name:?}{}; register the definition first", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownSaga {
        /// The name asked for.
        name: String,
        /// The version asked for.
        version: Option<u32>,
    },
    /// No run with this id.
    #[error("no saga run {0}")]
    UnknownRun(Uuid),
    /// The run has no such step, or the step has nothing an operator can act on.
    #[error("{0}")]
    UnknownStep(String),
    /// The idempotency key was used to start a run with a different saga or input.
    #[error(
        "idempotency key {key:?} already started run {run} with a different {what}; use a new key for a different request"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The run it started.
        run: Uuid,
        /// `input` or `version`.
        what: &'static str,
    },
    /// The input is not what the definition needs.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An operator action on a run that is not waiting for one.
    #[error(
        "run {id} is {state}, not needs_operator; operator actions apply only to runs waiting for an operator"
    )]
    NotParked {
        /// The run.
        id: Uuid,
        /// Its state.
        state: RunState,
    },
    /// An event could not be built for the outbox (a topic that is not valid).
    #[error("saga event: {0}")]
    Event(onephase_core::ValidationError),
    /// The outbox refused an event.
    #[error(transparent)]
    Outbox(#[from] onephase_outbox::OutboxError),
    /// The database failed.
    #[error("saga store: {0}")]
    Store(sqlx::Error),
}

impl Classify for SagaError {
    fn kind(&self) -> ErrorKind {
        match self {
            SagaError::Definition(_) | SagaError::InvalidInput(_) | SagaError::Event(_) => {
                ErrorKind::InvalidInput
            }
            SagaError::VersionConflict { .. }
            | SagaError::IdempotencyConflict { .. }
            | SagaError::NotParked { .. } => ErrorKind::Conflict,
            SagaError::UnknownSaga { .. }
            | SagaError::UnknownRun(_)
            | SagaError::UnknownStep(_) => ErrorKind::NotFound,
            SagaError::Outbox(e) => e.kind(),
            SagaError::Store(e) => onephase_store::classify_sqlx(e),
        }
    }
}

impl From<onephase_core::ValidationError> for SagaError {
    fn from(e: onephase_core::ValidationError) -> Self {
        Self::Event(e)
    }
}

impl From<sqlx::Error> for SagaError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}

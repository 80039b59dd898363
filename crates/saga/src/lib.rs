//! Sagas: a business transaction across services as a sequence of local steps, each undone by
//! a compensation if a later one fails.
//!
//! A saga is not a transaction. There is no isolation: every step commits in its own service
//! as it runs, and other services see the intermediate states (a reserved item, a charged
//! card) before the saga finishes. There is no rollback either: a failure is answered by
//! *compensations*, new actions that semantically undo earlier ones (release the item, refund
//! the card), run in reverse order. And compensations can fail too, which is why a run that
//! cannot finish compensating parks in [`RunState::NeedsOperator`] instead of being dropped.
//!
//! # Step kinds
//!
//! Each step is one of Richardson's kinds ([`StepKind`]): *compensatable* steps first, then at
//! most one *pivot* (the go/no-go step; once it succeeds the saga must complete), then
//! *retriable* steps (retried until they succeed). A compensatable step after the pivot, or a
//! pivot with a compensation, is a definition error: it does not compile with the Rust
//! builder ([`Saga::builder`]) and is refused at registration for data definitions
//! ([`SagaSpec`]). Consecutive steps of one kind can form a parallel group.
//!
//! # Durability
//!
//! The [`Orchestrator`] keeps each run's state in the store (SQLite or PostgreSQL) and commits
//! every transition before the next call: the start of each attempt and its outcome. Each
//! transition is also written to the outbox in the same transaction (topic `onephase.saga` by
//! default, keyed by run id), so other services can follow a run's intermediate states in
//! order. Orchestrators share runs through claims with a lease; a dead one's runs are taken
//! over when the lease lapses.
//!
//! # What participants get
//!
//! Every invocation carries an idempotency key, `<run-id>/<step>/<action|compensation>`, the
//! same for every attempt whichever orchestrator makes it ([`Call::idempotency_key`]; the
//! `Idempotency-Key` header for HTTP participants). An attempt may be repeated (after a
//! timeout, or a crash between the call and the record of its outcome), so a participant must
//! apply a key at most once and answer a repeat with the first answer. A compensation may
//! arrive for an action the participant never applied (its outcome was unknown to the
//! orchestrator): it must then succeed without doing anything.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use onephase_saga::{Call, Orchestrator, OrchestratorConfig, Saga, StartRequest, StepError, step};
//! use onephase_store::Store;
//! use serde_json::{Value, json};
//!
//! async fn reserve(_: Call) -> Result<Value, StepError> { Ok(json!({"reservation": 7})) }
//! async fn release(_: Call) -> Result<Value, StepError> { Ok(Value::Null) }
//! async fn charge(_: Call) -> Result<Value, StepError> { Err(StepError::fail("card declined")) }
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate(&[onephase_outbox::migrations(), onephase_saga::migrations()]).await?;
//! let orchestrator = Orchestrator::new(store, OrchestratorConfig::default());
//! orchestrator.register(
//!     Saga::builder("order", 1)
//!         .step(step::compensatable("reserve", reserve, release))
//!         .pivot(step::pivot("charge", charge))
//!         .build()?,
//! )?;
//! let run = orchestrator.start(StartRequest::new("order", json!({"sku": "A-1"}))).await?;
//! while orchestrator.run_once().await? > 0 {}
//! let detail = orchestrator.admin().show(run.id).await?;
//! assert_eq!(detail.run.state, onephase_saga::RunState::Compensated);
//! # Ok(()) }
//! ```

mod admin;
mod builder;
mod definition;
mod error;
mod http;
mod invoke;
mod metrics;
mod orchestrator;
mod sql;
mod state;
mod template;

use onephase_store::{Migrations, sqlx};

pub use admin::{Audit, SagaAdmin};
pub use builder::{Committed, Compensatable, Open, Pivot, Retriable, Saga, SagaBuilder, step};
pub use definition::{Definition, DefinitionError, Policy, StepDef, StepKind};
pub use error::SagaError;
pub use http::{HttpCall, Permits, SagaSpec};
/// The definition document's OpenAPI schema, from the types its parser reads.
#[cfg(feature = "openapi")]
pub mod schema {
    pub use crate::http::{
        CallDocument, DefaultsDocument, KindDocument, MethodDocument, ParallelDocument,
        SagaDocument, StageDocument, StepDocument,
    };
}
pub use invoke::{Call, Invoke, Phase, SharedInvoke, StepError};
pub use orchestrator::{
    Orchestrator, OrchestratorConfig, OrchestratorStats, Registered, StartRequest, Started,
};
pub use sql::{DefinitionInfo, HistoryEntry, Retrying, RunDetail, RunFilter, RunSummary, StepView};
pub use state::{RunState, StepStatus};

/// The saga tables. They live beside the outbox tables (`onephase_outbox::migrations`), which
/// the orchestrator writes its events to: migrate both.
pub fn migrations() -> Migrations {
    Migrations::new(
        "saga",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}

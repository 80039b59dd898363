//! The authenticated JSON API under `/v1`. One module per capability; each contributes its
//! routes (with their OpenAPI description) through [`routes()`].

mod events;
mod kafka;
mod lease;
mod limit;
mod outbox;
mod partition;
mod replica;
mod responses;
mod saga;
mod tokens;
mod webhook;
mod whoami;

use utoipa_axum::router::OpenApiRouter;

use axum::http::HeaderMap;
use onephase_core::ErrorKind;

use crate::problem::Problem;
use crate::state::AppState;

pub use lease::{AcquireLease, ReleaseLease, RenewLease};
pub use limit::{CheckLimit, DecisionView};
pub use outbox::{AppendEvent, Appended, DeadRowView, LogRecordView, RelayStatus};
pub(crate) use partition::view as partition_view;
pub use saga::{
    DefinitionDocument, DefinitionView, OperatorNote, RegisteredView, RunDetailView, RunView,
    StartRun, StartedView,
};
pub use tokens::{CreateToken, CreatedToken};
pub use webhook::{DisableEndpoint, Replayed, RotateKey, SendMessage};
pub use whoami::Whoami;

/// Every `/v1` route, before authentication is layered on: each capability's module
/// contributes its own.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(whoami::routes())
        .merge(tokens::routes())
        .merge(outbox::routes())
        .merge(saga::routes())
        .merge(webhook::routes())
        .merge(lease::routes())
        .merge(limit::routes())
        .merge(events::routes())
        .merge(replica::routes())
        .merge(kafka::routes())
        .merge(partition::routes())
}

/// The W3C `traceparent` to store with the work this request starts (a saga run, a webhook
/// message), so that the work's spans continue the request's trace: the request span's own
/// when spans are exported, else the client's header as sent (a malformed one is dropped).
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    let received = headers
        .get(onephase_trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    onephase_trace::onward(&tracing::Span::current(), received)
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            Problem::from_kind(
                ErrorKind::InvalidInput,
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            )
        })
}

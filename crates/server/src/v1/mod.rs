//! The authenticated JSON API under `/v1`. One module per capability; each contributes its
//! routes (with their OpenAPI description) through [`routes()`].

mod lease;
mod limit;
mod outbox;
mod saga;
mod tokens;
mod webhook;
mod whoami;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::http::HeaderMap;
use onephase_core::ErrorKind;

use crate::app::AppState;
use crate::problem::Problem;

pub use lease::{AcquireLease, ReleaseLease, RenewLease};
pub use limit::{CheckLimit, DecisionView};
pub use outbox::{AppendEvent, Appended, DeadRowView, LogRecordView, RelayStatus};
pub use saga::{
    DefinitionDocument, DefinitionView, OperatorNote, RegisteredView, RunDetailView, RunView,
    StartRun, StartedView,
};
pub use tokens::{CreateToken, CreatedToken};
pub use webhook::{DisableEndpoint, Replayed, RotateKey, SendMessage};
pub use whoami::Whoami;

/// Every `/v1` route, before authentication is layered on.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whoami::whoami))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(outbox::append, outbox::read))
        .routes(routes!(outbox::relays))
        .routes(routes!(outbox::dead))
        .routes(routes!(outbox::retry))
        .routes(routes!(outbox::discard))
        .routes(routes!(saga::register, saga::definitions))
        .routes(routes!(saga::definition))
        .routes(routes!(saga::start))
        .routes(routes!(saga::runs))
        .routes(routes!(saga::run))
        .routes(routes!(saga::retry))
        .routes(routes!(saga::resolve))
        .routes(routes!(saga::abort))
        .routes(routes!(webhook::send, webhook::messages))
        .routes(routes!(webhook::message))
        .routes(routes!(webhook::create_endpoint, webhook::endpoints))
        .routes(routes!(
            webhook::endpoint,
            webhook::update_endpoint,
            webhook::delete_endpoint
        ))
        .routes(routes!(webhook::enable_endpoint))
        .routes(routes!(webhook::disable_endpoint))
        .routes(routes!(webhook::keys))
        .routes(routes!(webhook::rotate_key))
        .routes(routes!(webhook::attempts))
        .routes(routes!(webhook::dead_letters))
        .routes(routes!(webhook::replay))
        .routes(routes!(webhook::stats))
        .routes(routes!(lease::list))
        .routes(routes!(lease::acquire))
        .routes(routes!(lease::renew))
        .routes(routes!(lease::release))
        .routes(routes!(limit::list))
        .routes(routes!(limit::define, limit::remove))
        .routes(routes!(limit::check))
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

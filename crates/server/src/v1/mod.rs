//! The authenticated JSON API under `/v1`. One module per capability; each contributes its
//! routes (with their OpenAPI description) through [`routes()`].

mod outbox;
mod saga;
mod tokens;
mod webhook;
mod whoami;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

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
}

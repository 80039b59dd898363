//! `/v1/webhooks`: send messages, manage endpoints and their keys, and inspect attempts, dead
//! letters and replay them. One file per resource.

mod deliveries;
mod endpoints;
mod messages;

use onephase_core::ErrorKind;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::problem::Problem;
use crate::state::AppState;

pub use deliveries::Replayed;
pub use endpoints::{DisableEndpoint, RotateKey};
pub use messages::SendMessage;

/// The webhook routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(messages::send, messages::messages))
        .routes(routes!(messages::message))
        .routes(routes!(endpoints::create_endpoint, endpoints::endpoints))
        .routes(routes!(
            endpoints::endpoint,
            endpoints::update_endpoint,
            endpoints::delete_endpoint
        ))
        .routes(routes!(endpoints::enable_endpoint))
        .routes(routes!(endpoints::disable_endpoint))
        .routes(routes!(endpoints::keys))
        .routes(routes!(endpoints::rotate_key))
        .routes(routes!(deliveries::attempts))
        .routes(routes!(deliveries::dead_letters))
        .routes(routes!(deliveries::replay))
        .routes(routes!(deliveries::stats))
}

pub(super) fn check_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!("limit {limit} is out of range: use 1 to 1000"),
        ))
    }
}

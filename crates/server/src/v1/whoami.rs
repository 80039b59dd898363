use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role, TokenSource};
use crate::json::ApiJson;
use crate::state::AppState;
use crate::v1::responses::AuthErrors;

/// Who the presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// The token's name.
    #[schema(example = "admin")]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it is defined.
    pub source: TokenSource,
}

/// Identify the caller's token.
#[utoipa::path(
    get, path = "/v1/whoami", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The token's identity", body = Whoami),
        AuthErrors,
    )
)]
pub async fn whoami(Extension(caller): Extension<Caller>) -> ApiJson<Whoami> {
    ApiJson(Whoami {
        name: caller.name,
        role: caller.role,
        source: caller.source,
    })
}

/// The whoami routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Admin, AuthError, Role, TokenInfo, generate_token};
use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminErrors, AuthErrors};

/// A request to create a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique name: 1 to 64 letters, digits, '.', '_' or '-'.
    #[schema(
        example = "billing-service",
        pattern = "^[A-Za-z0-9._-]{1,64}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    /// What the token may do; `client` if omitted.
    #[serde(default = "client_role")]
    pub role: Role,
}

fn client_role() -> Role {
    Role::Client
}

/// A newly created token. The secret is in this response only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token's metadata.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer <token>`. Shown once; onephase keeps only
    /// its hash.
    #[schema(example = "op_3f2a...")]
    pub token: String,
}

/// Create a token (admin only).
#[utoipa::path(
    post, path = "/v1/tokens", tag = "auth", security(("bearer" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = CreatedToken),
        (status = 400, description = "Invalid name or malformed JSON", body = Problem,
         content_type = "application/problem+json"),
        AdminErrors,
        (status = 409, description = "The name is taken", body = Problem,
         content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem,
         content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem,
         content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn create_token(
    Admin(caller): Admin,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<Response, AuthError> {
    let now = state.clock().now();
    let token = generate_token(&mut rand::rng());
    let info = state
        .tokens()
        .create(&request.name, request.role, &token, now)
        .await?;
    tracing::info!(name = %info.name, role = %info.role, by = %caller.name, "token created");
    Ok((StatusCode::CREATED, ApiJson(CreatedToken { info, token })).into_response())
}

/// List tokens, without their secrets (admin only).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every token, revoked ones included", body = Vec<TokenInfo>),
        AdminErrors,
    )
)]
pub async fn list_tokens(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<TokenInfo>>, AuthError> {
    Ok(ApiJson(state.tokens().list().await?))
}

/// Revoke a token (admin only). It stops working at once; revoking twice is harmless.
#[utoipa::path(
    delete, path = "/v1/tokens/{name}", tag = "auth", security(("bearer" = [])),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked"),
        AuthErrors,
        (status = 403, description = "Not an admin token, or a configured token", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn revoke_token(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AuthError> {
    state.tokens().revoke(&name, state.clock().now()).await?;
    tracing::info!(%name, by = %caller.name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The tokens routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

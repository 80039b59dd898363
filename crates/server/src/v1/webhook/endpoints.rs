//! `/v1/webhooks/endpoints`: create, read, change, disable and delete endpoints; their keys.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use onephase_webhook::{
    DEFAULT_ROTATION_OVERLAP, Endpoint, EndpointPatch, EndpointSpec, VerifyingKey,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminBodyErrors, AdminErrors, AdminJsonErrors, AuthErrors};

use super::check_limit;

/// Create an endpoint (admin).
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints", tag = "webhook", security(("bearer" = [])),
    request_body = EndpointSpec,
    responses(
        (status = 201, description = "Created; its verifying key is at /v1/webhooks/endpoints/{id}/keys", body = Endpoint),
        (status = 400, description = "An invalid URL, filter, limit or key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or a URL that resolves to an address the server may not reach", body = Problem, content_type = "application/problem+json"),
        AdminBodyErrors,
    )
)]
pub async fn create_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<EndpointSpec>,
) -> Result<Response, Problem> {
    let endpoint = state.webhook().webhooks().create_endpoint(spec).await?;
    Ok((StatusCode::CREATED, ApiJson(endpoint)).into_response())
}

/// Paging for endpoint lists.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EndpointQuery {
    /// Only this application's endpoints.
    pub app: Option<String>,
    /// Endpoints after this id (paging).
    pub after: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// List endpoints by id.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints", tag = "webhook", security(("bearer" = [])),
    params(EndpointQuery),
    responses(
        (status = 200, description = "Endpoints by id", body = Vec<Endpoint>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn endpoints(
    State(state): State<AppState>,
    Query(query): Query<EndpointQuery>,
) -> Result<ApiJson<Vec<Endpoint>>, Problem> {
    let limit = check_limit(query.limit)?;
    let list = state
        .webhook()
        .webhooks()
        .endpoints(query.app.as_deref(), query.after.as_deref(), limit)
        .await?;
    Ok(ApiJson(list))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints/{id}", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let endpoint = state.webhook().webhooks().endpoint(&id).await?;
    Ok(ApiJson(endpoint))
}

/// Change an endpoint (admin); absent fields stay, `null` clears.
#[utoipa::path(
    patch, path = "/v1/webhooks/endpoints/{id}", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = EndpointPatch,
    responses(
        (status = 200, description = "The endpoint as changed", body = Endpoint),
        (status = 400, description = "An invalid value", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently; read it again", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or a URL the server may not reach", body = Problem, content_type = "application/problem+json"),
        AdminBodyErrors,
    )
)]
pub async fn update_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let endpoint = state
        .webhook()
        .webhooks()
        .update_endpoint(&id, patch)
        .await?;
    Ok(ApiJson(endpoint))
}

/// Delete an endpoint with its deliveries (admin).
#[utoipa::path(
    delete, path = "/v1/webhooks/endpoints/{id}", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn delete_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    state.webhook().webhooks().delete_endpoint(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Why an endpoint is disabled by hand.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableEndpoint {
    /// Shown with the endpoint (at most 1024 bytes).
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

/// Enable an endpoint (admin): new messages reach it and its pending deliveries resume.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{id}/enable", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The endpoint, enabled", body = Endpoint),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn enable_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let endpoint = state.webhook().webhooks().enable(&id).await?;
    Ok(ApiJson(endpoint))
}

/// Disable an endpoint (admin): new messages skip it, its pending deliveries wait.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{id}/disable", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = DisableEndpoint,
    responses(
        (status = 200, description = "The endpoint, disabled", body = Endpoint),
        (status = 400, description = "A reason over 1024 bytes", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn disable_endpoint(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DisableEndpoint>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let reason = body
        .reason
        .unwrap_or_else(|| format!("disabled by {}", caller.name));
    let endpoint = state.webhook().webhooks().disable(&id, &reason).await?;
    Ok(ApiJson(endpoint))
}

/// What a receiver verifies with (admin): each live key's `whsec_` secret or `whpk_` public key.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints/{id}/keys", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The live keys, newest last", body = Vec<VerifyingKey>),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn keys(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<VerifyingKey>>, Problem> {
    let keys = state.webhook().webhooks().verifying_keys(&id).await?;
    Ok(ApiJson(keys))
}

/// A key rotation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The new key, `whsec_...` or `whsk_...`; a new `whsec_` secret if absent.
    #[schema(pattern = r"^(whsec_|whsk_)[A-Za-z0-9+/=]+$")]
    pub key: Option<String>,
    /// How long the keys in use keep signing beside the new one, in seconds (default 86400,
    /// at most 30 days).
    #[schema(maximum = 2_592_000)]
    pub overlap_secs: Option<u64>,
}

/// Rotate an endpoint's signing key (admin).
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{id}/keys/rotate", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = RotateKey,
    responses(
        (status = 200, description = "What receivers verify the new key with", body = VerifyingKey),
        (status = 400, description = "An invalid key, an overlap over 30 days, or too many keys", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently; try again", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn rotate_key(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateKey>,
) -> Result<ApiJson<VerifyingKey>, Problem> {
    let overlap = body
        .overlap_secs
        .map_or(DEFAULT_ROTATION_OVERLAP, Duration::from_secs);
    let key = state
        .webhook()
        .webhooks()
        .rotate_key(&id, body.key, overlap)
        .await?;
    Ok(ApiJson(key))
}

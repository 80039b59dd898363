//! `/v1/limits`: define rate-limit policies and check keys against them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use onephase_limit::Decision;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::limit::{PolicySpec, PolicyView};
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminErrors, AdminJsonErrors, AuthErrors, JsonErrors};

/// A check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckLimit {
    /// What is limited: a client id, an IP address, a tenant... (1 to 512 bytes).
    #[schema(min_length = 1, max_length = 512)]
    pub key: String,
    /// Units this check spends (default 1; at most the policy's burst).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub cost: Option<u64>,
}

/// A decision, as the API answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionView {
    /// Whether the units were admitted (and counted).
    pub allowed: bool,
    /// The policy's limit.
    pub limit: u64,
    /// Units that could still be admitted now.
    pub remaining: u64,
    /// Milliseconds until nothing is counted against the key.
    pub reset_ms: u64,
    /// When refused: milliseconds until the same check could be admitted.
    pub retry_after_ms: Option<u64>,
    /// `failed_open` or `failed_closed` when the store could not be asked.
    #[schema(value_type = Option<String>)]
    pub fallback: Option<onephase_limit::Fallback>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<Decision> for DecisionView {
    fn from(d: Decision) -> Self {
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: ms(d.reset_after),
            retry_after_ms: d.retry_after.map(ms),
            fallback: d.fallback,
        }
    }
}

/// Check a key against a policy: spends `cost` units if admitted.
#[utoipa::path(
    post, path = "/v1/limits/{policy}/check", tag = "limit", security(("bearer" = [])),
    params(("policy" = String, Path, description = "The policy's name", pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    request_body = CheckLimit,
    responses(
        (status = 200, description = "The decision: `allowed` says whether the units were admitted", body = DecisionView),
        (status = 400, description = "An invalid key or cost (over the policy's burst), or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such policy", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn check(
    State(state): State<AppState>,
    Path(policy): Path<String>,
    ApiJson(body): ApiJson<CheckLimit>,
) -> Result<ApiJson<DecisionView>, Problem> {
    let decision = state
        .limit()
        .check(&policy, &body.key, body.cost.unwrap_or(1))
        .await?;
    Ok(ApiJson(decision.into()))
}

/// Every policy, with this server's decision counts.
#[utoipa::path(
    get, path = "/v1/limits", operation_id = "list_limit_policies", tag = "limit", security(("bearer" = [])),
    responses(
        (status = 200, description = "Policies by name", body = Vec<PolicyView>),
        AuthErrors,
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<ApiJson<Vec<PolicyView>>, Problem> {
    let list = state.limit().list().await?;
    Ok(ApiJson(list))
}

/// Define or redefine a policy (admin). A redefined policy starts its counts afresh.
#[utoipa::path(
    put, path = "/v1/limits/{policy}", tag = "limit", security(("bearer" = [])),
    params(("policy" = String, Path, description = "The policy's name", pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    request_body = PolicySpec,
    responses(
        (status = 201, description = "Defined"),
        (status = 204, description = "Redefined"),
        (status = 400, description = "An invalid name, algorithm, limit, period or burst, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Defined in the configuration file", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn define(
    _admin: Admin,
    State(state): State<AppState>,
    Path(policy): Path<String>,
    ApiJson(spec): ApiJson<PolicySpec>,
) -> Result<StatusCode, Problem> {
    let now = state
        .clock()
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let new = state.limit().define(&policy, spec, &now).await?;
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// Remove a policy defined through the API (admin).
#[utoipa::path(
    delete, path = "/v1/limits/{policy}", tag = "limit", security(("bearer" = [])),
    params(("policy" = String, Path, description = "The policy's name", pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such policy", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Defined in the configuration file", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn remove(
    _admin: Admin,
    State(state): State<AppState>,
    Path(policy): Path<String>,
) -> Result<StatusCode, Problem> {
    state.limit().remove(&policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The limit routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(define, remove))
        .routes(routes!(check))
}

//! `/v1/replicas`: the watched replica clusters, and a wait for a consistency token that any
//! service can call before it reads a replica itself.

use std::time::Duration;

use axum::extract::State;
use onephase_replica::{ClusterStatus, Token};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AuthErrors, JsonErrors};

/// The longest wait a request may ask for.
const MAX_WAIT_MS: u64 = 30_000;

/// Every watched cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Replicas {
    /// The clusters, as their monitors last saw them.
    pub clusters: Vec<ClusterStatus>,
}

/// A wait for a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForToken {
    /// The consistency token (`op1.<system>.<timeline>.<position>`), as a response's
    /// `consistency-token` header or `take_token` gave it.
    #[schema(pattern = r"^op1\.[0-9a-f]{16}\.[0-9a-f]{8}\.[0-9a-f]{16}$")]
    pub token: String,
    /// The cluster; may be left out when the server watches one.
    pub cluster: Option<String>,
    /// How long to wait, in milliseconds (0 to 30,000; default 1,000).
    #[schema(minimum = 0, maximum = 30_000)]
    pub timeout_ms: Option<u64>,
}

/// Replicas that have replayed the token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reached {
    /// The cluster.
    pub cluster: String,
    /// The token waited for.
    pub token: String,
    /// In-rotation replicas that have replayed it: reads there see its writes.
    pub replicas: Vec<String>,
    /// How long the wait took, in milliseconds.
    pub waited_ms: u64,
}

/// The watched clusters: each replica's state, lag and replay position.
#[utoipa::path(
    get, path = "/v1/replicas", operation_id = "list_replicas", tag = "replica", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every watched cluster", body = Replicas),
        AuthErrors,
    )
)]
pub async fn list(State(state): State<AppState>) -> ApiJson<Replicas> {
    ApiJson(Replicas {
        clusters: state.replica().status(),
    })
}

/// Wait until a replica has replayed a consistency token.
#[utoipa::path(
    post, path = "/v1/replicas/wait", operation_id = "wait_for_replica", tag = "replica", security(("bearer" = [])),
    request_body = WaitForToken,
    responses(
        (status = 200, description = "These replicas have replayed the token: read there", body = Reached),
        (status = 400, description = "A malformed token, one of another cluster or ahead of the primary, a timeout over 30,000 ms, no cluster named while several (or none) are watched, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cluster", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The token predates a failover: read from the primary", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The cluster's primary has not been reached yet", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "No replica replayed it within the timeout: read from the primary", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<WaitForToken>,
) -> Result<ApiJson<Reached>, Problem> {
    let timeout_ms = body.timeout_ms.unwrap_or(1_000);
    if timeout_ms > MAX_WAIT_MS {
        return Err(Problem::from_kind(
            onephase_core::ErrorKind::InvalidInput,
            format!("timeout_ms is {timeout_ms}; at most {MAX_WAIT_MS}"),
        ));
    }
    let token: Token = body.token.parse().map_err(Problem::from)?;
    let router = state.replica().router(body.cluster.as_deref())?;
    let started = state.clock().monotonic();
    let replicas = router
        .wait(&token, Duration::from_millis(timeout_ms))
        .await?;
    let waited = state.clock().monotonic().saturating_duration_since(started);
    Ok(ApiJson(Reached {
        cluster: router.cluster().to_owned(),
        token: token.to_string(),
        replicas,
        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    }))
}

/// The replica routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(wait))
}

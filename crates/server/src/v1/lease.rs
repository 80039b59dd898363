//! `/v1/leases`: acquire, renew and release fenced leases, and list them.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use onephase_lease::{FencingToken, Grant, LeaseInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AuthErrors, JsonErrors};

/// Counts one request in `onephase_lease_operations_total{operation, outcome}`: `ok`,
/// `conflict` (held by someone else, or a token that is not the current grant), `refused`
/// (invalid input, unknown lease) or `error`.
fn counted<T>(operation: &'static str, result: Result<T, Problem>) -> Result<T, Problem> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(p) if p.status == 409 => "conflict",
        Err(p) if p.status < 500 => "refused",
        Err(_) => "error",
    };
    metrics::counter!("onephase_lease_operations_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
    result
}

/// A request for a lease.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireLease {
    /// Who asks: shown to others while held. 1 to 255 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub holder: String,
    /// How long the grant lasts unless renewed, in milliseconds (100 to 86,400,000).
    #[schema(minimum = 100, maximum = 86_400_000)]
    pub ttl_ms: u64,
    /// How long to wait for a held lease, in milliseconds (default 0: answer at once). A
    /// longer wait than the server's `lease.max_wait_ms` (30,000 by default, at most 600,000)
    /// is cut to it.
    #[schema(minimum = 0)]
    pub wait_ms: Option<u64>,
}

/// A renewal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewLease {
    /// The grant's fencing token.
    pub token: FencingToken,
    /// The new TTL from now, in milliseconds (100 to 86,400,000).
    #[schema(minimum = 100, maximum = 86_400_000)]
    pub ttl_ms: u64,
}

/// A release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseLease {
    /// The grant's fencing token.
    pub token: FencingToken,
}

/// Acquire a lease, at once or waiting up to `wait_ms`.
#[utoipa::path(
    post, path = "/v1/leases/{name}/acquire", tag = "lease", security(("bearer" = [])),
    params(("name" = String, Path, description = "The lease: 1 to 255 letters, digits and -_.:@/, not starting with /",
        min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9_.:@-][A-Za-z0-9_.:@/-]{0,254}$")),
    request_body = AcquireLease,
    responses(
        (status = 200, description = "Granted: send `token` with every write the lease protects", body = Grant),
        (status = 400, description = "An invalid name, holder, TTL or wait, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Held by someone else (after the wait, if any)", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn acquire(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AcquireLease>,
) -> Result<ApiJson<Grant>, Problem> {
    let service = state.lease();
    // Cut to the server's bound, as documented: a client asking to wait longer waits that long.
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(0)).min(service.max_wait());
    let ttl = Duration::from_millis(body.ttl_ms);
    let leases = service.leases();
    let guard = counted(
        "acquire",
        if wait.is_zero() {
            leases.try_acquire(&name, &body.holder, ttl).await
        } else {
            leases.acquire(&name, &body.holder, ttl, wait).await
        }
        .map_err(Problem::from),
    )?;
    // The HTTP holder keeps the token and renews by request; the guard's own deadline is
    // for in-process holders.
    Ok(ApiJson(guard.grant().clone()))
}

/// Renew a lease with its token.
#[utoipa::path(
    post, path = "/v1/leases/{name}/renew", tag = "lease", security(("bearer" = [])),
    params(("name" = String, Path, description = "The lease",
        min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9_.:@-][A-Za-z0-9_.:@/-]{0,254}$")),
    request_body = RenewLease,
    responses(
        (status = 200, description = "Renewed from now", body = Grant),
        (status = 400, description = "An invalid name or TTL, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No lease by that name was ever granted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The token is not the current grant: it lapsed, was released or is someone else's", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn renew(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RenewLease>,
) -> Result<ApiJson<Grant>, Problem> {
    let grant = counted(
        "renew",
        state
            .lease()
            .leases()
            .renew(&name, body.token, Duration::from_millis(body.ttl_ms))
            .await
            .map_err(Problem::from),
    )?;
    Ok(ApiJson(grant))
}

/// Release a lease with its token.
#[utoipa::path(
    post, path = "/v1/leases/{name}/release", tag = "lease", security(("bearer" = [])),
    params(("name" = String, Path, description = "The lease",
        min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9_.:@-][A-Za-z0-9_.:@/-]{0,254}$")),
    request_body = ReleaseLease,
    responses(
        (status = 204, description = "Released"),
        (status = 400, description = "An invalid name, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No lease by that name was ever granted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The token is not the current grant (someone else's, or lapsed and taken)", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn release(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ReleaseLease>,
) -> Result<StatusCode, Problem> {
    counted(
        "release",
        state
            .lease()
            .leases()
            .release(&name, body.token)
            .await
            .map_err(Problem::from),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every lease: holder while held, latest token, expiry.
#[utoipa::path(
    get, path = "/v1/leases", operation_id = "list_leases", tag = "lease", security(("bearer" = [])),
    responses(
        (status = 200, description = "Leases by name", body = Vec<LeaseInfo>),
        AuthErrors,
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<ApiJson<Vec<LeaseInfo>>, Problem> {
    let leases = state.lease().leases().list().await?;
    Ok(ApiJson(leases))
}

/// The lease routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(acquire))
        .routes(routes!(renew))
        .routes(routes!(release))
}

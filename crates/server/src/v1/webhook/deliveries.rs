//! `/v1/webhooks`: attempts, dead letters, replay, and per-endpoint statistics.

use std::time::Duration;

use axum::extract::{Query, State};
use onephase_core::ErrorKind;
use onephase_webhook::{AttemptView, DeliveryView, EndpointStats, Replay};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminJsonErrors, AuthErrors};

use super::check_limit;

/// Which attempts to list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// Only this message's attempts.
    pub message_id: Option<String>,
    /// Only this endpoint's attempts.
    pub endpoint_id: Option<String>,
    /// Attempts recorded before this one (paging; newest first).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// List attempts, newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/attempts", tag = "webhook", security(("bearer" = [])),
    params(AttemptQuery),
    responses(
        (status = 200, description = "Attempts, newest first", body = Vec<AttemptView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn attempts(
    State(state): State<AppState>,
    Query(query): Query<AttemptQuery>,
) -> Result<ApiJson<Vec<AttemptView>>, Problem> {
    let limit = check_limit(query.limit)?;
    if let Some(before) = query.before
        && before < 1
    {
        return Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!(
                "before {before} is not an attempt id (they start at 1): pass the id of the last attempt of the previous page"
            ),
        ));
    }
    let list = state
        .webhook()
        .webhooks()
        .attempts(
            query.message_id.as_deref(),
            query.endpoint_id.as_deref(),
            query.before,
            limit,
        )
        .await?;
    Ok(ApiJson(list))
}

/// Which dead letters to list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Only this endpoint's.
    pub endpoint_id: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// List dead letters: deliveries that will not be attempted again, newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/dead-letters", tag = "webhook", security(("bearer" = [])),
    params(DeadQuery),
    responses(
        (status = 200, description = "Dead deliveries, newest first", body = Vec<DeliveryView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadQuery>,
) -> Result<ApiJson<Vec<DeliveryView>>, Problem> {
    let limit = check_limit(query.limit)?;
    let list = state
        .webhook()
        .webhooks()
        .dead_letters(query.endpoint_id.as_deref(), limit)
        .await?;
    Ok(ApiJson(list))
}

/// How many deliveries a replay made pending again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// Deliveries pending again.
    pub replayed: u64,
}

/// Deliver again (admin): one message, an endpoint's dead letters, or everything since a time.
#[utoipa::path(
    post, path = "/v1/webhooks/replay", tag = "webhook", security(("bearer" = [])),
    request_body = Replay,
    responses(
        (status = 200, description = "How many deliveries are pending again", body = Replayed),
        (status = 400, description = "Neither a message, an endpoint nor a time named", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message or endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled; enable it first", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn replay(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Replay>,
) -> Result<ApiJson<Replayed>, Problem> {
    let replayed = state.webhook().webhooks().replay(&body).await?;
    Ok(ApiJson(Replayed { replayed }))
}

/// The stats window.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Attempts of the last this many seconds (1 to 604800, default 3600).
    #[param(minimum = 1, maximum = 604_800)]
    pub window_secs: Option<u64>,
}

/// Per endpoint: success rate and latency over a window, deliveries pending and dead.
#[utoipa::path(
    get, path = "/v1/webhooks/stats", tag = "webhook", security(("bearer" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "One entry per endpoint", body = Vec<EndpointStats>),
        (status = 400, description = "A window out of range", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    Query(query): Query<StatsQuery>,
) -> Result<ApiJson<Vec<EndpointStats>>, Problem> {
    let window = query.window_secs.unwrap_or(3600);
    if !(1..=604_800).contains(&window) {
        return Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!("window_secs {window} is out of range: use 1 to 604800"),
        ));
    }
    let stats = state
        .webhook()
        .webhooks()
        .stats(Duration::from_secs(window))
        .await?;
    Ok(ApiJson(stats))
}

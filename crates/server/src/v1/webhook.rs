//! `/v1/webhooks`: send messages, manage endpoints and their keys, and inspect attempts, dead
//! letters and replay them.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use onephase_core::ErrorKind;
use onephase_webhook::destination::DestinationError;
use onephase_webhook::{
    AttemptView, DEFAULT_ROTATION_OVERLAP, DeliveryView, Endpoint, EndpointPatch, EndpointSpec,
    EndpointStats, MessageView, NewMessage, Replay, Sent, VerifyingKey, WebhookError,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::Admin;
use crate::json::ApiJson;
use crate::problem::Problem;

fn problem(e: &WebhookError) -> Problem {
    match e {
        // A URL the policy refuses is a well-formed request the server will not carry out.
        WebhookError::Destination(DestinationError::Forbidden { .. }) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination-refused",
            "Destination refused",
            e.to_string(),
        ),
        _ => Problem::from_error(e),
    }
}

fn check_limit(limit: Option<u32>) -> Result<u32, Problem> {
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

/// A message to send.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The application whose endpoints receive it (default `default`).
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,128}$")]
    pub app: Option<String>,
    /// Its type, like `invoice.paid`: 1 to 256 visible ASCII characters.
    #[schema(min_length = 1, max_length = 256, pattern = r"^[\x21-\x7e]+$")]
    pub event_type: String,
    /// The event's data: any JSON value, sent as the body's `data` exactly as written (every
    /// digit of every number; whitespace between tokens removed).
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    /// Messages with the same key reach an ordered endpoint one after another.
    #[schema(min_length = 1, max_length = 256)]
    pub partition_key: Option<String>,
}

/// Send a message to every matching endpoint.
#[utoipa::path(
    post,
    path = "/v1/webhooks/messages",
    tag = "webhook",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Sending again with the same key (per application) returns the first message; another message under the key is refused with 409",
         min_length = 1, max_length = 255, pattern = r"^[\x21-\x7e]+$"),
    ),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Recorded: it is delivered to each endpoint that matched, at least once", body = Sent),
        (status = 200, description = "The idempotency key had already sent this message", body = Sent),
        (status = 400, description = "Malformed JSON, an invalid app, event type, key or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key sent another message", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The message body is over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<Response, Problem> {
    let message = NewMessage {
        app: body.app,
        event_type: body.event_type,
        payload: body.payload,
        partition_key: body.partition_key,
        idempotency_key: super::idempotency_key(&headers)?,
    };
    let sent = state
        .webhook()
        .webhooks()
        .send(&message)
        .await
        .map_err(|e| problem(&e))?;
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(sent)).into_response())
}

/// Paging for message lists.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    /// Only this application's messages.
    pub app: Option<String>,
    /// Messages sent before this one (paging; newest first).
    #[param(pattern = "^msg_[0-9a-fA-F]{32}$")]
    pub before: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// List messages, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/messages",
    tag = "webhook",
    security(("bearer" = [])),
    params(MessageQuery),
    responses(
        (status = 200, description = "Messages, newest first, without their deliveries", body = Vec<MessageView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    Query(query): Query<MessageQuery>,
) -> Result<ApiJson<Vec<MessageView>>, Problem> {
    let limit = check_limit(query.limit)?;
    // A cursor that names no message would silently page from anywhere.
    if let Some(before) = &query.before
        && !(before.len() == 36
            && before.starts_with("msg_")
            && before[4..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!(
                "before {before:?} is not a message id (msg_ and 32 hex digits): pass the id of the last message of the previous page"
            ),
        ));
    }
    let list = state
        .webhook()
        .webhooks()
        .messages(query.app.as_deref(), query.before.as_deref(), limit)
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(list))
}

/// A message, with where it stands at each endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhooks/messages/{id}",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The message's id (msg_...)")),
    responses(
        (status = 200, description = "The message and its deliveries", body = MessageView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<MessageView>, Problem> {
    let view = state
        .webhook()
        .webhooks()
        .message(&id)
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(view))
}

/// Create an endpoint (admin).
#[utoipa::path(
    post,
    path = "/v1/webhooks/endpoints",
    tag = "webhook",
    security(("bearer" = [])),
    request_body = EndpointSpec,
    responses(
        (status = 201, description = "Created; its verifying key is at /v1/webhooks/endpoints/{id}/keys", body = Endpoint),
        (status = 400, description = "An invalid URL, filter, limit or key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or a URL that resolves to an address the server may not reach", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<EndpointSpec>,
) -> Result<Response, Problem> {
    let endpoint = state
        .webhook()
        .webhooks()
        .create_endpoint(spec)
        .await
        .map_err(|e| problem(&e))?;
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
    get,
    path = "/v1/webhooks/endpoints",
    tag = "webhook",
    security(("bearer" = [])),
    params(EndpointQuery),
    responses(
        (status = 200, description = "Endpoints by id", body = Vec<Endpoint>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(list))
}

/// One endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhooks/endpoints/{id}",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let endpoint = state
        .webhook()
        .webhooks()
        .endpoint(&id)
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(endpoint))
}

/// Change an endpoint (admin); absent fields stay, `null` clears.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/endpoints/{id}",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = EndpointPatch,
    responses(
        (status = 200, description = "The endpoint as changed", body = Endpoint),
        (status = 400, description = "An invalid value", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently; read it again", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or a URL the server may not reach", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(endpoint))
}

/// Delete an endpoint with its deliveries (admin).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/endpoints/{id}",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    state
        .webhook()
        .webhooks()
        .delete_endpoint(&id)
        .await
        .map_err(|e| problem(&e))?;
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
    post,
    path = "/v1/webhooks/endpoints/{id}/enable",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The endpoint, enabled", body = Endpoint),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enable_endpoint(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Endpoint>, Problem> {
    let endpoint = state
        .webhook()
        .webhooks()
        .enable(&id)
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(endpoint))
}

/// Disable an endpoint (admin): new messages skip it, its pending deliveries wait.
#[utoipa::path(
    post,
    path = "/v1/webhooks/endpoints/{id}/disable",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = DisableEndpoint,
    responses(
        (status = 200, description = "The endpoint, disabled", body = Endpoint),
        (status = 400, description = "A reason over 1024 bytes", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
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
    let endpoint = state
        .webhook()
        .webhooks()
        .disable(&id, &reason)
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(endpoint))
}

/// What a receiver verifies with (admin): each live key's `whsec_` secret or `whpk_` public key.
#[utoipa::path(
    get,
    path = "/v1/webhooks/endpoints/{id}/keys",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    responses(
        (status = 200, description = "The live keys, newest last", body = Vec<VerifyingKey>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn keys(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<VerifyingKey>>, Problem> {
    let keys = state
        .webhook()
        .webhooks()
        .verifying_keys(&id)
        .await
        .map_err(|e| problem(&e))?;
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
    post,
    path = "/v1/webhooks/endpoints/{id}/keys/rotate",
    tag = "webhook",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id (ep_...)")),
    request_body = RotateKey,
    responses(
        (status = 200, description = "What receivers verify the new key with", body = VerifyingKey),
        (status = 400, description = "An invalid key, an overlap over 30 days, or too many keys", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently; try again", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(key))
}

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
    get,
    path = "/v1/webhooks/attempts",
    tag = "webhook",
    security(("bearer" = [])),
    params(AttemptQuery),
    responses(
        (status = 200, description = "Attempts, newest first", body = Vec<AttemptView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
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
    get,
    path = "/v1/webhooks/dead-letters",
    tag = "webhook",
    security(("bearer" = [])),
    params(DeadQuery),
    responses(
        (status = 200, description = "Dead deliveries, newest first", body = Vec<DeliveryView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
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
    post,
    path = "/v1/webhooks/replay",
    tag = "webhook",
    security(("bearer" = [])),
    request_body = Replay,
    responses(
        (status = 200, description = "How many deliveries are pending again", body = Replayed),
        (status = 400, description = "Neither a message, an endpoint nor a time named", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message or endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled; enable it first", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Replay>,
) -> Result<ApiJson<Replayed>, Problem> {
    let replayed = state
        .webhook()
        .webhooks()
        .replay(&body)
        .await
        .map_err(|e| problem(&e))?;
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
    get,
    path = "/v1/webhooks/stats",
    tag = "webhook",
    security(("bearer" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "One entry per endpoint", body = Vec<EndpointStats>),
        (status = 400, description = "A window out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
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
        .await
        .map_err(|e| problem(&e))?;
    Ok(ApiJson(stats))
}

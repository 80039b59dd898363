//! `/v1/webhooks/messages`: send a message, list and read messages with their deliveries.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use onephase_core::ErrorKind;
use onephase_webhook::{MessageView, NewMessage, Sent};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AuthErrors, JsonErrors};

use super::check_limit;

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
    post, path = "/v1/webhooks/messages", tag = "webhook", security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Sending again with the same key (per application) returns the first message; another message under the key is refused with 409",
         min_length = 1, max_length = 255, pattern = r"^[\x21-\x7e]+$"),
    ),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Recorded: it is delivered to each endpoint that matched, at least once", body = Sent),
        (status = 200, description = "The idempotency key had already sent this message", body = Sent),
        (status = 400, description = "Malformed JSON, an invalid app, event type, key or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key sent another message", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The message body is over the limit", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
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
        idempotency_key: crate::v1::idempotency_key(&headers)?,
        traceparent: crate::v1::traceparent(&headers),
    };
    let sent = state.webhook().webhooks().send(&message).await?;
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
    get, path = "/v1/webhooks/messages", tag = "webhook", security(("bearer" = [])),
    params(MessageQuery),
    responses(
        (status = 200, description = "Messages, newest first, without their deliveries", body = Vec<MessageView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
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
        .await?;
    Ok(ApiJson(list))
}

/// A message, with where it stands at each endpoint.
#[utoipa::path(
    get, path = "/v1/webhooks/messages/{id}", tag = "webhook", security(("bearer" = [])),
    params(("id" = String, Path, description = "The message's id (msg_...)")),
    responses(
        (status = 200, description = "The message and its deliveries", body = MessageView),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<MessageView>, Problem> {
    let view = state.webhook().webhooks().message(&id).await?;
    Ok(ApiJson(view))
}

//! `/v1/events`: append to streams with an expected version, read streams and the global
//! order, subscribe with Server-Sent Events, and operate document projections.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use onephase_core::ErrorKind;
use onephase_core::json::RawJson;
use onephase_events::{
    Appended, AsOf, AuditEntry, Document, DocumentDefinition, EventsError, ExpectedVersion,
    Explanation, Metadata, NewEvent, ProjectionStatus, RecordedEvent, StreamAppend,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AuthErrors, JsonErrors};

/// The longest consistency wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// An event to append.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Its id (a UUID; generated if absent). Send the same ids again to retry an append
    /// safely.
    pub id: Option<Uuid>,
    /// Its type: 1 to 200 letters, digits and `-_.:@`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema version of `data` (default: 1).
    pub schema_version: Option<u32>,
    /// Its data: any JSON, kept as written.
    #[schema(value_type = Object)]
    pub data: RawJson,
    /// Correlation, causation, traceparent and anything else to keep with it.
    #[serde(default)]
    pub metadata: Metadata,
    /// The data subject whose personal fields it holds.
    pub subject: Option<String>,
    /// Top-level fields of `data` that are personal data of `subject`: stored encrypted, read
    /// as `null` after the subject is forgotten.
    #[serde(default)]
    pub personal: Vec<String>,
}

/// The expected version of a stream: `"any"`, `"no_stream"`, or a number (its version).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExpectedInput {
    /// The stream must hold exactly this many events.
    Exact(u64),
    /// `any` or `no_stream`.
    Named(NamedExpectation),
}

/// A named expectation.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedExpectation {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
}

/// An append to one stream.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEvents {
    /// The version the stream must be at (default `"any"`); an `If-Match` header with the
    /// version (`If-Match: "3"`) says the same.
    pub expected_version: Option<ExpectedInput>,
    /// The events, in order (1 to 10,000).
    pub events: Vec<EventInput>,
}

impl EventInput {
    fn into_event(self) -> NewEvent {
        let mut event =
            NewEvent::from_json(self.event_type, self.data).with_metadata(self.metadata);
        if let Some(id) = self.id {
            event = event.with_id(id);
        }
        if let Some(version) = self.schema_version {
            event = event.with_schema_version(version);
        }
        if let Some(subject) = self.subject {
            event = event.with_personal_data(subject, self.personal);
        } else if !self.personal.is_empty() {
            // Refused by the store with its own message.
            event = event.with_personal_data("", self.personal);
        }
        event
    }
}

fn expected(body: Option<ExpectedInput>, headers: &HeaderMap) -> Result<ExpectedVersion, Problem> {
    let from_header = match headers.get(header::IF_MATCH) {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or_default().trim();
            let inner = text.trim_start_matches("W/").trim_matches('"');
            Some(inner.parse::<u64>().map_err(|_| {
                Problem::from_kind(
                    ErrorKind::InvalidInput,
                    format!("If-Match {text:?} is not a stream version: send the version in quotes, as `If-Match: \"3\"`"),
                )
            })?)
        }
    };
    Ok(match (from_header, body) {
        (Some(v), None) => ExpectedVersion::Exact(v),
        (Some(_), Some(_)) => {
            return Err(Problem::from_kind(
                ErrorKind::InvalidInput,
                "send the expected version once: in If-Match or in expected_version, not both",
            ));
        }
        (None, Some(ExpectedInput::Exact(v))) => ExpectedVersion::Exact(v),
        (None, Some(ExpectedInput::Named(NamedExpectation::NoStream))) => ExpectedVersion::NoStream,
        (None, Some(ExpectedInput::Named(NamedExpectation::Any)) | None) => ExpectedVersion::Any,
    })
}

/// Append events to a stream, checking its expected version.
#[utoipa::path(
    post, path = "/v1/events/streams/{stream}", operation_id = "append_events", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "The stream: <category>-<id>, 1 to 200 letters, digits and -_.:@"),
        ("If-Match" = Option<String>, Header, description = "The expected version, quoted (\"3\")")),
    request_body = AppendEvents,
    responses(
        (status = 201, description = "Appended; `position` is the consistency token; `ETag` is the stream's new version", body = Appended),
        (status = 200, description = "The same append again (the same event ids): nothing written, the first answer's positions, `repeated: true`", body = Appended),
        (status = 400, description = "An invalid stream, type, event or expectation, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The stream is not at the expected version (`ETag` carries its version), or an event id was used elsewhere", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "An event over the size limit", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AppendEvents>,
) -> Result<Response, Problem> {
    let expected = expected(body.expected_version, &headers)?;
    let events = body
        .events
        .into_iter()
        .map(EventInput::into_event)
        .collect();
    let append = StreamAppend::new(stream, expected, events);
    match state
        .events()
        .events()
        .append_all(std::slice::from_ref(&append))
        .await
    {
        Ok(appended) => {
            let version = appended.streams.first().map_or(0, |s| s.version);
            // 201 for a new append, 200 for the same append again (its ids), as every API
            // that takes a client's ids answers.
            let status = if appended.repeated {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let mut response = (status, ApiJson(appended)).into_response();
            response.headers_mut().insert(header::ETAG, etag(version));
            Ok(response)
        }
        Err(error @ EventsError::WrongExpectedVersion { actual, .. }) => {
            let mut response = Problem::from(error).into_response();
            response.headers_mut().insert(header::ETAG, etag(actual));
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Reading a stream.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Events after this version (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many (1 to 1000, default 100).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// As the stream was at this global position (time travel).
    pub as_of_position: Option<u64>,
    /// As the stream was at this time, RFC 3339 (time travel).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    pub as_of_time: Option<time::OffsetDateTime>,
}

fn default_limit() -> u32 {
    100
}

fn limit(limit: u32) -> Result<u32, Problem> {
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!("limit {limit} is out of range: use 1 to 1000"),
        ))
    }
}

/// Read a stream, in order.
#[utoipa::path(
    get, path = "/v1/events/streams/{stream}", operation_id = "read_stream", tag = "events", security(("bearer" = [])),
    params(("stream" = String, Path, description = "The stream"), StreamQuery),
    responses(
        (status = 200, description = "Its events after `after`; `ETag` is its version", body = Vec<RecordedEvent>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Problem> {
    let as_of = match (q.as_of_position, q.as_of_time) {
        (Some(_), Some(_)) => {
            return Err(Problem::from_kind(
                ErrorKind::InvalidInput,
                "give as_of_position or as_of_time, not both",
            ));
        }
        (Some(p), None) => AsOf::Position(p),
        (None, Some(t)) => AsOf::Time(t),
        (None, None) => AsOf::Now,
    };
    let events = state.events().events();
    let read = events
        .read_stream_as_of(&stream, q.after, limit(q.limit)?, as_of)
        .await?;
    let version = events.stream_version(&stream).await?.unwrap_or(0);
    let mut response = ApiJson(read).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

/// Reading the global order.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AllQuery {
    /// Events after this global position (default 0).
    #[serde(default)]
    pub after: u64,
    /// At most this many (1 to 1000, default 100).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Only streams of this category (`order` for `order-42`).
    pub category: Option<String>,
}

/// Read every stream in global order, after a position.
#[utoipa::path(
    get, path = "/v1/events/all", operation_id = "read_all_events", tag = "events", security(("bearer" = [])),
    params(AllQuery),
    responses(
        (status = 200, description = "Events after `after`, in global order", body = Vec<RecordedEvent>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    Query(q): Query<AllQuery>,
) -> Result<ApiJson<Vec<RecordedEvent>>, Problem> {
    let events = state.events().events();
    let limit = limit(q.limit)?;
    Ok(ApiJson(match &q.category {
        Some(category) => events.read_category(category, q.after, limit).await?,
        None => events.read_all(q.after, limit).await?,
    }))
}

/// A subscription.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    /// Start after this global position (default 0); a `Last-Event-ID` header wins.
    #[serde(default)]
    pub after: u64,
    /// Only streams of this category.
    pub category: Option<String>,
}

/// Subscribe to the global order with Server-Sent Events: catch-up, then live. Each event's
/// SSE `id` is its global position, so a standard client resumes with `Last-Event-ID`.
#[utoipa::path(
    get, path = "/v1/events/subscribe", operation_id = "subscribe_events", tag = "events", security(("bearer" = [])),
    params(SubscribeQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "A `text/event-stream`: `event` is the event type, `id` its position, `data` the event as JSON", content_type = "text/event-stream", body = String),
        (status = 400, description = "An invalid Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SubscribeQuery>,
) -> Result<Response, Problem> {
    let after = match headers.get("last-event-id") {
        None => q.after,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Problem::from_kind(
                    ErrorKind::InvalidInput,
                    "Last-Event-ID must be a global position (a number)",
                )
            })?,
    };
    let events = state.events().events().clone();
    let category = q.category;
    let stream = futures::stream::unfold(
        (events, after, Vec::<RecordedEvent>::new().into_iter()),
        move |(events, mut after, mut pending)| {
            let category = category.clone();
            async move {
                loop {
                    if let Some(event) = pending.next() {
                        after = event.position;
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        let sse = Event::default()
                            .id(event.position.to_string())
                            .event(event.event_type.clone())
                            .data(data);
                        return Some((Ok::<_, Infallible>(sse), (events, after, pending)));
                    }
                    let woken = onephase_events::appended_here();
                    let read = match &category {
                        Some(c) => events.read_category(c, after, 500).await,
                        None => events.read_all(after, 500).await,
                    };
                    match read {
                        Ok(batch) if !batch.is_empty() => pending = batch.into_iter(),
                        Ok(_) => {
                            // Appends by other processes are seen by polling.
                            tokio::select! {
                                () = woken => {}
                                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                            }
                        }
                        Err(e) => {
                            let sse = Event::default().event("error").data(e.to_string());
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return Some((Ok(sse), (events, after, pending)));
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Every projection's generations, parked ones first.
#[utoipa::path(
    get, path = "/v1/events/projections", operation_id = "list_projections", tag = "events", security(("bearer" = [])),
    responses((status = 200, description = "Projections with lag", body = Vec<ProjectionStatus>), AuthErrors)
)]
pub async fn projections(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<ProjectionStatus>>, Problem> {
    Ok(ApiJson(state.events().projections().list().await?))
}

/// A projection's generations and lag.
#[utoipa::path(
    get, path = "/v1/events/projections/{name}", operation_id = "projection_status", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    responses(
        (status = 200, description = "Its generations, live first", body = Vec<ProjectionStatus>),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn projection(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<ApiJson<Vec<ProjectionStatus>>, Problem> {
    Ok(ApiJson(state.events().projections().status(&name).await?))
}

/// The generation that carries a definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Defined {
    /// 1 for a new projection; a new generation (being rebuilt beside the live one) for a
    /// changed definition; the existing one for the same definition again.
    pub generation: u64,
}

/// Define a document projection (admin). A changed definition is built beside the live one
/// and switched when caught up.
#[utoipa::path(
    put, path = "/v1/events/projections/{name}", operation_id = "define_projection", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    request_body = DocumentDefinition,
    responses(
        (status = 200, description = "Defined", body = Defined),
        (status = 400, description = "An invalid definition", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rebuild is running, or the name belongs to a projection written in code", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn define(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(definition): ApiJson<DocumentDefinition>,
) -> Result<ApiJson<Defined>, Problem> {
    let generation = state
        .events()
        .projections()
        .define(&name, &definition, &caller.name)
        .await?;
    Ok(ApiJson(Defined { generation }))
}

/// Why an operator acts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorReason {
    /// Why: kept in the audit trail (1 to 2000 characters).
    pub reason: String,
}

/// Where a projection is after an operator's action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Acted {
    /// Its position (for `rebuild`: the new generation).
    pub position: u64,
}

/// Retry the event a projection is parked on (admin, audited).
#[utoipa::path(
    post, path = "/v1/events/projections/{name}/retry", operation_id = "retry_projection", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    request_body = OperatorReason,
    responses(
        (status = 200, description = "Unparked; it tries the event again", body = Acted),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is not parked", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn retry(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<OperatorReason>,
) -> Result<ApiJson<Acted>, Problem> {
    let position = state
        .events()
        .projections()
        .retry(&name, &caller.name, &body.reason)
        .await?;
    Ok(ApiJson(Acted { position }))
}

/// Skip the event a projection is parked on (admin, audited): it will never apply it.
#[utoipa::path(
    post, path = "/v1/events/projections/{name}/skip", operation_id = "skip_projection", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    request_body = OperatorReason,
    responses(
        (status = 200, description = "Moved past the event", body = Acted),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is not parked", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn skip(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<OperatorReason>,
) -> Result<ApiJson<Acted>, Problem> {
    let position = state
        .events()
        .projections()
        .skip(&name, &caller.name, &body.reason)
        .await?;
    Ok(ApiJson(Acted { position }))
}

/// Rebuild a projection blue/green (admin, audited): a new generation from position 0 beside
/// the live one, switched when caught up.
#[utoipa::path(
    post, path = "/v1/events/projections/{name}/rebuild", operation_id = "rebuild_projection", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    request_body = OperatorReason,
    responses(
        (status = 202, description = "Started; `position` is the new generation", body = Acted),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rebuild is already running", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn rebuild(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<OperatorReason>,
) -> Result<(StatusCode, ApiJson<Acted>), Problem> {
    let generation = state
        .events()
        .projections()
        .rebuild(&name, &caller.name, &body.reason)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(Acted {
            position: generation,
        }),
    ))
}

/// A row key.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// The row key.
    pub key: String,
}

/// The events that built one row of a projection, in order.
#[utoipa::path(
    get, path = "/v1/events/projections/{name}/explain", operation_id = "explain_row", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection"), KeyQuery),
    responses(
        (status = 200, description = "The row's events", body = Explanation),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn explain(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Result<ApiJson<Explanation>, Problem> {
    Ok(ApiJson(
        state.events().projections().explain(&name, &q.key).await?,
    ))
}

/// Reading a row, optionally waiting for a position.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DocumentQuery {
    /// Answer only once the projection has applied this position (an append's `position`):
    /// read your own writes.
    pub min_position: Option<u64>,
    /// How long to wait for `min_position`, in milliseconds (default 5,000, at most 30,000).
    pub wait_ms: Option<u64>,
}

fn bounded(wait_ms: Option<u64>) -> Duration {
    Duration::from_millis(wait_ms.unwrap_or(5_000)).min(MAX_WAIT)
}

/// A row of a document projection, optionally after the projection has applied a position.
#[utoipa::path(
    get, path = "/v1/events/projections/{name}/documents/{key}", operation_id = "read_document", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection"), ("key" = String, Path, description = "The row key"), DocumentQuery),
    responses(
        (status = 200, description = "The row", body = Document),
        (status = 404, description = "No such projection or row", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The projection is parked before `min_position`", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The projection had not applied `min_position` within the wait", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn document(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<DocumentQuery>,
) -> Result<ApiJson<Document>, Problem> {
    let projections = state.events().projections();
    if let Some(position) = q.min_position {
        projections
            .wait_for(&name, position, bounded(q.wait_ms))
            .await?;
    }
    projections
        .document(&name, &key)
        .await?
        .map(ApiJson)
        .ok_or_else(|| {
            Problem::from_kind(
                ErrorKind::NotFound,
                format!("projection {name:?} has no row {key:?}"),
            )
        })
}

/// A consistency wait.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    /// The position to wait for (an append's `position`).
    pub position: u64,
    /// How long to wait, in milliseconds (default 5,000, at most 30,000).
    pub timeout_ms: Option<u64>,
}

/// Wait until a projection has applied a position: read-your-writes for any reader.
#[utoipa::path(
    post, path = "/v1/events/projections/{name}/wait", operation_id = "wait_for_projection", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    request_body = WaitFor,
    responses(
        (status = 200, description = "Applied; `position` is where the projection is", body = Acted),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Parked before the position", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Not applied within the wait", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<WaitFor>,
) -> Result<ApiJson<Acted>, Problem> {
    let position = state
        .events()
        .projections()
        .wait_for(&name, body.position, bounded(body.timeout_ms))
        .await?;
    Ok(ApiJson(Acted { position }))
}

/// A projection's audit trail, newest first.
#[utoipa::path(
    get, path = "/v1/events/projections/{name}/audit", operation_id = "projection_audit", tag = "events", security(("bearer" = [])),
    params(("name" = String, Path, description = "The projection")),
    responses((status = 200, description = "Operator and projector actions", body = Vec<AuditEntry>), AuthErrors)
)]
pub async fn audit(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<ApiJson<Vec<AuditEntry>>, Problem> {
    Ok(ApiJson(
        state.events().projections().audit(&name, 100).await?,
    ))
}

/// What forgetting did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Forgotten {
    /// Events whose personal fields now read as `null`.
    pub events: u64,
}

/// Forget a data subject (admin): delete its key, so its personal fields read as `null`
/// everywhere from now on (crypto-shredding).
#[utoipa::path(
    post, path = "/v1/events/subjects/{subject}/forget", operation_id = "forget_subject", tag = "events", security(("bearer" = [])),
    params(("subject" = String, Path, description = "The data subject")),
    responses((status = 200, description = "Forgotten", body = Forgotten), AuthErrors)
)]
pub async fn forget(
    Admin(_caller): Admin,
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> Result<ApiJson<Forgotten>, Problem> {
    let events = state.events().events().forget(&subject).await?;
    Ok(ApiJson(Forgotten { events }))
}

/// The event routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(append, read_stream))
        .routes(routes!(read_all))
        .routes(routes!(subscribe))
        .routes(routes!(projections))
        .routes(routes!(projection, define))
        .routes(routes!(retry))
        .routes(routes!(skip))
        .routes(routes!(rebuild))
        .routes(routes!(explain))
        .routes(routes!(document))
        .routes(routes!(wait))
        .routes(routes!(audit))
        .routes(routes!(forget))
}

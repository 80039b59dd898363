//! `/v1/outbox`: append to and read the embedded log; `/v1/relays`: the configured outbox
//! relays, their dead letters and retries.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use onephase_core::{Envelope, MessageId};
use onephase_outbox::{DEFAULT_MAX_PAYLOAD, OutboxError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::outbox::OutboxSource;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminErrors, AuthErrors, JsonErrors};

/// An event to append to the embedded log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendEvent {
    /// Partition key: events with the same key keep their order. Omit for unordered events.
    #[schema(example = "order-42", min_length = 1, max_length = 1024)]
    pub key: Option<String>,
    /// The event body, any JSON value; stored as its JSON text without whitespace, every
    /// number exactly as written.
    #[schema(value_type = Value, example = json!({"order": 42}))]
    pub payload: Box<RawValue>,
    /// Headers: names of letters, digits, `.`, `_` and `-` (stored lowercase) to printable-ASCII
    /// values.
    #[serde(default)]
    #[schema(schema_with = headers_schema)]
    pub headers: BTreeMap<String, String>,
    /// The message id (a UUID; v7 recommended). Appending an id already in the topic returns
    /// the existing record's position: retries are safe. Generated when omitted.
    pub id: Option<Uuid>,
}

/// The header rules of [`onephase_core::limits`], as a JSON Schema.
fn headers_schema() -> utoipa::openapi::schema::Object {
    use onephase_core::limits::{MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_HEADERS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[A-Za-z0-9._-]{{1,{MAX_HEADER_NAME_LEN}}}$"))),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_HEADER_VALUE_LEN))
                .pattern(Some("^[\\t\\x20-\\x7e]*$")),
        ))
        .build()
}

/// Where an event landed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Appended {
    /// The message id.
    pub id: Uuid,
    /// The topic.
    pub topic: String,
    /// The record's position in the topic.
    pub position: i64,
}

/// One record of the embedded log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogRecordView {
    /// Position in the topic.
    pub position: i64,
    /// The message id.
    pub id: Uuid,
    /// The key, if any.
    pub key: Option<String>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The payload, when it is JSON (exactly as stored).
    #[schema(value_type = Option<Value>)]
    pub payload: Option<Box<RawValue>>,
    /// The payload in base64, when it is not JSON.
    pub payload_base64: Option<String>,
    /// When the event was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the log accepted it.
    #[serde(with = "time::serde::rfc3339")]
    pub appended_at: OffsetDateTime,
}

/// Paging through a topic or a dead-letter list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Return entries after this position (a log position, or a dead row's `seq`).
    #[serde(default)]
    pub after: i64,
    /// At most this many (1 to 1000, default 100).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: u32,
}

fn default_limit() -> u32 {
    100
}

impl Page {
    fn checked(&self) -> Result<u32, Problem> {
        if (1..=1000).contains(&self.limit) {
            Ok(self.limit)
        } else {
            Err(Problem::from_kind(
                onephase_core::ErrorKind::InvalidInput,
                format!("limit {} is out of range: use 1 to 1000", self.limit),
            ))
        }
    }
}

/// One configured relay and its outbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RelayStatus {
    /// The relay's name.
    pub name: String,
    /// Where it publishes (credentials shown as `***`).
    pub sink: String,
    /// `starting`, `running`, or `unavailable` while its source database or sink does not
    /// answer (it keeps trying).
    #[schema(pattern = "^(starting|running|unavailable)$")]
    pub state: String,
    /// Why it is unavailable, or why its outbox could not be read.
    pub error: Option<String>,
    /// Rows waiting to be published (absent while the source database cannot be read).
    pub pending: Option<i64>,
    /// Rows dead-lettered (absent while the source database cannot be read).
    pub dead: Option<i64>,
    /// Age of the oldest pending row, in seconds: the relay's lag.
    pub oldest_pending_seconds: Option<f64>,
    /// Rows this server's relay published since it started.
    pub published_total: u64,
    /// Failed publish attempts since it started.
    pub failed_total: u64,
}

/// A dead-lettered outbox row, as the API shows it.
pub use onephase_outbox::DeadRow as DeadRowView;

fn source<'a>(state: &'a AppState, name: &str) -> Result<&'a OutboxSource, Problem> {
    state.outbox().source(name).ok_or_else(|| {
        Problem::from_kind(
            onephase_core::ErrorKind::NotFound,
            format!("no relay named {name:?}; GET /v1/relays lists them"),
        )
    })
}

/// The outbox of relay `name`, or 503 while its source database was never reached.
fn admin_of<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<&'a onephase_outbox::OutboxAdmin, Problem> {
    source(state, name)?.admin().map_err(|error| {
        Problem::from_kind(
            onephase_core::ErrorKind::Unavailable,
            format!("relay {name:?} cannot read its outbox: {error}"),
        )
    })
}

/// Append an event to the embedded log.
#[utoipa::path(
    post, path = "/v1/outbox/{topic}", tag = "outbox", security(("bearer" = [])),
    params(("topic" = String, Path, description = "Letters, digits, '.', '_' and '-'; at most 249 characters; dots separate non-empty names",
            pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 249)),
    request_body = AppendEvent,
    responses(
        (status = 201, description = "Appended", body = Appended),
        (status = 200, description = "An event with this id and the same key, payload and headers was already there: its position", body = Appended),
        (status = 409, description = "Another event already has this id in the topic", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid topic, key, header or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body or payload too large", body = Problem, content_type = "application/problem+json"),
        JsonErrors,
    )
)]
pub async fn append(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    ApiJson(event): ApiJson<AppendEvent>,
) -> Result<Response, Problem> {
    let payload = onephase_core::json::compact(&event.payload)
        .get()
        .as_bytes()
        .to_vec();
    if payload.len() > DEFAULT_MAX_PAYLOAD {
        return Err(Problem::from(OutboxError::PayloadTooLarge {
            size: payload.len(),
            limit: DEFAULT_MAX_PAYLOAD,
        }));
    }
    let mut builder = Envelope::builder(topic, payload).created_at(state.clock().now());
    if let Some(key) = event.key {
        builder = builder.key(key);
    }
    for (name, value) in event.headers {
        builder = builder.header(name, value);
    }
    if let Some(id) = event.id {
        builder = builder.id(MessageId::from_uuid(id).map_err(OutboxError::Invalid)?);
    }
    let envelope = builder.build().map_err(OutboxError::Invalid)?;
    let placed = state
        .outbox()
        .log()
        .append_placed(std::slice::from_ref(&envelope))
        .await?;
    let Some(placed) = placed.first().copied() else {
        return Err(Problem::from_kind(
            onephase_core::ErrorKind::Internal,
            "the log placed nothing",
        ));
    };
    // One rule for every API that takes a client's id or key: 201 for new, 200 for the same
    // request again, 409 for another request under the same id.
    if !placed.new && !placed.same {
        return Err(Problem::from_kind(
            onephase_core::ErrorKind::Conflict,
            format!(
                "an event with id {} is already in topic {:?} with another key, payload or headers; give a new event a new id",
                envelope.id(),
                envelope.topic()
            ),
        ));
    }
    let status = if placed.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Appended {
        id: envelope.id().as_uuid(),
        topic: envelope.topic().to_owned(),
        position: placed.position,
    };
    Ok((status, ApiJson(body)).into_response())
}

/// Read a topic of the embedded log, in order.
#[utoipa::path(
    get, path = "/v1/outbox/{topic}", tag = "outbox", security(("bearer" = [])),
    params(("topic" = String, Path, description = "The topic", pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 249), Page),
    responses(
        (status = 200, description = "Records after `after`, oldest first", body = Vec<LogRecordView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Query(page): Query<Page>,
) -> Result<ApiJson<Vec<LogRecordView>>, Problem> {
    let limit = page.checked()?;
    // A name no envelope can have is an error, not an empty topic.
    onephase_core::validate_topic(&topic).map_err(OutboxError::Invalid)?;
    let records = state.outbox().log().read(&topic, page.after, limit).await?;
    Ok(ApiJson(
        records
            .into_iter()
            .map(|r| {
                let bytes = r.envelope.payload();
                let json = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| onephase_core::json::parse_raw(text).ok());
                let base64 = json
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(bytes));
                LogRecordView {
                    position: r.position,
                    id: r.envelope.id().as_uuid(),
                    key: r.envelope.key().map(str::to_owned),
                    headers: r.envelope.headers().clone(),
                    payload: json,
                    payload_base64: base64,
                    created_at: r.envelope.created_at(),
                    appended_at: r.appended_at,
                }
            })
            .collect(),
    ))
}

/// The configured outbox relays: lag, backlog, dead letters.
#[utoipa::path(
    get, path = "/v1/relays", tag = "outbox", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every configured relay, with its state and, where its source database answers, its backlog", body = Vec<RelayStatus>),
        AuthErrors,
    )
)]
pub async fn relays(State(state): State<AppState>) -> ApiJson<Vec<RelayStatus>> {
    let mut out = Vec::new();
    for s in state.outbox().sources() {
        let relay_state = s.state();
        let mut error = match &relay_state {
            crate::outbox::RelayState::Unavailable { error } => Some(error.clone()),
            _ => None,
        };
        let status = match s.admin() {
            Ok(admin) => match admin.status().await {
                Ok(status) => Some(status),
                Err(e) => {
                    error.get_or_insert_with(|| format!("reading its outbox failed: {e}"));
                    None
                }
            },
            Err(_) => None,
        };
        out.push(RelayStatus {
            name: s.name.clone(),
            sink: s.sink.clone(),
            state: relay_state.as_str().to_owned(),
            error,
            pending: status.as_ref().map(|s| s.pending),
            dead: status.as_ref().map(|s| s.dead),
            oldest_pending_seconds: status
                .as_ref()
                .and_then(|s| s.oldest_pending_age)
                .map(|d| d.as_secs_f64()),
            published_total: s.stats.published(),
            failed_total: s.stats.failed(),
        });
    }
    ApiJson(out)
}

/// Dead-lettered rows of one relay's outbox, oldest first.
#[utoipa::path(
    get, path = "/v1/relays/{name}/dead", tag = "outbox", security(("bearer" = [])),
    params(("name" = String, Path, description = "The relay"), Page),
    responses(
        (status = 200, description = "Dead rows after `after`", body = Vec<DeadRowView>),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such relay", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn dead(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<ApiJson<Vec<DeadRowView>>, Problem> {
    let limit = page.checked()?;
    let rows = admin_of(&state, &name)?.dead(page.after, limit).await?;
    Ok(ApiJson(rows))
}

/// Return a dead-lettered row to pending with a fresh attempt count (admin only).
#[utoipa::path(
    post, path = "/v1/relays/{name}/dead/{id}/retry", operation_id = "retry_dead_outbox_row", tag = "outbox", security(("bearer" = [])),
    params(("name" = String, Path, description = "The relay"), ("id" = Uuid, Path, description = "The row's message id")),
    responses(
        (status = 204, description = "Pending again"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such relay, or no dead row with this id", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn retry(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, Uuid)>,
) -> Result<StatusCode, Problem> {
    let admin = admin_of(&state, &name)?;
    admin.retry(id).await?;
    tracing::info!(relay = %name, %id, by = %caller.name, "dead outbox row returned to pending");
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a dead-lettered row for good, releasing the rows of its key behind it (admin only).
#[utoipa::path(
    delete, path = "/v1/relays/{name}/dead/{id}", tag = "outbox", security(("bearer" = [])),
    params(("name" = String, Path, description = "The relay"), ("id" = Uuid, Path, description = "The row's message id")),
    responses(
        (status = 204, description = "Discarded"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such relay, or no dead row with this id", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn discard(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, Uuid)>,
) -> Result<StatusCode, Problem> {
    let admin = admin_of(&state, &name)?;
    admin.discard(id).await?;
    tracing::warn!(relay = %name, %id, by = %caller.name, "dead outbox row discarded");
    Ok(StatusCode::NO_CONTENT)
}

/// The outbox routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(append, read))
        .routes(routes!(relays))
        .routes(routes!(dead))
        .routes(routes!(retry))
        .routes(routes!(discard))
}

//! `/v1/sagas`: register HTTP saga definitions and start runs; `/v1/saga-runs`: list and
//! inspect runs, and the operator actions on runs waiting for one.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onephase_core::ErrorKind;
use onephase_core::json::RawJson;
use onephase_saga::{Audit, RunFilter, RunState, SagaError, SagaSpec, StartRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Admin, Caller};
use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminErrors, AuthErrors, BodyErrors};

/// A registered definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisteredView {
    /// The saga's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// False when this exact document was already registered under this version.
    pub created: bool,
}

/// A stored definition's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionView {
    /// The saga's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// SHA-256 of the canonical JSON document.
    pub digest: String,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A stored definition document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionDocument {
    /// The saga's name.
    pub name: String,
    /// The version.
    pub version: u32,
    /// The document as registered (TOML converted to JSON).
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// A run to start.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The run's input: any JSON value; the definition's templates read it as `input.*` and
    /// pass numbers on with every digit they were written with.
    #[schema(value_type = Value)]
    pub input: RawJson,
    /// The definition version; the latest when omitted.
    #[schema(minimum = 1, maximum = 2_147_483_647)]
    pub version: Option<u32>,
}

/// A started run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StartedView {
    /// The run's id.
    pub id: Uuid,
    /// The version it runs on.
    pub version: u32,
    /// False when the idempotency key had already started it.
    pub created: bool,
    /// Its state now.
    #[schema(value_type = String, example = "running")]
    pub state: RunState,
}

/// A run without its steps, as the API shows it.
pub use onephase_saga::RunSummary as RunView;

/// A run with its steps and history, as the API shows it.
pub use onephase_saga::RunDetail as RunDetailView;

/// Which runs to list.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Only runs in this state: running, compensating, completed, compensated,
    /// needs_operator (or needs-operator) or aborted.
    #[param(
        pattern = "^(running|compensating|completed|compensated|needs_operator|needs-operator|aborted)$"
    )]
    pub state: Option<String>,
    /// Only runs of this saga.
    pub saga: Option<String>,
    /// Runs started before this run (paging; newest first).
    pub before: Option<Uuid>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Why an operator acts; kept in the run's history with the token's name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorNote {
    /// What was done, or why: not blank.
    #[schema(min_length = 1, max_length = 4096, pattern = r"\S")]
    pub note: String,
}

fn is_toml(headers: &HeaderMap) -> Option<bool> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(false),
        "application/toml" | "text/toml" => Some(true),
        _ => None,
    }
}

/// Register a saga definition (admin).
///
/// The body is the definition, as JSON (`Content-Type: application/json`) or TOML
/// (`application/toml`). Each (name, version) holds one document forever: registering the
/// same document again is a no-op, a different one is refused.
#[utoipa::path(
    post, path = "/v1/sagas", tag = "saga", security(("bearer" = [])),
    request_body(content = onephase_saga::schema::SagaDocument, description = "The definition (see docs/saga.md); TOML with the same shape as `application/toml`", content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = RegisteredView),
        (status = 200, description = "Already registered with this exact document", body = RegisteredView),
        (status = 400, description = "Invalid definition, or not valid JSON/TOML", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This version holds another document", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor TOML", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A call goes to an address participants may not be at (see saga.allow_networks)", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
pub async fn register(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let toml = is_toml(&headers).ok_or_else(|| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the definition as `Content-Type: application/json` or `application/toml`",
        )
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::from_kind(ErrorKind::InvalidInput, "the body is not UTF-8"))?;
    if !toml && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {e}"),
        ));
    }
    let spec = if toml {
        SagaSpec::from_toml(text)
    } else {
        SagaSpec::from_json(text)
    }
    .map_err(SagaError::from)?;
    state
        .saga()
        .check_destinations(&spec)
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination-refused",
                "Destination refused",
                format!(
                    "{e} (for saga participants, with `saga.allow_networks` in the server's configuration)"
                ),
            )
        })?;
    let registered = state.saga().orchestrator().register_spec(&spec).await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = RegisteredView {
        name: registered.name,
        version: registered.version,
        created: registered.created,
    };
    Ok((status, ApiJson(view)).into_response())
}

/// List registered saga definitions.
#[utoipa::path(
    get, path = "/v1/sagas", tag = "saga", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every (name, version)", body = Vec<DefinitionView>),
        AuthErrors,
    )
)]
pub async fn definitions(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<DefinitionView>>, Problem> {
    let list = state.saga().orchestrator().stored_definitions().await?;
    Ok(ApiJson(
        list.into_iter()
            .map(|d| DefinitionView {
                name: d.name,
                version: d.version,
                digest: d.digest,
                created_at: d.created_at,
            })
            .collect(),
    ))
}

/// Which version of a definition.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// The version; the latest when omitted.
    #[param(minimum = 1, maximum = 2_147_483_647)]
    pub version: Option<u32>,
}

/// Read a definition (its latest version, or `?version=`).
#[utoipa::path(
    get, path = "/v1/sagas/{name}", tag = "saga", security(("bearer" = [])),
    params(("name" = String, Path, description = "The saga's name"), VersionQuery),
    responses(
        (status = 200, description = "The document", body = DefinitionDocument),
        (status = 400, description = "Invalid version", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such saga or version", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn definition(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<ApiJson<DefinitionDocument>, Problem> {
    let (version, definition) = state
        .saga()
        .orchestrator()
        .stored_definition(&name, query.version)
        .await?;
    Ok(ApiJson(DefinitionDocument {
        name,
        version,
        definition,
    }))
}

/// Start a run of a saga.
#[utoipa::path(
    post, path = "/v1/sagas/{name}/runs", tag = "saga", security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The saga's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Starting again with the same key (per saga) returns the run it started; another input or version under the key is refused with 409",
         min_length = 1, max_length = 255, pattern = r"^[\x21-\x7e]+$"),
    ),
    request_body = StartRun,
    responses(
        (status = 201, description = "Started", body = StartedView),
        (status = 200, description = "The idempotency key had already started this run", body = StartedView),
        (status = 400, description = "Malformed JSON, or an Idempotency-Key that is not 1 to 255 visible ASCII characters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such saga or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key started a run with another input or version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The input lacks a value the definition reads, or JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
        BodyErrors,
    )
)]
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<Response, Problem> {
    let key = super::idempotency_key(&headers)?;
    let request = StartRequest {
        saga: name,
        version: body.version,
        input: body.input,
        idempotency_key: key,
        traceparent: super::traceparent(&headers),
    };
    let started = state
        .saga()
        .orchestrator()
        .start(request)
        .await
        .map_err(|e| match e {
            // The input is well-formed JSON that does not fit the definition: its shape.
            SagaError::InvalidInput(_) => Problem::for_status(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the JSON does not match the expected shape: {e}"),
            ),
            e => Problem::from(e),
        })?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = StartedView {
        id: started.id,
        version: started.version,
        created: started.created,
        state: started.state,
    };
    Ok((status, ApiJson(view)).into_response())
}

/// List runs, newest first (filter by state and saga).
#[utoipa::path(
    get, path = "/v1/saga-runs", tag = "saga", security(("bearer" = [])),
    params(RunQuery),
    responses(
        (status = 200, description = "Runs, newest first", body = Vec<RunView>),
        (status = 400, description = "Unknown state or invalid paging", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn runs(
    State(state): State<AppState>,
    Query(query): Query<RunQuery>,
) -> Result<ApiJson<Vec<RunView>>, Problem> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::from_kind(
            ErrorKind::InvalidInput,
            format!("limit {limit} is out of range: use 1 to 1000"),
        ));
    }
    let run_state = match query.state.as_deref() {
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            Problem::from_kind(
                ErrorKind::InvalidInput,
                format!(
                    "unknown state {s:?}: use running, compensating, completed, compensated, needs_operator or aborted"
                ),
            )
        })?),
        None => None,
    };
    let filter = RunFilter {
        state: run_state,
        saga: query.saga,
        before: query.before,
        limit,
    };
    let runs = state.saga().orchestrator().admin().list(&filter).await?;
    Ok(ApiJson(runs))
}

/// One run with its steps and history.
#[utoipa::path(
    get, path = "/v1/saga-runs/{id}", tag = "saga", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunDetailView),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<ApiJson<RunDetailView>, Problem> {
    let detail = state.saga().orchestrator().admin().show(id).await?;
    Ok(ApiJson(detail))
}

/// What every operator action can answer besides its result.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum OperatorErrors {
    /// Empty note, or not a UUID.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Missing or invalid token.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Not an admin token.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such run, or (resolve) no failed step of that name.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The run is not waiting for an operator.
    #[response(status = 409, content_type = "application/problem+json")]
    NotParked(Problem),
    /// Body is not JSON.
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
    /// JSON of the wrong shape.
    #[response(status = 422, content_type = "application/problem+json")]
    WrongShape(Problem),
}

async fn operator_action(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    run: impl AsyncFnOnce(onephase_saga::SagaAdmin, Audit) -> Result<(), SagaError>,
    note: String,
) -> Result<ApiJson<RunDetailView>, Problem> {
    let admin = state.saga().orchestrator().admin();
    run(admin.clone(), Audit::new(caller.name.clone(), note)).await?;
    let detail = admin.show(id).await?;
    Ok(ApiJson(detail))
}

/// Retry the failed compensation of a run waiting for an operator (admin).
#[utoipa::path(
    post, path = "/v1/saga-runs/{id}/retry", operation_id = "retry_saga_run", tag = "saga", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The run's id")),
    request_body = OperatorNote,
    responses(
        (status = 200, description = "The run, back to compensating (or running)", body = RunDetailView),
        OperatorErrors,
    )
)]
pub async fn retry(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<OperatorNote>,
) -> Result<ApiJson<RunDetailView>, Problem> {
    operator_action(
        &state,
        &caller,
        id,
        async move |admin, audit| admin.retry(id, &audit).await,
        body.note,
    )
    .await
}

/// Mark a failed step of a run waiting for an operator as resolved by hand (admin).
#[utoipa::path(
    post, path = "/v1/saga-runs/{id}/steps/{step}/resolve", tag = "saga", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The run's id"), ("step" = String, Path, description = "The step whose compensation (or retriable action) failed")),
    request_body = OperatorNote,
    responses(
        (status = 200, description = "The run, going on", body = RunDetailView),
        OperatorErrors,
    )
)]
pub async fn resolve(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path((id, step)): Path<(Uuid, String)>,
    ApiJson(body): ApiJson<OperatorNote>,
) -> Result<ApiJson<RunDetailView>, Problem> {
    operator_action(
        &state,
        &caller,
        id,
        async move |admin, audit| admin.resolve(id, &step, &audit).await,
        body.note,
    )
    .await
}

/// Abort the compensation of a run waiting for an operator; it ends `aborted` (admin).
#[utoipa::path(
    post, path = "/v1/saga-runs/{id}/abort", tag = "saga", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The run's id")),
    request_body = OperatorNote,
    responses(
        (status = 200, description = "The run, aborted", body = RunDetailView),
        OperatorErrors,
    )
)]
pub async fn abort(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<OperatorNote>,
) -> Result<ApiJson<RunDetailView>, Problem> {
    operator_action(
        &state,
        &caller,
        id,
        async move |admin, audit| admin.abort(id, &audit).await,
        body.note,
    )
    .await
}

/// The saga routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, definitions))
        .routes(routes!(definition))
        .routes(routes!(start))
        .routes(routes!(runs))
        .routes(routes!(run))
        .routes(routes!(retry))
        .routes(routes!(resolve))
        .routes(routes!(abort))
}

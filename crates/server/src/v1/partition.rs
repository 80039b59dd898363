//! `/v1/partitions`: partition maps (versioned, changed by compare-and-set) and online moves
//! of a range map's partition to another shard.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use onephase_core::{Classify as _, ErrorKind};
use onephase_partition::online::{MoveError, MoveSpec, MoveStatus};
use onephase_partition::store::{IndexedMove, MapVersion};
use onephase_partition::{MapSpec, PartitionMap, Scheme};
use onephase_saga::StartRequest;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Admin;
use crate::json::ApiJson;
use crate::partition::MOVE_SAGA;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::{AdminJsonErrors, AuthErrors};

/// Every map, at its current version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MapList {
    /// The maps, by name.
    pub maps: Vec<MapSpec>,
    /// The shards this server can move data between (`[partition.shards]`).
    pub shards: Vec<String>,
}

/// A map to create (version 1) or change (the current version plus one).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMap {
    /// The version this writes: 1 for a new map, else the current one plus one.
    #[schema(minimum = 1)]
    pub version: u64,
    /// How keys become partitions.
    pub scheme: Scheme,
    /// The owner of each partition, in partition order.
    pub owners: Vec<String>,
}

/// Where a key goes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteView {
    /// The key.
    pub key: String,
    /// Its partition.
    pub partition: u32,
    /// The partition's owner.
    pub owner: String,
    /// The map version: present it where you write (`admit`).
    pub version: u64,
}

/// The key to route.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RouteQuery {
    /// The key.
    pub key: String,
}

/// Every version of a map.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MapHistory {
    /// Oldest first.
    pub versions: Vec<MapVersion>,
}

/// A move of one partition of a range map to another shard.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMove {
    /// The partition to move.
    pub partition: u32,
    /// The shard it moves to (a name of `[partition.shards]`).
    pub to: String,
    /// The table whose rows of the partition's range move (`name` or `schema.name`), with the
    /// same definition in both shards.
    pub table: String,
    /// Its key column: unique, integer or text, the key the map partitions.
    pub key: String,
    /// Rows per chunk (default 10,000; 1 to 1,000,000).
    pub chunk_rows: Option<u32>,
    /// At most this many rows copied per second (default: no limit).
    pub rows_per_second: Option<u32>,
}

/// A move: what it moves, the saga run that drives it, and its progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoveView {
    /// What moves, from where to where.
    pub spec: MoveSpec,
    /// The saga run (`GET /v1/sagas/runs/{id}` shows its steps).
    pub saga_run: Option<Uuid>,
    /// When it was started, in Unix milliseconds.
    pub created_ms: i64,
    /// Whether it ended (done or rolled back).
    pub ended: bool,
    /// Its progress as the source shard records it.
    pub status: Option<MoveStatus>,
    /// Why the progress could not be read (the source shard down), if so.
    pub status_error: Option<String>,
}

/// The moves of a map.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoveList {
    /// Newest first.
    pub moves: Vec<MoveView>,
}

/// List the maps and the shards.
#[utoipa::path(
    get, path = "/v1/partitions", operation_id = "list_partition_maps", tag = "partition", security(("bearer" = [])),
    responses((status = 200, description = "Every map", body = MapList), AuthErrors)
)]
pub async fn list(State(state): State<AppState>) -> Result<ApiJson<MapList>, Problem> {
    let service = state.partition();
    Ok(ApiJson(MapList {
        maps: service.maps().list().await?,
        shards: service.shard_names(),
    }))
}

/// A map at its current version.
#[utoipa::path(
    get, path = "/v1/partitions/{map}", operation_id = "get_partition_map", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map")),
    responses(
        (status = 200, description = "The map", body = MapSpec),
        (status = 404, description = "No such map", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(map): Path<String>,
) -> Result<ApiJson<MapSpec>, Problem> {
    Ok(ApiJson(state.partition().maps().get(&map).await?))
}

/// Create a map (version 1) or change it (admin): the version must be the current one plus
/// one, so two changes made at once cannot both win.
#[utoipa::path(
    put, path = "/v1/partitions/{map}", operation_id = "put_partition_map", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map: 1 to 128 letters, digits, '.', '_' or '-'")),
    request_body = PutMap,
    responses(
        (status = 200, description = "Published", body = MapSpec),
        (status = 400, description = "An invalid scheme or owners", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not the current version plus one", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn put(
    _: Admin,
    State(state): State<AppState>,
    Path(map): Path<String>,
    ApiJson(body): ApiJson<PutMap>,
) -> Result<ApiJson<MapSpec>, Problem> {
    let spec = MapSpec {
        name: map,
        version: body.version,
        scheme: body.scheme,
        owners: body.owners,
    };
    let now = onephase_store::convert::unix_ms(state.clock().now());
    state.partition().maps().put(&spec, now).await?;
    metrics::gauge!("onephase_partition_map_version", "map" => spec.name.clone())
        .set(spec.version as f64);
    Ok(ApiJson(spec))
}

/// Where a key goes under the current version.
#[utoipa::path(
    get, path = "/v1/partitions/{map}/route", operation_id = "route_partition_key", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map"), RouteQuery),
    responses(
        (status = 200, description = "The key's partition, owner and the map version", body = RouteView),
        (status = 404, description = "No such map", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn route(
    State(state): State<AppState>,
    Path(map): Path<String>,
    Query(q): Query<RouteQuery>,
) -> Result<ApiJson<RouteView>, Problem> {
    let spec = state.partition().maps().get(&map).await?;
    let map = PartitionMap::new(spec)?;
    let route = map.route(&q.key);
    Ok(ApiJson(RouteView {
        partition: route.partition,
        owner: route.owner.to_owned(),
        version: route.version,
        key: q.key,
    }))
}

/// Every version a map had, oldest first.
#[utoipa::path(
    get, path = "/v1/partitions/{map}/history", operation_id = "partition_map_history", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map")),
    responses(
        (status = 200, description = "The versions", body = MapHistory),
        (status = 404, description = "No such map", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn history(
    State(state): State<AppState>,
    Path(map): Path<String>,
) -> Result<ApiJson<MapHistory>, Problem> {
    let maps = state.partition().maps();
    maps.get(&map).await?;
    Ok(ApiJson(MapHistory {
        versions: maps.history(&map).await?,
    }))
}

/// Move a partition of a range map to another shard while writers keep writing (admin).
/// Answers once the move is checked and its saga started; follow it with
/// `GET /v1/partitions/{map}/moves/{id}`.
#[utoipa::path(
    post, path = "/v1/partitions/{map}/moves", operation_id = "start_partition_move", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map")),
    request_body = StartMove,
    responses(
        (status = 202, description = "Started", body = MoveView),
        (status = 400, description = "A move that cannot be made: not a range map, no such partition or shard, tables that differ, rows already in the target", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such map", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The map has a move in progress", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A shard does not answer", body = Problem, content_type = "application/problem+json"),
        AdminJsonErrors,
    )
)]
pub async fn start_move(
    _: Admin,
    State(state): State<AppState>,
    Path(map): Path<String>,
    ApiJson(body): ApiJson<StartMove>,
) -> Result<(StatusCode, ApiJson<MoveView>), Problem> {
    let service = state.partition();
    let current = service.maps().get(&map).await?;
    let spec = move_spec(&current, &body)?;
    // Checks both tables and shards before anything is recorded.
    if let Err(e) = service.mover(spec.clone()).await {
        return Err(match &e {
            MoveError::Shard { shard, .. } => {
                let name = if *shard == "source" {
                    &spec.source
                } else {
                    &spec.target
                };
                Problem::from_kind(
                    e.kind(),
                    format!(
                        "{e}: the {shard} shard {name:?} does not answer; check that it is up \
                         and its URL under [partition.shards]. Nothing was moved"
                    ),
                )
            }
            _ => e.into(),
        });
    }
    let now = onephase_store::convert::unix_ms(state.clock().now());
    if !service.maps().index_move(&spec, now).await? {
        let active = service
            .maps()
            .moves(Some(&map), 1000)
            .await?
            .into_iter()
            .find(|m| !m.ended);
        return Err(Problem::from_kind(
            ErrorKind::Conflict,
            format!(
                "map {map:?} has a move in progress{}; moves of one map run one at a time \
                 (each switches the map from the version it started from): wait for it to end",
                active.map_or(String::new(), |m| format!(
                    " (move {}, partition {})",
                    m.spec.id, m.spec.partition
                ))
            ),
        ));
    }
    let input = serde_json::json!({ "spec": spec });
    let mut request = StartRequest::new(MOVE_SAGA, input);
    request.idempotency_key = Some(spec.id.to_string());
    let started = match state.saga().orchestrator().start(request).await {
        Ok(started) => started,
        Err(e) => {
            let _ = service.maps().unindex_move(spec.id).await;
            return Err(e.into());
        }
    };
    service.maps().set_saga_run(spec.id, started.id).await?;
    metrics::counter!("onephase_partition_moves_started_total", "map" => map).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(MoveView {
            spec,
            saga_run: Some(started.id),
            created_ms: now,
            ended: false,
            status: None,
            status_error: None,
        }),
    ))
}

/// The move a request asks for, checked against the map.
fn move_spec(map: &MapSpec, body: &StartMove) -> Result<MoveSpec, Problem> {
    let invalid = |m: String| Problem::from_kind(ErrorKind::InvalidInput, m);
    let Scheme::Range { splits } = &map.scheme else {
        return Err(invalid(format!(
            "map {:?} is a {} map: only a range map's partition is a key range that SQL can \
             select, so only those move online",
            map.name,
            map.scheme.kind()
        )));
    };
    let p = body.partition as usize;
    let Some(owner) = map.owners.get(p) else {
        return Err(invalid(format!(
            "map {:?} has {} partitions; there is no partition {}",
            map.name,
            map.owners.len(),
            body.partition
        )));
    };
    if *owner == body.to {
        return Err(invalid(format!(
            "partition {} is already on {:?}",
            body.partition, body.to
        )));
    }
    Ok(MoveSpec {
        id: Uuid::now_v7(),
        map: map.name.clone(),
        partition: body.partition,
        table: body.table.clone(),
        key: body.key.clone(),
        lo: p.checked_sub(1).and_then(|i| splits.get(i)).cloned(),
        hi: splits.get(p).cloned(),
        source: owner.clone(),
        target: body.to.clone(),
        from_version: map.version,
        chunk_rows: body.chunk_rows.unwrap_or(10_000),
        rows_per_second: body.rows_per_second,
    })
}

/// A move with its progress, read from its source shard.
pub(crate) async fn view(state: &AppState, indexed: IndexedMove) -> MoveView {
    let (status, status_error) = match state.partition().status(&indexed.spec).await {
        Ok(status) => (Some(status), None),
        Err(e) => (None, Some(e.to_string())),
    };
    MoveView {
        spec: indexed.spec,
        saga_run: indexed.saga_run,
        created_ms: indexed.created_ms,
        ended: indexed.ended,
        status,
        status_error,
    }
}

/// The moves of a map, newest first.
#[utoipa::path(
    get, path = "/v1/partitions/{map}/moves", operation_id = "list_partition_moves", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map")),
    responses((status = 200, description = "The moves", body = MoveList), AuthErrors)
)]
pub async fn moves(
    State(state): State<AppState>,
    Path(map): Path<String>,
) -> Result<ApiJson<MoveList>, Problem> {
    let indexed = state.partition().maps().moves(Some(&map), 100).await?;
    let mut moves = Vec::with_capacity(indexed.len());
    for m in indexed {
        moves.push(view(&state, m).await);
    }
    Ok(ApiJson(MoveList { moves }))
}

/// One move and its progress: phase, rows copied, catch-up lag, the pause writers saw.
#[utoipa::path(
    get, path = "/v1/partitions/{map}/moves/{id}", operation_id = "get_partition_move", tag = "partition", security(("bearer" = [])),
    params(("map" = String, Path, description = "The map"), ("id" = Uuid, Path, description = "The move")),
    responses(
        (status = 200, description = "The move", body = MoveView),
        (status = 404, description = "No such move of this map", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn get_move(
    State(state): State<AppState>,
    Path((map, id)): Path<(String, Uuid)>,
) -> Result<ApiJson<MoveView>, Problem> {
    match state.partition().maps().find_move(id).await? {
        Some(m) if m.spec.map == map => Ok(ApiJson(view(&state, m).await)),
        _ => Err(Problem::from_kind(
            ErrorKind::NotFound,
            format!("map {map:?} has no move {id}; list them with GET /v1/partitions/{map}/moves"),
        )),
    }
}

/// The partition routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, put))
        .routes(routes!(route))
        .routes(routes!(history))
        .routes(routes!(start_move, moves))
        .routes(routes!(get_move))
}

//! `/v1/kafka/groups`: the consumer groups the server watches (`[[kafka.watch]]`), each with
//! the doctor's diagnosis.

use axum::extract::{Path, State};
use onephase_kafka::diagnosis::Diagnosis;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::json::ApiJson;
use crate::kafka::WatchStatus;
use crate::problem::Problem;
use crate::state::AppState;
use crate::v1::responses::AuthErrors;

/// Every watched cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KafkaGroups {
    /// The clusters, as last observed.
    pub watches: Vec<WatchStatus>,
}

/// Every watched group's diagnosis, worst first within each cluster.
#[utoipa::path(
    get, path = "/v1/kafka/groups", operation_id = "list_kafka_groups", tag = "kafka", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every watched cluster and its groups", body = KafkaGroups),
        AuthErrors,
    )
)]
pub async fn list(State(state): State<AppState>) -> ApiJson<KafkaGroups> {
    ApiJson(KafkaGroups {
        watches: state.kafka().status(),
    })
}

/// One group's diagnosis (the first watched cluster that has it).
#[utoipa::path(
    get, path = "/v1/kafka/groups/{group}", operation_id = "get_kafka_group", tag = "kafka", security(("bearer" = [])),
    params(("group" = String, Path, description = "The consumer group")),
    responses(
        (status = 200, description = "The group's diagnosis", body = Diagnosis),
        (status = 404, description = "No watched cluster has observed this group", body = Problem, content_type = "application/problem+json"),
        AuthErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<ApiJson<Diagnosis>, Problem> {
    state
        .kafka()
        .status()
        .into_iter()
        .flat_map(|w| w.groups)
        .find(|d| d.group == group)
        .map(ApiJson)
        .ok_or_else(|| {
            Problem::from_kind(
                onephase_core::ErrorKind::NotFound,
                format!(
                    "no watched Kafka cluster has observed consumer group {group:?}; list them \
                     with GET /v1/kafka/groups"
                ),
            )
        })
}

/// The Kafka routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
}

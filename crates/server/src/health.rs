//! Liveness and readiness.
//!
//! `/healthz` answers 200 while the process can serve HTTP at all: restart it if this fails.
//! `/readyz` answers 200 only when the store answers a query within two seconds: route traffic
//! elsewhere while it fails, but do not restart for it (the database may be the one down). A
//! relay whose source or sink does not answer is listed under `unavailable` in a 200: the rest
//! of the server serves, and routing traffic away would not bring the broker back.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::json::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of a successful health or readiness check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    #[schema(example = "ok")]
    pub status: String,
    /// The server's version.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// Parts that do not work now although the server serves (an outbox relay whose source
    /// or sink does not answer), each with why; absent when everything works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is serving", body = Health))
)]
pub async fn healthz() -> ApiJson<Health> {
    ApiJson(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        unavailable: Vec::new(),
    })
}

/// Readiness: the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The store answers", body = Health),
        (status = 503, description = "The store does not answer", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let detail = match tokio::time::timeout(READY_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => {
            metrics::gauge!("onephase_store_up").set(1.0);
            let unavailable = state
                .outbox()
                .sources()
                .iter()
                .filter_map(|s| match s.state() {
                    crate::outbox::RelayState::Unavailable { error } => {
                        Some(format!("outbox relay {:?}: {error}", s.name))
                    }
                    _ => None,
                })
                .collect();
            return ApiJson(Health {
                status: "ready".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                unavailable,
            })
            .into_response();
        }
        Ok(Err(e)) => format!("the {} store does not answer: {e}", state.store().backend()),
        Err(_) => format!(
            "the {} store did not answer within {} s",
            state.store().backend(),
            READY_TIMEOUT.as_secs()
        ),
    };
    metrics::gauge!("onephase_store_up").set(0.0);
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        detail,
    )
    .with_instance("/readyz")
    .into_response()
}

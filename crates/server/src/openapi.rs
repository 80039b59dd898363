//! The OpenAPI document served at `/openapi.json`, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::Problem;

/// The parts of the document not tied to one handler: metadata, the problem schema, and the
/// bearer security scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "onephase",
        description = "Outbox, inbox, sagas, webhooks, fenced leases, rate limits and replica waits over \
                       HTTP/JSON. Errors are RFC 9457 problem documents. Everything under /v1 \
                       needs `Authorization: Bearer <token>`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "auth", description = "API tokens"),
        (name = "outbox", description = "The embedded log, outbox relays, dead letters"),
        (name = "saga", description = "Saga definitions, runs and operator actions"),
        (name = "webhook", description = "Webhook endpoints, messages, attempts, dead letters and replay"),
        (name = "lease", description = "Fenced leases: acquire, renew, release, list"),
        (name = "events", description = "Event streams with expected versions, the global order, SSE subscriptions, document projections: status, park, rebuild, explain, consistency wait"),
        (name = "limit", description = "Rate-limit policies and checks"),
        (name = "replica", description = "Watched PostgreSQL replica clusters: lag, rotation, and a wait for a consistency token"),
        (name = "kafka", description = "Watched Kafka consumer groups: lag in messages and seconds, rebalances, each partition's status and a diagnosis"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `onephase token create` or POST /v1/tokens",
                    ))
                    .build(),
            ),
        );
    }
}

//! The axum application: routes and the layers every request passes through.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::require_token;
use crate::dashboard;
use crate::health;
use crate::metrics::{prometheus, track_http};
use crate::openapi::ApiDoc;
use crate::problem::{PROBLEM_JSON, Problem};
use crate::state::AppState;
use crate::v1;

/// The public routes, in a router that collects the OpenAPI document as routes are added.
fn api() -> OpenApiRouter<AppState> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The OpenAPI document the server serves at `/openapi.json`: every route, as the handlers
/// describe themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().merge(v1::routes()).split_for_parts().1
}

/// The whole application: public endpoints, `/v1` behind bearer auth, and the layers that
/// turn every failure into a problem document.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().body_limit;
    // Install the recorder before the first request is counted.
    prometheus();
    let authenticated =
        v1::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (routes, doc) = api().merge(authenticated).split_for_parts();
    // Rendered once; each request clones a handle to the bytes, not the text.
    let openapi_json = Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default());

    routes
        .merge(dashboard::routes())
        .route("/metrics", get(render_metrics))
        .route(
            "/openapi.json",
            get(move || {
                let body = openapi_json.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        body,
                    )
                }
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), track_http))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(problem_for_every_error))
        .layer(CatchPanicLayer::custom(|_panic| {
            Problem::from_kind(
                onephase_core::ErrorKind::Internal,
                "the server failed; the error is in its log",
            )
            .into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                // The request id joins a client's report to the server's log lines.
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let span = tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %id,
                    otel.name = %request.method(),
                    otel.kind = "server",
                    http.route = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                // A client in a trace (a `traceparent` header) gets this request as a child span.
                onephase_trace::of_request(&span, |name| {
                    request.headers().get(name).and_then(|v| v.to_str().ok())
                });
                span
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::from_fn(crate::unread::close_if_body_unread))
        .with_state(state)
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        prometheus().render(),
    )
}

async fn not_found(request: Request) -> Problem {
    metrics::counter!(
        "onephase_http_requests_total",
        "method" => request.method().as_str().to_owned(),
        "route" => "unmatched",
        "status" => "404"
    )
    .increment(1);
    Problem::from_status(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; /openapi.json lists every route",
            request.method(),
            request.uri().path()
        ),
    )
    .with_instance(request.uri().path())
}

/// Fills in `instance` on a problem document a handler returned without one (handlers return
/// library errors, which do not know the request path).
async fn with_instance(
    parts: axum::http::response::Parts,
    body: axum::body::Body,
    path: String,
) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Problem::from_status(parts.status, "the error response could not be read")
            .with_instance(path)
            .into_response();
    };
    let body = match serde_json::from_slice::<Problem>(&bytes) {
        Ok(problem) if problem.instance.is_none() => {
            serde_json::to_vec(&problem.with_instance(path)).map_or(bytes, Into::into)
        }
        _ => bytes,
    };
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Rewrites any error response that is not already a problem document (axum's own 405, a
/// path-parameter rejection, ...) into one, keeping the headers that matter to the client.
async fn problem_for_every_error(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // Success, and the dashboard's own error pages (HTML for a person, not JSON for a client).
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if status.as_u16() < 400 || is_page {
        return response;
    }
    let (parts, body) = response.into_parts();
    if is_problem {
        return with_instance(parts, body, path).await;
    }
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                "this route does not accept that method; see the Allow header".to_owned()
            }
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        }
    } else {
        text
    };
    let mut rewritten = Problem::for_status(status, detail)
        .with_instance(path)
        .into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

//! Prometheus metrics: one recorder per process, rendered at `/metrics`.
//!
//! Every capability names its metrics `onephase_<capability>_*`. This module owns the HTTP
//! ones, labelled by route template (never by raw path, which would let a client create
//! unbounded label values):
//!
//! - `onephase_http_requests_total{method, route, status}`
//! - `onephase_http_request_duration_seconds{method, route}` (histogram)
//! - `onephase_build_info{version}` (always 1)

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus handle, installing the recorder on first use.
///
/// A process has one global `metrics` recorder; every server in it (tests start several)
/// shares this one.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (by an embedding application);
        // then that one receives our metrics and this handle renders nothing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        metrics::describe_counter!(
            "onephase_http_requests_total",
            "HTTP requests answered, by method, route template and status"
        );
        metrics::describe_histogram!(
            "onephase_http_request_duration_seconds",
            metrics::Unit::Seconds,
            "HTTP request latency, by method and route template"
        );
        metrics::gauge!("onephase_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// Middleware counting and timing every request.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "onephase_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "onephase_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}

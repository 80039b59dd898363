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

use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
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
        describe_capabilities();
        handle
    })
}

/// Middleware counting and timing every request.
pub async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = state.clock().monotonic();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Named by its route, not its path: a trace backend groups spans by name.
    let span = tracing::Span::current();
    span.record("otel.name", format!("{method} {route}"));
    span.record("http.route", route.as_str());
    let response = next.run(request).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
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
    .record(
        state
            .clock()
            .monotonic()
            .saturating_duration_since(started)
            .as_secs_f64(),
    );
    response
}

/// Says what every capability's metric means (Prometheus `# HELP`), and registers at zero the
/// series whose labels are known in advance, so that a rule or a dashboard finds them before
/// the first event (`rate()` of a series that does not exist yet is no alert at all). Series
/// labelled by a relay, a saga or a policy appear with their first use.
fn describe_capabilities() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for &(name, help) in COUNTERS {
        describe_counter!(name, help);
    }
    for &(name, help) in GAUGES {
        describe_gauge!(name, help);
    }
    for &(name, help) in SECONDS_HISTOGRAMS {
        describe_histogram!(name, Unit::Seconds, help);
    }
    register_at_zero();
}

/// The series whose labels are known in advance, at zero.
fn register_at_zero() {
    for outcome in ["delivered", "retry", "dead", "gone"] {
        metrics::counter!("onephase_webhook_attempts_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("onephase_webhook_endpoints_disabled_total").increment(0);
    for action in ["operator_retry", "operator_resolve", "operator_abort"] {
        metrics::counter!("onephase_saga_operator_actions_total", "action" => action).increment(0);
    }
    metrics::counter!("onephase_saga_lost_claims_total").increment(0);
    metrics::counter!("onephase_events_appended_total").increment(0);
    metrics::counter!("onephase_saga_round_errors_total").increment(0);
    metrics::gauge!("onephase_partition_moves_active").set(0.0);
    for operation in ["acquire", "renew", "release"] {
        for outcome in ["ok", "conflict", "refused", "error"] {
            metrics::counter!("onephase_lease_operations_total", "operation" => operation, "outcome" => outcome)
                .increment(0);
        }
    }
}

/// Every counter, with its help.
const COUNTERS: &[(&str, &str)] = &[
    (
        "onephase_partition_moves_started_total",
        "Online moves started through the API, by map",
    ),
    (
        "onephase_outbox_published_total",
        "Outbox rows published, by relay (source) and sink",
    ),
    (
        "onephase_outbox_publish_failures_total",
        "Failed publish attempts (retried or dead-lettered)",
    ),
    (
        "onephase_outbox_dead_lettered_total",
        "Outbox rows dead-lettered",
    ),
    (
        "onephase_outbox_lost_claims_total",
        "Rows published after their claim had lapsed (published twice)",
    ),
    (
        "onephase_outbox_round_errors_total",
        "Relay rounds that failed on the database",
    ),
    (
        "onephase_outbox_vacuums_total",
        "VACUUMs the relay ran on the outbox table",
    ),
    (
        "onephase_saga_runs_started_total",
        "Saga runs started, by saga",
    ),
    (
        "onephase_saga_runs_finished_total",
        "Saga runs that ended or parked, by saga and state",
    ),
    (
        "onephase_saga_step_attempts_total",
        "Step invocations, by saga, step, phase and outcome",
    ),
    (
        "onephase_saga_operator_actions_total",
        "Operator retries, resolves and aborts",
    ),
    (
        "onephase_saga_lost_claims_total",
        "Saga transitions refused because a newer claim (or an operator) fenced the run since its driver claimed it",
    ),
    (
        "onephase_saga_round_errors_total",
        "Orchestrator rounds that failed on the database",
    ),
    (
        "onephase_webhook_attempts_total",
        "Webhook delivery attempts, by outcome",
    ),
    (
        "onephase_webhook_endpoints_disabled_total",
        "Endpoints the dispatcher disabled (410, or failing too long)",
    ),
    (
        "onephase_lease_operations_total",
        "Lease acquires, renewals and releases over HTTP, by outcome",
    ),
    (
        "onephase_limit_decisions_total",
        "Rate-limit checks answered, by policy and outcome",
    ),
    (
        "onephase_events_appended_total",
        "Events appended to the event store",
    ),
    (
        "onephase_events_projection_parked_total",
        "Times a projection parked on an event it could not apply, by projection",
    ),
];

/// Every gauge, with its help.
const GAUGES: &[(&str, &str)] = &[
    (
        "onephase_store_up",
        "1 when the store answered the last /readyz, else 0",
    ),
    ("onephase_outbox_pending", "Rows waiting to be published"),
    (
        "onephase_outbox_dead",
        "Rows dead-lettered and not yet retried or discarded",
    ),
    (
        "onephase_outbox_oldest_pending_seconds",
        "Age of the oldest pending row: the relay's lag",
    ),
    (
        "onephase_outbox_relay_up",
        "1 while a relay runs, 0 while its source or sink does not answer",
    ),
    ("onephase_saga_runs", "Saga runs by state"),
    (
        "onephase_events_head",
        "The event store's last global position",
    ),
    (
        "onephase_events_projection_position",
        "The last global position a projection generation applied, by projection and generation",
    ),
    (
        "onephase_events_projection_lag_events",
        "Events a projection has not applied yet, by projection and role",
    ),
    (
        "onephase_events_projection_lag_seconds",
        "Age of the oldest event a projection has not applied, by projection and role",
    ),
    (
        "onephase_replica_lag_seconds",
        "How stale a replica was at most at its last poll, measured on the primary's clock",
    ),
    (
        "onephase_replica_lag_bytes",
        "WAL bytes a replica had still to replay at its last poll",
    ),
    (
        "onephase_replica_in_rotation",
        "1 while a replica takes reads, 0 while it is out (lagging, paused, stalled, promoted, unreachable)",
    ),
    (
        "onephase_replica_primary_up",
        "1 when a watched cluster's primary answered the last poll, else 0",
    ),
    (
        "onephase_kafka_group_status",
        "A watched consumer group's worst partition status: 0 ok, 1 warn, 2 rewind, 3 stall, 4 stop",
    ),
    (
        "onephase_kafka_group_members",
        "Members of a watched consumer group at its last observation",
    ),
    (
        "onephase_kafka_group_rebalances",
        "Changes of a watched group's member set within the doctor's window",
    ),
    (
        "onephase_kafka_group_lag",
        "Messages a watched group has not consumed, over its partitions",
    ),
    (
        "onephase_kafka_group_lag_seconds",
        "Age of the oldest message a watched group has not consumed",
    ),
    (
        "onephase_kafka_partition_lag",
        "Messages a watched group has not consumed on one partition",
    ),
    (
        "onephase_kafka_partition_lag_seconds",
        "Age of the oldest message waiting on one partition of a watched group",
    ),
    (
        "onephase_kafka_partition_status",
        "A partition's status for a watched group: 0 ok, 1 warn, 2 rewind, 3 stall, 4 stop",
    ),
    (
        "onephase_kafka_doctor_up",
        "1 when the last observation of a watched Kafka cluster succeeded, else 0",
    ),
    (
        "onephase_partition_map_version",
        "The current version of a partition map",
    ),
    (
        "onephase_partition_moves_active",
        "Online moves started and not yet done or rolled back",
    ),
    (
        "onephase_partition_move_rows_copied",
        "Rows an active move of a map's partition has copied",
    ),
    (
        "onephase_partition_move_catch_up_lag",
        "Logged writes an active move has not applied to its target yet",
    ),
    (
        "onephase_partition_move_pause_ms",
        "How long writes to a moving partition were refused at its cutover, in milliseconds",
    ),
];

/// Every histogram (in seconds), with its help.
const SECONDS_HISTOGRAMS: &[(&str, &str)] = &[
    (
        "onephase_outbox_round_seconds",
        "Time of one relay round: claim, publish, record",
    ),
    ("onephase_saga_step_seconds", "Step invocation latency"),
    (
        "onephase_webhook_attempt_seconds",
        "Webhook attempt latency, sending to the answer's headers",
    ),
    (
        "onephase_webhook_claim_seconds",
        "Time of one webhook claim transaction (due deliveries found and locked)",
    ),
    (
        "onephase_webhook_record_seconds",
        "Time of one transaction recording a batch of webhook attempts",
    ),
    (
        "onephase_replica_wait_seconds",
        "Time a read or a wait spent waiting for a replica to replay a token, whatever the outcome",
    ),
];

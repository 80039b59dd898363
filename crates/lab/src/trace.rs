//! Not one of the posts but docs/trace.md: a request leaves work in a
//! table and a worker does it later. Without the stored context, the worker's calls start
//! traces of their own and the request's trace ends at the table.

use onephase_trace::{follow, onward};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::Report;

const JOBS: u32 = 100;
const STEP: u32 = 10;

/// Trace context through a table.
///
/// 100 requests, each in a trace of its client's, each storing a job; a worker then takes
/// each job and calls a participant, sending a `traceparent`. Spans are recorded by
/// `tracing-opentelemetry`, as in the server.
///
/// - **Naive**: the job row keeps the work, not the context; the worker's span is a root.
/// - **onephase**: the row keeps the request's `traceparent` ([`onward`]) and the worker's
///   span follows it ([`follow`]).
pub async fn stored_context(seed: u64) -> Report {
    let mut report = Report::new(
        "trace-context",
        seed,
        "100 requests each leave a job in a table; a worker does each job later and calls a participant",
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("lab")));
    let (naive, onephase) =
        tracing::subscriber::with_default(subscriber, || (jobs(false, seed), jobs(true, seed)));
    let joined = |per_step: &[f64]| per_step.iter().sum::<f64>();
    report.row(
        "participant calls in their request's trace",
        joined(&naive),
        joined(&onephase),
    );
    report.invariant(
        "every participant call continues the trace of the request that left its job",
        joined(&naive) == f64::from(JOBS),
        joined(&onephase) == f64::from(JOBS),
    );
    report.chart_by(
        "calls in their request's trace",
        "",
        &format!("{STEP} jobs"),
        naive,
        onephase,
    );
    report
}

/// Calls in their request's trace, per [`STEP`] jobs.
fn jobs(store_context: bool, seed: u64) -> Vec<f64> {
    let mut table = Vec::new();
    for job in 0..JOBS {
        // The client's trace: a random trace id from the seed, as a client would send it.
        let trace = format!("{:016x}{:016x}", seed ^ 0x9e37_79b9, u64::from(job) + 1);
        let client = format!("00-{trace}-{:016x}-01", u64::from(job) + 1);
        let request = tracing::info_span!("request", job);
        onephase_trace::of_request(&request, |name| {
            (name == onephase_trace::TRACEPARENT).then_some(client.as_str())
        });
        let stored = store_context
            .then(|| onward(&request, Some(&client)))
            .flatten();
        table.push((job, trace, stored));
    }
    let mut per_step = vec![0.0; (JOBS / STEP) as usize];
    for (job, trace, stored) in table {
        let worker = tracing::info_span!("worker", job);
        follow(&worker, stored.as_deref());
        let sent = onward(&worker, None).unwrap_or_default();
        if sent.get(3..35) == Some(trace.as_str())
            && let Some(n) = per_step.get_mut((job / STEP) as usize)
        {
            *n += 1.0;
        }
    }
    per_step
}

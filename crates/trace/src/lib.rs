//! Trace context that survives a database row.
//!
//! A request that starts a saga, sends a webhook or writes an outbox row ends when the row is
//! committed; the work it asked for happens later, in another task, often on another server.
//! For one trace to follow the request through that work, the request's W3C `traceparent`
//! is stored with the row (a column of the saga run and of the webhook message, a header of
//! the outbox row), and the worker that picks the row up opens its span as a child of it.
//! What the worker sends onward (a step's HTTP call, a webhook delivery, a published event)
//! carries the worker span's own `traceparent`, so the participant's spans join the same
//! trace.
//!
//! Three functions do this, over [`tracing`] spans:
//!
//! - [`of_request`] reads the `traceparent` (and `tracestate`) of an incoming request and
//!   makes it the parent of the request's span.
//! - [`follow`] makes a stored `traceparent` the parent of a worker's span.
//! - [`onward`] is the `traceparent` to store or send from inside a span: the span's own
//!   when an OpenTelemetry layer records it, otherwise the one that came in, unchanged, so
//!   that the context still travels through a server that exports nothing.
//!
//! The spans become OpenTelemetry spans through [`tracing_opentelemetry`]; the binary
//! installs that layer with an OTLP exporter (feature `otlp`, [`otlp`]). Without the layer
//! the functions cost a lookup and change nothing.
//!
//! A malformed `traceparent` is ignored, as the W3C specification asks of a receiver: the
//! work then starts a trace of its own.
//!
//! ```
//! let span = tracing::info_span!("webhook delivery");
//! onephase_trace::follow(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//! // No OpenTelemetry layer is installed here, so the stored context is passed on as it was.
//! assert_eq!(
//!     onephase_trace::onward(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).as_deref(),
//!     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
//! );
//! ```

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[cfg(feature = "otlp")]
pub mod otlp;

/// The W3C Trace Context header that carries the trace id, the parent span id and the flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C Trace Context header that carries vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// Makes the trace context of an incoming request (its `traceparent` and `tracestate`
/// headers, read through `header`) the parent of `span`. A missing or malformed
/// `traceparent` leaves the span a root.
pub fn of_request<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    let Some(traceparent) = header(TRACEPARENT) else {
        return;
    };
    set_parent(span, traceparent, header(TRACESTATE));
}

/// Makes the stored `traceparent` the parent of `span`, which must not have been entered
/// yet. `None` or a malformed value leaves the span a root.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        set_parent(span, traceparent, None);
    }
}

/// The `traceparent` to store or send on from inside `span`: the span's own context when an
/// OpenTelemetry layer records spans, else `received` (what came in with the work) as it
/// was.
pub fn onward(span: &tracing::Span, received: Option<&str>) -> Option<String> {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        if let Some(traceparent) = carrier.remove(TRACEPARENT) {
            return Some(traceparent);
        }
    }
    received.filter(|t| is_valid(t)).map(str::to_owned)
}

/// Whether `traceparent` is a well-formed W3C `traceparent` with a non-zero trace and parent
/// id.
pub fn is_valid(traceparent: &str) -> bool {
    extract(traceparent, None).span().span_context().is_valid()
}

fn extract(traceparent: &str, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let cx = extract(traceparent, tracestate);
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed or the span is filtered out;
        // either way there is no span to attach.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn well_formed_contexts_are_told_from_malformed_ones() {
        assert!(is_valid(GOOD));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_valid(bad), "{bad:?} was taken as valid");
        }
    }

    #[test]
    fn without_a_layer_the_received_context_travels_on_unchanged() {
        let span = tracing::info_span!("work");
        follow(&span, Some(GOOD));
        assert_eq!(onward(&span, Some(GOOD)).as_deref(), Some(GOOD));
        assert_eq!(onward(&span, Some("garbage")), None);
        assert_eq!(onward(&span, None), None);
    }

    #[test]
    fn with_a_layer_the_span_is_a_child_of_the_stored_context() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("work");
            follow(&span, Some(GOOD));
            let sent = onward(&span, Some(GOOD)).unwrap_or_default();
            // Same trace, a new span id (this span's), sampled as the parent was.
            assert_eq!(&sent[..36], &GOOD[..36], "{sent}");
            assert_ne!(&sent[36..52], &GOOD[36..52], "{sent}");
            assert!(sent.ends_with("-01"), "{sent}");

            let root = tracing::info_span!("root");
            follow(&root, Some("not a traceparent"));
            let own = onward(&root, Some("not a traceparent")).unwrap_or_default();
            assert!(is_valid(&own), "{own}");
            assert_ne!(&own[3..35], &GOOD[3..35]);
        });
    }
}

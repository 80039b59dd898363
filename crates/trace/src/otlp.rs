//! Exporting spans over OTLP/HTTP (protobuf), to an OpenTelemetry Collector or any backend
//! that accepts OTLP (Jaeger, Tempo, Honeycomb, ...).
//!
//! [`Exporter::start`] builds a tracer provider that batches finished spans and posts them
//! to the endpoint; [`Exporter::layer`] is the `tracing` layer that turns spans into
//! OpenTelemetry spans for it. Export runs beside the work: a collector that is down costs
//! dropped spans (the batch queue holds 2,048), never a slower request.
//!
//! The posts go through the process's tokio runtime (the handle given to `start`) with
//! `reqwest`, so no second HTTP stack or runtime is built in.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

/// Where spans go, and which of them.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (used as given).
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0; a trace that arrives with a
    /// `traceparent` follows its sampled flag instead.
    pub sample_ratio: f64,
    /// Extra headers on every export request (an API key, say).
    pub headers: BTreeMap<String, String>,
    /// How long one export request may take.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Every span of `service_name` to `endpoint`, with a 10 s export timeout.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The configuration is not usable; the message names the setting.
    #[error("traces: {0}")]
    Config(String),
    /// The OpenTelemetry exporter refused its configuration.
    #[error("traces: the OTLP exporter could not be built: {0}")]
    Build(String),
}

/// A running span exporter. Keep it for the life of the process and call
/// [`Exporter::shutdown`] at the end, which sends the spans still queued.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter; its requests run on `runtime`.
    pub fn start(config: &OtlpConfig, runtime: tokio::runtime::Handle) -> Result<Self, OtlpError> {
        let url: http::Uri = config.endpoint.parse().map_err(|e| {
            OtlpError::Config(format!("endpoint {:?} is not a URL: {e}", config.endpoint))
        })?;
        if !matches!(url.scheme_str(), Some("http" | "https")) {
            return Err(OtlpError::Config(format!(
                "endpoint {:?} must be an http:// or https:// URL (OTLP over HTTP, e.g. http://127.0.0.1:4318/v1/traces)",
                config.endpoint
            )));
        }
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(OtlpError::Config(format!(
                "sample_ratio is {}; it must be between 0.0 and 1.0",
                config.sample_ratio
            )));
        }
        let client = RuntimeClient {
            client: reqwest::Client::builder()
                .timeout(config.timeout)
                .build()
                .map_err(|e| OtlpError::Build(e.to_string()))?,
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| OtlpError::Build(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that records spans for this exporter.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("onephase"))
            .with_tracked_inactivity(false)
            // Spans are built when first asked for their context or when they close, so a
            // name recorded after entry (the matched route) still names the span.
            .with_context_activation(false)
    }

    /// Sends the queued spans and stops. It blocks until the export ends (bounded by the
    /// timeout), so call it from a blocking context (`spawn_blocking`) while the runtime is
    /// still running.
    pub fn shutdown(self) -> Result<(), OtlpError> {
        self.provider
            .shutdown()
            .map_err(|e| OtlpError::Build(format!("the last spans were not sent: {e}")))
    }
}

/// `reqwest` on the process's runtime: the batch processor exports from a thread of its own,
/// outside any runtime, so each request is spawned onto the runtime and awaited from there.
#[derive(Debug, Clone)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let client = self.client.clone();
        let answered = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                headers.extend(response.headers().clone());
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        answered.await?
    }
}

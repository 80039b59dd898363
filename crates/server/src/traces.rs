//! The `[traces]` table: exporting spans over OTLP.
//!
//! Every request, saga step, webhook delivery and outbox publish of a traced event is a
//! `tracing` span. The W3C `traceparent` of the request that starts work is stored with it
//! (see `onephase_trace`), so the spans of the work join the request's trace. With an
//! endpoint set, the binary exports the spans over OTLP/HTTP; without one nothing is
//! exported, and the `traceparent` a client sent still travels on to participants, webhook
//! receivers and consumers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `[traces]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesSettings {
    /// The OTLP/HTTP traces URL spans are exported to, used as given, e.g.
    /// `http://127.0.0.1:4318/v1/traces`; none (the default) exports nothing.
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` with
    /// `/v1/traces` appended, override it.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans (default `onephase`; `OTEL_SERVICE_NAME` overrides it).
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0 (default 1.0). A request that arrives
    /// with a `traceparent` is recorded when its sampled flag says so.
    pub sample_ratio: Option<f64>,
    /// Headers sent with every export request, e.g. a vendor's API key.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl TracesSettings {
    /// The `service.name` spans carry.
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("onephase")
    }

    /// The share of new traces recorded.
    pub fn sample_ratio(&self) -> f64 {
        self.sample_ratio.unwrap_or(1.0)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let usable = endpoint.parse::<axum::http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if !usable {
                return Err(ConfigError::Invalid {
                    key: "traces.otlp_endpoint",
                    message: format!(
                        "{endpoint:?} is not an http:// or https:// URL; OTLP over HTTP is \
                         exported to a URL like http://127.0.0.1:4318/v1/traces"
                    ),
                });
            }
        }
        if let Some(ratio) = self.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(ConfigError::Invalid {
                key: "traces.sample_ratio",
                message: format!("{ratio} is not between 0.0 and 1.0"),
            });
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid {
                key: "traces.service_name",
                message: "must not be empty".to_owned(),
            });
        }
        for (name, value) in &self.headers {
            let valid = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && axum::http::HeaderValue::from_str(value).is_ok();
            if !valid {
                return Err(ConfigError::Invalid {
                    key: "traces.headers",
                    message: format!(
                        "{name:?} is not a valid HTTP header name, or its value has a line break or another control character"
                    ),
                });
            }
        }
        Ok(())
    }
}

//! Webhooks inside `onephase serve`: endpoint management and sending through `/v1/webhooks`,
//! and a dispatcher that delivers.

use std::time::Duration;

use onephase_store::Store;
use onephase_webhook::destination::AddressPolicy;
use onephase_webhook::policy::RetrySchedule;
use onephase_webhook::{Dispatcher, DispatcherConfig, Webhooks};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::outbox::RelaySettings;

/// The configuration file's `[webhook]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Run the dispatcher in this server (default true). Several servers on one PostgreSQL
    /// store share the deliveries.
    #[serde(default)]
    pub dispatcher: Option<bool>,
    /// Networks endpoints may be in although they are internal (loopback, private,
    /// link-local), like `["127.0.0.0/8"]`. Empty by default: only public addresses.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Outbox topic for `endpoint_disabled` events. Default: `onephase.webhook` when an
    /// `[[outbox.relay]]` reads the server's own store; otherwise none. `""` turns them off.
    #[serde(default)]
    pub events_topic: Option<String>,
    /// Seconds before each attempt, counted from the previous one (default: 0, 5, 300, 1800,
    /// 7200, 18000, 36000, 36000).
    #[serde(default)]
    pub schedule_secs: Option<Vec<u64>>,
    /// Spread of each delay, 0 to 1 (default 0.2).
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Seconds an attempt may take (default 15).
    #[serde(default)]
    pub attempt_timeout_secs: Option<u64>,
    /// Seconds after an attempt's timeout before a dead server's deliveries are taken over
    /// (default 15).
    #[serde(default)]
    pub lease_margin_secs: Option<u64>,
    /// The longest `Retry-After` honoured, in seconds (default 3600).
    #[serde(default)]
    pub max_retry_after_secs: Option<u64>,
    /// Seconds an endpoint that answered 429, 502, 503 or 504 runs at reduced concurrency
    /// (default 30, or its `Retry-After` if longer).
    #[serde(default)]
    pub slow_down_secs: Option<u64>,
    /// Disable an endpoint after this many seconds of failing attempts (default 432000, 5
    /// days).
    #[serde(default)]
    pub disable_after_secs: Option<u64>,
    /// Attempts in flight over all endpoints (default 256).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Milliseconds between looks for due deliveries (default 250).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// The largest message body (the JSON endpoints receive), in bytes (default 262144).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

impl WebhookSettings {
    /// The address policy: public addresses plus `allow_networks`.
    pub fn policy(&self) -> Result<AddressPolicy, ConfigError> {
        self.allow_networks
            .iter()
            .try_fold(AddressPolicy::default(), |policy, network| {
                policy.allow(network).map_err(|e| ConfigError::Invalid {
                    key: "webhook.allow_networks",
                    message: e.to_string(),
                })
            })
    }

    /// The dispatcher configuration these settings describe, given the relays.
    pub fn dispatcher_config(
        &self,
        relays: &[RelaySettings],
    ) -> Result<DispatcherConfig, ConfigError> {
        let defaults = DispatcherConfig::default();
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let schedule = match (&self.schedule_secs, self.jitter) {
            (None, None) => defaults.schedule.clone(),
            (secs, jitter) => {
                let delays = secs
                    .clone()
                    .unwrap_or_else(|| vec![0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000])
                    .into_iter()
                    .map(Duration::from_secs)
                    .collect();
                RetrySchedule::new(delays, jitter.unwrap_or(0.2))
                    .map_err(|e| invalid("webhook.schedule_secs", e.to_string()))?
            }
        };
        let drained = relays.iter().any(|r| r.source.is_none());
        let events_topic = match &self.events_topic {
            Some(t) if t.is_empty() => None,
            Some(t) => {
                onephase_core::validate_topic(t)
                    .map_err(|e| invalid("webhook.events_topic", e.to_string()))?;
                Some(t.clone())
            }
            None if drained => defaults.events_topic.clone(),
            None => None,
        };
        let secs = |value: Option<u64>, key: &'static str, default: Duration| match value {
            Some(0) => Err(invalid(key, "must be at least 1".to_owned())),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        Ok(DispatcherConfig {
            schedule,
            attempt_timeout: secs(
                self.attempt_timeout_secs,
                "webhook.attempt_timeout_secs",
                defaults.attempt_timeout,
            )?,
            lease_margin: secs(
                self.lease_margin_secs,
                "webhook.lease_margin_secs",
                defaults.lease_margin,
            )?,
            max_retry_after: secs(
                self.max_retry_after_secs,
                "webhook.max_retry_after_secs",
                defaults.max_retry_after,
            )?,
            slow_down_for: secs(
                self.slow_down_secs,
                "webhook.slow_down_secs",
                defaults.slow_down_for,
            )?,
            disable_after: secs(
                self.disable_after_secs,
                "webhook.disable_after_secs",
                defaults.disable_after,
            )?,
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight).max(1),
            poll_interval: self.poll_interval_ms.map_or(defaults.poll_interval, |ms| {
                Duration::from_millis(ms.max(1))
            }),
            events_topic,
            policy: self.policy()?,
            ..defaults
        })
    }

    /// The largest message body.
    pub fn max_body(&self) -> usize {
        self.max_body_bytes
            .unwrap_or(onephase_webhook::DEFAULT_MAX_BODY)
    }

    /// Checks everything that can be checked without a store.
    pub fn validate(&self, relays: &[RelaySettings]) -> Result<(), ConfigError> {
        if self.max_body_bytes == Some(0) {
            return Err(ConfigError::Invalid {
                key: "webhook.max_body_bytes",
                message: "must be at least 1 byte".to_owned(),
            });
        }
        self.dispatcher_config(relays).map(drop)
    }
}

/// The server's webhooks: the management facade and its dispatcher.
#[derive(Debug, Clone)]
pub struct WebhookService {
    webhooks: Webhooks,
    dispatcher: Option<Dispatcher>,
}

impl WebhookService {
    /// Over `store`, configured by `settings` (already validated).
    pub fn new(
        store: &Store,
        settings: &WebhookSettings,
        relays: &[RelaySettings],
    ) -> Result<Self, ConfigError> {
        let config = settings.dispatcher_config(relays)?;
        let webhooks =
            Webhooks::new(store.clone(), config.policy.clone()).with_max_body(settings.max_body());
        let dispatcher = if settings.dispatcher.unwrap_or(true) {
            Some(
                Dispatcher::new(store.clone(), config).map_err(|e| ConfigError::Invalid {
                    key: "webhook",
                    message: e.to_string(),
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            webhooks,
            dispatcher,
        })
    }

    /// Endpoints, sending and inspection.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Runs the dispatcher until `stop` turns true; it then records the attempts in flight.
    pub fn spawn(&self, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let dispatcher = self.dispatcher.clone()?;
        Some(tokio::spawn(async move {
            dispatcher
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }))
    }
}

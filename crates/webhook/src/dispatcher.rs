//! The dispatcher: takes due deliveries, signs and sends them, and records what happened.
//!
//! Each round claims due deliveries in one statement that respects every endpoint's free
//! concurrency, its rate and, for ordered endpoints, the order of each partition key. A
//! claimed delivery is locked in the store until its attempt can no longer be running
//! (`attempt_timeout + lease_margin`), so a dispatcher that dies mid-attempt leaves nothing
//! stuck: after the lock lapses another dispatcher (or the same one, restarted) tries again
//! with the same `webhook-id`. Outcomes are written in batches by one writer task.
//!
//! A slow endpoint holds only its own concurrency slots: claims never wait for an endpoint,
//! and every attempt runs in its own task under its own timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use onephase_core::{Random, SharedClock, SystemClock};
use onephase_store::Store;
use onephase_store::worker::{Pace, Wake, WorkerLoop};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument as _;

use crate::WebhookError;
use crate::destination::{AddressPolicy, DeliveryClient, DeliveryError};
use crate::endpoint::{StoredKey, signer};
use crate::policy::{RetrySchedule, Verdict, judge, next_delay};
use crate::signature::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::sql::{self, Claimed, Disabled, EndpointRules, Finished, Outcome};

static SENT: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Tells dispatchers in this process that a message was written.
pub(crate) fn wake() {
    SENT.notify_waiters();
}

/// The most response body kept with an attempt.
pub const RESPONSE_SNIPPET: usize = 1024;

/// How a [`Dispatcher`] works.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// When attempts are made (default: the Standard Webhooks schedule, 8 attempts over about
    /// 28 hours, ±20% jitter).
    pub schedule: RetrySchedule,
    /// How long an attempt may take, connection to last byte (default 15 s).
    pub attempt_timeout: Duration,
    /// How long after an attempt's timeout its delivery stays locked (default 15 s): the
    /// time to record the outcome. A dispatcher that died is replaced after
    /// `attempt_timeout + lease_margin`.
    pub lease_margin: Duration,
    /// Attempts in flight at once over all endpoints (default 256).
    pub max_in_flight: usize,
    /// Deliveries taken per claim (default 64): smaller claims keep attempts flowing while
    /// earlier ones are recorded.
    pub claim_batch: u32,
    /// Outcomes written per transaction, at most (default 512).
    pub record_batch: usize,
    /// How often to look for due deliveries when not woken (default 250 ms).
    pub poll_interval: Duration,
    /// The longest `Retry-After` honoured (default 1 hour).
    pub max_retry_after: Duration,
    /// How long an endpoint that answered 429, 502, 503 or 504 runs at reduced concurrency
    /// (halved per such answer; default 30 s, or its `Retry-After` if longer).
    pub slow_down_for: Duration,
    /// Disable an endpoint whose every attempt failed for this long (default 5 days).
    pub disable_after: Duration,
    /// Outbox topic for operational events (`endpoint_disabled`); `None` for none (default
    /// `onephase.webhook`).
    pub events_topic: Option<String>,
    /// Which destinations may be reached (default: public addresses only).
    pub policy: AddressPolicy,
    /// Seed for the retry jitter; `None` for a random one.
    pub seed: Option<u64>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            attempt_timeout: Duration::from_secs(15),
            lease_margin: Duration::from_secs(15),
            max_in_flight: 256,
            claim_batch: 64,
            record_batch: 512,
            poll_interval: Duration::from_millis(250),
            max_retry_after: Duration::from_secs(3600),
            slow_down_for: Duration::from_secs(30),
            disable_after: Duration::from_secs(5 * 86_400),
            events_topic: Some("onephase.webhook".to_owned()),
            policy: AddressPolicy::default(),
            seed: None,
        }
    }
}

/// Delivers pending messages. Cheap to clone; clones share their state.
#[derive(Clone, derive_more::Debug)]
#[debug("Dispatcher {{ store: {:?}, config: {:?}, .. }}", inner.store, inner.config)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: DispatcherConfig,
    client: DeliveryClient,
    clock: SharedClock,
    random: Arc<Random>,
    in_flight: AtomicUsize,
    freed: Notify,
    /// Claims made, to rotate which endpoint a claim starts with.
    rounds: AtomicUsize,
    /// When the pending deliveries of disabled endpoints were last swept up.
    swept_at: Mutex<Option<Instant>>,
    /// Where each ordered endpoint's walk over its keys stopped; held through a claim.
    key_cursors: tokio::sync::Mutex<sql::KeyCursors>,
}

/// What one [`Dispatcher::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Attempts made.
    pub attempts: usize,
    /// Of which delivered.
    pub delivered: usize,
    /// Endpoints disabled by what the attempts found.
    pub disabled: Vec<String>,
}

impl Dispatcher {
    /// A dispatcher over `store` (migrated with [`migrations`](crate::migrations)).
    pub fn new(store: Store, config: DispatcherConfig) -> Result<Self, WebhookError> {
        let client = DeliveryClient::new(config.policy.clone(), config.attempt_timeout)
            .map_err(|e| WebhookError::invalid(format!("HTTP client: {e}")))?;
        let random = match config.seed {
            Some(seed) => Random::seeded(seed),
            None => Random::from_entropy(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                client,
                clock: Arc::new(SystemClock),
                random: Arc::new(random),
                in_flight: AtomicUsize::new(0),
                freed: Notify::new(),
                rounds: AtomicUsize::new(0),
                swept_at: Mutex::new(None),
                key_cursors: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The same dispatcher reading time from `clock`. Call it before cloning the dispatcher:
    /// clones made earlier keep the clock they had.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.clock = clock,
            None => tracing::warn!("Dispatcher::with_clock on a shared dispatcher changes nothing"),
        }
        self
    }

    /// Its configuration.
    pub fn config(&self) -> &DispatcherConfig {
        &self.inner.config
    }

    /// Attempts sent and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Claims what is due now, makes every attempt, records the outcomes, and returns. For
    /// tests and one-shot tools; a server calls [`run`](Self::run).
    pub async fn run_once(&self) -> Result<Round, WebhookError> {
        let claimed = self.claim(self.inner.config.claim_batch).await?;
        let attempts =
            futures::future::join_all(claimed.into_iter().map(|c| self.inner.clone().attempt(c)))
                .await;
        let delivered = attempts
            .iter()
            .filter(|f| f.outcome == Outcome::Delivered)
            .count();
        let disabled = self.inner.record(&attempts).await?;
        Ok(Round {
            attempts: attempts.len(),
            delivered,
            disabled: disabled.into_iter().map(|d| d.endpoint_id).collect(),
        })
    }

    async fn claim(&self, limit: u32) -> Result<Vec<Claimed>, WebhookError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let now_ms = sql::ms(now);
        let lease = inner.config.attempt_timeout + inner.config.lease_margin;
        let lease_ms = now_ms + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let now_us = i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
        let start = inner.rounds.fetch_add(1, Ordering::Relaxed);
        if inner.sweep_due() {
            sql::sweep_auto_disabled(&inner.store, now_ms).await?;
        }
        let mut cursors = inner.key_cursors.lock().await;
        let started = inner.clock.monotonic();
        let claimed = sql::claim(
            &inner.store,
            now_ms,
            now_us,
            lease_ms,
            limit,
            start,
            &mut cursors,
        )
        .await?;
        let took = inner.clock.monotonic().saturating_duration_since(started);
        metrics::histogram!("onephase_webhook_claim_seconds").record(took.as_secs_f64());
        Ok(claimed)
    }

    /// Starts one task per claimed delivery; each sends its outcome to the recording task.
    fn spawn_attempts(&self, claimed: Vec<Claimed>, results: &mpsc::UnboundedSender<Finished>) {
        self.inner
            .in_flight
            .fetch_add(claimed.len(), Ordering::AcqRel);
        for c in claimed {
            let inner = self.inner.clone();
            let results = results.clone();
            // Each attempt is a span in the trace of the request that sent the message.
            let span = tracing::info_span!(
                "webhook delivery",
                message = %c.message_id,
                endpoint = %c.endpoint_id,
                attempt = c.attempts.saturating_add(1),
                otel.kind = "client",
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                error = tracing::field::Empty,
            );
            onephase_trace::follow(&span, c.traceparent.as_deref());
            tokio::spawn(
                async move {
                    let _ = results.send(inner.attempt(c).await);
                }
                .instrument(span),
            );
        }
    }

    /// Delivers until `shutdown` completes; then stops claiming and waits (at most one attempt
    /// timeout and lease margin) for the attempts in flight to be recorded. Store errors are
    /// logged and retried; they never end the loop.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let (results, mut outcomes) = mpsc::unbounded_channel::<Finished>();
        let writer = tokio::spawn({
            let inner = self.inner.clone();
            async move {
                let mut batch = Vec::new();
                while let Some(first) = outcomes.recv().await {
                    batch.push(first);
                    while batch.len() < inner.config.record_batch {
                        match outcomes.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    inner.record_until_done(&batch).await;
                    inner.in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
                    inner.freed.notify_one();
                    batch.clear();
                }
            }
        });
        let mut shutdown = std::pin::pin!(shutdown);
        let config = &self.inner.config;
        // No LISTEN: a message committed elsewhere is found by the next poll.
        let mut worker = WorkerLoop::new(&self.inner.store, self.inner.clock.clone())
            .poll_interval(config.poll_interval)
            .with_random(self.inner.random.clone());
        loop {
            let room = config
                .max_in_flight
                .saturating_sub(self.inner.in_flight.load(Ordering::Acquire));
            let mut pace = Pace::Poll;
            if room > 0 {
                let limit = u32::try_from(room)
                    .unwrap_or(u32::MAX)
                    .min(config.claim_batch);
                match self.claim(limit).await {
                    Ok(claimed) => {
                        worker.succeeded();
                        if claimed.len() == limit as usize {
                            pace = Pace::Now;
                        }
                        self.spawn_attempts(claimed, &results);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook claim failed; retrying");
                        pace = Pace::After(
                            worker
                                .failed()
                                .min(config.poll_interval.max(MAX_CLAIM_BACKOFF)),
                        );
                    }
                }
            }
            let freed = self.inner.freed.notified();
            if worker
                .wait(pace, SENT.notified(), freed, shutdown.as_mut())
                .await
                == Wake::Stop
            {
                break;
            }
        }
        drop(results);
        let grace = config.attempt_timeout + config.lease_margin;
        if tokio::time::timeout(grace, writer).await.is_err() {
            tracing::warn!(
                "webhook attempts still running at shutdown; their deliveries are retried after the lease"
            );
        }
    }
}

/// The longest a dispatcher waits after a failed claim before it tries again.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(1);

/// How often a dispatcher looks for deliveries left pending on an endpoint it disabled.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Inner {
    /// Whether a claim should sweep first: on the first claim, then every [`SWEEP_EVERY`].
    fn sweep_due(&self) -> bool {
        let now = self.clock.monotonic();
        let mut swept_at = self.swept_at.lock().unwrap_or_else(|e| e.into_inner());
        if swept_at.is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY) {
            return false;
        }
        *swept_at = Some(now);
        true
    }

    /// Sends one claimed delivery and judges the answer.
    async fn attempt(self: Arc<Self>, c: Claimed) -> Finished {
        let now = self.clock.now();
        let now_ms = sql::ms(now);
        let attempt = c.attempts.saturating_add(1);
        let started = self.clock.monotonic();
        let sent = self.send(&c, now).await;
        let latency_ms = i64::try_from(
            self.clock
                .monotonic()
                .saturating_duration_since(started)
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        let ended_ms = now_ms + latency_ms;
        let span = tracing::Span::current();
        match &sent {
            Ok((status, ..)) => {
                span.record("http.response.status_code", status);
                if *status >= 300 {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                span.record("error", error.as_str());
            }
        }
        let (verdict, status_code, response, error) = match sent {
            Ok((status, retry_after, snippet)) => (
                judge(status, retry_after.as_deref(), ended_ms / 1000),
                Some(i32::from(status)),
                Some(snippet),
                None,
            ),
            Err(error) => (
                Verdict::Retry {
                    retry_after: None,
                    slow_down: false,
                },
                None,
                None,
                Some(error),
            ),
        };
        let mut slow_until_ms = None;
        let (outcome, status, next_at_ms) = match verdict {
            Verdict::Delivered => (Outcome::Delivered, "delivered", ended_ms),
            Verdict::Gone => (Outcome::Gone, "dead", ended_ms),
            Verdict::Retry {
                retry_after,
                slow_down,
            } => {
                let bounded = retry_after.map(|d| d.min(self.config.max_retry_after));
                if slow_down {
                    let period = bounded.unwrap_or_default().max(self.config.slow_down_for);
                    slow_until_ms = Some(ended_ms + millis(period));
                }
                let next = u32::try_from(attempt).unwrap_or(u32::MAX).saturating_add(1);
                let scheduled = self.config.schedule.delay_before(next, &mut &*self.random);
                match scheduled {
                    Some(delay) => {
                        let delay = next_delay(delay, retry_after, self.config.max_retry_after);
                        (Outcome::Retry, "pending", ended_ms + millis(delay))
                    }
                    None => (Outcome::Dead, "dead", ended_ms),
                }
            }
        };
        let error = error.or_else(|| match (outcome, status_code) {
            (Outcome::Delivered, _) => None,
            (_, Some(code)) => Some(format!("the endpoint answered {code}")),
            _ => None,
        });
        metrics::counter!("onephase_webhook_attempts_total", "outcome" => outcome_name(outcome))
            .increment(1);
        metrics::histogram!("onephase_webhook_attempt_seconds").record(latency_ms as f64 / 1000.0);
        Finished {
            delivery_id: c.id,
            message_id: c.message_id,
            endpoint_id: c.endpoint_id,
            url: c.url,
            attempt,
            at_ms: now_ms,
            outcome,
            status,
            next_at_ms,
            status_code,
            latency_ms,
            response,
            error,
            slow_until_ms,
        }
    }

    /// Signs and posts; the answer's status, `Retry-After` and the start of its body, or why
    /// there was no answer.
    async fn send(
        &self,
        c: &Claimed,
        now: time::OffsetDateTime,
    ) -> Result<(u16, Option<String>, String), String> {
        let keys: Vec<StoredKey> = serde_json::from_str(&c.keys)
            .map_err(|e| format!("the endpoint's keys do not read: {e}"))?;
        let signer = signer(&keys, sql::ms(now)).map_err(|e| e.to_string())?;
        let timestamp = now.unix_timestamp();
        let signature = signer.sign(&c.message_id, timestamp, c.body.as_bytes());
        let mut request = self
            .client
            .http()
            .post(&c.url)
            .header(WEBHOOK_ID, &c.message_id)
            .header(WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(WEBHOOK_SIGNATURE, signature)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("onephase-webhook/", env!("CARGO_PKG_VERSION")),
            )
            .body(c.body.clone());
        if let Some(traceparent) =
            onephase_trace::onward(&tracing::Span::current(), c.traceparent.as_deref())
        {
            request = request.header(onephase_trace::TRACEPARENT, traceparent);
        }
        let request = request
            .build()
            .map_err(|e| format!("the request could not be built: {e}"))?;
        let mut response = self.client.send(request).await.map_err(|e| match e {
            DeliveryError::Destination(refused) => format!("refused: {refused}"),
            DeliveryError::Http(e) if e.is_timeout() => format!(
                "no answer within {} ms",
                self.config.attempt_timeout.as_millis()
            ),
            DeliveryError::Http(e) => format!("{e}: {}", source_chain(&e)),
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut snippet = Vec::new();
        while snippet.len() < RESPONSE_SNIPPET {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                _ => break,
            }
        }
        snippet.truncate(RESPONSE_SNIPPET);
        Ok((
            status,
            retry_after,
            String::from_utf8_lossy(&snippet).into_owned(),
        ))
    }

    fn rules(&self) -> EndpointRules {
        EndpointRules {
            disable_after_ms: millis(self.config.disable_after),
            events_topic: self.config.events_topic.clone(),
        }
    }

    async fn record(&self, finished: &[Finished]) -> Result<Vec<Disabled>, WebhookError> {
        let now_ms = sql::ms(self.clock.now());
        let started = self.clock.monotonic();
        let disabled = sql::record(&self.store, finished, &self.rules(), now_ms).await?;
        let took = self.clock.monotonic().saturating_duration_since(started);
        metrics::histogram!("onephase_webhook_record_seconds").record(took.as_secs_f64());
        for d in &disabled {
            tracing::warn!(
                endpoint = %d.endpoint_id,
                url = %d.url,
                reason = %d.reason,
                dead_lettered = d.dead_lettered,
                "webhook endpoint disabled"
            );
            metrics::counter!("onephase_webhook_endpoints_disabled_total").increment(1);
        }
        Ok(disabled)
    }

    /// Records a batch, retrying store failures for as long as the deliveries stay locked;
    /// after that they are taken again by a claim and the outcomes here would be stale.
    async fn record_until_done(&self, finished: &[Finished]) {
        let deadline = self.clock.monotonic() + self.config.lease_margin;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.record(finished).await {
                Ok(_) => return,
                Err(e) if self.clock.monotonic() < deadline => {
                    tracing::warn!(error = %e, attempts = finished.len(), "recording webhook attempts failed; retrying");
                    self.clock.sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, attempts = finished.len(), "webhook attempts not recorded; their deliveries are retried after the lease");
                    return;
                }
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Retry => "retry",
        Outcome::Dead => "dead",
        Outcome::Gone => "gone",
    }
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut current = e.source();
    while let Some(err) = current {
        parts.push(err.to_string());
        current = err.source();
    }
    parts.join(": ")
}

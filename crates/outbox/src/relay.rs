//! The relay: claims due outbox rows, publishes them, records the outcome.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use derive_setters::Setters;
use onephase_broker::{BrokerError, Publisher};
use onephase_core::{
    Backoff, Classify, Envelope, ErrorKind, Jitter, MessageId, Random, SharedClock, SystemClock,
};
use onephase_store::Store;
use onephase_store::worker::{Every, Pace, Wake, WorkerLoop};
use uuid::Uuid;

use crate::metrics::RelayMetrics;
use crate::sql::{Failure, Row, Sql};
use crate::{DEFAULT_MAX_PAYLOAD, OutboxError};

/// How a [`Relay`] behaves. `RelayConfig::default()` suits most deployments.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// A name for this relay's source, used as the `source` label of its metrics.
    pub source: String,
    /// Most rows claimed and published per round (default 500).
    pub batch_size: u32,
    /// How long a claim lasts (default 30 s). A relay that crashes holds its rows this long
    /// before another relay takes them; a relay stalled longer than this may publish a row
    /// another relay has already published (a duplicate the inbox absorbs).
    pub claim_timeout: Duration,
    /// How often to look for rows when nothing wakes the relay (default 1 s on PostgreSQL,
    /// where `NOTIFY` normally wakes it first, and 50 ms on SQLite).
    pub poll_interval: Option<Duration>,
    /// Publish attempts before a row is dead-lettered (default 12).
    pub max_attempts: u32,
    /// Delay between attempts of one row (default: 200 ms doubling to 60 s, full jitter).
    pub backoff: Backoff,
    /// Rows with larger payloads are dead-lettered without a publish attempt (default 1 MiB).
    pub max_payload: usize,
    /// How long published rows stay in the table (default zero: deleted as they are marked,
    /// in the same bounded statement). When non-zero, a retention pass deletes them in
    /// batches of [`retention_batch`](Self::retention_batch).
    pub keep_published: Duration,
    /// How often retention and the status gauges run (default 1 s).
    pub housekeeping_interval: Duration,
    /// Rows per retention `DELETE` (default 5,000).
    pub retention_batch: u32,
    /// On PostgreSQL, run `VACUUM` on the outbox table during housekeeping once it holds more
    /// than this many dead tuples (default 50,000; `None` leaves it to autovacuum). A queue
    /// table turns over its whole content constantly; when autovacuum is off or behind, the
    /// dead tuples of published rows would otherwise pile up in the table and its indexes and
    /// slow every claim. Needs the table owner's rights; without them it logs and carries on.
    pub vacuum_threshold: Option<u64>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            source: "default".to_owned(),
            batch_size: 500,
            claim_timeout: Duration::from_secs(30),
            poll_interval: None,
            max_attempts: 12,
            backoff: Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(60),
                Jitter::Full,
            )
            .expect("200 ms doubling to 60 s is a valid backoff"),
            max_payload: DEFAULT_MAX_PAYLOAD,
            keep_published: Duration::ZERO,
            housekeeping_interval: Duration::from_secs(1),
            retention_batch: 5_000,
            vacuum_threshold: Some(50_000),
        }
    }
}

/// What one round of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows the broker accepted and that were marked published.
    pub published: usize,
    /// Rows whose publish failed and that will be retried.
    pub retrying: usize,
    /// Rows dead-lettered this round.
    pub dead_lettered: usize,
    /// Rows not attempted because an earlier row of their key failed in this round.
    pub held_back: usize,
    /// Published rows whose claim had expired and been taken by another relay before they
    /// were marked: published twice.
    pub lost_claims: usize,
}

/// Running totals of one relay, readable while it runs (for dashboards and rates).
#[derive(Debug, Clone, Default)]
pub struct RelayStats {
    published: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    dead_lettered: Arc<AtomicU64>,
}

impl RelayStats {
    /// Rows published since the relay was created.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Failed publish attempts since the relay was created.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Rows dead-lettered since the relay was created.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    fn add(&self, report: &RoundReport) {
        self.published
            .fetch_add(report.published as u64, Ordering::Relaxed);
        self.failed.fetch_add(
            (report.retrying + report.dead_lettered) as u64,
            Ordering::Relaxed,
        );
        self.dead_lettered
            .fetch_add(report.dead_lettered as u64, Ordering::Relaxed);
    }
}

/// Publishes outbox rows to a [`Publisher`], at least once and in order per key.
///
/// Run many relays against one PostgreSQL outbox; see the crate documentation for how they
/// share the work and still keep each key's order.
#[derive(Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct Relay<P> {
    store: Store,
    publisher: P,
    config: RelayConfig,
    id: Uuid,
    /// Uses this clock for waiting and, on SQLite, for claim and retry times.
    #[setters(generate)]
    clock: SharedClock,
    /// Draws backoff jitter from this source (seeded for reproducible tests).
    #[setters(generate, into)]
    random: Arc<Random>,
    metrics: RelayMetrics,
    /// Counts into these totals (made beforehand, so that a status page can show a relay's
    /// totals before the relay exists, while its sink is still being reached).
    #[setters(generate)]
    stats: RelayStats,
    failures_log: Mutex<FailureLog>,
}

/// How often a relay whose publishes keep failing says so in its log.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Retryable publish failures since the relay last logged them: one line per
/// [`FAILURE_LOG_EVERY`] at most, with the count and the latest cause, so that a broker outage
/// is visible in the log without a line per row.
#[derive(Debug, Default)]
struct FailureLog {
    logged_at: Option<std::time::Instant>,
    unlogged: u64,
}

impl<P: Publisher> Relay<P> {
    /// A relay over the outbox in `store` (whose [`migrations`](crate::migrations) have run).
    pub fn new(store: Store, publisher: P, config: RelayConfig) -> Self {
        let metrics = RelayMetrics::new(&config.source, publisher.transport());
        Self {
            store,
            publisher,
            config,
            id: Uuid::now_v7(),
            clock: Arc::new(SystemClock),
            random: Arc::new(Random::from_entropy()),
            metrics,
            stats: RelayStats::default(),
            failures_log: Mutex::default(),
        }
    }

    /// Draws backoff jitter from a sequence seeded with `seed`, for reproducible tests.
    pub fn with_seed(self, seed: u64) -> Self {
        self.with_random(Random::seeded(seed))
    }

    /// A handle on this relay's running totals.
    pub fn stats(&self) -> RelayStats {
        self.stats.clone()
    }

    /// This relay's id: the `claimed_by` of the rows it holds.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Claims one batch, publishes it and records the outcome.
    pub async fn run_once(&self) -> Result<RoundReport, OutboxError> {
        let started = self.clock.monotonic();
        let sql = Sql::new(&self.store);
        let rows = sql
            .claim(
                self.id,
                self.config.batch_size,
                self.config.claim_timeout,
                self.clock.now(),
            )
            .await?;
        let mut report = RoundReport {
            claimed: rows.len(),
            ..RoundReport::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }

        let mut failures = Vec::new();
        let mut failed_keys: HashSet<String> = HashSet::new();

        // Rows that cannot become envelopes fail for good, without a publish attempt.
        let mut valid = Vec::with_capacity(rows.len());
        for mut row in rows {
            match self.envelope(&mut row) {
                Ok(envelope) => valid.push((row, envelope)),
                Err(e) => {
                    if let Some(key) = &row.key {
                        failed_keys.insert(key.clone());
                    }
                    failures.push(self.failure(&row, e.kind(), e.to_string(), true));
                }
            }
        }

        let (published, held_back) = self
            .publish_waves(valid, &mut failures, &mut failed_keys)
            .await;

        let now = self.clock.now();
        if !published.is_empty() {
            let marked = sql
                .published(
                    self.id,
                    &published,
                    !self.config.keep_published.is_zero(),
                    now,
                )
                .await?;
            report.published = published.len();
            report.lost_claims = published.len().saturating_sub(marked as usize);
            if report.lost_claims > 0 {
                tracing::warn!(
                    relay = %self.id,
                    lost = report.lost_claims,
                    "published rows whose claim had expired; another relay may publish them too \
                     (raise claim_timeout if publishing takes this long)"
                );
            }
        }
        if !failures.is_empty() {
            sql.failed(self.id, &failures, now).await?;
            self.report_failures(&failures, &mut report);
        }
        if !held_back.is_empty() {
            sql.release(self.id, &held_back).await?;
            report.held_back = held_back.len();
        }
        let took = self.clock.monotonic().saturating_duration_since(started);
        self.metrics.round(&report, took);
        self.stats.add(&report);
        Ok(report)
    }

    /// Publishes rows in waves: the n-th row of every key goes in wave n, so no two rows of one
    /// key are in flight together, and a row is sent only after every earlier row of its key
    /// in this batch was acknowledged. Returns the published and the held-back seqs (rows of
    /// a key that failed earlier in the batch).
    async fn publish_waves(
        &self,
        valid: Vec<(Row, Envelope)>,
        failures: &mut Vec<Failure>,
        failed_keys: &mut HashSet<String>,
    ) -> (Vec<i64>, Vec<i64>) {
        let mut published = Vec::new();
        let mut held_back = Vec::new();
        for wave in waves(valid) {
            let (wave, skipped): (Vec<_>, Vec<_>) = wave
                .into_iter()
                .partition(|(row, _)| row.key.as_ref().is_none_or(|k| !failed_keys.contains(k)));
            held_back.extend(skipped.into_iter().map(|(row, _)| row.seq));
            if wave.is_empty() {
                continue;
            }
            let (rows, envelopes): (Vec<Row>, Vec<Envelope>) = wave.into_iter().unzip();
            let spans: Vec<_> = envelopes.iter().map(|e| self.publish_span(e)).collect();
            let results = self.publisher.publish(&envelopes).await;
            for ((row, result), span) in rows.into_iter().zip(results).zip(spans) {
                match result {
                    Ok(()) => published.push(row.seq),
                    Err(e) => {
                        if let Some(span) = span {
                            span.record("otel.status_code", "ERROR");
                            span.record("error", e.to_string());
                        }
                        if let Some(key) = &row.key {
                            failed_keys.insert(key.clone());
                        }
                        failures.push(self.broker_failure(&row, &e));
                    }
                }
            }
        }
        (published, held_back)
    }

    /// Counts the recorded failures into `report` and logs them: each dead letter, and the
    /// retries at most once per [`FAILURE_LOG_EVERY`].
    fn report_failures(&self, failures: &[Failure], report: &mut RoundReport) {
        let mut latest_retry = None;
        for f in failures {
            if f.dead {
                report.dead_lettered += 1;
                tracing::warn!(
                    source = %self.config.source,
                    sink = self.publisher.transport(),
                    seq = f.seq,
                    error = %f.error,
                    "outbox row dead-lettered"
                );
            } else {
                report.retrying += 1;
                latest_retry = Some(f);
            }
        }
        if let Some(latest) = latest_retry {
            self.log_retries(report.retrying as u64, latest);
        }
    }

    /// Counts `count` retryable failures and logs them (with the latest cause) if the last
    /// such line is older than [`FAILURE_LOG_EVERY`].
    fn log_retries(&self, count: u64, latest: &Failure) {
        let now = self.clock.monotonic();
        let mut log = self.failures_log.lock().unwrap_or_else(|e| e.into_inner());
        log.unlogged += count;
        if log
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < FAILURE_LOG_EVERY)
        {
            return;
        }
        let since = log.logged_at.map_or_else(String::new, |at| {
            format!(
                " in the last {} s",
                now.saturating_duration_since(at).as_secs()
            )
        });
        tracing::warn!(
            source = %self.config.source,
            sink = self.publisher.transport(),
            failures = log.unlogged,
            error = %latest.error,
            "outbox publishes failing{since}; the rows are retried with backoff (latest: seq {})",
            latest.seq
        );
        log.unlogged = 0;
        log.logged_at = Some(now);
    }

    /// A span for the publish of an event written within a trace (its `traceparent` header),
    /// as a child of that context; it lasts while its wave is published. Events written
    /// outside a trace get none: a relay moves tens of thousands a second. The event keeps
    /// the `traceparent` it was written with, so its consumers continue the writer's trace.
    fn publish_span(&self, envelope: &Envelope) -> Option<tracing::Span> {
        let traceparent = envelope.header(onephase_trace::TRACEPARENT)?;
        let span = tracing::info_span!(
            "outbox publish",
            topic = envelope.topic(),
            message = %envelope.id(),
            sink = self.publisher.transport(),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        onephase_trace::follow(&span, Some(traceparent));
        Some(span)
    }

    /// The row as an envelope. Takes the row's topic and payload (the row keeps its seq, key
    /// and attempts, which is all the bookkeeping needs), so nothing is copied.
    fn envelope(&self, row: &mut Row) -> Result<Envelope, OutboxError> {
        if row.payload.len() > self.config.max_payload {
            return Err(OutboxError::PayloadTooLarge {
                size: row.payload.len(),
                limit: self.config.max_payload,
            });
        }
        let id = Uuid::parse_str(&row.id).map_err(|e| {
            onephase_core::ValidationError::new("id", format!("{:?} is not a UUID: {e}", row.id))
        })?;
        let headers: HashMap<String, String> = serde_json::from_str(&row.headers).map_err(|e| {
            onephase_core::ValidationError::new(
                "headers",
                format!("must be a JSON object of string values: {e}"),
            )
        })?;
        let topic = std::mem::take(&mut row.topic);
        let payload = Bytes::from(std::mem::take(&mut row.payload));
        let mut builder = Envelope::builder(topic, payload)
            .id(MessageId::from_uuid(id)?)
            .created_at(row.created_at);
        if let Some(key) = &row.key {
            builder = builder.key(key.clone());
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        Ok(builder.build()?)
    }

    fn failure(&self, row: &Row, kind: ErrorKind, error: String, permanent: bool) -> Failure {
        // A negative count (never written by the relay) counts as the first attempt.
        let attempt = u32::try_from(row.attempts).unwrap_or(0);
        let dead = permanent || attempt.saturating_add(1) >= self.config.max_attempts;
        let retry_in = self.config.backoff.delay(attempt, None, &mut &*self.random);
        Failure {
            seq: row.seq,
            error: format!("{kind}: {error}"),
            dead,
            retry_in,
        }
    }

    fn broker_failure(&self, row: &Row, e: &BrokerError) -> Failure {
        self.failure(row, e.kind(), e.to_string(), !e.is_transient())
    }

    /// Deletes published rows past their retention, in batches, until none are left.
    pub async fn prune(&self) -> Result<u64, OutboxError> {
        let sql = Sql::new(&self.store);
        let mut total = 0;
        loop {
            let deleted = sql
                .prune_published(
                    self.config.keep_published,
                    self.config.retention_batch,
                    self.clock.now(),
                )
                .await?;
            total += deleted;
            if deleted < u64::from(self.config.retention_batch) {
                return Ok(total);
            }
        }
    }

    /// Runs rounds until `shutdown` completes, waking on `NOTIFY` (PostgreSQL), on
    /// [`enqueue`](crate::enqueue) in this process, or every poll interval. Database and
    /// broker errors are logged and retried; only `shutdown` ends the loop, after the round
    /// in progress (bounded by the publisher's timeouts) has been recorded.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut worker = WorkerLoop::new(&self.store, self.clock.clone())
            .listen_on("onephase_outbox")
            .with_random(self.random.clone());
        if let Some(poll) = self.config.poll_interval {
            worker = worker.poll_interval(poll);
        }
        worker.start().await;
        let mut housekeeping = Every::new(self.config.housekeeping_interval);
        loop {
            if housekeeping.due(self.clock.monotonic()) {
                self.housekeeping().await;
            }
            // A round in hand is finished before shutdown is looked at, so that a graceful stop
            // does not leave claimed rows waiting out their claim timeout.
            let round = self.run_once().await;
            if futures::FutureExt::now_or_never(shutdown.as_mut()).is_some() {
                return;
            }
            let pace = match round {
                Ok(report) => {
                    worker.succeeded();
                    let full = report.claimed >= self.config.batch_size as usize;
                    if full || (report.claimed > 0 && report.published > 0) {
                        Pace::Now
                    } else {
                        Pace::Poll
                    }
                }
                Err(e) => {
                    self.metrics.round_error();
                    tracing::error!(relay = %self.id, error = %e, "relay round failed; retrying");
                    Pace::After(worker.failed())
                }
            };
            let signal = crate::wake::notified();
            let never = std::future::pending::<()>();
            if worker.wait(pace, signal, never, shutdown.as_mut()).await == Wake::Stop {
                return;
            }
        }
    }

    async fn housekeeping(&self) {
        if !self.config.keep_published.is_zero()
            && let Err(e) = self.prune().await
        {
            tracing::warn!(error = %e, "outbox retention pass failed");
        }
        if let Some(threshold) = self.config.vacuum_threshold {
            match Sql::new(&self.store).vacuum_if_needed(threshold).await {
                Ok(Some(dead)) => {
                    self.metrics.vacuumed();
                    tracing::debug!(dead, "vacuumed the outbox table");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "vacuuming the outbox table failed"),
            }
        }
        match Sql::new(&self.store).status(self.clock.now()).await {
            Ok(status) => self.metrics.status(&status),
            Err(e) => tracing::warn!(error = %e, "reading outbox status failed"),
        }
    }
}

/// Splits rows (in seq order) into waves: wave n holds the n-th row of each key; rows without
/// a key all go in the first wave.
fn waves<T>(rows: Vec<(Row, T)>) -> Vec<Vec<(Row, T)>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut waves: Vec<Vec<(Row, T)>> = Vec::new();
    for (row, item) in rows {
        let n = match &row.key {
            Some(key) => {
                let count = seen.entry(key.clone()).or_insert(0);
                *count += 1;
                *count - 1
            }
            None => 0,
        };
        if waves.len() <= n {
            waves.resize_with(n + 1, Vec::new);
        }
        waves[n].push((row, item));
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, key: Option<&str>) -> Row {
        Row {
            seq,
            id: String::new(),
            topic: "t".into(),
            key: key.map(str::to_owned),
            payload: Vec::new(),
            headers: "{}".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            attempts: 0,
        }
    }

    #[test]
    fn waves_hold_one_row_per_key_in_seq_order() {
        let rows = vec![
            (row(1, Some("a")), ()),
            (row(2, Some("a")), ()),
            (row(3, None), ()),
            (row(4, Some("b")), ()),
            (row(5, None), ()),
            (row(6, Some("a")), ()),
        ];
        let seqs: Vec<Vec<i64>> = waves(rows)
            .into_iter()
            .map(|w| w.into_iter().map(|(r, ())| r.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 3, 4, 5], vec![2], vec![6]]);
    }
}

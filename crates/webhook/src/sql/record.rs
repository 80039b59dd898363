//! The record of attempts: outcomes written in batches, endpoints disabled by what the
//! attempts found, and the pending deliveries of disabled endpoints swept up.

use std::collections::HashMap;

use onephase_core::Envelope;
use onephase_store::Store;
use serde::Serialize;

use super::on_store;
use crate::WebhookError;

/// How an attempt ended, for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Delivered,
    Retry,
    Dead,
    Gone,
}

/// One finished attempt, to record.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finished {
    pub delivery_id: i64,
    pub message_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub attempt: i32,
    pub at_ms: i64,
    pub outcome: Outcome,
    /// The delivery's status after this attempt.
    pub status: &'static str,
    pub next_at_ms: i64,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub error: Option<String>,
    /// The endpoint asked to be called less (429, 502, 503, 504) until this time.
    #[serde(skip)]
    pub slow_until_ms: Option<i64>,
}

const RECORD_ATTEMPTS_PG: &str = "INSERT INTO onephase_webhook_attempts (delivery_id, \
     message_id, endpoint_id, attempt, at_ms, outcome, status_code, latency_ms, response, error) \
     SELECT r.delivery_id, r.message_id, r.endpoint_id, r.attempt, r.at_ms, r.outcome, \
       r.status_code, r.latency_ms, r.response, r.error \
     FROM jsonb_to_recordset($1::jsonb) AS r(delivery_id bigint, message_id text, \
       endpoint_id text, attempt int, at_ms bigint, outcome text, status_code int, \
       latency_ms bigint, response text, error text)";
const RECORD_ATTEMPTS_SQLITE: &str = "INSERT INTO onephase_webhook_attempts (delivery_id, \
     message_id, endpoint_id, attempt, at_ms, outcome, status_code, latency_ms, response, error) \
     SELECT value ->> 'delivery_id', value ->> 'message_id', value ->> 'endpoint_id', \
       value ->> 'attempt', value ->> 'at_ms', value ->> 'outcome', value ->> 'status_code', \
       value ->> 'latency_ms', value ->> 'response', value ->> 'error' FROM json_each($1)";

/// Delivered sticks even over a dead row (the endpoint did take it); other outcomes apply only
/// while this attempt's claim is the row's latest.
const RECORD_DELIVERIES_PG: &str = "UPDATE onephase_webhook_deliveries AS d SET \
     status = r.status, next_at_ms = r.next_at_ms, locked_until_ms = 0, last_error = r.error, \
     updated_at_ms = r.at_ms \
     FROM jsonb_to_recordset($1::jsonb) AS r(delivery_id bigint, attempt int, status text, \
       next_at_ms bigint, error text, at_ms bigint) \
     WHERE d.id = r.delivery_id AND ((r.status = 'delivered' AND d.status <> 'delivered') \
       OR (r.status <> 'delivered' AND d.status = 'pending' AND d.attempts = r.attempt))";
const RECORD_DELIVERIES_SQLITE: &str = "UPDATE onephase_webhook_deliveries AS d SET \
     status = r.status, next_at_ms = r.next_at_ms, locked_until_ms = 0, last_error = r.error, \
     updated_at_ms = r.at_ms \
     FROM (SELECT value ->> 'delivery_id' AS delivery_id, value ->> 'attempt' AS attempt, \
       value ->> 'status' AS status, value ->> 'next_at_ms' AS next_at_ms, \
       value ->> 'error' AS error, value ->> 'at_ms' AS at_ms FROM json_each($1)) AS r \
     WHERE d.id = r.delivery_id AND ((r.status = 'delivered' AND d.status <> 'delivered') \
       OR (r.status <> 'delivered' AND d.status = 'pending' AND d.attempts = r.attempt))";

/// What the record does to the endpoints, besides the deliveries.
#[derive(Debug, Clone)]
pub(crate) struct EndpointRules {
    /// Disable an endpoint whose attempts all failed for this long (milliseconds).
    pub disable_after_ms: i64,
    /// Announce disabled endpoints on this outbox topic.
    pub events_topic: Option<String>,
}

/// An endpoint the record disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Disabled {
    pub endpoint_id: String,
    pub url: String,
    pub reason: String,
    pub at_ms: i64,
    /// Pending deliveries moved to the dead letters.
    pub dead_lettered: u64,
}

/// An endpoint that asked to slow down: half its concurrency (again, if still slowed) until
/// `$3`.
const SLOW_DOWN_PG: &str = "UPDATE onephase_webhook_endpoints SET slow_limit = CASE \
     WHEN slow_until_ms > $2 THEN GREATEST(1, slow_limit / 2) \
     ELSE GREATEST(1, max_concurrency / 2) END, \
     slow_until_ms = GREATEST(slow_until_ms, $3) WHERE id = $1";
const SLOW_DOWN_SQLITE: &str = "UPDATE onephase_webhook_endpoints SET slow_limit = CASE \
     WHEN slow_until_ms > $2 THEN max(1, slow_limit / 2) \
     ELSE max(1, max_concurrency / 2) END, \
     slow_until_ms = max(slow_until_ms, $3) WHERE id = $1";
/// An endpoint that delivered: no longer failing.
const RECOVERED: &str = "UPDATE onephase_webhook_endpoints SET failing_since_ms = NULL \
     WHERE id = $1 AND failing_since_ms IS NOT NULL";
/// An endpoint whose every attempt failed: failing since its first such attempt.
const FAILING: &str = "UPDATE onephase_webhook_endpoints \
     SET failing_since_ms = COALESCE(failing_since_ms, $2) \
     WHERE id = $1 AND disabled_at_ms IS NULL RETURNING failing_since_ms";
/// Disables an endpoint by the dispatcher's judgement (once: not if already disabled).
const AUTO_DISABLE: &str = "UPDATE onephase_webhook_endpoints \
     SET disabled_at_ms = $2, disabled_reason = $3, disabled_auto = TRUE, updated_at_ms = $2 \
     WHERE id = $1 AND disabled_at_ms IS NULL";

/// Records finished attempts in one transaction: the attempts, the deliveries' new states, and
/// the endpoints' health (failing since, slowed down, disabled on 410 or after failing for
/// `rules.disable_after_ms`).
pub(crate) async fn record(
    store: &Store,
    finished: &[Finished],
    rules: &EndpointRules,
    now_ms: i64,
) -> Result<Vec<Disabled>, WebhookError> {
    if finished.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(finished).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let health = health(finished);
    on_store!(store.db(), pool, backend => {
        let pg = backend == onephase_store::Backend::Postgres;
        let mut tx = pool.begin().await?;
        let (attempts_sql, deliveries_sql) = if pg {
            (RECORD_ATTEMPTS_PG, RECORD_DELIVERIES_PG)
        } else {
            (RECORD_ATTEMPTS_SQLITE, RECORD_DELIVERIES_SQLITE)
        };
        sqlx::query(attempts_sql).bind(&json).execute(&mut *tx).await?;
        sqlx::query(deliveries_sql).bind(&json).execute(&mut *tx).await?;
        let mut disabled = Vec::new();
        for (endpoint, h) in &health {
            if let Some(until) = h.slow_until_ms {
                let sql = if pg { SLOW_DOWN_PG } else { SLOW_DOWN_SQLITE };
                sqlx::query(sql).bind(endpoint).bind(now_ms).bind(until).execute(&mut *tx).await?;
            }
            let reason = match h.state {
                Health::Gone => Some(format!("the endpoint answered 410 Gone ({})", h.url)),
                Health::Healthy => {
                    sqlx::query(RECOVERED).bind(endpoint).execute(&mut *tx).await?;
                    None
                }
                Health::Failing { since_ms } => {
                    let failing: Option<Option<i64>> = sqlx::query_scalar(FAILING)
                        .bind(endpoint)
                    .bind(since_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match failing.flatten() {
                        Some(since) if now_ms - since >= rules.disable_after_ms => Some(format!(
                            "every attempt failed for {} s (since {})",
                            (now_ms - since) / 1000,
                            super::from_ms(since)?
                        )),
                        _ => None,
                    }
                }
            };
            let Some(reason) = reason else { continue };
            let updated = sqlx::query(AUTO_DISABLE)
                .bind(endpoint)
            .bind(now_ms)
            .bind(&reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                continue;
            }
            let dead_lettered = sqlx::query(DEAD_LETTER_PENDING)
                .bind(endpoint)
                .bind(format!("endpoint disabled: {reason}"))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let event = Disabled {
                endpoint_id: endpoint.clone(),
                url: h.url.clone(),
                reason,
                at_ms: now_ms,
                dead_lettered,
            };
            if let Some(topic) = &rules.events_topic {
                onephase_outbox::enqueue(&mut *tx, &disabled_envelope(topic, &event)?).await?;
            }
            disabled.push(event);
        }
        tx.commit().await?;
        Ok(disabled)
    })
}

/// Dead-letters endpoint `$1`'s pending deliveries if the dispatcher disabled it (it may have
/// been enabled again since a sweep looked).
const DEAD_LETTER_PENDING: &str = "UPDATE onephase_webhook_deliveries SET status = 'dead', \
     locked_until_ms = 0, last_error = $2, updated_at_ms = $3 \
     WHERE endpoint_id = $1 AND status = 'pending' AND EXISTS ( \
       SELECT 1 FROM onephase_webhook_endpoints e WHERE e.id = $1 AND e.disabled_auto)";

/// Dead-letters the pending deliveries of endpoints the dispatcher disabled, and returns how
/// many. Disabling does this in its own transaction, but a send that read the endpoint as
/// enabled just before, and committed just after, leaves a delivery it could not see; this
/// finds those. The `auto_disabled` index and one probe of the `due` index per such endpoint
/// keep it cheap when there is nothing to do, which is nearly always.
pub(crate) async fn sweep_auto_disabled(store: &Store, now_ms: i64) -> Result<u64, sqlx::Error> {
    on_store!(store.db(), pool => {
        let strays: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT e.id, e.disabled_reason FROM onephase_webhook_endpoints e \
             WHERE e.disabled_auto AND EXISTS (SELECT 1 FROM onephase_webhook_deliveries d \
               WHERE d.endpoint_id = e.id AND d.status = 'pending')",
        )
        .fetch_all(pool)
        .await?;
        let mut swept = 0;
        for (endpoint, reason) in strays {
            let n = sqlx::query(DEAD_LETTER_PENDING)
            .bind(&endpoint)
            .bind(format!(
                "endpoint disabled: {}",
                reason.as_deref().unwrap_or("by the dispatcher")
            ))
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected();
            if n > 0 {
                tracing::info!(
                    endpoint = %endpoint,
                    deliveries = n,
                    "dead-lettered deliveries written while their endpoint was being disabled"
                );
            }
            swept += n;
        }
        Ok(swept)
    })
}

fn disabled_envelope(topic: &str, event: &Disabled) -> Result<Envelope, WebhookError> {
    #[derive(Serialize)]
    struct Event<'a> {
        event: &'static str,
        #[serde(flatten)]
        disabled: &'a Disabled,
    }
    let payload = serde_json::to_vec(&Event {
        event: "endpoint_disabled",
        disabled: event,
    })
    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    Envelope::builder(topic.to_owned(), payload)
        .key(event.endpoint_id.clone())
        .header("content-type", "application/json")
        .build()
        .map_err(|e| WebhookError::invalid(format!("events_topic: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    Failing { since_ms: i64 },
    Gone,
}

struct EndpointHealth {
    url: String,
    state: Health,
    slow_until_ms: Option<i64>,
}

/// Each endpoint's health after these attempts, taken in the order they ended: a 410 disables
/// it whatever came after; otherwise the latest attempt says whether it is failing, and since
/// the first failure after its latest success.
fn health(finished: &[Finished]) -> HashMap<String, EndpointHealth> {
    let mut sorted: Vec<&Finished> = finished.iter().collect();
    sorted.sort_by_key(|f| f.at_ms);
    let mut health: HashMap<String, EndpointHealth> = HashMap::new();
    for f in sorted {
        let h = health
            .entry(f.endpoint_id.clone())
            .or_insert_with(|| EndpointHealth {
                url: f.url.clone(),
                state: Health::Healthy,
                slow_until_ms: None,
            });
        if let Some(until) = f.slow_until_ms {
            h.slow_until_ms = Some(h.slow_until_ms.map_or(until, |u| u.max(until)));
        }
        h.state = match (h.state, f.outcome) {
            (Health::Gone, _) | (_, Outcome::Gone) => Health::Gone,
            (_, Outcome::Delivered) => Health::Healthy,
            (Health::Failing { since_ms }, _) => Health::Failing { since_ms },
            (Health::Healthy, _) => Health::Failing { since_ms: f.at_ms },
        };
    }
    health
}

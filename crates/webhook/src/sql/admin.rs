//! Endpoint management and the read side: messages, attempts, dead letters, replay, stats.

use onephase_store::Store;
use serde::Serialize;
use sqlx::AssertSqlSafe;
use time::OffsetDateTime;

use super::{from_ms, on_store, to_u32};
use crate::WebhookError;
use crate::endpoint::{Endpoint, StoredKey};

const ENDPOINT_COLUMNS: &str = "id, app, url, description, event_types, ordered, \
     max_concurrency, rate_limit, keys, disabled_at_ms, disabled_reason, failing_since_ms, \
     slow_until_ms, created_at_ms, updated_at_ms";

/// An endpoint row, as both backends return it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EndpointRow {
    pub id: String,
    pub app: String,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Option<String>,
    pub ordered: bool,
    pub max_concurrency: i32,
    pub rate_limit: Option<i32>,
    pub keys: String,
    pub disabled_at_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub failing_since_ms: Option<i64>,
    pub slow_until_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl EndpointRow {
    pub(crate) fn stored_keys(&self) -> Result<Vec<StoredKey>, sqlx::Error> {
        serde_json::from_str(&self.keys).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }

    pub(crate) fn filter(&self) -> Result<Option<Vec<String>>, sqlx::Error> {
        self.event_types
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }

    pub(crate) fn view(&self, now_ms: i64) -> Result<Endpoint, sqlx::Error> {
        Ok(Endpoint {
            id: self.id.clone(),
            app: self.app.clone(),
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: self.filter()?,
            ordered: self.ordered,
            max_concurrency: to_u32(self.max_concurrency)?,
            rate_limit: self.rate_limit.map(to_u32).transpose()?,
            enabled: self.disabled_at_ms.is_none(),
            disabled_reason: self.disabled_reason.clone(),
            disabled_at: self.disabled_at_ms.map(from_ms).transpose()?,
            failing_since: self.failing_since_ms.map(from_ms).transpose()?,
            slowed_until: (self.slow_until_ms > now_ms)
                .then(|| from_ms(self.slow_until_ms))
                .transpose()?,
            keys: self
                .stored_keys()?
                .iter()
                .filter(|k| k.live(now_ms))
                .map(StoredKey::info)
                .collect::<Result<_, _>>()?,
            created_at: from_ms(self.created_at_ms)?,
            updated_at: from_ms(self.updated_at_ms)?,
        })
    }
}

pub(crate) async fn insert_endpoint(store: &Store, row: &EndpointRow) -> Result<(), sqlx::Error> {
    on_store!(store.db(), pool => {
        sqlx::query(
            "INSERT INTO onephase_webhook_endpoints (id, app, url, description, event_types, \
             ordered, max_concurrency, rate_limit, keys, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&row.id)
        .bind(&row.app)
        .bind(&row.url)
        .bind(&row.description)
        .bind(&row.event_types)
        .bind(row.ordered)
        .bind(row.max_concurrency)
        .bind(row.rate_limit)
        .bind(&row.keys)
        .bind(row.created_at_ms)
        .execute(pool)
        .await
        .map(drop)
    })
}

pub(crate) async fn endpoint(store: &Store, id: &str) -> Result<Option<EndpointRow>, sqlx::Error> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM onephase_webhook_endpoints WHERE id = $1");
    on_store!(read store.db(), pool => {
        sqlx::query_as::<_, EndpointRow>(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
    })
}

pub(crate) async fn endpoints(
    store: &Store,
    app: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<EndpointRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM onephase_webhook_endpoints \
         WHERE ($1 IS NULL OR app = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    on_store!(read store.db(), pool => {
        sqlx::query_as::<_, EndpointRow>(AssertSqlSafe(sql))
            .bind(app)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })
}

/// Writes an endpoint's settings and keys back (the row was read, changed, and is written
/// whole; `updated_at_ms` guards against a concurrent change).
pub(crate) async fn update_endpoint(
    store: &Store,
    row: &EndpointRow,
    read_at_ms: i64,
) -> Result<bool, sqlx::Error> {
    on_store!(store.db(), pool => {
        sqlx::query(
            "UPDATE onephase_webhook_endpoints SET url = $2, description = $3, event_types = $4, \
             ordered = $5, max_concurrency = $6, rate_limit = $7, keys = $8, updated_at_ms = $9 \
             WHERE id = $1 AND updated_at_ms = $10",
        )
        .bind(&row.id)
        .bind(&row.url)
        .bind(&row.description)
        .bind(&row.event_types)
        .bind(row.ordered)
        .bind(row.max_concurrency)
        .bind(row.rate_limit)
        .bind(&row.keys)
        .bind(row.updated_at_ms)
        .bind(read_at_ms)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1)
    })
}

pub(crate) async fn delete_endpoint(store: &Store, id: &str) -> Result<bool, sqlx::Error> {
    on_store!(store.db(), pool => {
        sqlx::query("DELETE FROM onephase_webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
    })
}

/// Enables (`reason` `None`) or disables an endpoint by hand. Pending deliveries stay pending:
/// a disabled endpoint's messages wait, and go out once it is enabled again.
pub(crate) async fn set_enabled(
    store: &Store,
    id: &str,
    disabled: Option<&str>,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    on_store!(store.db(), pool => {
        let result = match disabled {
            None => sqlx::query(
                "UPDATE onephase_webhook_endpoints SET disabled_at_ms = NULL, \
                 disabled_reason = NULL, disabled_auto = FALSE, failing_since_ms = NULL, \
                 slow_until_ms = 0, updated_at_ms = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(now_ms)
            .execute(pool)
            .await?,
            Some(reason) => sqlx::query(
                "UPDATE onephase_webhook_endpoints SET \
                 disabled_at_ms = COALESCE(disabled_at_ms, $2), disabled_reason = $3, \
                 disabled_auto = FALSE, updated_at_ms = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(now_ms)
            .bind(reason)
            .execute(pool)
            .await?,
        };
        Ok(result.rows_affected() == 1)
    })
}

/// A message with where it stands at each endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageView {
    /// `msg_...`, also the `webhook-id` header.
    pub id: String,
    /// Its application.
    pub app: String,
    /// Its event type.
    pub event_type: String,
    /// The key that orders it on ordered endpoints.
    pub partition_key: Option<String>,
    /// The idempotency key it was sent with.
    pub idempotency_key: Option<String>,
    /// The exact JSON body endpoints receive.
    pub body: String,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// One entry per endpoint it fanned out to (empty in lists).
    pub deliveries: Vec<DeliveryView>,
}

/// A message at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    /// The message.
    pub message_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due, while pending.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: String,
    app: String,
    event_type: String,
    partition_key: Option<String>,
    idempotency_key: Option<String>,
    body: String,
    created_at_ms: i64,
}

impl MessageRow {
    fn view(self) -> Result<MessageView, sqlx::Error> {
        Ok(MessageView {
            id: self.id,
            app: self.app,
            event_type: self.event_type,
            partition_key: self.partition_key,
            idempotency_key: self.idempotency_key,
            body: self.body,
            created_at: from_ms(self.created_at_ms)?,
            deliveries: Vec::new(),
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    message_id: String,
    endpoint_id: String,
    status: String,
    attempts: i32,
    next_at_ms: i64,
    last_error: Option<String>,
    updated_at_ms: i64,
}

impl DeliveryRow {
    fn view(self) -> Result<DeliveryView, sqlx::Error> {
        Ok(DeliveryView {
            next_attempt_at: (self.status == "pending")
                .then(|| from_ms(self.next_at_ms))
                .transpose()?,
            message_id: self.message_id,
            endpoint_id: self.endpoint_id,
            status: self.status,
            attempts: to_u32(self.attempts)?,
            last_error: self.last_error,
            updated_at: from_ms(self.updated_at_ms)?,
        })
    }
}

const MESSAGE_COLUMNS: &str =
    "id, app, event_type, partition_key, idempotency_key, body, created_at_ms";
const DELIVERY_COLUMNS: &str =
    "message_id, endpoint_id, status, attempts, next_at_ms, last_error, updated_at_ms";

pub(crate) async fn message(store: &Store, id: &str) -> Result<Option<MessageView>, sqlx::Error> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM onephase_webhook_messages WHERE id = $1");
    let deliveries_sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM onephase_webhook_deliveries WHERE message_id = $1 \
         ORDER BY endpoint_id"
    );
    on_store!(read store.db(), pool => {
        let Some(row) = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(pool)
            .await?
        else {
            return Ok(None);
        };
        let deliveries = sqlx::query_as::<_, DeliveryRow>(AssertSqlSafe(deliveries_sql))
            .bind(id)
            .fetch_all(pool)
            .await?;
        let mut view = row.view()?;
        view.deliveries = deliveries
            .into_iter()
            .map(DeliveryRow::view)
            .collect::<Result<_, _>>()?;
        Ok(Some(view))
    })
}

/// Messages newest first.
pub(crate) async fn messages(
    store: &Store,
    app: Option<&str>,
    before: Option<&str>,
    limit: u32,
) -> Result<Vec<MessageView>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM onephase_webhook_messages \
         WHERE ($1 IS NULL OR app = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    );
    on_store!(read store.db(), pool => {
        let rows = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql))
            .bind(app)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.into_iter().map(MessageRow::view).collect()
    })
}

/// One attempt to deliver a message to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// Order of recording.
    pub id: i64,
    /// The message.
    pub message_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// When it was made (Unix milliseconds).
    pub at_ms: i64,
    /// `delivered`, `retry` (another attempt is scheduled), `dead` (no more) or `gone` (410:
    /// the endpoint was disabled).
    pub outcome: String,
    /// The HTTP status, if an answer came.
    pub status_code: Option<i32>,
    /// From sending to the answer's headers.
    pub latency_ms: i64,
    /// The start of the answer's body (at most 1 KiB).
    pub response: Option<String>,
    /// What went wrong without an answer (connection refused, timeout, refused destination).
    pub error: Option<String>,
}

/// Attempts newest first, of one message and/or one endpoint.
pub(crate) async fn attempts(
    store: &Store,
    message: Option<&str>,
    endpoint: Option<&str>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<AttemptView>, sqlx::Error> {
    let sql = "SELECT id, message_id, endpoint_id, attempt, at_ms, outcome, status_code, \
         latency_ms, response, error FROM onephase_webhook_attempts \
         WHERE ($1 IS NULL OR message_id = $1) AND ($2 IS NULL OR endpoint_id = $2) \
         AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4";
    on_store!(read store.db(), pool => {
        sqlx::query_as::<_, AttemptView>(sql)
            .bind(message)
            .bind(endpoint)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })
}

/// Dead deliveries newest first, of one endpoint or all.
pub(crate) async fn dead_letters(
    store: &Store,
    endpoint: Option<&str>,
    limit: u32,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM onephase_webhook_deliveries \
         WHERE status = 'dead' AND ($1 IS NULL OR endpoint_id = $1) ORDER BY id DESC LIMIT $2"
    );
    on_store!(read store.db(), pool => {
        let rows = sqlx::query_as::<_, DeliveryRow>(AssertSqlSafe(sql))
            .bind(endpoint)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.into_iter().map(DeliveryRow::view).collect()
    })
}

/// What to deliver again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replay {
    /// Only this message.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Only to this endpoint.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    /// Only messages sent at or after this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Also deliver again what was delivered (by default only dead deliveries are replayed).
    #[serde(default)]
    pub include_delivered: bool,
}

/// Makes the matching dead (and with `include_delivered`, delivered) deliveries pending again,
/// due now, with a fresh attempt count. Returns how many.
pub(crate) async fn replay(
    store: &Store,
    replay: &Replay,
    now_ms: i64,
) -> Result<u64, WebhookError> {
    let since = replay.since.map(super::ms);
    let sql = "UPDATE onephase_webhook_deliveries SET status = 'pending', attempts = 0, \
         next_at_ms = $1, locked_until_ms = 0, last_error = NULL, updated_at_ms = $1 \
         WHERE (status = 'dead' OR ($2 AND status = 'delivered')) \
         AND ($3 IS NULL OR message_id = $3) AND ($4 IS NULL OR endpoint_id = $4) \
         AND ($5 IS NULL OR message_id IN (SELECT id FROM onephase_webhook_messages \
         WHERE created_at_ms >= $5)) \
         AND endpoint_id IN (SELECT id FROM onephase_webhook_endpoints \
         WHERE disabled_at_ms IS NULL)";
    let replayed = on_store!(store.db(), pool => {
        sqlx::query(sql)
            .bind(now_ms)
            .bind(replay.include_delivered)
            .bind(&replay.message_id)
            .bind(&replay.endpoint_id)
            .bind(since)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(replayed)
}

/// One endpoint's health over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointStats {
    /// The endpoint.
    pub endpoint_id: String,
    /// Its URL.
    pub url: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Attempts in the window.
    pub attempts: i64,
    /// Of which delivered.
    pub delivered: i64,
    /// `delivered / attempts`, or `None` without attempts.
    pub success_rate: Option<f64>,
    /// Mean latency of the window's attempts.
    pub mean_latency_ms: Option<f64>,
    /// Slowest attempt of the window.
    pub max_latency_ms: Option<i64>,
    /// Deliveries waiting.
    pub pending: i64,
    /// Deliveries in the dead letters.
    pub dead: i64,
}

#[derive(sqlx::FromRow)]
struct StatsRow {
    id: String,
    url: String,
    disabled_at_ms: Option<i64>,
    attempts: i64,
    delivered: i64,
    mean_latency_ms: Option<f64>,
    max_latency_ms: Option<i64>,
    pending: i64,
    dead: i64,
}

/// Per endpoint: attempts since `since_ms`, and deliveries pending and dead now.
pub(crate) async fn stats(store: &Store, since_ms: i64) -> Result<Vec<EndpointStats>, sqlx::Error> {
    let sql = "SELECT e.id, e.url, e.disabled_at_ms, \
         CAST(COALESCE(a.attempts, 0) AS BIGINT) AS attempts, \
         CAST(COALESCE(a.delivered, 0) AS BIGINT) AS delivered, \
         CAST(a.mean_latency_ms AS DOUBLE PRECISION) AS mean_latency_ms, \
         CAST(a.max_latency_ms AS BIGINT) AS max_latency_ms, \
         CAST(COALESCE(d.pending, 0) AS BIGINT) AS pending, \
         CAST(COALESCE(d.dead, 0) AS BIGINT) AS dead \
         FROM onephase_webhook_endpoints e \
         LEFT JOIN (SELECT endpoint_id, COUNT(*) AS attempts, \
             SUM(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
             AVG(latency_ms) AS mean_latency_ms, MAX(latency_ms) AS max_latency_ms \
             FROM onephase_webhook_attempts WHERE at_ms >= $1 GROUP BY endpoint_id) a \
           ON a.endpoint_id = e.id \
         LEFT JOIN (SELECT endpoint_id, \
             SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending, \
             SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) AS dead \
             FROM onephase_webhook_deliveries WHERE status <> 'delivered' GROUP BY endpoint_id) d \
           ON d.endpoint_id = e.id \
         ORDER BY e.id";
    let rows = on_store!(read store.db(), pool => {
        sqlx::query_as::<_, StatsRow>(sql).bind(since_ms).fetch_all(pool).await?
    });
    Ok(rows
        .into_iter()
        .map(|r| EndpointStats {
            success_rate: (r.attempts > 0).then(|| r.delivered as f64 / r.attempts as f64),
            endpoint_id: r.id,
            url: r.url,
            enabled: r.disabled_at_ms.is_none(),
            attempts: r.attempts,
            delivered: r.delivered,
            mean_latency_ms: r.mean_latency_ms,
            max_latency_ms: r.max_latency_ms,
            pending: r.pending,
            dead: r.dead,
        })
        .collect())
}

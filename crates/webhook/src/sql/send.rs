//! Fan-out on send: the message and one pending delivery per matching endpoint, written in
//! the caller's transaction.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::{PgConnection, SqliteConnection};

use crate::endpoint::accepts;

/// A message ready to be written.
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    pub id: String,
    pub app: String,
    pub event_type: String,
    pub partition_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub digest: String,
    pub body: String,
    pub created_at_ms: i64,
    pub traceparent: Option<String>,
}

/// What writing a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written, with a delivery to each of these endpoints.
    New { endpoints: u32 },
    /// The idempotency key is held by this message, whose request had this digest.
    Existing { id: String, digest: String },
}

/// One delivery per matching endpoint, carrying the endpoint's `ordered` (fixed when the
/// endpoint is created) for the index of ordered endpoints' unkeyed deliveries.
const FAN_OUT_PG: &str = "INSERT INTO onephase_webhook_deliveries \
     (message_id, endpoint_id, partition_key, ordered, next_at_ms, updated_at_ms) \
     SELECT $1, e.id, $2, e.ordered, $3, $3 FROM onephase_webhook_endpoints e \
     WHERE e.id IN (SELECT jsonb_array_elements_text($4::jsonb))";
const FAN_OUT_SQLITE: &str = "INSERT INTO onephase_webhook_deliveries \
     (message_id, endpoint_id, partition_key, ordered, next_at_ms, updated_at_ms) \
     SELECT $1, e.id, $2, e.ordered, $3, $3 FROM onephase_webhook_endpoints e \
     WHERE e.id IN (SELECT value FROM json_each($4))";

/// The same statements on either backend's connection.
macro_rules! write_message {
    ($conn:expr, $m:expr, $fan_out:expr) => {{
        let conn = $conn;
        let m: &PreparedMessage = $m;
        let inserted = sqlx::query(
            "INSERT INTO onephase_webhook_messages (id, app, event_type, partition_key, \
             idempotency_key, digest, body, created_at_ms, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (app, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(&m.id)
        .bind(&m.app)
        .bind(&m.event_type)
        .bind(&m.partition_key)
        .bind(&m.idempotency_key)
        .bind(&m.digest)
        .bind(&m.body)
        .bind(m.created_at_ms)
        .bind(&m.traceparent)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            let (id, digest): (String, String) = sqlx::query_as(
                "SELECT id, digest FROM onephase_webhook_messages \
                 WHERE app = $1 AND idempotency_key = $2",
            )
            .bind(&m.app)
            .bind(&m.idempotency_key)
            .fetch_one(&mut *conn)
            .await?;
            return Ok(Written::Existing { id, digest });
        }
        let endpoints: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT id, event_types FROM onephase_webhook_endpoints \
             WHERE app = $1 AND disabled_at_ms IS NULL",
        )
        .bind(&m.app)
        .fetch_all(&mut *conn)
        .await?;
        let mut matching = Vec::new();
        for (id, filter) in endpoints {
            let filter: Option<Vec<String>> = filter
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            if accepts(filter.as_deref(), &m.event_type) {
                matching.push(id);
            }
        }
        if !matching.is_empty() {
            let ids =
                serde_json::to_string(&matching).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query($fan_out)
                .bind(&m.id)
                .bind(&m.partition_key)
                .bind(m.created_at_ms)
                .bind(ids)
                .execute(&mut *conn)
                .await?;
        }
        Ok(Written::New {
            endpoints: u32::try_from(matching.len()).unwrap_or(u32::MAX),
        })
    }};
}

pub(crate) fn write_pg<'a>(
    conn: &'a mut PgConnection,
    m: &'a PreparedMessage,
) -> BoxFuture<'a, Result<Written, sqlx::Error>> {
    async move { write_message!(conn, m, FAN_OUT_PG) }.boxed()
}

pub(crate) fn write_sqlite<'a>(
    conn: &'a mut SqliteConnection,
    m: &'a PreparedMessage,
) -> BoxFuture<'a, Result<Written, sqlx::Error>> {
    async move { write_message!(conn, m, FAN_OUT_SQLITE) }.boxed()
}

//! The delivery side: fan-out on send (in the caller's transaction), claims, and the record of
//! attempts.

use std::collections::{BTreeMap, HashMap};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use onephase_core::Envelope;
use onephase_store::Store;
use serde::Serialize;
use sqlx::{PgConnection, SqliteConnection};

use super::on_store;
use crate::WebhookError;
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
             idempotency_key, digest, body, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
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

/// A delivery taken for an attempt, with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Claimed {
    pub id: i64,
    pub endpoint_id: String,
    pub message_id: String,
    /// Attempts before this one.
    pub attempts: i32,
    pub url: String,
    pub keys: String,
    pub rate_limit: Option<i32>,
    pub rate_tat_us: i64,
    pub body: String,
}

/// An enabled endpoint with room for more attempts.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Room {
    id: String,
    ordered: bool,
    room: i64,
}

/// The free concurrency of each enabled endpoint that has a due delivery (one index probe
/// each, so idle endpoints cost no query of their own): its limit (halved while slowed down)
/// less the attempts in flight, which the `locked` index counts without reading the backlog.
fn rooms_sql(pg: bool) -> String {
    format!(
        "SELECT e.id, e.ordered, \
           (CASE WHEN e.slow_until_ms > $1 THEN {least}(e.slow_limit, e.max_concurrency) \
             ELSE e.max_concurrency END) \
           - (SELECT COUNT(*) FROM onephase_webhook_deliveries b \
              WHERE b.endpoint_id = e.id AND b.status = 'pending' AND b.locked_until_ms > $1) \
           AS room \
         FROM onephase_webhook_endpoints e WHERE e.disabled_at_ms IS NULL \
           AND EXISTS (SELECT 1 FROM onephase_webhook_deliveries d \
             WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_at_ms <= $1 \
               AND d.locked_until_ms <= $1) \
         ORDER BY e.id",
        least = if pg { "LEAST" } else { "min" },
    )
}

/// What a claim needs of a delivery, selected by id.
const CLAIMED_BY_ID_PG: &str = "SELECT d.id, d.endpoint_id, d.message_id, d.attempts, e.url, \
       e.keys, e.rate_limit, e.rate_tat_us, m.body \
     FROM onephase_webhook_deliveries d \
     JOIN onephase_webhook_endpoints e ON e.id = d.endpoint_id \
     JOIN onephase_webhook_messages m ON m.id = d.message_id \
     WHERE d.id IN (SELECT jsonb_array_elements_text($1::jsonb)::bigint) \
     ORDER BY d.next_at_ms, d.id";
const CLAIMED_BY_ID_SQLITE: &str = "SELECT d.id, d.endpoint_id, d.message_id, d.attempts, e.url, \
       e.keys, e.rate_limit, e.rate_tat_us, m.body \
     FROM onephase_webhook_deliveries d \
     JOIN onephase_webhook_endpoints e ON e.id = d.endpoint_id \
     JOIN onephase_webhook_messages m ON m.id = d.message_id \
     WHERE d.id IN (SELECT value FROM json_each($1)) \
     ORDER BY d.next_at_ms, d.id";

/// An unordered endpoint's due deliveries, oldest due first, with what sending them needs:
/// at most `$3` rows are read, so a claim costs the same whatever the endpoint's backlog.
const DUE: &str = "SELECT d.id, d.endpoint_id, d.message_id, d.attempts, e.url, e.keys, \
       e.rate_limit, e.rate_tat_us, m.body \
     FROM (SELECT id, endpoint_id, message_id, attempts, next_at_ms \
           FROM onephase_webhook_deliveries \
           WHERE endpoint_id = $1 AND status = 'pending' AND next_at_ms <= $2 \
             AND locked_until_ms <= $2 \
           ORDER BY next_at_ms, id LIMIT $3) d \
     JOIN onephase_webhook_endpoints e ON e.id = d.endpoint_id \
     JOIN onephase_webhook_messages m ON m.id = d.message_id \
     ORDER BY d.next_at_ms, d.id";

/// An ordered endpoint's unkeyed due deliveries (its keyed ones are found per key, by
/// [`KEY_HEADS`]): ids and due times.
const DUE_UNKEYED: &str = "SELECT id, next_at_ms FROM onephase_webhook_deliveries \
     WHERE endpoint_id = $1 AND status = 'pending' AND partition_key IS NULL AND ordered \
       AND next_at_ms <= $2 AND locked_until_ms <= $2 \
     ORDER BY next_at_ms, id LIMIT $3";

/// The head (oldest pending delivery) of each partition key of endpoint `$1`, walking the
/// keys in order after `$2`, at most `$3` of them. The walk skips from one key to the next
/// through the `order` index (one probe per key, however many deliveries a key holds), so
/// that a key whose head waits for a retry costs one probe, not a scan of its backlog.
const KEY_HEADS: &str = "WITH RECURSIVE walk(k, n) AS ( \
       SELECT (SELECT partition_key FROM onephase_webhook_deliveries \
               WHERE endpoint_id = $1 AND status = 'pending' AND partition_key IS NOT NULL \
                 AND partition_key > $2 \
               ORDER BY partition_key LIMIT 1), 1 \
       UNION ALL \
       SELECT (SELECT d.partition_key FROM onephase_webhook_deliveries d \
               WHERE d.endpoint_id = $1 AND d.status = 'pending' \
                 AND d.partition_key IS NOT NULL AND d.partition_key > walk.k \
               ORDER BY d.partition_key LIMIT 1), walk.n + 1 \
       FROM walk WHERE walk.k IS NOT NULL AND walk.n < $3) \
     SELECT walk.k, h.id, h.next_at_ms, h.locked_until_ms FROM walk \
     JOIN onephase_webhook_deliveries h ON h.id = ( \
       SELECT MIN(p.id) FROM onephase_webhook_deliveries p \
       WHERE p.endpoint_id = $1 AND p.status = 'pending' AND p.partition_key = walk.k) \
     WHERE walk.k IS NOT NULL ORDER BY walk.k";

/// Keys an ordered endpoint's claim visits per query. A claim visits at most
/// [`KEY_WALK_ROUNDS`] times this many; an endpoint with more keys pending is covered over
/// several claims, each starting where the last stopped.
pub(crate) const KEY_WALK: i64 = 1_000;
const KEY_WALK_ROUNDS: usize = 2;

/// Where each ordered endpoint's walk over its keys stopped, so that the next claim goes on
/// from there and every key gets its turn however many there are.
pub(crate) type KeyCursors = HashMap<String, String>;

/// The walk over an ordered endpoint's keys for one claim: where each query starts, and the
/// heads it keeps (due and not in flight). Pure, so that its cursor handling is tested alone.
#[derive(Debug)]
pub(crate) struct KeyWalk {
    /// Where the previous claim stopped ("" for the first key).
    start: String,
    /// Where the next query starts.
    after: String,
    /// Whether the walk went back to the first key.
    wrapped: bool,
    rounds: usize,
    done: bool,
    take: usize,
    /// Heads that may go now: id and due time.
    pub(crate) heads: Vec<(i64, i64)>,
}

impl KeyWalk {
    pub(crate) fn new(start: Option<String>, take: i64) -> Self {
        let start = start.unwrap_or_default();
        Self {
            after: start.clone(),
            wrapped: start.is_empty(),
            start,
            rounds: 0,
            done: false,
            take: usize::try_from(take).unwrap_or(0),
            heads: Vec::new(),
        }
    }

    /// The key the next query starts after, or `None` when the walk is over.
    pub(crate) fn next_after(&self) -> Option<&str> {
        let over = self.done || self.rounds >= KEY_WALK_ROUNDS || self.heads.len() >= self.take;
        (!over).then_some(self.after.as_str())
    }

    /// Takes one query's rows: (key, head id, head due at, head locked until), in key order.
    pub(crate) fn feed(&mut self, rows: Vec<(String, i64, i64, i64)>, now_ms: i64) {
        self.rounds += 1;
        let complete = rows.len() < usize::try_from(KEY_WALK).unwrap_or(usize::MAX);
        for (key, id, next_at_ms, locked_until_ms) in rows {
            // The pass from the first key stops where the claim began.
            if self.wrapped && !self.start.is_empty() && key > self.start {
                self.done = true;
                return;
            }
            self.after = key;
            if next_at_ms <= now_ms && locked_until_ms <= now_ms {
                self.heads.push((id, next_at_ms));
                if self.heads.len() >= self.take {
                    return;
                }
            }
        }
        if complete {
            // The last key was reached: go on from the first, once.
            self.after.clear();
            if self.wrapped {
                self.done = true;
            }
            self.wrapped = true;
        }
    }

    /// Where the next claim of this endpoint starts.
    pub(crate) fn cursor(&self) -> Option<String> {
        (!self.after.is_empty()).then(|| self.after.clone())
    }
}

/// Takes up to `limit` due deliveries: at most each endpoint's free concurrency, within its
/// rate, and for ordered endpoints only the oldest pending delivery of each partition key.
/// Endpoints are visited from `start` on (rotating it shares a tight `limit` fairly). Each
/// taken row's attempt count goes up and it is locked until `lease_ms`.
pub(crate) async fn claim(
    store: &Store,
    now_ms: i64,
    now_us: i64,
    lease_ms: i64,
    limit: u32,
    start: usize,
    cursors: &mut KeyCursors,
) -> Result<Vec<Claimed>, sqlx::Error> {
    on_store!(store.db(), pool, backend => {
        let pg = backend == onephase_store::Backend::Postgres;
        let mut tx = pool.begin().await?;
        if pg {
            // One claimer at a time across servers, so that concurrency and rate limits
            // count every server's attempts.
            sqlx::query("SELECT pg_advisory_xact_lock(7415612901)").execute(&mut *tx).await?;
            // A claim is only a lock: if a database crash loses it, the delivery is attempted
            // again (at least once either way), so its commit need not wait for the disk.
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        }
        let mut rooms: Vec<Room> = sqlx::query_as(sqlx::AssertSqlSafe(rooms_sql(pg)))
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
        rooms.retain(|r| r.room > 0);
        if !rooms.is_empty() {
            let at = start % rooms.len();
            rooms.rotate_left(at);
        }
        let mut left = i64::from(limit);
        let mut candidates: Vec<Claimed> = Vec::new();
        let mut chosen: Vec<i64> = Vec::new();
        for r in rooms {
            if left <= 0 {
                break;
            }
            let take = r.room.min(left);
            if !r.ordered {
                // One statement: the due rows with what sending them needs.
                let found: Vec<Claimed> = sqlx::query_as(DUE)
                    .bind(&r.id)
                    .bind(now_ms)
                    .bind(take)
                    .fetch_all(&mut *tx)
                    .await?;
                left -= i64::try_from(found.len()).unwrap_or(i64::MAX);
                candidates.extend(found);
                continue;
            }
            let mut found: Vec<(i64, i64)> = sqlx::query_as(DUE_UNKEYED)
                .bind(&r.id)
                .bind(now_ms)
                .bind(take)
                .fetch_all(&mut *tx)
                .await?;
            // Unkeyed deliveries above; each key's head here, however long its backlog.
            let mut walk = KeyWalk::new(cursors.get(&r.id).cloned(), take);
            while let Some(after) = walk.next_after() {
                let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(KEY_HEADS)
                    .bind(&r.id)
                    .bind(after.to_owned())
                    .bind(KEY_WALK)
                    .fetch_all(&mut *tx)
                    .await?;
                walk.feed(rows, now_ms);
            }
            match walk.cursor() {
                Some(key) => cursors.insert(r.id.clone(), key),
                None => cursors.remove(&r.id),
            };
            found.extend(walk.heads);
            found.sort_unstable_by_key(|&(id, due)| (due, id));
            found.truncate(usize::try_from(take).unwrap_or(usize::MAX));
            left -= i64::try_from(found.len()).unwrap_or(i64::MAX);
            chosen.extend(found.into_iter().map(|(id, _)| id));
        }
        if !chosen.is_empty() {
            let ids =
                serde_json::to_string(&chosen).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let by_id = if pg { CLAIMED_BY_ID_PG } else { CLAIMED_BY_ID_SQLITE };
            let ordered: Vec<Claimed> =
                sqlx::query_as(by_id).bind(&ids).fetch_all(&mut *tx).await?;
            candidates.extend(ordered);
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (taken, tats) = within_rate(candidates, now_us);
        let ids: Vec<i64> = taken.iter().map(|c| c.id).collect();
        let ids = serde_json::to_string(&ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let update = if pg {
            "UPDATE onephase_webhook_deliveries SET attempts = attempts + 1, locked_until_ms = $2 \
             WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)::bigint) \
             AND status = 'pending' AND locked_until_ms <= $3 RETURNING id"
        } else {
            "UPDATE onephase_webhook_deliveries SET attempts = attempts + 1, locked_until_ms = $2 \
             WHERE id IN (SELECT value FROM json_each($1)) \
             AND status = 'pending' AND locked_until_ms <= $3 RETURNING id"
        };
        let locked: Vec<i64> = sqlx::query_scalar(update)
            .bind(ids)
            .bind(lease_ms)
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
        for (endpoint, tat) in tats {
            sqlx::query("UPDATE onephase_webhook_endpoints SET rate_tat_us = $2 WHERE id = $1")
                .bind(endpoint)
                .bind(tat)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let locked: std::collections::HashSet<i64> = locked.into_iter().collect();
        Ok(taken.into_iter().filter(|c| locked.contains(&c.id)).collect())
    })
}

/// Keeps the candidates each endpoint's rate admits now (GCRA: one attempt per `1/rate`
/// seconds, bursts of up to one second's worth), and the endpoints' new arrival times.
fn within_rate(candidates: Vec<Claimed>, now_us: i64) -> (Vec<Claimed>, BTreeMap<String, i64>) {
    let mut tats: BTreeMap<String, i64> = BTreeMap::new();
    let mut taken = Vec::with_capacity(candidates.len());
    for c in candidates {
        let Some(rate) = c.rate_limit.filter(|r| *r > 0) else {
            taken.push(c);
            continue;
        };
        let interval = 1_000_000 / i64::from(rate);
        let tat = tats
            .get(&c.endpoint_id)
            .copied()
            .unwrap_or(c.rate_tat_us)
            .max(now_us);
        if tat + interval - now_us > 1_000_000 {
            continue;
        }
        tats.insert(c.endpoint_id.clone(), tat + interval);
        taken.push(c);
    }
    (taken, tats)
}

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
                let sql = if pg {
                    "UPDATE onephase_webhook_endpoints SET slow_limit = CASE \
                     WHEN slow_until_ms > $2 THEN GREATEST(1, slow_limit / 2) \
                     ELSE GREATEST(1, max_concurrency / 2) END, \
                     slow_until_ms = GREATEST(slow_until_ms, $3) WHERE id = $1"
                } else {
                    "UPDATE onephase_webhook_endpoints SET slow_limit = CASE \
                     WHEN slow_until_ms > $2 THEN max(1, slow_limit / 2) \
                     ELSE max(1, max_concurrency / 2) END, \
                     slow_until_ms = max(slow_until_ms, $3) WHERE id = $1"
                };
                sqlx::query(sql).bind(endpoint).bind(now_ms).bind(until).execute(&mut *tx).await?;
            }
            let reason = match h.state {
                Health::Gone => Some(format!("the endpoint answered 410 Gone ({})", h.url)),
                Health::Healthy => {
                    sqlx::query(
                        "UPDATE onephase_webhook_endpoints SET failing_since_ms = NULL \
                         WHERE id = $1 AND failing_since_ms IS NOT NULL",
                    )
                    .bind(endpoint)
                    .execute(&mut *tx)
                    .await?;
                    None
                }
                Health::Failing { since_ms } => {
                    let failing: Option<Option<i64>> = sqlx::query_scalar(
                        "UPDATE onephase_webhook_endpoints \
                         SET failing_since_ms = COALESCE(failing_since_ms, $2) \
                         WHERE id = $1 AND disabled_at_ms IS NULL RETURNING failing_since_ms",
                    )
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
            let updated = sqlx::query(
                "UPDATE onephase_webhook_endpoints SET disabled_at_ms = $2, disabled_reason = $3, \
                 disabled_auto = TRUE, updated_at_ms = $2 WHERE id = $1 AND disabled_at_ms IS NULL",
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's head: due at `due`, not in flight.
    fn head(key: &str, id: i64, due: i64) -> (String, i64, i64, i64) {
        (key.to_owned(), id, due, 0)
    }

    #[test]
    fn a_walk_skips_heads_that_must_wait_and_goes_on_where_it_stopped() {
        let mut walk = KeyWalk::new(None, 2);
        assert_eq!(walk.next_after(), Some(""));
        walk.feed(
            vec![
                head("a", 1, 50),
                head("b", 2, 5),
                head("c", 3, 5),
                head("d", 4, 5),
            ],
            10,
        );
        // "a" waits for a retry; "b" and "c" go; the next claim starts after "c".
        assert_eq!(walk.heads, vec![(2, 5), (3, 5)]);
        assert_eq!(walk.next_after(), None);
        assert_eq!(walk.cursor().as_deref(), Some("c"));
    }

    #[test]
    fn a_walk_that_reaches_the_last_key_starts_again_from_the_first_once() {
        let mut walk = KeyWalk::new(Some("c".to_owned()), 4);
        assert_eq!(walk.next_after(), Some("c"));
        walk.feed(vec![head("d", 4, 5)], 10);
        // Fewer rows than a page: the last key was reached; go on from the first.
        assert_eq!(walk.next_after(), Some(""));
        walk.feed(
            vec![
                head("a", 1, 5),
                head("b", 2, 50),
                head("c", 3, 5),
                head("d", 4, 5),
            ],
            10,
        );
        // The pass from the first key stops after "c", where this claim began: "d" is not
        // taken twice.
        assert_eq!(walk.heads, vec![(4, 5), (1, 5), (3, 5)]);
        assert_eq!(walk.next_after(), None);
    }

    #[test]
    fn a_walk_over_every_key_with_none_due_ends_without_a_cursor() {
        let mut walk = KeyWalk::new(None, 5);
        walk.feed(vec![head("a", 1, 50), head("b", 2, 50)], 10);
        assert!(walk.heads.is_empty());
        assert_eq!(walk.next_after(), None);
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_head_in_flight_is_not_taken() {
        let mut walk = KeyWalk::new(None, 5);
        walk.feed(vec![("a".to_owned(), 1, 5, 20), head("b", 2, 5)], 10);
        assert_eq!(walk.heads, vec![(2, 5)]);
    }
}

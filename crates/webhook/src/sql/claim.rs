//! Claims: the due deliveries within each endpoint's free concurrency, rate and key order,
//! each locked until its attempt can no longer be running.

use std::collections::{BTreeMap, HashMap};

use onephase_store::Store;

use super::on_store;

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
    /// The W3C `traceparent` the message was sent in.
    pub traceparent: Option<String>,
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
/// less the attempts in flight, which the `locked` index counts without reading the backlog
/// (it holds only rows with a lock: `locked_until_ms > 0` is spelled out for the planners).
fn rooms_sql(pg: bool) -> String {
    format!(
        "SELECT e.id, e.ordered, \
           (CASE WHEN e.slow_until_ms > $1 THEN {least}(e.slow_limit, e.max_concurrency) \
             ELSE e.max_concurrency END) \
           - (SELECT COUNT(*) FROM onephase_webhook_deliveries b \
              WHERE b.endpoint_id = e.id AND b.status = 'pending' AND b.locked_until_ms > 0 \
                AND b.locked_until_ms > $1) \
           AS room \
         FROM onephase_webhook_endpoints e WHERE e.disabled_at_ms IS NULL \
           AND EXISTS (SELECT 1 FROM onephase_webhook_deliveries d \
             WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_at_ms <= $1) \
         ORDER BY e.id",
        least = if pg { "LEAST" } else { "min" },
    )
}

/// An unordered endpoint's due deliveries, oldest due first, with what sending them needs:
/// at most `$3` rows are read, so a claim costs the same whatever the endpoint's backlog.
///
/// A row in flight is due no earlier than its lock's end (the lock sets both), so due rows
/// are unlocked and the walk down the `due` index stops at the first row in flight. The lock
/// itself still checks `locked_until_ms` (a row locked before that rule held is skipped there).
const DUE: &str = "SELECT d.id, d.endpoint_id, d.message_id, d.attempts, e.url, e.keys, \
       e.rate_limit, e.rate_tat_us, m.body, m.traceparent \
     FROM (SELECT id, endpoint_id, message_id, attempts, next_at_ms \
           FROM onephase_webhook_deliveries \
           WHERE endpoint_id = $1 AND status = 'pending' AND next_at_ms <= $2 \
           ORDER BY next_at_ms, id LIMIT $3) d \
     JOIN onephase_webhook_endpoints e ON e.id = d.endpoint_id \
     JOIN onephase_webhook_messages m ON m.id = d.message_id \
     ORDER BY d.next_at_ms, d.id";

/// An ordered endpoint's unkeyed due deliveries (its keyed ones are found per key, by
/// [`KEY_HEADS`]): ids and due times.
const DUE_UNKEYED: &str = "SELECT id, next_at_ms FROM onephase_webhook_deliveries \
     WHERE endpoint_id = $1 AND status = 'pending' AND partition_key IS NULL AND ordered \
       AND next_at_ms <= $2 \
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

/// What a claim needs of each delivery whose id matches `$ids` (the condition's right side).
macro_rules! claimed_by_id {
    ($ids:literal) => {
        concat!(
            "SELECT d.id, d.endpoint_id, d.message_id, d.attempts, e.url, e.keys, \
               e.rate_limit, e.rate_tat_us, m.body, m.traceparent \
             FROM onephase_webhook_deliveries d \
             JOIN onephase_webhook_endpoints e ON e.id = d.endpoint_id \
             JOIN onephase_webhook_messages m ON m.id = d.message_id \
             WHERE d.id ",
            $ids,
            " ORDER BY d.next_at_ms, d.id"
        )
    };
}

/// Locks the deliveries whose id matches `$ids` that are still pending and unlocked. The
/// lock's end is also the row's due time: a claim's walk down the due index then stops before
/// the rows in flight instead of stepping over each of them, and a row whose dispatcher died
/// is due again exactly when its lock lapses.
macro_rules! lock {
    ($ids:literal) => {
        concat!(
            "UPDATE onephase_webhook_deliveries \
             SET attempts = attempts + 1, locked_until_ms = $2, next_at_ms = $2 \
             WHERE id ",
            $ids,
            " AND status = 'pending' AND locked_until_ms <= $3 RETURNING id"
        )
    };
}

/// What differs between the backends: ids go to PostgreSQL as an array (so that `= ANY`
/// probes the primary key) and to SQLite as a JSON list.
mod pg {
    pub(super) const PG: bool = true;
    pub(super) const CLAIMED_BY_ID: &str = claimed_by_id!("= ANY($1)");
    pub(super) const LOCK: &str = lock!("= ANY($1)");

    pub(super) fn ids(ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        Ok(ids.to_vec())
    }
}

mod lite {
    pub(super) const PG: bool = false;
    pub(super) const CLAIMED_BY_ID: &str = claimed_by_id!("IN (SELECT value FROM json_each($1))");
    pub(super) const LOCK: &str = lock!("IN (SELECT value FROM json_each($1))");

    /// Ids as the JSON list the statements unpack.
    pub(super) fn ids(ids: &[i64]) -> Result<String, sqlx::Error> {
        serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))
    }
}

/// An endpoint's new theoretical arrival time (its rate limit's state).
const SET_TAT: &str = "UPDATE onephase_webhook_endpoints SET rate_tat_us = $2 WHERE id = $1";

/// Endpoints with room, starting from the `start`-th (rotating it shares a tight claim limit
/// fairly).
fn visiting_order(rooms: &mut Vec<Room>, start: usize) {
    rooms.retain(|r| r.room > 0);
    if !rooms.is_empty() {
        let at = start % rooms.len();
        rooms.rotate_left(at);
    }
}

/// The ids of the `take` earliest due of `found` (id, due).
fn earliest(mut found: Vec<(i64, i64)>, take: i64) -> Vec<i64> {
    found.sort_unstable_by_key(|&(id, due)| (due, id));
    found.truncate(usize::try_from(take).unwrap_or(usize::MAX));
    found.into_iter().map(|(id, _)| id).collect()
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
    on_store!(store.db(), pool, q: pg | lite => {
        let pg = q::PG;
        let mut tx = pool.begin().await?;
        if pg {
            // One claimer at a time across servers, so that concurrency and rate limits
            // count every server's attempts.
            // A claim is only a lock: if a database crash loses it, the delivery is attempted
            // again (at least once either way), so its commit need not wait for the disk.
            sqlx::query("SELECT pg_advisory_xact_lock(7415612901), set_config('synchronous_commit', 'off', true)").execute(&mut *tx).await?;
        }
        let mut rooms: Vec<Room> = sqlx::query_as(sqlx::AssertSqlSafe(rooms_sql(pg)))
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
        visiting_order(&mut rooms, start);
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
            let first = earliest(found, take);
            left -= i64::try_from(first.len()).unwrap_or(i64::MAX);
            chosen.extend(first);
        }
        if !chosen.is_empty() {
            let ordered: Vec<Claimed> = sqlx::query_as(q::CLAIMED_BY_ID)
                .bind(q::ids(&chosen)?)
                .fetch_all(&mut *tx)
                .await?;
            candidates.extend(ordered);
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (taken, tats) = within_rate(candidates, now_us);
        let ids: Vec<i64> = taken.iter().map(|c| c.id).collect();
        let locked: Vec<i64> = sqlx::query_scalar(q::LOCK)
            .bind(q::ids(&ids)?)
            .bind(lease_ms)
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;

        for (endpoint, tat) in tats {
            sqlx::query(SET_TAT).bind(endpoint).bind(tat).execute(&mut *tx).await?;
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

//! The SQLite side. SQLite runs one writer at a time, so claims and operator changes need no
//! row locks: a write transaction sees everything committed before it. Times are Unix
//! milliseconds, ids UUID text, JSON text.

use std::collections::BTreeMap;

use onephase_core::json::RawJson;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _, Sqlite, SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Claim, DefinitionInfo, Event, ExistingRun, Guard, HistoryEntry, NewRun, RETRYING_COLUMNS,
    Retrying, RunDetail, RunFilter, RunSummary, StepView, Transition, parse_phase, parse_state,
    parse_status, to_i32, to_u32,
};
use onephase_store::convert::{from_unix_ms, unix_ms as ms};

use crate::SagaError;
use crate::invoke::Phase;
use crate::state::{RunRecord, StepRecord};

fn time_at(r: &SqliteRow, column: &str) -> Result<OffsetDateTime, sqlx::Error> {
    Ok(from_unix_ms(r.try_get(column)?)?)
}

fn time_opt(r: &SqliteRow, column: &str) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(column)?
        .map(from_unix_ms)
        .transpose()?)
}

fn json(r: &SqliteRow, column: &str) -> Result<Value, sqlx::Error> {
    let text: String = r.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A user's JSON (a run's input, a step's output), exactly as stored.
fn raw_json(r: &SqliteRow, column: &str) -> Result<RawJson, sqlx::Error> {
    let text: String = r.try_get(column)?;
    RawJson::parse(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn raw_json_opt(r: &SqliteRow, column: &str) -> Result<Option<RawJson>, sqlx::Error> {
    let text: Option<String> = r.try_get(column)?;
    text.map(|t| RawJson::parse(&t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

fn uuid(r: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = r.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(super) async fn insert_definition(
    pool: &SqlitePool,
    info: &DefinitionInfo,
    document: &Value,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO onephase_saga_definitions (name, version, definition, digest, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name, version) DO NOTHING",
    )
    .bind(&info.name)
    .bind(to_i32(info.version))
    .bind(document.to_string())
    .bind(&info.digest)
    .bind(ms(info.created_at))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let existing = if inserted == 1 {
        None
    } else {
        Some(
            sqlx::query_scalar(
                "SELECT digest FROM onephase_saga_definitions WHERE name = ?1 AND version = ?2",
            )
            .bind(&info.name)
            .bind(to_i32(info.version))
            .fetch_one(&mut *tx)
            .await?,
        )
    };
    tx.commit().await?;
    Ok(existing)
}

pub(super) async fn definition(
    pool: &SqlitePool,
    name: &str,
    version: Option<u32>,
) -> Result<Option<(u32, Value)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT version, definition FROM onephase_saga_definitions \
         WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
    )
    .bind(name)
    .bind(version.map(to_i32))
    .fetch_optional(pool)
    .await?;
    row.map(|r| Ok((to_u32(r.try_get("version")?)?, json(&r, "definition")?)))
        .transpose()
}

pub(super) async fn definitions(pool: &SqlitePool) -> Result<Vec<DefinitionInfo>, sqlx::Error> {
    sqlx::query(
        "SELECT name, version, digest, created_at FROM onephase_saga_definitions \
         ORDER BY name, version",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(DefinitionInfo {
            name: r.try_get("name")?,
            version: to_u32(r.try_get("version")?)?,
            digest: r.try_get("digest")?,
            created_at: time_at(r, "created_at")?,
        })
    })
    .collect()
}

async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[Event],
    topic: Option<&str>,
) -> Result<(), SagaError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO onephase_saga_history \
             (run_id, at, event, step, phase, attempt, elapsed_ms, detail, actor) ",
    );
    query.push_values(events, |mut row, e| {
        row.push_bind(e.run_id.to_string())
            .push_bind(ms(e.at))
            .push_bind(e.event)
            .push_bind(&e.step)
            .push_bind(e.phase.map(Phase::as_str))
            .push_bind(e.attempt.map(to_i32))
            .push_bind(e.elapsed_ms)
            .push_bind(&e.detail)
            .push_bind(&e.actor);
    });
    query.build().execute(&mut *conn).await?;
    if let Some(topic) = topic {
        let envelopes = events
            .iter()
            .map(|e| e.envelope(topic))
            .collect::<Result<Vec<_>, _>>()?;
        onephase_outbox::enqueue_all(conn, &envelopes).await?;
    }
    Ok(())
}

pub(super) async fn start(
    pool: &SqlitePool,
    run: &NewRun,
    event: &Event,
    topic: Option<&str>,
) -> Result<Option<ExistingRun>, SagaError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO onephase_saga_runs \
             (id, saga, version, state, input, idempotency_key, input_digest, created_at, \
              updated_at, due_at, traceparent) \
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?7, ?7, ?8) \
         ON CONFLICT (saga, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(run.id.to_string())
    .bind(&run.saga)
    .bind(to_i32(run.version))
    .bind(run.input.get())
    .bind(&run.key)
    .bind(&run.digest)
    .bind(ms(run.now))
    .bind(&run.traceparent)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let row = sqlx::query(
            "SELECT id, version, input_digest, state FROM onephase_saga_runs \
             WHERE saga = ?1 AND idempotency_key = ?2",
        )
        .bind(&run.saga)
        .bind(&run.key)
        .fetch_one(&mut *tx)
        .await?;
        let state: String = row.try_get("state")?;
        return Ok(Some(ExistingRun {
            id: uuid(&row, "id")?,
            version: to_u32(row.try_get("version")?)?,
            digest: row.try_get("input_digest")?,
            state: parse_state(&state)?,
        }));
    }
    insert_events(&mut tx, std::slice::from_ref(event), topic).await?;
    tx.commit().await?;
    Ok(None)
}

fn step_record(r: &SqliteRow) -> Result<((String, Phase), StepRecord), sqlx::Error> {
    let phase: String = r.try_get("phase")?;
    let status: String = r.try_get("status")?;
    Ok((
        (r.try_get("step")?, parse_phase(&phase)?),
        StepRecord {
            status: parse_status(&status)?,
            attempts: to_u32(r.try_get("attempts")?)?,
            retry_base: to_u32(r.try_get("retry_base")?)?,
            definite: r.try_get("definite")?,
            due_at: time_opt(r, "due_at")?,
            output: raw_json_opt(r, "output")?,
            last_error: r.try_get("last_error")?,
            started_at: time_opt(r, "started_at")?,
            finished_at: time_opt(r, "finished_at")?,
        },
    ))
}

const STEP_COLUMNS: &str = "run_id, step, phase, status, attempts, retry_base, definite, due_at, output, \
                            last_error, started_at, finished_at";

fn run_record(r: &SqliteRow) -> Result<RunRecord, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let saga: String = r.try_get("saga")?;
    Ok(RunRecord {
        id: uuid(r, "id")?,
        saga: saga.into(),
        version: to_u32(r.try_get("version")?)?,
        state: parse_state(&state)?,
        input: raw_json(r, "input")?.into(),
        error: r.try_get("error")?,
        fence: r.try_get("fence")?,
        traceparent: r.try_get("traceparent")?,
        steps: BTreeMap::new(),
    })
}

async fn load_steps(
    conn: &mut SqliteConnection,
    runs: &mut [RunRecord],
) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {STEP_COLUMNS} FROM onephase_saga_steps \
         WHERE run_id IN (SELECT value FROM json_each(?1))"
    )))
    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
    .fetch_all(&mut *conn)
    .await?;
    let mut by_run: BTreeMap<Uuid, &mut RunRecord> = runs.iter_mut().map(|r| (r.id, r)).collect();
    for row in rows {
        let id = uuid(&row, "run_id")?;
        let (key, record) = step_record(&row)?;
        if let Some(run) = by_run.get_mut(&id) {
            run.steps.insert(key, record);
        }
    }
    Ok(())
}

pub(super) async fn claim(
    pool: &SqlitePool,
    claim: Claim<'_>,
) -> Result<Vec<RunRecord>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "UPDATE onephase_saga_runs SET claimed_by = ?1, claimed_until = ?2, fence = fence + 1 \
         WHERE id IN ( \
             SELECT id FROM onephase_saga_runs \
             WHERE state IN ('running', 'compensating') AND due_at <= ?3 \
               AND (claimed_until IS NULL OR claimed_until < ?3) \
               AND (saga IN (SELECT value FROM json_each(?4)) \
                    OR (?5 AND saga IN (SELECT name FROM onephase_saga_definitions))) \
             ORDER BY due_at LIMIT ?6) \
         RETURNING id, saga, version, state, input, error, fence, traceparent",
    )
    .bind(claim.me.to_string())
    .bind(ms(claim.now + claim.lease))
    .bind(ms(claim.now))
    .bind(serde_json::to_string(claim.names).unwrap_or_else(|_| "[]".into()))
    .bind(claim.stored)
    .bind(i64::from(claim.limit))
    .fetch_all(&mut *tx)
    .await?;
    let mut runs = rows.iter().map(run_record).collect::<Result<Vec<_>, _>>()?;
    if !runs.is_empty() {
        load_steps(&mut tx, &mut runs).await?;
    }
    tx.commit().await?;
    Ok(runs)
}

pub(super) async fn write_in(
    conn: &mut SqliteConnection,
    guard: Guard,
    t: &Transition,
    topic: Option<&str>,
) -> Result<bool, SagaError> {
    let run = &t.run;
    let (fence, state): (Option<i64>, Option<&str>) = match guard {
        Guard::Claim(fence) => (Some(fence), None),
        Guard::State(s) => (None, Some(s.as_str())),
    };
    let updated = sqlx::query(
        "UPDATE onephase_saga_runs SET state = ?2, error = ?3, due_at = ?4, updated_at = ?5, \
                finished_at = CASE WHEN ?2 IN ('completed', 'compensated', 'aborted') THEN ?5 END, \
                claimed_by = CASE WHEN ?6 IS NULL THEN NULL ELSE claimed_by END, \
                claimed_until = ?6, fence = CASE WHEN ?7 IS NULL THEN fence + 1 ELSE fence END \
         WHERE id = ?1 AND (?7 IS NULL OR fence = ?7) AND (?8 IS NULL OR state = ?8)",
    )
    .bind(run.id.to_string())
    .bind(run.state.as_str())
    .bind(&run.error)
    .bind(ms(run.due_at))
    .bind(ms(run.now))
    .bind(run.lease.map(|lease| ms(run.now + lease)))
    .bind(fence)
    .bind(state)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    if !t.steps.is_empty() {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO onephase_saga_steps (run_id, step, phase, status, attempts, retry_base, \
             definite, due_at, output, last_error, started_at, finished_at) ",
        );
        query.push_values(&t.steps, |mut row, (step, phase, r)| {
            row.push_bind(run.id.to_string())
                .push_bind(step)
                .push_bind(phase.as_str())
                .push_bind(r.status.as_str())
                .push_bind(to_i32(r.attempts))
                .push_bind(to_i32(r.retry_base))
                .push_bind(r.definite)
                .push_bind(r.due_at.map(ms))
                .push_bind(r.output.as_ref().map(|o| o.get().to_owned()))
                .push_bind(&r.last_error)
                .push_bind(r.started_at.map(ms))
                .push_bind(r.finished_at.map(ms));
        });
        query.push(
            " ON CONFLICT (run_id, step, phase) DO UPDATE SET \
                 status = excluded.status, attempts = excluded.attempts, \
                 retry_base = excluded.retry_base, definite = excluded.definite, \
                 due_at = excluded.due_at, output = excluded.output, \
                 last_error = excluded.last_error, started_at = excluded.started_at, \
                 finished_at = excluded.finished_at",
        );
        query.build().execute(&mut *conn).await?;
    }
    insert_events(conn, &t.events, topic).await?;
    Ok(true)
}

pub(super) async fn release(
    pool: &SqlitePool,
    id: Uuid,
    fence: i64,
    due_at: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE onephase_saga_runs SET claimed_by = NULL, claimed_until = NULL, due_at = ?3 \
         WHERE id = ?1 AND fence = ?2",
    )
    .bind(id.to_string())
    .bind(fence)
    .bind(ms(due_at))
    .execute(pool)
    .await?
    .rows_affected())
}

pub(super) async fn write(
    pool: &SqlitePool,
    guard: Guard,
    t: &Transition,
    topic: Option<&str>,
) -> Result<bool, SagaError> {
    let mut tx = pool.begin().await?;
    if !write_in(&mut tx, guard, t, topic).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn modify<F>(
    pool: &SqlitePool,
    id: Uuid,
    topic: Option<&str>,
    change: F,
) -> Result<Option<RunRecord>, SagaError>
where
    F: FnOnce(RunRecord) -> Result<Transition, SagaError> + Send,
{
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT id, saga, version, state, input, error, fence, traceparent FROM onephase_saga_runs WHERE id = ?1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let mut runs = vec![run_record(&row)?];
    load_steps(&mut tx, &mut runs).await?;
    let Some(run) = runs.pop() else {
        return Ok(None);
    };
    let before = run.clone();
    let transition = change(run)?;
    write_in(&mut tx, Guard::State(before.state), &transition, topic).await?;
    tx.commit().await?;
    Ok(Some(before))
}

fn summary(r: &SqliteRow) -> Result<RunSummary, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(RunSummary {
        id: uuid(r, "id")?,
        saga: r.try_get("saga")?,
        version: to_u32(r.try_get("version")?)?,
        state: parse_state(&state)?,
        error: r.try_get("error")?,
        idempotency_key: r.try_get("idempotency_key")?,
        created_at: time_at(r, "created_at")?,
        updated_at: time_at(r, "updated_at")?,
        finished_at: time_opt(r, "finished_at")?,
    })
}

const SUMMARY_COLUMNS: &str =
    "id, saga, version, state, error, idempotency_key, created_at, updated_at, finished_at";

pub(super) async fn list(pool: &SqlitePool, f: &RunFilter) -> Result<Vec<RunSummary>, sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM onephase_saga_runs \
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR saga = ?2) \
           AND (?3 IS NULL OR (created_at, id) < \
                (SELECT created_at, id FROM onephase_saga_runs WHERE id = ?3)) \
         ORDER BY created_at DESC, id DESC LIMIT ?4"
    )))
    .bind(f.state.map(|s| s.as_str()))
    .bind(&f.saga)
    .bind(f.before.map(|u| u.to_string()))
    .bind(i64::from(f.limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(summary)
    .collect()
}

pub(super) async fn detail(pool: &SqlitePool, id: Uuid) -> Result<Option<RunDetail>, sqlx::Error> {
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS}, input FROM onephase_saga_runs WHERE id = ?1"
    )))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let steps = sqlx::query(AssertSqlSafe(format!(
        "SELECT {STEP_COLUMNS} FROM onephase_saga_steps WHERE run_id = ?1 \
         ORDER BY started_at IS NULL, started_at, step, phase"
    )))
    .bind(id.to_string())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let ((step, phase), rec) = step_record(r)?;
        Ok(StepView {
            step,
            phase,
            status: rec.status,
            attempts: rec.attempts,
            output: rec.output,
            last_error: rec.last_error,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            due_at: rec.due_at,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let history = sqlx::query(
        "SELECT seq, at, event, step, phase, attempt, elapsed_ms, detail, actor \
         FROM onephase_saga_history WHERE run_id = ?1 ORDER BY seq",
    )
    .bind(id.to_string())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let phase: Option<String> = r.try_get("phase")?;
        let attempt: Option<i32> = r.try_get("attempt")?;
        Ok(HistoryEntry {
            seq: r.try_get("seq")?,
            at: time_at(r, "at")?,
            event: r.try_get("event")?,
            step: r.try_get("step")?,
            phase: phase.as_deref().map(parse_phase).transpose()?,
            attempt: attempt.map(to_u32).transpose()?,
            elapsed_ms: r.try_get("elapsed_ms")?,
            detail: r.try_get("detail")?,
            actor: r.try_get("actor")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(RunDetail {
        run: summary(&row)?,
        input: raw_json(&row, "input")?,
        steps,
        history,
    }))
}

pub(super) async fn counts(
    pool: &SqlitePool,
    active_only: bool,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    sqlx::query(
        "SELECT state, count(*) AS n FROM onephase_saga_runs \
         WHERE NOT ?1 OR state IN ('running', 'compensating', 'needs_operator') \
         GROUP BY state",
    )
    .bind(active_only)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
    .collect()
}

pub(super) async fn retrying(
    pool: &SqlitePool,
    min_attempts: u32,
    limit: u32,
) -> Result<Vec<Retrying>, sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {RETRYING_COLUMNS} FROM onephase_saga_runs r \
         JOIN onephase_saga_steps s ON s.run_id = r.id \
         WHERE r.state IN ('running', 'compensating') \
           AND s.status IN ('retry_wait', 'started') AND s.last_error IS NOT NULL \
           AND s.attempts >= ?1 \
         ORDER BY s.attempts DESC, r.created_at LIMIT ?2"
    )))
    .bind(i64::from(min_attempts))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let phase: String = r.try_get("phase")?;
        Ok(Retrying {
            run: summary(r)?,
            step: r.try_get("step")?,
            phase: parse_phase(&phase)?,
            attempts: to_u32(r.try_get("attempts")?)?,
            last_error: r.try_get("last_error")?,
        })
    })
    .collect()
}

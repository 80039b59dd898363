//! Operating projections: status and lag, retry and skip (audited), rebuild, the consistency
//! wait, and `explain`.

use std::time::Duration;

use onephase_store::on_store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::runner::{progressed, register, tracks};
use crate::sql::position;
use crate::{EventStore, EventsError, RecordedEvent};

/// Records an operator's action in the audit trail, in the transaction `$conn`.
macro_rules! audit {
    ($conn:expr, $name:expr, $action:expr, $at:expr, $actor:expr, $reason:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO onephase_events_audit (projection, action, position, actor, reason, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($name)
        .bind($action)
        .bind($at)
        .bind($actor)
        .bind($reason)
        .bind($now)
        .execute($conn)
        .await?
    };
}

/// One generation of a projection, and how far behind the events it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// The generation.
    pub generation: u64,
    /// `live` (what readers read) or `building` (a rebuild beside it).
    pub role: String,
    /// The last global position applied.
    pub position: u64,
    /// The store's last position.
    pub head: u64,
    /// Events not yet applied: `head - position`.
    pub lag_events: u64,
    /// How long the oldest event not yet applied has waited, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Where it is parked, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_position: Option<u64>,
    /// Why it is parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_error: Option<String>,
    /// Since when it is parked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub parked_at: Option<OffsetDateTime>,
    /// When it last applied an event, on the appending clock.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_event_at: Option<OffsetDateTime>,
}

/// The events that built one row of a read model, in the order they were applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Explanation {
    /// The projection.
    pub projection: String,
    /// Its live generation.
    pub generation: u64,
    /// The row key.
    pub key: String,
    /// The events, in global order (personal fields of forgotten subjects read as `null`).
    pub events: Vec<RecordedEvent>,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    name: String,
    generation: i64,
    role: String,
    position: i64,
    last_event_ms: Option<i64>,
    parked_position: Option<i64>,
    parked_error: Option<String>,
    parked_ms: Option<i64>,
    next_ms: Option<i64>,
}

/// Operations on the projections of an [`EventStore`]; see the [module documentation](super).
#[derive(Debug, Clone)]
pub struct Projections {
    events: EventStore,
}

impl Projections {
    /// The projections of `events`.
    pub fn new(events: EventStore) -> Self {
        Self { events }
    }

    /// Every generation of every projection, parked ones first.
    pub async fn list(&self) -> Result<Vec<ProjectionStatus>, EventsError> {
        self.statuses(None).await
    }

    /// The generations of one projection (live first).
    pub async fn status(&self, name: &str) -> Result<Vec<ProjectionStatus>, EventsError> {
        let found = self.statuses(Some(name)).await?;
        if found.is_empty() {
            return Err(EventsError::UnknownProjection(name.to_owned()));
        }
        Ok(found)
    }

    async fn statuses(&self, name: Option<&str>) -> Result<Vec<ProjectionStatus>, EventsError> {
        let head = self.events.head().await?;
        let now = self.events.now_ms();
        let filter = if name.is_some() {
            "WHERE p.name = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT p.name, p.generation, p.role, p.position, p.last_event_ms, p.parked_position, \
             p.parked_error, p.parked_ms, (SELECT e.recorded_ms FROM onephase_events e \
             WHERE e.position > p.position ORDER BY e.position LIMIT 1) AS next_ms \
             FROM onephase_events_projections p {filter} ORDER BY p.name, p.generation"
        );
        let rows: Vec<StatusRow> = on_store!(read self.events.store().db(), pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            if let Some(name) = name {
                q = q.bind(name);
            }
            q.fetch_all(pool).await?
        });
        let time = |ms: Option<i64>| {
            ms.map(onephase_store::convert::from_unix_ms)
                .transpose()
                .map_err(|e| EventsError::corrupt("projection time", e))
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let at = position(r.position)?;
            out.push(ProjectionStatus {
                name: r.name,
                generation: position(r.generation)?,
                role: r.role,
                position: at,
                head,
                lag_events: head.saturating_sub(at),
                lag_seconds: r
                    .next_ms
                    .map_or(0.0, |ms| (now - ms).max(0) as f64 / 1000.0),
                parked_position: r.parked_position.map(position).transpose()?,
                parked_error: r.parked_error,
                parked_at: time(r.parked_ms)?,
                last_event_at: time(r.last_event_ms)?,
            });
        }
        out.sort_by_key(|s| {
            (
                s.parked_position.is_none(),
                s.name.clone(),
                s.role != "live",
            )
        });
        for s in &out {
            metrics::gauge!("onephase_events_projection_lag_events", "projection" => s.name.clone(), "role" => s.role.clone())
                .set(s.lag_events as f64);
            metrics::gauge!("onephase_events_projection_lag_seconds", "projection" => s.name.clone(), "role" => s.role.clone())
                .set(s.lag_seconds);
        }
        Ok(out)
    }

    /// Clears the park of `name`: it tries the event again (after the cause was fixed).
    pub async fn retry(&self, name: &str, actor: &str, reason: &str) -> Result<u64, EventsError> {
        let at = self.unpark(name, false, actor, reason).await?;
        crate::store::appended();
        Ok(at)
    }

    /// Moves `name` past the event it is parked on, which it will never apply. Audited with
    /// `actor` and `reason`.
    pub async fn skip(&self, name: &str, actor: &str, reason: &str) -> Result<u64, EventsError> {
        let at = self.unpark(name, true, actor, reason).await?;
        crate::store::appended();
        Ok(at)
    }

    async fn unpark(
        &self,
        name: &str,
        skip: bool,
        actor: &str,
        reason: &str,
    ) -> Result<u64, EventsError> {
        check_reason(actor, reason)?;
        let now = self.events.now_ms();
        let action = if skip { "skip" } else { "retry" };
        let parked: Option<i64> = on_store!(self.events.store().db(), pool => {
            let mut tx = pool.begin().await?;
            let parked: Option<i64> = sqlx::query_scalar(
                "UPDATE onephase_events_projections SET \
                 position = CASE WHEN $2 THEN parked_position ELSE position END, \
                 parked_position = NULL, parked_error = NULL, parked_ms = NULL, updated_ms = $3 \
                 WHERE name = $1 AND parked_position IS NOT NULL RETURNING position",
            )
            .bind(name)
            .bind(skip)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(at) = parked {
                audit!(&mut *tx, name, action, Some(at), actor, reason, now);
            }
            tx.commit().await?;
            parked
        });
        if parked.is_none() {
            self.status(name).await?;
            return Err(EventsError::ProjectionState {
                projection: name.to_owned(),
                message: format!("it is not parked; there is nothing to {action}"),
            });
        }
        let status = self.status(name).await?;
        Ok(status.first().map_or(0, |s| s.position))
    }

    /// Starts a blue/green rebuild of `name`: a new generation from position 0 beside the live
    /// one, made live by the projector once it has caught up. Returns the new generation.
    pub async fn rebuild(&self, name: &str, actor: &str, reason: &str) -> Result<u64, EventsError> {
        check_reason(actor, reason)?;
        let existing = tracks(&self.events, name).await?;
        if existing.is_empty() {
            return Err(EventsError::UnknownProjection(name.to_owned()));
        }
        if let Some(b) = existing.iter().find(|t| t.role == "building") {
            return Err(EventsError::ProjectionState {
                projection: name.to_owned(),
                message: format!(
                    "a rebuild is already running (generation {} at position {}); wait for it \
                     to switch live",
                    b.generation, b.position
                ),
            });
        }
        let generation = existing.iter().map(|t| t.generation).max().unwrap_or(0) + 1;
        self.start_generation(name, generation, actor, reason, None)
            .await?;
        position(generation)
    }

    /// Inserts a building generation (and its document definition, if any), audited.
    pub(crate) async fn start_generation(
        &self,
        name: &str,
        generation: i64,
        actor: &str,
        reason: &str,
        definition: Option<&str>,
    ) -> Result<(), EventsError> {
        let now = self.events.now_ms();
        on_store!(self.events.store().db(), pool => {
            let mut tx = pool.begin().await?;
            let role = if generation == 1 { "live" } else { "building" };
            let inserted = sqlx::query(
                "INSERT INTO onephase_events_projections (name, generation, role, position, started_ms, updated_ms) \
                 VALUES ($1, $2, $3, 0, $4, $4) ON CONFLICT DO NOTHING",
            )
            .bind(name).bind(generation).bind(role).bind(now)
            .execute(&mut *tx).await?.rows_affected();
            if inserted == 0 {
                return Err(EventsError::ProjectionState {
                    projection: name.to_owned(),
                    message: "another rebuild started at the same moment; look at its status".into(),
                });
            }
            if let Some(definition) = definition {
                sqlx::query(
                    "INSERT INTO onephase_events_definitions (name, generation, definition, created_ms) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(name).bind(generation).bind(definition).bind(now)
                .execute(&mut *tx).await?;
            }
            let action = if generation == 1 { "define" } else { "rebuild" };
            audit!(&mut *tx, name, action, Some(generation), actor, reason, now);
            tx.commit().await?;
        });
        crate::store::appended();
        Ok(())
    }

    /// Waits until the live generation of `name` has applied `wanted` (a position an append
    /// returned), at most `timeout`; returns the position it has reached. Fails at once with
    /// [`EventsError::Parked`] if it is parked before `wanted`, and with
    /// [`EventsError::NotYet`] when the time runs out.
    pub async fn wait_for(
        &self,
        name: &str,
        wanted: u64,
        timeout: Duration,
    ) -> Result<u64, EventsError> {
        let clock = self.events.clock.clone();
        let start = clock.monotonic();
        loop {
            // Subscribed before looking, so a move between the look and the wait is not lost.
            let moved = progressed();
            let live = tracks(&self.events, name)
                .await?
                .into_iter()
                .find(|t| t.role == "live")
                .ok_or_else(|| EventsError::UnknownProjection(name.to_owned()))?;
            let at = position(live.position)?;
            if at >= wanted {
                return Ok(at);
            }
            if let Some(parked) = live.parked_position {
                let error = self
                    .status(name)
                    .await?
                    .into_iter()
                    .find_map(|s| s.parked_error);
                return Err(EventsError::Parked {
                    projection: name.to_owned(),
                    position: position(parked)?,
                    error: error.unwrap_or_default(),
                });
            }
            let waited = clock.monotonic().saturating_duration_since(start);
            if waited >= timeout {
                return Err(EventsError::NotYet {
                    projection: name.to_owned(),
                    wanted,
                    reached: at,
                    waited,
                });
            }
            // Projectors in other processes do not wake this one: look again soon anyway.
            let pause = (timeout - waited).min(Duration::from_millis(20));
            tokio::select! {
                () = moved => {}
                () = clock.sleep(pause) => {}
            }
        }
    }

    /// The events that built row `key` of `name`'s live generation, in order.
    pub async fn explain(&self, name: &str, key: &str) -> Result<Explanation, EventsError> {
        let live = tracks(&self.events, name)
            .await?
            .into_iter()
            .find(|t| t.role == "live")
            .ok_or_else(|| EventsError::UnknownProjection(name.to_owned()))?;
        let positions: Vec<i64> = on_store!(read self.events.store().db(), pool => {
            sqlx::query_scalar(
                "SELECT position FROM onephase_events_lineage WHERE projection = $1 \
                 AND generation = $2 AND row_key = $3 ORDER BY position",
            )
            .bind(name)
            .bind(live.generation)
            .bind(key)
            .fetch_all(pool)
            .await?
        });
        let positions: Vec<u64> = positions
            .into_iter()
            .map(position)
            .collect::<Result<_, _>>()?;
        Ok(Explanation {
            projection: name.to_owned(),
            generation: position(live.generation)?,
            key: key.to_owned(),
            events: self.events.read_positions(&positions).await?,
        })
    }

    /// Registers `name` for a projector that runs it (a live generation at position 0).
    pub async fn register(&self, name: &str) -> Result<(), EventsError> {
        crate::event::check_name("projection", name)?;
        register(&self.events, name).await
    }

    /// The audit trail of `name`: (action, generation or position, actor, reason, time), newest
    /// first, at most `limit`.
    pub async fn audit(&self, name: &str, limit: u32) -> Result<Vec<AuditEntry>, EventsError> {
        let rows: Vec<(String, Option<i64>, String, String, i64)> = on_store!(read self.events.store().db(), pool => {
            sqlx::query_as(
                "SELECT action, position, actor, reason, at_ms FROM onephase_events_audit \
                 WHERE projection = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(name)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(action, at, actor, reason, ms)| {
                Ok(AuditEntry {
                    action,
                    position: at.map(position).transpose()?,
                    actor,
                    reason,
                    at: onephase_store::convert::from_unix_ms(ms)
                        .map_err(|e| EventsError::corrupt("audit time", e))?,
                })
            })
            .collect()
    }

    pub(crate) fn events(&self) -> &EventStore {
        &self.events
    }
}

/// What an operator (or the projector) did to a projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// `define`, `rebuild`, `retry`, `skip` or `switch`.
    pub action: String,
    /// The generation (define, rebuild) or position (switch) it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Who did it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

fn check_reason(actor: &str, reason: &str) -> Result<(), EventsError> {
    if actor.trim().is_empty() || actor.len() > 200 {
        return Err(EventsError::invalid(
            "actor",
            "say who acts, in 1 to 200 characters",
        ));
    }
    if reason.trim().is_empty() || reason.len() > 2000 {
        return Err(EventsError::invalid(
            "reason",
            "say why, in 1 to 2000 characters: it is kept in the audit trail",
        ));
    }
    Ok(())
}

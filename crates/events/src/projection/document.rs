//! Document projections: read models defined as data, for services in any language.
//!
//! A definition says which events build which JSON document: the row key (the event's stream,
//! or a top-level field of its data) and, per event type, what the event does to its row:
//! `merge` (an RFC 7396 merge patch of the event's data into the row), `replace`, `delete`, or
//! `count` (one more in the row's `count` member).
//! Event types it does not name are passed over. The rows live in one table of the store,
//! keyed by projection, generation and key, each with the position of the last event that
//! changed it.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use onephase_core::json::RawJson;
use onephase_store::on_store;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::runner::on_tx;
use super::{Projection, ProjectionError, ProjectionTx, Projections};
use crate::sql::{position, stored};
use crate::{EventStore, EventsError, RecordedEvent};

/// How an event names its row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DocumentKey {
    /// The event's stream (`order-42`).
    #[default]
    Stream,
    /// A top-level field of the event's data (a string or a number). An event of a handled
    /// type without it parks the projection.
    Field(String),
}

/// What an event of a type does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DocumentAction {
    /// Merges the event's data (an object) into the row, RFC 7396: `null` removes a member.
    Merge,
    /// Replaces the row with the event's data.
    Replace,
    /// Deletes the row.
    Delete,
    /// Adds one to the row's `count` member (a tally of events, such as orders per customer).
    Count,
}

/// A document projection's definition.
///
/// ```
/// let definition: onephase_events::DocumentDefinition = serde_json::from_str(r#"{
///     "category": "order",
///     "key": "stream",
///     "handlers": {"OrderPlaced": "replace", "OrderShipped": "merge", "OrderCancelled": "delete"}
/// }"#)?;
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentDefinition {
    /// Only events of streams in this category (`order` for `order-42`); every stream if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// How an event names its row.
    #[serde(default)]
    pub key: DocumentKey,
    /// What each event type does; other types are passed over.
    pub handlers: BTreeMap<String, DocumentAction>,
}

impl DocumentDefinition {
    /// Refuses a definition that cannot work, naming what is wrong.
    pub fn check(&self) -> Result<(), EventsError> {
        if self.handlers.is_empty() {
            return Err(EventsError::invalid(
                "handlers",
                "name at least one event type and what it does (merge, replace, delete)",
            ));
        }
        for event_type in self.handlers.keys() {
            crate::event::check_name("handlers", event_type)?;
        }
        if let Some(category) = &self.category {
            crate::event::check_name("category", category)?;
        }
        if let DocumentKey::Field(field) = &self.key
            && field.is_empty()
        {
            return Err(EventsError::invalid(
                "key",
                "name the data field that keys the row",
            ));
        }
        Ok(())
    }

    /// The row `event` changes, and how; `None` if this definition passes over it.
    fn route(&self, event: &RecordedEvent) -> Result<Option<(String, DocumentAction)>, String> {
        if self
            .category
            .as_deref()
            .is_some_and(|c| c != event.category())
        {
            return Ok(None);
        }
        let Some(action) = self.handlers.get(&event.event_type) else {
            return Ok(None);
        };
        let key = match &self.key {
            DocumentKey::Stream => event.stream.clone(),
            DocumentKey::Field(field) => {
                let value =
                    onephase_core::json::lookup(event.data.as_raw(), std::slice::from_ref(field))
                        .ok_or_else(|| {
                        format!("{} has no field {field:?} to key its row", event.event_type)
                    })?;
                match serde_json::from_str::<serde_json::Value>(value.get()) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(serde_json::Value::Number(_)) => value.get().to_owned(),
                    _ => {
                        return Err(format!(
                            "field {field:?} of {} is not a string or a number",
                            event.event_type
                        ));
                    }
                }
            }
        };
        Ok(Some((key, *action)))
    }
}

/// A row of a document projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document {
    /// Its key.
    pub key: String,
    /// The document.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub doc: RawJson,
    /// The global position of the last event that changed it.
    pub position: u64,
    /// When that event was applied, on the projector's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A document projection: its definition for each generation being built.
#[derive(Debug, Clone)]
pub struct DocumentProjection {
    name: String,
    definitions: BTreeMap<u64, DocumentDefinition>,
}

impl DocumentProjection {
    /// The projection `name` with a definition per generation.
    pub fn new(name: impl Into<String>, definitions: BTreeMap<u64, DocumentDefinition>) -> Self {
        Self {
            name: name.into(),
            definitions,
        }
    }
}

impl Projection for DocumentProjection {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut ProjectionTx,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let generation = tx.generation();
            let definition = self
                .definitions
                .range(..=generation)
                .next_back()
                .map(|(_, d)| d)
                .ok_or("no definition for this generation")?;
            let Some((key, action)) = definition.route(event)? else {
                return Ok(());
            };
            let current = match tx.documents.get(&key) {
                Some(pending) => pending.as_ref().map(|row| row.doc.clone()),
                None => load(tx, &self.name, generation, &key).await?,
            };
            let next = apply_action(current.as_deref(), action, event)?;
            let pending = next.map(|doc| PendingRow {
                doc,
                position: event.position,
                ms: onephase_store::convert::unix_ms(event.recorded_at),
            });
            tx.documents.insert(key.clone(), pending);
            tx.touched(key);
            Ok(())
        })
    }

    fn flush<'a>(&'a self, tx: &'a mut ProjectionTx) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let generation = tx.generation();
            let pending: Vec<(String, Option<PendingRow>)> = tx.documents.drain().collect();
            store_rows(tx, &self.name, generation, &pending).await
        })
    }

    fn drop_generation<'a>(
        &'a self,
        tx: &'a mut ProjectionTx,
        generation: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let generation = stored(generation)?;
            on_tx!(tx, c => {
                sqlx::query("DELETE FROM onephase_events_documents WHERE projection = $1 AND generation = $2")
                    .bind(&self.name).bind(generation).execute(c).await?;
            });
            Ok(())
        })
    }
}

/// The row after `action`: `None` deletes it. Rows are JSON text and stay text: values are
/// copied as written, so no number passes through an `f64`.
fn apply_action(
    current: Option<&str>,
    action: DocumentAction,
    event: &RecordedEvent,
) -> Result<Option<String>, String> {
    Ok(match action {
        DocumentAction::Delete => None,
        DocumentAction::Replace => Some(event.data.get().to_owned()),
        DocumentAction::Count => {
            let mut members = members_of(current)?;
            let count = members
                .iter()
                .find(|(k, _)| k == "count")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            set(&mut members, "count", (count + 1).to_string());
            Some(object(&members))
        }
        DocumentAction::Merge => {
            if onephase_core::json::members(event.data.as_raw()).is_none() {
                return Err(format!(
                    "{} data is not an object to merge",
                    event.event_type
                ));
            }
            Some(merge_patch(current, event.data.as_raw())?)
        }
    })
}

/// RFC 7396 on JSON text: a `null` member removes, an object member merges, anything else
/// replaces, each value copied as written.
fn merge_patch(target: Option<&str>, patch: &RawValue) -> Result<String, String> {
    let Some(patch) = onephase_core::json::members(patch) else {
        return Ok(patch.get().to_owned());
    };
    let mut members = members_of(target)?;
    for (key, value) in patch {
        let text = value.get().trim();
        if text == "null" {
            members.retain(|(k, _)| *k != key);
            continue;
        }
        let merged = if text.starts_with('{') {
            let inner = members
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str());
            merge_patch(inner, value)?
        } else {
            text.to_owned()
        };
        set(&mut members, &key, merged);
    }
    Ok(object(&members))
}

/// The members of a stored row (none if there is no row, or it is not an object).
fn members_of(doc: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(doc) = doc else {
        return Ok(Vec::new());
    };
    let raw = onephase_core::json::parse_raw(doc).map_err(|e| e.to_string())?;
    Ok(onephase_core::json::members(&raw)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect())
}

fn set(members: &mut Vec<(String, String)>, key: &str, value: String) {
    match members.iter_mut().find(|(k, _)| k == key) {
        Some(member) => member.1 = value,
        None => members.push((key.to_owned(), value)),
    }
}

fn object(members: &[(String, String)]) -> String {
    onephase_core::json::object(members.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

async fn load(
    tx: &mut ProjectionTx,
    name: &str,
    generation: u64,
    key: &str,
) -> Result<Option<String>, ProjectionError> {
    let generation = stored(generation)?;
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar("SELECT doc FROM onephase_events_documents WHERE projection = $1 AND generation = $2 AND key = $3")
            .bind(name).bind(generation).bind(key).fetch_optional(c).await?
    }))
}

/// A row changed by the batch, written by [`Projection::flush`].
#[derive(Debug, Clone)]
pub(crate) struct PendingRow {
    doc: String,
    position: u64,
    ms: i64,
}

/// Writes the batch's rows: upserts in statements of 500 rows, then deletes.
async fn store_rows(
    tx: &mut ProjectionTx,
    name: &str,
    generation: u64,
    rows: &[(String, Option<PendingRow>)],
) -> Result<(), ProjectionError> {
    let generation = stored(generation)?;
    let upserts: Vec<(&str, &PendingRow)> = rows
        .iter()
        .filter_map(|(k, r)| r.as_ref().map(|r| (k.as_str(), r)))
        .collect();
    for chunk in upserts.chunks(500) {
        let positions = chunk
            .iter()
            .map(|(_, r)| stored(r.position))
            .collect::<Result<Vec<_>, _>>()?;
        on_tx!(tx, c => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO onephase_events_documents (projection, generation, key, doc, position, updated_ms) ",
            );
            q.push_values(chunk.iter().zip(&positions), |mut b, ((key, row), at)| {
                b.push_bind(name).push_bind(generation).push_bind(*key).push_bind(&row.doc).push_bind(*at).push_bind(row.ms);
            });
            q.push(" ON CONFLICT (projection, generation, key) DO UPDATE SET doc = excluded.doc, \
                    position = excluded.position, updated_ms = excluded.updated_ms");
            q.build().execute(c).await?;
        });
    }
    for (key, _) in rows.iter().filter(|(_, r)| r.is_none()) {
        on_tx!(tx, c => {
            sqlx::query("DELETE FROM onephase_events_documents WHERE projection = $1 AND generation = $2 AND key = $3")
                .bind(name).bind(generation).bind(key).execute(c).await?;
        });
    }
    Ok(())
}

impl Projections {
    /// Defines the document projection `name`. A new name starts at generation 1; the same
    /// definition again changes nothing; another definition for an existing name starts a
    /// blue/green rebuild with it (the live generation keeps its own until the switch).
    /// Returns the generation that will carry `definition`.
    pub async fn define(
        &self,
        name: &str,
        definition: &DocumentDefinition,
        actor: &str,
    ) -> Result<u64, EventsError> {
        crate::event::check_name("projection", name)?;
        definition.check()?;
        let text = serde_json::to_string(definition)
            .map_err(|e| EventsError::invalid("definition", e.to_string()))?;
        let existing: Vec<(i64, String)> = on_store!(read self.events().store().db(), pool => {
            sqlx::query_as("SELECT generation, definition FROM onephase_events_definitions WHERE name = $1 ORDER BY generation DESC")
                .bind(name).fetch_all(pool).await?
        });
        if let Some((generation, _)) = existing.iter().find(|(_, d)| {
            serde_json::from_str::<DocumentDefinition>(d).ok().as_ref() == Some(definition)
        }) {
            return position(*generation);
        }
        let tracks = super::runner::tracks(self.events(), name).await?;
        if existing.is_empty() && !tracks.is_empty() {
            return Err(EventsError::ProjectionState {
                projection: name.to_owned(),
                message:
                    "is a projection written in code, not a document projection; use another name"
                        .into(),
            });
        }
        let generation = tracks.iter().map(|t| t.generation).max().unwrap_or(0) + 1;
        if tracks.iter().any(|t| t.role == "building") {
            return Err(EventsError::ProjectionState {
                projection: name.to_owned(),
                message: "a rebuild is running; define the new shape once it has switched live"
                    .into(),
            });
        }
        let reason = if generation == 1 {
            "defined"
        } else {
            "definition changed"
        };
        self.start_generation(name, generation, actor, reason, Some(&text))
            .await?;
        position(generation)
    }

    /// The definition of the live generation of document projection `name`.
    pub async fn definition(&self, name: &str) -> Result<DocumentDefinition, EventsError> {
        let live = self.live_generation(name).await?;
        let text: Option<String> = on_store!(read self.events().store().db(), pool => {
            sqlx::query_scalar("SELECT definition FROM onephase_events_definitions WHERE name = $1 AND generation <= $2 ORDER BY generation DESC LIMIT 1")
                .bind(name).bind(live).fetch_optional(pool).await?
        });
        let text = text.ok_or_else(|| EventsError::UnknownProjection(name.to_owned()))?;
        serde_json::from_str(&text).map_err(|e| EventsError::corrupt("definition", e))
    }

    async fn live_generation(&self, name: &str) -> Result<i64, EventsError> {
        super::runner::tracks(self.events(), name)
            .await?
            .into_iter()
            .find(|t| t.role == "live")
            .map(|t| t.generation)
            .ok_or_else(|| EventsError::UnknownProjection(name.to_owned()))
    }

    /// Row `key` of document projection `name`, from its live generation (`None`: no row).
    pub async fn document(&self, name: &str, key: &str) -> Result<Option<Document>, EventsError> {
        let live = self.live_generation(name).await?;
        let row: Option<(String, String, i64, i64)> = on_store!(read self.events().store().db(), pool => {
            sqlx::query_as("SELECT key, doc, position, updated_ms FROM onephase_events_documents WHERE projection = $1 AND generation = $2 AND key = $3")
                .bind(name).bind(live).bind(key).fetch_optional(pool).await?
        });
        row.map(to_document).transpose()
    }

    /// Up to `limit` rows of document projection `name` with keys after `after`, by key.
    pub async fn documents(
        &self,
        name: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, EventsError> {
        let live = self.live_generation(name).await?;
        let rows: Vec<(String, String, i64, i64)> = on_store!(read self.events().store().db(), pool => {
            sqlx::query_as("SELECT key, doc, position, updated_ms FROM onephase_events_documents WHERE projection = $1 AND generation = $2 AND key > $3 ORDER BY key LIMIT $4")
                .bind(name).bind(live).bind(after).bind(i64::from(limit.min(1000))).fetch_all(pool).await?
        });
        rows.into_iter().map(to_document).collect()
    }
}

fn to_document((key, doc, at, ms): (String, String, i64, i64)) -> Result<Document, EventsError> {
    Ok(Document {
        key,
        doc: RawJson::parse(&doc).map_err(|e| EventsError::corrupt("document", e))?,
        position: position(at)?,
        updated_at: onephase_store::convert::from_unix_ms(ms)
            .map_err(|e| EventsError::corrupt("document time", e))?,
    })
}

/// Rebuilds every document row that an event of `subject` built, from its (now redacted)
/// events, so that no read model keeps a forgotten subject's personal data.
pub(crate) async fn refresh_subject(events: &EventStore, subject: &str) -> Result<(), EventsError> {
    let rows: Vec<(String, i64, String)> = on_store!(read events.store().db(), pool => {
        sqlx::query_as(
            "SELECT DISTINCT l.projection, l.generation, l.row_key FROM onephase_events_lineage l \
             JOIN onephase_events e ON e.position = l.position \
             JOIN onephase_events_definitions d ON d.name = l.projection \
             WHERE e.subject = $1",
        )
        .bind(subject).fetch_all(pool).await?
    });
    for (name, generation, key) in rows {
        let definitions: Vec<(i64, String)> = on_store!(read events.store().db(), pool => {
            sqlx::query_as("SELECT generation, definition FROM onephase_events_definitions WHERE name = $1")
                .bind(&name).fetch_all(pool).await?
        });
        let mut by_generation = BTreeMap::new();
        for (g, text) in definitions {
            let d: DocumentDefinition =
                serde_json::from_str(&text).map_err(|e| EventsError::corrupt("definition", e))?;
            by_generation.insert(position(g)?, d);
        }
        let projection = DocumentProjection::new(name.clone(), by_generation);
        let positions: Vec<i64> = on_store!(read events.store().db(), pool => {
            sqlx::query_scalar("SELECT position FROM onephase_events_lineage WHERE projection = $1 AND generation = $2 AND row_key = $3 ORDER BY position")
                .bind(&name).bind(generation).bind(&key).fetch_all(pool).await?
        });
        let positions: Vec<u64> = positions
            .into_iter()
            .map(position)
            .collect::<Result<_, _>>()?;
        let built = events.read_positions(&positions).await?;
        let generation = position(generation)?;
        let mut tx = super::runner::begin(events, generation).await?;
        projection
            .drop_row(&mut tx, generation, &key)
            .await
            .map_err(|e| EventsError::corrupt("document", e))?;
        for event in &built {
            tx.position = event.position;
            projection
                .apply(&mut tx, event)
                .await
                .map_err(|e| EventsError::corrupt("document", e))?;
        }
        tx.touched.clear();
        projection
            .flush(&mut tx)
            .await
            .map_err(|e| EventsError::corrupt("document", e))?;
        super::runner::commit(tx).await?;
    }
    Ok(())
}

impl DocumentProjection {
    async fn drop_row(
        &self,
        tx: &mut ProjectionTx,
        generation: u64,
        key: &str,
    ) -> Result<(), ProjectionError> {
        let generation = stored(generation)?;
        on_tx!(tx, c => {
            sqlx::query("DELETE FROM onephase_events_documents WHERE projection = $1 AND generation = $2 AND key = $3")
                .bind(&self.name).bind(generation).bind(key).execute(c).await?;
        });
        Ok(())
    }
}

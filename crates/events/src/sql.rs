//! What the statements share: the event row, number conversions, running on a caller's
//! connection. The tables use the same column types on both backends, so each statement is
//! one text.

use std::collections::HashMap;

use onephase_core::json::RawJson;
use onephase_store::convert::{narrow, stored_ms};

use crate::{EventStore, EventsError, Metadata, RecordedEvent};

/// Runs `body` with `c` bound to the caller's connection, whichever backend it is.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match onephase_store::Connection::connection($conn) {
            onephase_store::Conn::Postgres($c) => $body,
            onephase_store::Conn::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// The columns of an event row, in [`EventRow`]'s order.
pub(crate) const EVENT_COLUMNS: &str = "position, id, stream, version, event_type, \
    schema_version, data, metadata, subject, personal, recorded_ms";

/// An event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub position: i64,
    pub id: String,
    pub stream: String,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub data: String,
    pub metadata: String,
    pub subject: Option<String>,
    pub personal: Option<String>,
    pub recorded_ms: i64,
}

/// A stored position as a number.
pub(crate) fn position(stored: i64) -> Result<u64, EventsError> {
    narrow("position", stored).map_err(|e| EventsError::corrupt("position", e))
}

/// A position as stored.
pub(crate) fn stored(position: u64) -> Result<i64, EventsError> {
    i64::try_from(position)
        .map_err(|_| EventsError::invalid("position", format!("{position} is out of range")))
}

impl EventStore {
    /// Turns stored rows into events: personal fields opened (or redacted) and upcast.
    pub(crate) async fn decode(
        &self,
        rows: Vec<EventRow>,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        self.decode_each(rows).await?.into_iter().collect()
    }

    /// [`decode`](Self::decode), one result per row, so that a reader can stop at the first
    /// event it cannot read and still apply those before it.
    pub(crate) async fn decode_each(
        &self,
        rows: Vec<EventRow>,
    ) -> Result<Vec<Result<RecordedEvent, EventsError>>, EventsError> {
        let keys = self.subject_keys(&rows).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut event = decode_row(row, &keys)?;
                self.upcasters.upcast(&mut event)?;
                Ok(event)
            })
            .collect())
    }

    /// The keys of the subjects in `rows` (`None`: forgotten).
    async fn subject_keys(
        &self,
        rows: &[EventRow],
    ) -> Result<HashMap<String, Option<String>>, EventsError> {
        let mut subjects: Vec<&str> = rows
            .iter()
            .filter(|r| r.personal.is_some())
            .filter_map(|r| r.subject.as_deref())
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut keys = HashMap::new();
        for chunk in subjects.chunks(500) {
            let found: Vec<(String, Option<String>)> = onephase_store::on_store!(read self.store.db(), pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT subject, key FROM onephase_events_subjects WHERE subject IN (",
                );
                let mut list = q.separated(", ");
                for s in chunk {
                    list.push_bind(*s);
                }
                q.push(")");
                q.build_query_as().fetch_all(pool).await?
            });
            keys.extend(found);
        }
        Ok(keys)
    }
}

fn decode_row(
    row: EventRow,
    keys: &HashMap<String, Option<String>>,
) -> Result<RecordedEvent, EventsError> {
    let position = position(row.position)?;
    let id = row
        .id
        .parse()
        .map_err(|e| EventsError::corrupt(format!("id at position {position}"), e))?;
    let metadata: Metadata = serde_json::from_str(&row.metadata)
        .map_err(|e| EventsError::corrupt(format!("metadata at position {position}"), e))?;
    let (data, redacted) = match &row.personal {
        None => (row.data, Vec::new()),
        Some(personal) => {
            let fields: Vec<String> = serde_json::from_str(personal).map_err(|e| {
                EventsError::corrupt(format!("personal fields at position {position}"), e)
            })?;
            let key = row
                .subject
                .as_ref()
                .and_then(|s| keys.get(s))
                .and_then(|k| k.as_deref());
            crate::seal::open(&row.data, &fields, key, id, position)?
        }
    };
    let data = RawJson::parse(&data)
        .map_err(|e| EventsError::corrupt(format!("data at position {position}"), e))?;
    Ok(RecordedEvent {
        id,
        stream: row.stream,
        version: narrow("version", row.version).map_err(|e| EventsError::corrupt("version", e))?,
        position,
        event_type: row.event_type,
        schema_version: narrow("schema_version", row.schema_version)
            .map_err(|e| EventsError::corrupt("schema_version", e))?,
        data,
        metadata,
        subject: row.subject,
        redacted,
        recorded_at: stored_ms("recorded_ms", row.recorded_ms)
            .map_err(|e| EventsError::corrupt("recorded_ms", e))?,
    })
}

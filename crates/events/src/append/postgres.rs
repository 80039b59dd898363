//! A one-stream append on PostgreSQL in one statement: the turn, the version and the rows
//! together, so that the append costs the round trips of a raw `INSERT`.
//!
//! The stream's upsert reads from the head's `UPDATE` and the insert from both, which makes
//! PostgreSQL take the head row's lock before the stream's, the order every append takes them
//! in. The rows are inserted only when the stream's version before the append is the expected
//! one; [`EventStore::settle`](super) checks what the statement did and puts back a refused
//! append, as on the other path.

use onephase_store::{Conn, Connection};

use super::{Outcome, Sealed};
use crate::event::category_of;
use crate::{EventsError, ExpectedVersion, StreamAppend};

const APPEND_ONE: &str = "\
WITH head AS (
    UPDATE onephase_events_head SET position = position + $1 WHERE id = 1 RETURNING position
), stream AS (
    INSERT INTO onephase_events_streams (stream, category, version, updated_ms)
    SELECT $2, $3, $1, $4 FROM head
    ON CONFLICT (stream) DO UPDATE
    SET version = onephase_events_streams.version + excluded.version,
        updated_ms = excluded.updated_ms
    RETURNING version
), inserted AS (
    INSERT INTO onephase_events (position, id, stream, category, version, event_type,
        schema_version, data, metadata, subject, personal, recorded_ms)
    SELECT head.position - $1 + e.ord, e.id, $2, $3, stream.version - $1 + e.ord, e.event_type,
        e.schema_version, e.data, e.metadata, e.subject, e.personal, $4
    FROM head, stream,
        unnest($6::text[], $7::text[], $8::int4[], $9::text[], $10::text[], $11::text[],
               $12::text[]) WITH ORDINALITY
            AS e(id, event_type, schema_version, data, metadata, subject, personal, ord)
    WHERE $5 < 0 OR stream.version - $1 = $5
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT head.position, stream.version, (SELECT count(*) FROM inserted)
FROM head, stream";

/// Runs the one-statement append when `conn` is PostgreSQL; `None` on SQLite (whose one
/// writer makes round trips cheap).
pub(super) async fn append_one<C: Connection + ?Sized>(
    conn: &mut C,
    append: &StreamAppend,
    sealed: &[Sealed<'_>],
    now: i64,
) -> Result<Option<Outcome>, EventsError> {
    let Conn::Postgres(c) = conn.connection() else {
        return Ok(None);
    };
    let added = sealed.len() as i64;
    let expected: i64 = match append.expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(n) => crate::sql::stored(n)?,
    };
    let (last, after, inserted): (i64, i64, i64) = sqlx::query_as(APPEND_ONE)
        .bind(added)
        .bind(&append.stream)
        .bind(category_of(&append.stream))
        .bind(now)
        .bind(expected)
        .bind(
            sealed
                .iter()
                .map(|s| s.event.id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            sealed
                .iter()
                .map(|s| s.event.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(sealed.iter().map(|s| s.schema_version).collect::<Vec<_>>())
        .bind(sealed.iter().map(|s| s.data.as_str()).collect::<Vec<_>>())
        .bind(
            sealed
                .iter()
                .map(|s| s.metadata.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sealed
                .iter()
                .map(|s| s.event.subject.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            sealed
                .iter()
                .map(|s| s.personal.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_one(c)
        .await?;
    Ok(Some(Outcome {
        last,
        before: vec![crate::sql::position(after - added)?],
        inserted: crate::sql::position(inserted)?,
    }))
}

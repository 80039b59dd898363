//! Appending: expected versions, several streams at once, in the caller's transaction,
//! idempotent on event ids.

use std::collections::HashSet;

use onephase_store::{Connection, on_store};

use crate::event::{category_of, check_name};
use crate::sql::{on_conn, stored};

mod postgres;
use crate::{
    Appended, EventStore, EventsError, ExpectedVersion, NewEvent, StreamAppend, StreamVersion,
};

/// Rows per INSERT statement: 11 parameters each stays under every backend's limit.
const ROWS_PER_INSERT: usize = 500;

/// An event ready to insert: its place and its stored columns.
struct Row<'a> {
    sealed: &'a Sealed<'a>,
    stream: &'a str,
    version: i64,
    position: i64,
}

/// What an append's statements did, before [`EventStore::settle`] checks it.
pub(crate) struct Outcome {
    /// The last position taken.
    pub(crate) last: i64,
    /// Each stream's version before the append, as far as the statements got.
    pub(crate) before: Vec<u64>,
    /// How many events were inserted.
    pub(crate) inserted: u64,
}

/// An event's stored columns that do not depend on its place: personal fields sealed,
/// metadata and the personal field list as JSON.
pub(crate) struct Sealed<'a> {
    pub(crate) event: &'a NewEvent,
    pub(crate) schema_version: i32,
    pub(crate) data: String,
    pub(crate) metadata: String,
    pub(crate) personal: Option<String>,
}

impl EventStore {
    /// Appends `events` to `stream` in a transaction of its own; see
    /// [`append_in`](Self::append_in).
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventsError> {
        self.append_all(&[StreamAppend::new(stream, expected, events)])
            .await
    }

    /// Appends to several streams atomically, in a transaction of its own.
    pub async fn append_all(&self, appends: &[StreamAppend]) -> Result<Appended, EventsError> {
        on_store!(self.store.db(), pool => {
            let mut tx = pool.begin().await?;
            let appended = self.append_in(&mut tx, appends).await?;
            tx.commit().await?;
            Ok(appended)
        })
    }

    /// Appends to each stream of `appends`, checking its expected version, as part of the
    /// caller's transaction: business rows, events and outbox rows commit together or not at
    /// all.
    ///
    /// - Every stream's expected version is checked under the stream's row lock; one mismatch
    ///   is [`EventsError::WrongExpectedVersion`] naming the stream and its version, and
    ///   nothing of the append remains (what it had changed is put back in the transaction).
    /// - An append whose event ids were all appended before, to the same streams in the same
    ///   order, succeeds again without writing, returning the first append's positions: a
    ///   retry after a lost answer is safe. Reusing one id elsewhere is
    ///   [`EventsError::IdReused`].
    /// - Appends take turns on the store (a one-row lock held to commit), which is what keeps
    ///   the global order gap-safe: keep the caller's transaction short after appending.
    ///
    /// A refusal (a wrong version, a reused id, a forgotten subject, invalid input) leaves no
    /// event, position or stream version behind in the caller's transaction. A store error may
    /// leave the transaction unusable (PostgreSQL aborts it): roll it back.
    pub async fn append_in<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &[StreamAppend],
    ) -> Result<Appended, EventsError> {
        self.check(appends)?;
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        let sealed = self.seal_all(conn, appends).await?;
        let now = self.now_ms();
        if let [one] = appends
            && let Some(outcome) = postgres::append_one(conn, one, &sealed[0], now).await?
        {
            return self.settle(conn, appends, outcome, total).await;
        }
        let outcome = self
            .append_statements(conn, appends, &sealed, total, now)
            .await?;
        self.settle(conn, appends, outcome, total).await
    }

    /// The append's statements on either backend: the turn and the positions (the head row
    /// stays locked to commit, so positions become visible in the order handed out), one
    /// version bump per stream (stopping at the first that does not match), the rows.
    async fn append_statements<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &[StreamAppend],
        sealed: &[Vec<Sealed<'_>>],
        total: usize,
        now: i64,
    ) -> Result<Outcome, EventsError> {
        let last: i64 = on_conn!(conn, c => {
            sqlx::query_scalar(
                "UPDATE onephase_events_head SET position = position + $1 WHERE id = 1 RETURNING position",
            )
            .bind(total as i64)
            .fetch_one(c)
            .await?
        });
        let mut before = Vec::with_capacity(appends.len());
        for append in appends {
            let version = self.bump_stream(conn, append, now).await?;
            before.push(version);
            if !append.expected.admits(version) {
                return Ok(Outcome {
                    last,
                    before,
                    inserted: 0,
                });
            }
        }
        let rows = rows(appends, sealed, &before, last - total as i64)?;
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            inserted += insert_rows(conn, chunk, now).await?;
        }
        Ok(Outcome {
            last,
            before,
            inserted,
        })
    }

    /// Checks what the statements did: a version that did not match, or ids that were there
    /// already, put everything back (the caller's transaction may go on) and are answered as
    /// a retry of an earlier append or as a refusal.
    async fn settle<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &[StreamAppend],
        outcome: Outcome,
        total: usize,
    ) -> Result<Appended, EventsError> {
        let Outcome {
            last,
            before,
            inserted,
        } = outcome;
        let first = last - total as i64 + 1;
        let mismatch = appends
            .iter()
            .zip(&before)
            .find(|(a, version)| !a.expected.admits(**version));
        if mismatch.is_some() || before.len() < appends.len() || inserted < total as u64 {
            if inserted > 0 {
                on_conn!(conn, c => {
                    sqlx::query("DELETE FROM onephase_events WHERE position >= $1 AND position <= $2")
                        .bind(first)
                        .bind(last)
                        .execute(c)
                        .await?;
                });
            }
            self.revert(conn, appends, &before, total).await?;
            if let Some(done) = self.already_appended(conn, appends).await? {
                return Ok(done);
            }
            return Err(match mismatch {
                Some((append, version)) => EventsError::WrongExpectedVersion {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual: *version,
                },
                None => EventsError::corrupt(
                    "events",
                    "a position or stream version of this append was taken by a row written \
                     without the store's append",
                ),
            });
        }
        crate::store::appended();
        metrics::counter!("onephase_events_appended_total").increment(total as u64);
        Ok(Appended {
            position: crate::sql::position(last)?,
            first_position: crate::sql::position(first)?,
            streams: appends
                .iter()
                .zip(&before)
                .map(|(a, version)| StreamVersion {
                    stream: a.stream.clone(),
                    version: version + a.events.len() as u64,
                })
                .collect(),
            repeated: false,
        })
    }

    /// Raises the stream's version by the append's events (creating the stream), holding its
    /// row; returns the version before.
    async fn bump_stream<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        append: &StreamAppend,
        now: i64,
    ) -> Result<u64, EventsError> {
        let added = append.events.len() as i64;
        let after: i64 = on_conn!(conn, c => {
            sqlx::query_scalar(
                "INSERT INTO onephase_events_streams (stream, category, version, updated_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream) DO UPDATE \
                 SET version = onephase_events_streams.version + excluded.version, \
                 updated_ms = excluded.updated_ms RETURNING version",
            )
            .bind(&append.stream)
            .bind(category_of(&append.stream))
            .bind(added)
            .bind(now)
            .fetch_one(c)
            .await?
        });
        crate::sql::position(after - added)
    }

    /// Puts the head and the streams bumped so far (`before[i]` for `appends[i]`) back as
    /// they were (their rows are still locked by this transaction): an append that writes
    /// nothing leaves nothing changed, not even a gap in the positions.
    async fn revert<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &[StreamAppend],
        before: &[u64],
        total: usize,
    ) -> Result<(), EventsError> {
        on_conn!(conn, c => {
            sqlx::query("UPDATE onephase_events_head SET position = position - $1 WHERE id = 1")
                .bind(total as i64)
                .execute(c)
                .await?;
        });
        for (append, version) in appends.iter().zip(before) {
            on_conn!(conn, c => {
                if *version == 0 {
                    sqlx::query("DELETE FROM onephase_events_streams WHERE stream = $1")
                        .bind(&append.stream)
                        .execute(c)
                        .await?;
                } else {
                    sqlx::query("UPDATE onephase_events_streams SET version = $2 WHERE stream = $1")
                        .bind(&append.stream)
                        .bind(stored(*version)?)
                        .execute(c)
                        .await?;
                }
            });
        }
        Ok(())
    }

    /// Refuses what cannot be appended, before anything is written.
    fn check(&self, appends: &[StreamAppend]) -> Result<(), EventsError> {
        if appends.is_empty() || appends.iter().any(|a| a.events.is_empty()) {
            return Err(EventsError::invalid(
                "events",
                "an append needs at least one event for each stream it names",
            ));
        }
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        if total > crate::store::MAX_EVENTS_PER_APPEND {
            return Err(EventsError::invalid(
                "events",
                format!(
                    "{total} events in one append; at most {} are accepted",
                    crate::store::MAX_EVENTS_PER_APPEND
                ),
            ));
        }
        let mut streams = HashSet::new();
        let mut ids = HashSet::new();
        let mut index = 0;
        for append in appends {
            check_name("stream", &append.stream)?;
            if !streams.insert(append.stream.as_str()) {
                return Err(EventsError::invalid(
                    "stream",
                    format!(
                        "{:?} appears twice in one append; put its events in one list",
                        append.stream
                    ),
                ));
            }
            for event in &append.events {
                check_name("type", &event.event_type)?;
                if event.id.is_nil() || !ids.insert(event.id) {
                    return Err(EventsError::invalid(
                        "id",
                        format!(
                            "event id {} is nil or appears twice in one append",
                            event.id
                        ),
                    ));
                }
                let size = event.data.get().len() + self.metadata_size(event);
                if size > self.max_event_size {
                    return Err(EventsError::TooLarge {
                        index,
                        size,
                        limit: self.max_event_size,
                    });
                }
                self.check_version(event)?;
                match (&event.subject, event.personal.is_empty()) {
                    (Some(subject), _) if subject.is_empty() || subject.len() > 200 => {
                        return Err(EventsError::invalid("subject", "use 1 to 200 characters"));
                    }
                    (None, false) => {
                        return Err(EventsError::invalid(
                            "personal",
                            "personal fields need the subject they belong to",
                        ));
                    }
                    _ => {}
                }
                index += 1;
            }
        }
        Ok(())
    }

    fn metadata_size(&self, event: &NewEvent) -> usize {
        serde_json::to_string(&event.metadata).map_or(0, |m| m.len())
    }

    fn check_version(&self, event: &NewEvent) -> Result<(), EventsError> {
        let current = self.upcasters.current(&event.event_type);
        match (event.schema_version, current) {
            (Some(0), _) => Err(EventsError::invalid(
                "schema_version",
                "versions start at 1",
            )),
            (Some(v), Some(current)) if v > current => Err(EventsError::invalid(
                "schema_version",
                format!(
                    "{} version {v} is newer than the {current} this store's upcasters know",
                    event.event_type
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The first append's result, if every id of `appends` was appended by it; an error if
    /// some id was appended elsewhere; `None` if none was.
    async fn already_appended<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &[StreamAppend],
    ) -> Result<Option<Appended>, EventsError> {
        let ids: Vec<String> = appends
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.id.to_string()))
            .collect();
        let mut found: Vec<(String, String, i64, i64)> = Vec::new();
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let rows: Vec<(String, String, i64, i64)> = on_conn!(conn, c => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, stream, version, position FROM onephase_events WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                q.push(")");
                q.build_query_as().fetch_all(c).await?
            });
            found.extend(rows);
        }
        if found.is_empty() {
            return Ok(None);
        }
        let same = found.len() == ids.len()
            && appends.iter().all(|a| {
                let mut versions = a.events.iter().filter_map(|e| {
                    let id = e.id.to_string();
                    found
                        .iter()
                        .find(|f| f.0 == id && f.1 == a.stream)
                        .map(|f| f.2)
                });
                let first = versions.next();
                let rest: Vec<i64> = versions.collect();
                first.is_some()
                    && rest.len() + 1 == a.events.len()
                    && rest
                        .iter()
                        .enumerate()
                        .all(|(i, v)| Some(*v) == first.map(|f| f + 1 + i as i64))
            });
        if !same {
            let (id, stream, version, _) = &found[0];
            return Err(EventsError::IdReused {
                id: id.clone(),
                stream: stream.clone(),
                version: crate::sql::position(*version)?,
            });
        }
        let mut streams = Vec::with_capacity(appends.len());
        for a in appends {
            let last = a
                .events
                .last()
                .map(|e| e.id.to_string())
                .unwrap_or_default();
            let version = found.iter().find(|f| f.0 == last).map_or(0, |f| f.2);
            streams.push(StreamVersion {
                stream: a.stream.clone(),
                version: crate::sql::position(version)?,
            });
        }
        let first = found.iter().map(|f| f.3).min().unwrap_or(0);
        let last = found.iter().map(|f| f.3).max().unwrap_or(0);
        Ok(Some(Appended {
            position: crate::sql::position(last)?,
            first_position: crate::sql::position(first)?,
            streams,
            repeated: true,
        }))
    }

    /// Each event's stored columns, personal fields sealed with their subject's key (made on
    /// first use; a forgotten subject is refused here, before anything is written).
    async fn seal_all<'a, C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        appends: &'a [StreamAppend],
    ) -> Result<Vec<Vec<Sealed<'a>>>, EventsError> {
        let mut all = Vec::with_capacity(appends.len());
        for append in appends {
            let mut sealed = Vec::with_capacity(append.events.len());
            for event in &append.events {
                let data = match &event.subject {
                    Some(subject) if !event.personal.is_empty() => {
                        let key = self.subject_key(conn, subject).await?;
                        crate::seal::seal(event.data.get(), &event.personal, &key, event.id)?
                    }
                    _ => event.data.get().to_owned(),
                };
                let schema_version = event
                    .schema_version
                    .or_else(|| self.upcasters.current(&event.event_type))
                    .unwrap_or(1);
                sealed.push(Sealed {
                    event,
                    schema_version: i32::try_from(schema_version)
                        .map_err(|_| EventsError::invalid("schema_version", "out of range"))?,
                    data,
                    metadata: serde_json::to_string(&event.metadata)
                        .map_err(|e| EventsError::invalid("metadata", e.to_string()))?,
                    personal: (!event.personal.is_empty())
                        .then(|| serde_json::to_string(&event.personal))
                        .transpose()
                        .map_err(|e| EventsError::invalid("personal", e.to_string()))?,
                });
            }
            all.push(sealed);
        }
        Ok(all)
    }

    /// The subject's key, made on first use; an error if the subject was forgotten.
    async fn subject_key<C: Connection + ?Sized>(
        &self,
        conn: &mut C,
        subject: &str,
    ) -> Result<String, EventsError> {
        let now = self.now_ms();
        let fresh = crate::seal::new_key();
        let key: Option<String> = on_conn!(conn, c => {
            sqlx::query(
                "INSERT INTO onephase_events_subjects (subject, key, created_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (subject) DO NOTHING",
            )
            .bind(subject)
            .bind(&fresh)
            .bind(now)
            .execute(&mut *c)
            .await?;
            sqlx::query_scalar("SELECT key FROM onephase_events_subjects WHERE subject = $1")
                .bind(subject)
                .fetch_one(c)
                .await?
        });
        key.ok_or_else(|| EventsError::SubjectForgotten(subject.to_owned()))
    }
}

/// The rows to insert: positions after `head`, versions after each stream's `before`.
fn rows<'a>(
    appends: &'a [StreamAppend],
    sealed: &'a [Vec<Sealed<'a>>],
    before: &[u64],
    head: i64,
) -> Result<Vec<Row<'a>>, EventsError> {
    let mut rows = Vec::new();
    let mut position = head;
    for ((append, events), version) in appends.iter().zip(sealed).zip(before) {
        for (i, sealed) in events.iter().enumerate() {
            position += 1;
            rows.push(Row {
                sealed,
                stream: &append.stream,
                version: stored(version + i as u64 + 1)?,
                position,
            });
        }
    }
    Ok(rows)
}

/// Inserts `rows`, passing over any whose id is taken; how many were inserted.
async fn insert_rows<C: Connection + ?Sized>(
    conn: &mut C,
    rows: &[Row<'_>],
    now: i64,
) -> Result<u64, EventsError> {
    let done = on_conn!(conn, c => {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO onephase_events (position, id, stream, category, version, \
             event_type, schema_version, data, metadata, subject, personal, recorded_ms) ",
        );
        q.push_values(rows, |mut b, row| {
            let sealed = row.sealed;
            b.push_bind(row.position)
                .push_bind(sealed.event.id.to_string())
                .push_bind(row.stream)
                .push_bind(category_of(row.stream))
                .push_bind(row.version)
                .push_bind(&sealed.event.event_type)
                .push_bind(sealed.schema_version)
                .push_bind(&sealed.data)
                .push_bind(&sealed.metadata)
                .push_bind(sealed.event.subject.as_deref())
                .push_bind(sealed.personal.as_deref())
                .push_bind(now);
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(c).await?.rows_affected()
    });
    Ok(done)
}

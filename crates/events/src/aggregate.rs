//! Aggregates: state folded from a stream, commands decided against it, appends guarded by the
//! version the decision saw.
//!
//! An [`Aggregate`] is a type whose state is built by applying its events in order, and that
//! decides which events a command produces. [`EventStore::execute`] loads it (from the latest
//! snapshot and the events after it), asks it to decide, and appends with the version it
//! loaded as the expected version; if another writer appended meanwhile it loads again and
//! decides again, a bounded number of times. Events are an enum serialized with serde's
//! adjacent tagging (`#[serde(tag = "type", content = "data")]`): the tag is the stored event
//! type, the content its data.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use onephase_events::{Aggregate, EventStore, Snapshots};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { balance: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum AccountEvent { Deposited { amount: i64 }, Withdrawn { amount: i64 } }
//!
//! enum Command { Deposit(i64), Withdraw(i64) }
//!
//! impl Aggregate for Account {
//!     const NAME: &'static str = "account";
//!     type Event = AccountEvent;
//!     type Command = Command;
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//!     fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, String> {
//!         match *command {
//!             Command::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
//!             Command::Withdraw(amount) if amount > self.balance => Err("insufficient funds".into()),
//!             Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
//!         }
//!     }
//! }
//!
//! let store = onephase_store::Store::connect("sqlite::memory:").await?;
//! store.migrate(&[onephase_events::migrations()]).await?;
//! let events = EventStore::new(store);
//! events.execute::<Account>("account-1", &Command::Deposit(100), Snapshots::Every(100)).await?;
//! let refused = events.execute::<Account>("account-1", &Command::Withdraw(500), Snapshots::Never).await;
//! assert!(refused.is_err());
//! let account = events.load::<Account>("account-1").await?;
//! assert_eq!((account.state.balance, account.version), (100, 1));
//! # Ok(()) }
//! ```

use onephase_store::on_store;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::read::AsOf;
use crate::sql::{position, stored};
use crate::{Appended, EventStore, EventsError, ExpectedVersion, NewEvent, RecordedEvent};

/// How many times [`EventStore::execute`] decides in all, when concurrent appends keep
/// invalidating its decision.
pub const MAX_ATTEMPTS: u32 = 16;

/// State folded from a stream's events, deciding commands; run one with [`EventStore::execute`].
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync {
    /// Its name, the key of its snapshots (`account`).
    const NAME: &'static str;
    /// The version of its snapshot shape: raise it when the state's fields change, and older
    /// snapshots are ignored (the state is folded from the events instead).
    const SNAPSHOT_VERSION: u32 = 1;
    /// Its events: an enum with `#[serde(tag = "type", content = "data")]`.
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// What it is asked to do.
    type Command: Send + Sync;
    /// Applies one event to the state. Must not fail: an event is a fact.
    fn apply(&mut self, event: &Self::Event);
    /// Decides the events `command` produces, or refuses it.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, String>;
}

/// When to store a snapshot after [`EventStore::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshots {
    /// Never: always fold the whole stream.
    Never,
    /// Whenever the stream's version crosses a multiple of this many events.
    Every(u64),
}

/// An aggregate's state and the stream version it reflects.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream's version the state reflects (0: no events).
    pub version: u64,
}

impl EventStore {
    /// Loads `stream` as `A`: the latest snapshot, then the events after it.
    pub async fn load<A: Aggregate>(&self, stream: &str) -> Result<Loaded<A>, EventsError> {
        let (state, version) = self.snapshot::<A>(stream).await?;
        match self.fold(state, version, stream, AsOf::Now).await {
            // A stream with no events yet is the aggregate's default state.
            Err(EventsError::NoStream(_)) => Ok(Loaded {
                state: A::default(),
                version: 0,
            }),
            other => other,
        }
    }

    /// Loads `stream` as `A` as it was at `as_of` (time travel; snapshots are not used).
    pub async fn load_as_of<A: Aggregate>(
        &self,
        stream: &str,
        as_of: AsOf,
    ) -> Result<Loaded<A>, EventsError> {
        self.fold(A::default(), 0, stream, as_of).await
    }

    /// Applies the events of `stream` after `version` (up to `as_of`) to `state`, a page at a
    /// time; a short page is the last, so the end costs no extra read.
    async fn fold<A: Aggregate>(
        &self,
        mut state: A,
        mut version: u64,
        stream: &str,
        as_of: AsOf,
    ) -> Result<Loaded<A>, EventsError> {
        const PAGE: u32 = 1000;
        loop {
            let events = self.read_stream_as_of(stream, version, PAGE, as_of).await?;
            for event in &events {
                state.apply(&typed::<A>(event)?);
            }
            if let Some(last) = events.last() {
                version = last.version;
            }
            if events.len() < PAGE as usize {
                return Ok(Loaded { state, version });
            }
        }
    }

    /// Runs `command` against `stream`: load, decide, append at the loaded version; again
    /// after a concurrent append (after a jittered pause of up to 5 ms doubling to 250 ms, so that
    /// contending writers spread out), at most [`MAX_ATTEMPTS`] times. A refusal is
    /// [`EventsError::Refused`]; a decision of no events appends nothing and returns `None`.
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &str,
        command: &A::Command,
        snapshots: Snapshots,
    ) -> Result<Option<Appended>, EventsError> {
        let backoff = onephase_core::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(250),
            onephase_core::Jitter::Full,
        )
        .map_err(|e| EventsError::invalid("backoff", e.to_string()))?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                let pause = backoff.delay(attempt, None, &mut &*self.random);
                self.clock.sleep(pause).await;
            }
            let Loaded { mut state, version } = self.load::<A>(stream).await?;
            let decided = state.handle(command).map_err(EventsError::Refused)?;
            if decided.is_empty() {
                return Ok(None);
            }
            let new = decided
                .iter()
                .map(to_new_event)
                .collect::<Result<Vec<_>, _>>()?;
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self.append(stream, expected, new).await {
                Ok(appended) => {
                    for event in &decided {
                        state.apply(event);
                    }
                    let after = version + decided.len() as u64;
                    if let Snapshots::Every(n) = snapshots
                        && n > 0
                        && after / n > version / n
                    {
                        self.save_snapshot(stream, &state, after).await?;
                    }
                    return Ok(Some(appended));
                }
                Err(EventsError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EventsError::Contended {
            stream: stream.to_owned(),
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn snapshot<A: Aggregate>(&self, stream: &str) -> Result<(A, u64), EventsError> {
        let row: Option<(i64, String)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(
                "SELECT version, state FROM onephase_events_snapshots \
                 WHERE stream = $1 AND aggregate = $2 AND schema_version = $3",
            )
            .bind(stream)
            .bind(A::NAME)
            .bind(i64::from(A::SNAPSHOT_VERSION))
            .fetch_optional(pool)
            .await?
        });
        match row {
            None => Ok((A::default(), 0)),
            Some((version, state)) => match serde_json::from_str(&state) {
                Ok(state) => Ok((state, position(version)?)),
                // An unreadable snapshot is only a lost shortcut: fold from the start.
                Err(e) => {
                    tracing::warn!(stream, aggregate = A::NAME, error = %e, "snapshot ignored");
                    Ok((A::default(), 0))
                }
            },
        }
    }

    /// Stores `state` as `stream`'s snapshot at `version` (a cache: losing it loses nothing).
    pub async fn save_snapshot<A: Aggregate>(
        &self,
        stream: &str,
        state: &A,
        version: u64,
    ) -> Result<(), EventsError> {
        let text = serde_json::to_string(state)
            .map_err(|e| EventsError::invalid("snapshot", e.to_string()))?;
        let now = self.now_ms();
        on_store!(self.store.db(), pool => {
            sqlx::query(
                "INSERT INTO onephase_events_snapshots (stream, aggregate, schema_version, version, state, taken_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, aggregate) DO UPDATE SET \
                 schema_version = excluded.schema_version, version = excluded.version, \
                 state = excluded.state, taken_ms = excluded.taken_ms \
                 WHERE onephase_events_snapshots.version <= excluded.version",
            )
            .bind(stream)
            .bind(A::NAME)
            .bind(i64::from(A::SNAPSHOT_VERSION))
            .bind(stored(version)?)
            .bind(text)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

/// A stored event as `A`'s event type; an unknown type is an error naming it.
pub fn typed<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, EventsError> {
    let text = format!(
        r#"{{"type":{},"data":{}}}"#,
        serde_json::Value::String(event.event_type.clone()),
        event.data.get()
    );
    serde_json::from_str(&text).map_err(|e| EventsError::UnknownType {
        event_type: format!("{} ({e})", event.event_type),
        version: event.schema_version,
        position: event.position,
    })
}

fn to_new_event<E: Serialize>(event: &E) -> Result<NewEvent, EventsError> {
    let value =
        serde_json::to_value(event).map_err(|e| EventsError::invalid("event", e.to_string()))?;
    let event_type = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| {
            EventsError::invalid(
                "event",
                "an aggregate's events must serialize as {\"type\": .., \"data\": ..} \
                 (#[serde(tag = \"type\", content = \"data\")])",
            )
        })?
        .to_owned();
    let data = value
        .get("data")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(NewEvent::from_json(event_type, data.into()))
}

//! The event store service: one value holding the store, the clock, the upcasters and limits.

use std::sync::Arc;
use std::sync::LazyLock;

use onephase_core::{Random, SharedClock, SystemClock};
use onephase_store::{Store, on_store};
use tokio::sync::Notify;

use crate::{EventsError, Upcasters};

/// The largest event (data plus metadata) accepted by default: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;

/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

static APPENDED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Wakes readers in this process: an append was written (maybe not yet committed).
pub(crate) fn appended() {
    APPENDED.notify_waiters();
}

/// Resolves on the next append in this process.
pub fn appended_here() -> tokio::sync::futures::Notified<'static> {
    APPENDED.notified()
}

/// Streams of events in a [`Store`]: append, read, forget; the handle projections and
/// aggregates work through. Cheap to clone.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use onephase_events::{EventStore, ExpectedVersion, NewEvent};
///
/// let store = onephase_store::Store::connect("sqlite::memory:").await?;
/// store.migrate(&[onephase_events::migrations()]).await?;
/// let events = EventStore::new(store);
/// let appended = events
///     .append("order-42", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", r#"{"total":1999}"#)?])
///     .await?;
/// assert_eq!(appended.streams[0].version, 1);
/// let read = events.read_stream("order-42", 0, 100).await?;
/// assert_eq!(read[0].data.get(), r#"{"total":1999}"#);
/// # Ok(()) }
/// ```
#[derive(Clone, derive_more::Debug)]
pub struct EventStore {
    #[debug(skip)]
    pub(crate) store: Store,
    #[debug(skip)]
    pub(crate) clock: SharedClock,
    pub(crate) upcasters: Arc<Upcasters>,
    pub(crate) max_event_size: usize,
    #[debug(skip)]
    pub(crate) random: Arc<Random>,
}

impl EventStore {
    /// Events in `store` (migrated with [`migrations`](crate::migrations)), on the system
    /// clock, with no upcasters and a 1 MiB event limit.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            upcasters: Arc::new(Upcasters::new()),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            random: Arc::new(Random::from_entropy()),
        }
    }

    /// Stamps recorded times and measures lag on this clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Draws the jitter of [`execute`](Self::execute)'s retries from this source.
    pub fn with_random(mut self, random: Random) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// Reads through these upcasters, and writes new events at their types' current versions.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// Refuses events whose data and metadata together are over `bytes`.
    pub fn with_max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// The store it works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The upcasters it reads through.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    pub(crate) fn now_ms(&self) -> i64 {
        onephase_store::convert::unix_ms(self.clock.now())
    }

    /// The global position of the last committed event (0 for an empty store).
    pub async fn head(&self) -> Result<u64, EventsError> {
        let head: i64 = on_store!(read self.store.db(), pool => {
            sqlx::query_scalar("SELECT position FROM onephase_events_head WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        crate::sql::position(head)
    }
}

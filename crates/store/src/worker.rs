//! The loop of every background worker: wake, do a round, wait, until told to stop.
//!
//! The outbox relay, the saga orchestrator and the webhook dispatcher (and each worker still to
//! come) run the same outer loop around their own round of work. What they share lives here,
//! once:
//!
//! - **Waking.** A worker sleeps until the first of: its poll interval elapses; a `NOTIFY` on
//!   its PostgreSQL channel (another process committed work); an in-process signal (this
//!   process wrote work, possibly before its transaction committed, so the next few looks come
//!   quickly); an event of the worker's own (a task finished, a slot freed); or shutdown.
//! - **Errors.** A failed round is retried after a jittered, growing backoff
//!   ([`WorkerLoop::failed`]) rather than at once; the first success resets it.
//! - **Time.** Every wait is a sleep on the injected [`Clock`](onephase_core::Clock) and every
//!   periodic chore ([`Every`]) is timed on its monotonic clock, so a test drives a worker with
//!   a `ManualClock` and the backoff draws from a seeded [`Random`].
//! - **Listening.** The `LISTEN` connection is opened when the loop starts and again after the
//!   next poll whenever it failed; while it is down the worker polls and says so once.
//!
//! What a round is, and how the worker stops gracefully (finish the round, wait for its tasks),
//! stay with the worker. The shape, as the relay uses it:
//!
//! ```no_run
//! # async fn demo(store: onephase_store::Store, shutdown: impl std::future::Future<Output = ()>) {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use onephase_core::SystemClock;
//! use onephase_store::worker::{Pace, Wake, WorkerLoop};
//! use tokio::sync::Notify;
//!
//! let signal = Notify::new();
//! let mut worker = WorkerLoop::new(&store, Arc::new(SystemClock))
//!     .listen_on("my_channel")
//!     .poll_interval(Duration::from_millis(500));
//! worker.start().await;
//! let mut shutdown = std::pin::pin!(shutdown);
//! loop {
//!     let pace = match do_a_round().await {
//!         Ok(true) => Pace::Now,   // a full batch: more is waiting
//!         Ok(false) => { worker.succeeded(); Pace::Poll }
//!         Err(()) => Pace::After(worker.failed()),
//!     };
//!     match worker.wait(pace, signal.notified(), std::future::pending::<()>(), shutdown.as_mut()).await {
//!         Wake::Stop => break,
//!         _ => {}
//!     }
//! }
//! # async fn do_a_round() -> Result<bool, ()> { Ok(false) }
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use derive_setters::Setters;
use onephase_core::{Backoff, Jitter, Random, SharedClock};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::{Db, Store};

/// How soon the next round should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At once (after yielding): the last round found a full batch.
    Now,
    /// After the poll interval, or sooner when something wakes the worker.
    Poll,
    /// After this long, cut short only by shutdown or the worker's own event: a backoff.
    After(Duration),
}

/// Why [`WorkerLoop::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake<T> {
    /// Shutdown completed: stop (gracefully).
    Stop,
    /// The in-process signal: this process wrote work.
    Signal,
    /// A `NOTIFY` on the worker's channel: another process committed work.
    Notify,
    /// The wait elapsed.
    Elapsed,
    /// The worker's own event, with its output.
    Event(T),
}

/// How many quick looks follow an in-process signal, and how quick: the signal is sent before
/// the writer's transaction commits, so the first look may find nothing yet.
const EAGER_LOOKS: u8 = 3;
const EAGER_INTERVAL: Duration = Duration::from_millis(2);

/// The waiting, listening and backoff of one worker's loop; see the [module docs](self).
#[derive(Setters, derive_more::Debug)]
#[setters(generate = false)]
pub struct WorkerLoop {
    #[debug(skip)]
    clock: SharedClock,
    /// Polls this often when nothing wakes the worker sooner.
    #[setters(generate, rename = "poll_interval")]
    poll: Duration,
    /// Backs off failed rounds by this (attempt n waits at most its n-th ceiling).
    #[setters(generate, rename = "with_backoff")]
    #[debug(skip)]
    backoff: Backoff,
    /// Draws the backoff's jitter from this source (seeded for reproducible tests).
    #[setters(generate, rename = "with_random", into)]
    #[debug(skip)]
    random: Arc<Random>,
    errors: u32,
    #[debug(skip)]
    eager: u8,
    /// Wakes on `NOTIFY` on this channel (PostgreSQL; nothing on SQLite) once
    /// [`start`](Self::start)ed.
    #[setters(generate, rename = "listen_on")]
    channel: &'static str,
    #[debug(skip)]
    pool: Option<PgPool>,
    #[debug("{}", if listener.is_some() { "listening" } else { "not listening" })]
    listener: Option<PgListener>,
}

impl WorkerLoop {
    /// A loop over `store` that polls every 50 ms on SQLite or every second on PostgreSQL
    /// until [`poll_interval`](Self::poll_interval) says otherwise, and listens nowhere until
    /// [`listen_on`](Self::listen_on). Errors back off from 100 ms to 10 s with full jitter.
    pub fn new(store: &Store, clock: SharedClock) -> Self {
        let (pool, poll) = match store.db() {
            Db::Postgres(pool) => (Some(pool.clone()), Duration::from_secs(1)),
            Db::Sqlite(_) => (None, Duration::from_millis(50)),
        };
        Self {
            clock,
            poll,
            backoff: default_backoff(),
            random: Arc::new(Random::from_entropy()),
            errors: 0,
            eager: 0,
            channel: "",
            pool,
            listener: None,
        }
    }

    /// The poll interval in use.
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// Opens the `LISTEN` connection (PostgreSQL); on failure the worker polls until the next
    /// attempt, after a poll interval.
    pub async fn start(&mut self) {
        self.listener = self.listen().await;
    }

    /// A round succeeded: the next failure starts the backoff from the beginning.
    pub fn succeeded(&mut self) {
        self.errors = 0;
    }

    /// A round failed: how long to wait before the next, growing with consecutive failures.
    pub fn failed(&mut self) -> Duration {
        self.errors = self.errors.saturating_add(1);
        self.backoff
            .delay(self.errors.min(16), None, &mut &*self.random)
    }

    /// Consecutive failed rounds so far.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Waits as `pace` says for the first of shutdown, `signal` (the in-process wake-up),
    /// a `NOTIFY`, `event` (the worker's own) or the time running out. Shutdown wins a tie.
    pub async fn wait<T>(
        &mut self,
        pace: Pace,
        signal: impl Future<Output = ()>,
        event: impl Future<Output = T>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Wake<T> {
        let mut shutdown = shutdown;
        let (duration, wakeable) = match pace {
            Pace::Now => (Duration::ZERO, false),
            Pace::After(d) => (d, false),
            Pace::Poll if self.eager > 0 => {
                self.eager -= 1;
                (self.poll.min(EAGER_INTERVAL), true)
            }
            Pace::Poll => (self.poll, true),
        };
        if duration.is_zero() {
            tokio::select! {
                biased;
                () = &mut shutdown => return Wake::Stop,
                () = tokio::task::yield_now() => return Wake::Elapsed,
            }
        }
        let sleep = self.clock.sleep(duration);
        let wake = tokio::select! {
            biased;
            () = &mut shutdown => Wake::Stop,
            out = event => Wake::Event(out),
            () = signal, if wakeable => Wake::Signal,
            notified = recv(&mut self.listener), if wakeable => match notified {
                Ok(()) => Wake::Notify,
                Err(e) => {
                    tracing::warn!(channel = self.channel, error = %e,
                        "LISTEN connection failed; polling until it is back");
                    self.listener = None;
                    Wake::Elapsed
                }
            },
            () = sleep => Wake::Elapsed,
        };
        match wake {
            Wake::Signal => self.eager = EAGER_LOOKS,
            Wake::Elapsed if self.listener.is_none() && !self.channel.is_empty() => {
                self.listener = self.listen().await;
            }
            _ => {}
        }
        wake
    }

    async fn listen(&self) -> Option<PgListener> {
        let pool = self.pool.as_ref().filter(|_| !self.channel.is_empty())?;
        let connect = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connect.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(channel = self.channel, error = %e, "cannot LISTEN; polling");
                None
            }
        }
    }
}

fn default_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        Jitter::Full,
    )
    .expect("100 ms to 10 s is a valid backoff")
}

async fn recv(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(drop),
        None => std::future::pending().await,
    }
}

/// A chore due once per period on the clock's monotonic time (housekeeping, gauges); due at
/// once the first time.
#[derive(Debug, Clone)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// Due every `period`.
    pub fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    /// Whether the chore is due at `now` (from [`Clock::monotonic`](onephase_core::Clock::monotonic));
    /// when it is, the period starts again from `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.period)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chore_is_due_first_then_once_per_period() {
        let start = Instant::now();
        let mut every = Every::new(Duration::from_secs(15));
        assert!(every.due(start));
        assert!(!every.due(start + Duration::from_secs(14)));
        assert!(every.due(start + Duration::from_secs(15)));
        assert!(!every.due(start + Duration::from_secs(16)));
    }
}

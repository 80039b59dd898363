use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// A future that completes when a [`Clock`] says a duration has passed.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A clock shared between tasks.
pub type SharedClock = Arc<dyn Clock>;

/// Time as an input.
///
/// Two readings, because they answer different questions:
///
/// - [`now`](Clock::now) is the wall clock: what to write in a `created_at` column or compare
///   with a timestamp from another machine. It can jump backwards or forwards (NTP, an operator,
///   a VM resumed after a pause), so never use it to measure how long something took.
/// - [`monotonic`](Clock::monotonic) never goes backwards: use it for deadlines, timeouts and
///   lease expiry on this machine. Its values mean nothing on another machine.
///
/// Code that waits calls [`sleep`](Clock::sleep) on its clock instead of `tokio::time::sleep`,
/// so that a [`ManualClock`] controls it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The wall-clock time, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// A reading that never decreases, for measuring durations and deadlines on this machine.
    fn monotonic(&self) -> Instant;

    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;

    /// Completes once [`monotonic`](Clock::monotonic) reaches `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        self.sleep(deadline.saturating_duration_since(self.monotonic()))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        (**self).sleep(duration)
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        (**self).sleep_until(deadline)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        (**self).sleep(duration)
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        (**self).sleep_until(deadline)
    }
}

/// The real clock: the operating system's wall clock, [`Instant`], and tokio's timer.
///
/// [`sleep`](Clock::sleep) needs a tokio runtime with the time driver enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told to.
///
/// [`advance`](ManualClock::advance) moves both readings forward and wakes every sleeper whose
/// deadline has passed. [`shift_wall`](ManualClock::shift_wall) moves only the wall clock, the
/// way NTP or a drifting oscillator does, so that tests can show what a wrong wall clock does
/// to code that trusted it. Clones share one timeline.
///
/// ```
/// use std::time::Duration;
/// use onephase_core::{Clock, ManualClock};
///
/// # tokio_test_block_on(async {
/// let clock = ManualClock::new(time::macros::datetime!(2026-01-01 00:00 UTC));
/// let sleeper = tokio::spawn(clock.sleep(Duration::from_secs(30)));
/// clock.advance(Duration::from_secs(30));
/// sleeper.await.unwrap();
/// assert_eq!(clock.now(), time::macros::datetime!(2026-01-01 00:00:30 UTC));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    origin: Instant,
    state: Mutex<ManualState>,
}

struct ManualState {
    elapsed: Duration,
    wall: OffsetDateTime,
    next_sleeper: u64,
    sleepers: HashMap<u64, (Duration, Option<Waker>)>,
}

impl ManualInner {
    fn lock(&self) -> MutexGuard<'_, ManualState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters (every update is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ManualClock {
    /// A clock whose wall time starts at `wall`.
    pub fn new(wall: OffsetDateTime) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                origin: Instant::now(),
                state: Mutex::new(ManualState {
                    elapsed: Duration::ZERO,
                    wall,
                    next_sleeper: 0,
                    sleepers: HashMap::new(),
                }),
            }),
        }
    }

    /// Moves both readings forward by `by` and wakes every sleeper that is now due.
    pub fn advance(&self, by: Duration) {
        let due: Vec<Waker> = {
            let mut state = self.inner.lock();
            state.elapsed += by;
            state.wall += by;
            let now = state.elapsed;
            state
                .sleepers
                .values_mut()
                .filter(|(deadline, _)| *deadline <= now)
                .filter_map(|(_, waker)| waker.take())
                .collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// Moves only the wall clock, by a signed amount: clock drift or an NTP step. Monotonic
    /// time and sleepers are unaffected.
    pub fn shift_wall(&self, by: time::Duration) {
        let mut state = self.inner.lock();
        state.wall += by;
    }

    /// Sets the wall clock, leaving monotonic time and sleepers alone.
    pub fn set_wall(&self, wall: OffsetDateTime) {
        self.inner.lock().wall = wall;
    }

    /// How many [`sleep`](Clock::sleep) futures are waiting. Tests use it to know that every
    /// task has reached its sleep before they advance the clock.
    pub fn sleepers(&self) -> usize {
        self.inner.lock().sleepers.len()
    }

    /// How far monotonic time has advanced since this clock was created.
    pub fn elapsed(&self) -> Duration {
        self.inner.lock().elapsed
    }
}

impl Default for ManualClock {
    /// A manual clock starting at the Unix epoch.
    fn default() -> Self {
        Self::new(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("ManualClock")
            .field("wall", &state.wall)
            .field("elapsed", &state.elapsed)
            .field("sleepers", &state.sleepers.len())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.inner.lock().wall
    }

    fn monotonic(&self) -> Instant {
        self.inner.origin + self.inner.lock().elapsed
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let mut state = self.inner.lock();
        let deadline = state.elapsed.saturating_add(duration);
        let id = state.next_sleeper;
        state.next_sleeper += 1;
        state.sleepers.insert(id, (deadline, None));
        drop(state);
        Box::pin(ManualSleep {
            clock: Arc::clone(&self.inner),
            id,
            deadline,
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        self.sleep(deadline.saturating_duration_since(self.monotonic()))
    }
}

struct ManualSleep {
    clock: Arc<ManualInner>,
    id: u64,
    deadline: Duration,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.clock.lock();
        if state.elapsed >= self.deadline {
            state.sleepers.remove(&self.id);
            return Poll::Ready(());
        }
        if let Some((_, waker)) = state.sleepers.get_mut(&self.id) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        self.clock.lock().sleepers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test]
    async fn sleepers_wake_in_deadline_order_only_when_advanced() {
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let short = tokio::spawn(clock.sleep(Duration::from_secs(1)));
        let long = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        assert_eq!(clock.sleepers(), 2);

        clock.advance(Duration::from_secs(5));
        short.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!long.is_finished());
        assert_eq!(clock.sleepers(), 1);

        clock.advance(Duration::from_secs(5));
        long.await.unwrap();
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn zero_sleep_completes_at_once() {
        let clock = ManualClock::default();
        clock.sleep(Duration::ZERO).await;
        clock.sleep_until(clock.monotonic()).await;
    }

    #[test]
    fn dropping_a_sleep_unregisters_it() {
        let clock = ManualClock::default();
        let sleep = clock.sleep(Duration::from_secs(1));
        assert_eq!(clock.sleepers(), 1);
        drop(sleep);
        assert_eq!(clock.sleepers(), 0);
    }

    #[test]
    fn wall_drift_leaves_monotonic_time_alone() {
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let before = clock.monotonic();
        clock.shift_wall(time::Duration::seconds(-30));
        assert_eq!(clock.now(), datetime!(2025-12-31 23:59:30 UTC));
        assert_eq!(clock.monotonic(), before);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.monotonic() - before, Duration::from_millis(1500));
        assert_eq!(clock.now(), datetime!(2025-12-31 23:59:31.5 UTC));
    }

    #[tokio::test]
    async fn system_clock_sleeps_for_real() {
        let clock = SystemClock;
        let start = clock.monotonic();
        clock.sleep(Duration::from_millis(5)).await;
        assert!(clock.monotonic() >= start + Duration::from_millis(5));
    }
}

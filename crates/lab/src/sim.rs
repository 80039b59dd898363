//! Simulated time: tokio's paused clock behind onephase's [`Clock`] trait.

use std::future::Future;
use std::time::{Duration, Instant};

use onephase_core::{Clock, Sleep};
use time::OffsetDateTime;

/// A [`Clock`] on tokio's time, for runtimes started paused: it moves only when every task is
/// waiting, straight to the next deadline. Its wall clock starts at a fixed date.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    origin: tokio::time::Instant,
}

impl SimClock {
    /// A clock whose elapsed time starts now.
    pub fn start() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    /// Time since [`start`](Self::start).
    pub fn elapsed(&self) -> Duration {
        tokio::time::Instant::now() - self.origin
    }
}

impl Clock for SimClock {
    fn now(&self) -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC) + self.elapsed()
    }

    fn monotonic(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Runs `future` to completion on a current-thread runtime on the real clock, for scenarios
/// whose engine does I/O on other threads (paused time would jump past it).
pub(crate) fn block_on_real<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(future)
}

/// Runs `future` to completion on a current-thread runtime with paused time.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(future)
}

//! Jittered reconnects for clients of brokers and databases.
//!
//! When a database restarts, every client of it loses its connection in the same
//! millisecond. If each reconnects at once and then retries on the same fixed schedule, the
//! server comes back to a wall of simultaneous handshakes (TLS, authentication, session
//! setup) at exactly the moment it is weakest, and again at every retry tick. [`Reconnect`]
//! spreads them: the first attempt waits a uniform random delay in `[0, spread]`, and every
//! later one a full-jitter exponential backoff, so `N` clients arrive at a rate near
//! `N / spread` instead of all at once.
//!
//! ```
//! use std::time::Duration;
//! use onephase_herd::Reconnect;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let reconnect = Reconnect::new("orders-db").spread(Duration::from_millis(5));
//! let mut tries = 0;
//! let connection: Result<&str, String> = reconnect
//!     .connect(|| {
//!         tries += 1;
//!         let up = tries > 2;
//!         async move { if up { Ok("connected") } else { Err("refused".to_owned()) } }
//!     })
//!     .await;
//! assert_eq!(connection, Ok("connected"));
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use derive_setters::Setters;
use metrics::Counter;
use onephase_core::rand::SeedableRng as _;
use onephase_core::rand::rngs::StdRng;
use onephase_core::{Backoff, Jitter, SharedClock, SystemClock};

use crate::Random;

/// A reconnect policy: an initial random spread, then full-jitter backoff. Clones share the
/// random source. See the [module docs](self).
#[derive(Debug, Clone, Setters)]
#[setters(generate = false)]
pub struct Reconnect {
    /// The first attempt waits a uniform random delay in `[0, spread]` (zero: at once).
    #[setters(generate)]
    spread: Duration,
    /// The delays between later attempts.
    #[setters(generate)]
    backoff: Backoff,
    max_attempts: Option<u32>,
    /// Sleeps on this clock (a manual or simulated one for deterministic runs).
    #[setters(generate, rename = "with_clock")]
    clock: SharedClock,
    /// Draws from this source (seeded for deterministic runs).
    #[setters(generate, rename = "with_random", into)]
    random: Arc<Random>,
    attempts: Counter,
}

impl Reconnect {
    /// A spread of 1 s, then full jitter from 500 ms to 10 s, attempting forever, on the system
    /// clock. `name` labels `onephase_herd_reconnect_attempts_total{client}`.
    pub fn new(name: &str) -> Self {
        Self {
            spread: Duration::from_secs(1),
            backoff: Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(10),
                Jitter::Full,
            )
            .expect("500 ms to 10 s is a valid backoff"),
            max_attempts: None,
            clock: Arc::new(SystemClock),
            random: Arc::new(Random::from_entropy()),
            attempts: metrics::counter!("onephase_herd_reconnect_attempts_total", "client" => name.to_owned()),
        }
    }

    /// Gives up after this many attempts (at least 1), returning the last error.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Calls `connect` until it succeeds or `max_attempts` is reached, waiting the spread
    /// first and the backoff between attempts. Each failure is logged at `warn` with the
    /// delay before the next attempt.
    pub async fn connect<T, E, F, Fut>(&self, mut connect: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.clock
            .sleep(self.random.duration_up_to(self.spread))
            .await;
        let mut rng = StdRng::seed_from_u64(self.random.next_u64());
        let mut previous = None;
        let mut attempt = 0u32;
        loop {
            self.attempts.increment(1);
            let error = match connect().await {
                Ok(connection) => return Ok(connection),
                Err(e) => e,
            };
            attempt += 1;
            if self.max_attempts.is_some_and(|max| attempt >= max) {
                tracing::warn!(%error, attempt, "reconnect failed; giving up");
                return Err(error);
            }
            let delay = self.backoff.delay(attempt - 1, previous, &mut rng);
            previous = Some(delay);
            tracing::warn!(%error, attempt, ?delay, "reconnect failed; trying again");
            self.clock.sleep(delay).await;
        }
    }
}

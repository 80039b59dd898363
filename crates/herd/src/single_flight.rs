//! Per-key coalescing of concurrent calls.
//!
//! When a thousand requests miss the same cache key at once, a thousand identical queries
//! reach the database. [`SingleFlight::run`] lets the first caller for a key (the *leader*)
//! run its call while every later caller for that key (a *waiter*) waits for the leader's
//! outcome, value or error, instead of calling too. Once the outcome is out, the key is free:
//! the next caller starts a new call. Nothing is cached here; [`HerdCache`](crate::HerdCache)
//! adds that.
//!
//! # When the leader does not finish
//!
//! Go's `singleflight` and the forks modelled on it tie every waiter to the leader: if the
//! leader's caller gives up (its context is cancelled, its future dropped) or its call panics,
//! every waiter gets that failure, although none of them asked to stop. Here each caller
//! brings its own call, so the work can move:
//!
//! - **A leader cancelled or panicking** hands the key to the next waiter in arrival order,
//!   which runs *its own* call and becomes the leader. Waiters see neither the cancellation
//!   nor the panic; the panic still unwinds through the leader's own task.
//! - **A waiter cancelled** just leaves: the leader keeps running, and no second call starts.
//! - **A key with no waiters left** when its leader stops is forgotten at once.
//!
//! Waiters share the leader's outcome by cloning it, so `V` and `E` are `Clone`: wrap an
//! error type that is not (such as `sqlx::Error`) in an `Arc`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use onephase_herd::SingleFlight;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let flight: Arc<SingleFlight<&str, u64, String>> = Arc::new(SingleFlight::new("users"));
//! let origin_calls = Arc::new(AtomicUsize::new(0));
//! let readers = (0..100).map(|_| {
//!     let (flight, origin_calls) = (flight.clone(), origin_calls.clone());
//!     tokio::spawn(async move {
//!         flight.run("user:7", || async move {
//!             origin_calls.fetch_add(1, Ordering::SeqCst);
//!             tokio::task::yield_now().await; // the query
//!             Ok(42)
//!         }).await
//!     })
//! });
//! for reader in futures::future::join_all(readers).await {
//!     assert_eq!(reader.unwrap(), Ok(42));
//! }
//! assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
//! assert_eq!(flight.stats().executions, 1);
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::Counter;
use tokio::sync::Notify;

/// Per-key coalescing of concurrent async calls. See the [module docs](self).
pub struct SingleFlight<K, V, E> {
    calls: Mutex<HashMap<K, Arc<Call<V, E>>>>,
    counts: Counts,
    metrics: FlightMetrics,
}

/// How a [`SingleFlight`] has been used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlightStats {
    /// Calls to [`run`](SingleFlight::run).
    pub calls: u64,
    /// Calls actually executed: one per leader, including leaders that took over.
    pub executions: u64,
    /// Leaders that stopped (cancelled or panicking) and handed their key to a waiter.
    pub handoffs: u64,
}

impl FlightStats {
    /// Calls per execution: 1.0 when nothing was coalesced, 1,000 when a thousand callers
    /// shared one execution.
    pub fn coalescing_ratio(&self) -> f64 {
        if self.executions == 0 {
            return 1.0;
        }
        self.calls as f64 / self.executions as f64
    }
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    executions: AtomicU64,
    handoffs: AtomicU64,
}

struct FlightMetrics {
    leaders: Counter,
    waiters: Counter,
    handoffs: Counter,
}

struct Call<V, E> {
    state: Mutex<CallState<V, E>>,
    notify: Notify,
}

struct CallState<V, E> {
    outcome: Option<Result<V, E>>,
    /// A leader is running the call.
    leading: bool,
    /// Waiters that have not returned yet.
    waiters: usize,
}

/// Locks, ignoring poison: no code here panics while holding a lock, and user code never
/// runs under one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Role {
    Leader,
    Waiter,
}

impl<K, V, E> SingleFlight<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
{
    /// An empty group. `name` labels its metrics (`onephase_herd_flight_calls_total{flight}`):
    /// create it after the process's metrics recorder is installed.
    pub fn new(name: &str) -> Self {
        let label = |role: &'static str| metrics::counter!("onephase_herd_flight_calls_total", "flight" => name.to_owned(), "role" => role);
        Self {
            calls: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            metrics: FlightMetrics {
                leaders: label("leader"),
                waiters: label("waiter"),
                handoffs: metrics::counter!("onephase_herd_flight_handoffs_total", "flight" => name.to_owned()),
            },
        }
    }

    /// Runs `call` for `key`, or waits for the call already running for `key` and returns a
    /// clone of its outcome.
    ///
    /// If the running call's leader is cancelled or panics, one waiter runs its own `call`
    /// instead (see the [module docs](self)). Dropping this future as a waiter never affects
    /// the leader.
    pub async fn run<F, Fut>(&self, key: K, call: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        let (shared, role) = {
            let mut calls = lock(&self.calls);
            match calls.get(&key) {
                Some(shared) => {
                    let mut state = lock(&shared.state);
                    let role = if state.leading {
                        state.waiters += 1;
                        Role::Waiter
                    } else {
                        // Abandoned by its leader, and every waiter is still waking up.
                        state.leading = true;
                        Role::Leader
                    };
                    drop(state);
                    (Arc::clone(shared), role)
                }
                None => {
                    let shared = Arc::new(Call {
                        state: Mutex::new(CallState {
                            outcome: None,
                            leading: true,
                            waiters: 0,
                        }),
                        notify: Notify::new(),
                    });
                    calls.insert(key.clone(), Arc::clone(&shared));
                    (shared, Role::Leader)
                }
            }
        };
        if let Role::Waiter = role {
            self.metrics.waiters.increment(1);
            if let Some(outcome) = self.wait(&key, &shared).await {
                return outcome;
            }
            self.counts.handoffs.fetch_add(1, Ordering::Relaxed);
            self.metrics.handoffs.increment(1);
        }
        self.lead(key, shared, call).await
    }

    /// Whether a call for `key` is running now.
    pub fn is_running(&self, key: &K) -> bool {
        lock(&self.calls)
            .get(key)
            .is_some_and(|c| lock(&c.state).leading)
    }

    /// How many callers are waiting for the call running for `key` (0 when none runs).
    pub fn waiters(&self, key: &K) -> usize {
        lock(&self.calls)
            .get(key)
            .map_or(0, |c| lock(&c.state).waiters)
    }

    /// Counts of calls, executions and hand-offs since creation.
    pub fn stats(&self) -> FlightStats {
        FlightStats {
            calls: self.counts.calls.load(Ordering::Relaxed),
            executions: self.counts.executions.load(Ordering::Relaxed),
            handoffs: self.counts.handoffs.load(Ordering::Relaxed),
        }
    }

    /// Waits for `shared`'s outcome; `None` when this waiter has become the leader.
    async fn wait(&self, key: &K, shared: &Arc<Call<V, E>>) -> Option<Result<V, E>> {
        let mut guard = WaiterGuard {
            flight: self,
            key,
            shared,
            waiting: true,
        };
        loop {
            // Registered before the state is read, so a notification between the read and
            // the await is not lost.
            let mut notified = pin!(shared.notify.notified());
            notified.as_mut().enable();
            {
                let mut state = lock(&shared.state);
                if let Some(outcome) = state.outcome.clone() {
                    state.waiters -= 1;
                    guard.waiting = false;
                    return Some(outcome);
                }
                if !state.leading {
                    state.leading = true;
                    state.waiters -= 1;
                    guard.waiting = false;
                    return None;
                }
            }
            notified.await;
        }
    }

    async fn lead<F, Fut>(&self, key: K, shared: Arc<Call<V, E>>, call: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.counts.executions.fetch_add(1, Ordering::Relaxed);
        self.metrics.leaders.increment(1);
        let mut guard = LeaderGuard {
            flight: self,
            key: Some(key),
            shared: &shared,
        };
        let outcome = call().await;
        guard.finish(outcome.clone());
        outcome
    }

    /// Removes `key`'s entry if it is still `shared`. The caller holds the map's lock.
    fn forget(calls: &mut HashMap<K, Arc<Call<V, E>>>, key: &K, shared: &Arc<Call<V, E>>) {
        if calls.get(key).is_some_and(|c| Arc::ptr_eq(c, shared)) {
            calls.remove(key);
        }
    }
}

impl<K, V, E> std::fmt::Debug for SingleFlight<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight")
            .field("running", &lock(&self.calls).len())
            .finish()
    }
}

/// Ends a leadership: with an outcome for every waiter, or (dropped early, by cancellation or
/// a panic) by handing the key to the next waiter.
struct LeaderGuard<'a, K: Hash + Eq + Clone, V: Clone, E: Clone> {
    flight: &'a SingleFlight<K, V, E>,
    key: Option<K>,
    shared: &'a Arc<Call<V, E>>,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> LeaderGuard<'_, K, V, E> {
    fn finish(&mut self, outcome: Result<V, E>) {
        let Some(key) = self.key.take() else { return };
        let mut calls = lock(&self.flight.calls);
        SingleFlight::forget(&mut calls, &key, self.shared);
        let mut state = lock(&self.shared.state);
        state.outcome = Some(outcome);
        state.leading = false;
        drop(state);
        drop(calls);
        self.shared.notify.notify_waiters();
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Drop for LeaderGuard<'_, K, V, E> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut calls = lock(&self.flight.calls);
        let mut state = lock(&self.shared.state);
        state.leading = false;
        if state.waiters == 0 {
            drop(state);
            SingleFlight::forget(&mut calls, &key, self.shared);
            return;
        }
        drop(state);
        drop(calls);
        // One waiter takes over. If it is being dropped at this moment, tokio passes the
        // notification on to the next one.
        self.shared.notify.notify_one();
    }
}

/// Leaves a call's waiters when a waiter is dropped before it returned.
struct WaiterGuard<'a, K: Hash + Eq + Clone, V: Clone, E: Clone> {
    flight: &'a SingleFlight<K, V, E>,
    key: &'a K,
    shared: &'a Arc<Call<V, E>>,
    waiting: bool,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Drop for WaiterGuard<'_, K, V, E> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let mut calls = lock(&self.flight.calls);
        let mut state = lock(&self.shared.state);
        state.waiters -= 1;
        let orphaned = state.waiters == 0 && !state.leading && state.outcome.is_none();
        drop(state);
        if orphaned {
            SingleFlight::forget(&mut calls, self.key, self.shared);
        }
    }
}

//! The holder's side of a grant: its token, and a deadline on the holder's own monotonic clock.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{FencingToken, Grant, LeaseError, Leases};

/// Why a guard stopped holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lapse {
    /// The deadline passed without a successful renewal.
    Deadline,
    /// The backend said the grant is gone, or renewals kept failing.
    Lost(String),
}

impl std::fmt::Display for Lapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deadline => f.write_str("its deadline passed without a renewal"),
            Self::Lost(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    deadline: Instant,
    lost: Option<String>,
}

/// A granted lease, as its holder sees it.
///
/// The holder's deadline is measured from just *before* the request that granted (or last
/// renewed) the lease was sent, on the holder's monotonic clock, less a safety margin: the
/// backend's expiry cannot come earlier unless the clocks run at different rates by more than
/// the margin. Past it, [`is_held`](Self::is_held) is false and [`lapsed`](Self::lapsed)
/// completes. That still cannot stop a write that was already on its way when the process
/// paused; only the resource's fence can, so every write carries [`token`](Self::token).
///
/// Dropping the guard stops its renewals but does not release the lease (release is a
/// request); it lapses after its TTL.
#[derive(Debug)]
pub struct LeaseGuard {
    leases: Leases,
    grant: Grant,
    ttl: Duration,
    state: Arc<watch::Sender<State>>,
    keeper: Option<JoinHandle<()>>,
}

impl LeaseGuard {
    pub(crate) fn new(leases: Leases, grant: Grant, ttl: Duration, sent_at: Instant) -> Self {
        let deadline = deadline(&leases, &grant, ttl, sent_at);
        Self {
            leases,
            grant,
            ttl,
            state: Arc::new(
                watch::channel(State {
                    deadline,
                    lost: None,
                })
                .0,
            ),
            keeper: None,
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.grant.name
    }

    /// The fencing token: send it with every write the lease protects.
    pub fn token(&self) -> FencingToken {
        self.grant.token
    }

    /// The grant as the backend made it.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// When the holder must stop, on its monotonic clock.
    pub fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// Whether the lease is still held as far as this holder can tell: before the deadline and
    /// not reported lost.
    pub fn is_held(&self) -> bool {
        let state = self.state.borrow();
        state.lost.is_none() && self.leases.clock.monotonic() < state.deadline
    }

    /// Time left before the deadline (zero once passed or lost).
    pub fn remaining(&self) -> Duration {
        let state = self.state.borrow();
        if state.lost.is_some() {
            return Duration::ZERO;
        }
        state
            .deadline
            .saturating_duration_since(self.leases.clock.monotonic())
    }

    /// Completes when the holder must stop: the deadline passes (renewals move it) or the
    /// grant is reported lost.
    pub fn lapsed(&self) -> impl Future<Output = Lapse> + Send + 'static {
        lapsed(self.state.subscribe(), self.leases.clone())
    }

    /// Runs `work` while the lease is held: if the lease lapses first, `work` is dropped
    /// (cancelled at its next await point) and [`LeaseError::Lapsed`] is returned.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LeaseError> {
        tokio::select! {
            biased;
            lapse = self.lapsed() => Err(LeaseError::Lapsed {
                name: self.grant.name.clone(),
                token: self.grant.token,
                reason: lapse.to_string(),
            }),
            out = work => Ok(out),
        }
    }

    /// Renews now: the deadline moves to a TTL after this request was sent. If the backend
    /// says the grant is gone, the guard is lost for good.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        renew_once(&self.leases, &self.grant, self.ttl, &self.state)
            .await
            .map(|grant| self.grant = grant)
    }

    /// Renews in the background every third of the TTL until released or dropped. A renewal
    /// the backend refuses marks the guard lost at once; renewals that fail (backend
    /// unreachable) are retried every tenth of the TTL, and if none succeeds before the
    /// deadline, the guard is lost at the deadline, so the holder learns it before the
    /// backend's expiry.
    pub fn keep_alive(&mut self) {
        if self.keeper.is_some() {
            return;
        }
        let leases = self.leases.clone();
        let grant = self.grant.clone();
        let ttl = self.ttl;
        let state = Arc::clone(&self.state);
        self.keeper = Some(tokio::spawn(async move {
            let mut pause = ttl / 3;
            loop {
                leases.clock.sleep(pause).await;
                if state.borrow().lost.is_some() {
                    return;
                }
                match renew_once(&leases, &grant, ttl, &state).await {
                    Ok(_) => pause = ttl / 3,
                    Err(LeaseError::NotHeld { .. } | LeaseError::Lapsed { .. }) => return,
                    Err(e) => {
                        let deadline = state.borrow().deadline;
                        if leases.clock.monotonic() >= deadline {
                            state.send_modify(|s| {
                                s.lost = Some(format!("renewals failed until the deadline: {e}"));
                            });
                            return;
                        }
                        tracing::warn!(lease = %grant.name, error = %e, "lease renewal failed; retrying");
                        pause = ttl / 10;
                    }
                }
            }
        }));
    }

    /// Releases the lease so that the next holder need not wait for it to lapse.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        self.state
            .send_modify(|s| s.lost = Some("released".to_owned()));
        self.leases
            .release(&self.grant.name, self.grant.token)
            .await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

fn deadline(leases: &Leases, grant: &Grant, ttl: Duration, sent_at: Instant) -> Instant {
    let granted = Duration::from_millis(grant.ttl_ms).min(ttl);
    sent_at + granted.saturating_sub(leases.margin_for(ttl))
}

async fn renew_once(
    leases: &Leases,
    grant: &Grant,
    ttl: Duration,
    state: &watch::Sender<State>,
) -> Result<Grant, LeaseError> {
    let sent_at = leases.clock.monotonic();
    match leases
        .backend
        .renew(&grant.name, grant.token, ttl, leases.clock.now())
        .await
    {
        Ok(renewed) => {
            let deadline = deadline(leases, &renewed, ttl, sent_at);
            let revived = state.send_if_modified(|s| {
                // A renewal that arrives after the deadline does not revive the guard: work
                // may already have been stopped, and the holder must not resume silently.
                if s.lost.is_some() || leases.clock.monotonic() >= s.deadline {
                    return false;
                }
                s.deadline = s.deadline.max(deadline);
                true
            });
            if revived {
                Ok(renewed)
            } else {
                Err(LeaseError::Lapsed {
                    name: grant.name.clone(),
                    token: grant.token,
                    reason: "the renewal came back after the holder's deadline".to_owned(),
                })
            }
        }
        Err(e @ LeaseError::NotHeld { .. }) => {
            state.send_modify(|s| s.lost = Some(e.to_string()));
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn lapsed(mut state: watch::Receiver<State>, leases: Leases) -> Lapse {
    loop {
        let current = state.borrow_and_update().clone();
        if let Some(why) = current.lost {
            return Lapse::Lost(why);
        }
        if leases.clock.monotonic() >= current.deadline {
            return Lapse::Deadline;
        }
        tokio::select! {
            () = leases.clock.sleep_until(current.deadline) => {}
            changed = state.changed() => {
                if changed.is_err() {
                    return Lapse::Lost("the guard was dropped".to_owned());
                }
            }
        }
    }
}

//! Where one read goes: the policies, the wait for a token, the primary's fallback budget.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;

use crate::error::ReplicaError;
use crate::router::{ReplicaView, Router, current_staleness};
use crate::sql;
use crate::token::{Lsn, Token};

/// What a read needs to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The primary, always (and outside the fallback budget): reads that decide a write.
    Primary,
    /// Everything the token's writer had committed: a replica that has replayed it; else,
    /// after waiting up to `wait` for one to, the primary (within the fallback budget).
    /// Without a token, any replica in rotation.
    ReadYourWrites {
        /// What must be visible.
        token: Option<Token>,
        /// How long to wait for a replica before going to the primary.
        wait: Duration,
    },
    /// A replica at most this stale (measured; see [`crate::health`]), else the primary within
    /// the fallback budget.
    BoundedStaleness(Duration),
}

/// Why a read went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The policy asked for the primary.
    Asked,
    /// A replica satisfied the policy.
    Satisfied,
    /// A replica satisfied it after this wait.
    Waited(Duration),
    /// No replica could: the primary, within its fallback budget.
    Fallback,
    /// The token was taken before a failover (an older timeline): the primary has everything
    /// that survived it.
    OlderTimeline,
}

/// Where a read goes: a pool and the server's name.
#[derive(Debug, Clone)]
pub struct Route {
    /// The pool to read from.
    pub pool: PgPool,
    /// `"primary"` or the replica's name.
    pub server: String,
    /// The replica's index, `None` for the primary.
    pub replica: Option<usize>,
    /// Why.
    pub reason: Reason,
}

impl Route {
    /// Whether the read goes to the primary.
    pub fn is_primary(&self) -> bool {
        self.replica.is_none()
    }
}

impl Router {
    /// Where a read with `policy` goes. See [`Policy`] for what each promises.
    ///
    /// # Errors
    ///
    /// A token of another cluster ([`ReplicaError::ForeignToken`]) or ahead of the primary
    /// ([`ReplicaError::TokenAhead`]); [`ReplicaError::Overloaded`] when the read needs the
    /// primary and its fallback budget is spent.
    pub async fn route(&self, policy: Policy) -> Result<Route, ReplicaError> {
        // Every read that could go to a replica earns the primary a share of a fallback.
        let (policy_name, routed) = match policy {
            Policy::Primary => return Ok(self.to_primary(Reason::Asked, "primary")),
            Policy::ReadYourWrites { token, wait } => {
                self.inner.budget.deposit();
                ("read_your_writes", self.read_your_writes(token, wait).await)
            }
            Policy::BoundedStaleness(bound) => {
                self.inner.budget.deposit();
                ("bounded_staleness", Ok(self.bounded(bound)))
            }
        };
        match routed {
            Ok(Some(route)) => {
                count(&self.inner.cluster, policy_name, "replica");
                Ok(route)
            }
            Ok(None) => self.fallback(policy_name, Reason::Fallback, "no replica satisfies it"),
            Err(Step::Older) => self.fallback(
                policy_name,
                Reason::OlderTimeline,
                "the token predates a failover",
            ),
            Err(Step::Failed(e)) => Err(e),
        }
    }

    /// The primary, if the fallback budget allows it.
    pub(crate) fn fallback(
        &self,
        policy: &'static str,
        reason: Reason,
        why: &str,
    ) -> Result<Route, ReplicaError> {
        if self.inner.budget.withdraw() {
            Ok(self.to_primary(reason, policy))
        } else {
            count(&self.inner.cluster, policy, "refused");
            Err(ReplicaError::Overloaded {
                cluster: self.inner.cluster.clone(),
                why: why.to_owned(),
            })
        }
    }

    pub(crate) fn to_primary(&self, reason: Reason, policy: &'static str) -> Route {
        count(&self.inner.cluster, policy, "primary");
        Route {
            pool: self.inner.primary.clone(),
            server: "primary".to_owned(),
            replica: None,
            reason,
        }
    }

    pub(crate) fn to_replica(&self, index: usize, reason: Reason) -> Route {
        let replica = &self.inner.replicas[index];
        Route {
            pool: replica.pool.clone(),
            server: replica.name.clone(),
            replica: Some(index),
            reason,
        }
    }

    /// An in-rotation replica passing `accept`, starting at the next in turn.
    pub(crate) fn pick(&self, accept: impl Fn(&ReplicaView) -> bool) -> Option<usize> {
        let n = self.inner.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let view = self.view();
        (0..n).map(|i| (start + i) % n).find(|&i| {
            let seen = &view.replicas[i];
            seen.health.in_rotation() && accept(seen)
        })
    }

    fn bounded(&self, bound: Duration) -> Option<Route> {
        let now = self.inner.clock.monotonic();
        self.pick(|seen| current_staleness(seen, now).is_some_and(|s| s <= bound))
            .map(|i| self.to_replica(i, Reason::Satisfied))
    }

    /// Checks a token against the cluster: `Ok(true)` when it is of the current timeline,
    /// `Ok(false)` when it predates a failover.
    pub(crate) fn check_token(&self, token: &Token) -> Result<bool, ReplicaError> {
        let view = self.view();
        let (Some(system), Some(latest)) = (view.system, view.history.latest()) else {
            return Err(ReplicaError::NotReady(self.inner.cluster.clone()));
        };
        if token.system() != system {
            return Err(ReplicaError::ForeignToken {
                token: *token,
                cluster: system,
            });
        }
        if token.timeline() > latest.timeline {
            return Err(ReplicaError::TokenAhead {
                token: *token,
                timeline: latest.timeline,
                primary: latest.position,
            });
        }
        Ok(token.timeline() == latest.timeline)
    }

    /// Refuses a token ahead of the primary's position now (one read of the primary).
    pub(crate) async fn check_not_ahead(&self, token: &Token) -> Result<(), ReplicaError> {
        let now = sql::take_token(&self.inner.primary).await?;
        if now.timeline() == token.timeline() && token.position() > now.position() {
            return Err(ReplicaError::TokenAhead {
                token: *token,
                timeline: now.timeline(),
                primary: now.position(),
            });
        }
        Ok(())
    }

    async fn read_your_writes(
        &self,
        token: Option<Token>,
        wait: Duration,
    ) -> Result<Option<Route>, Step> {
        let Some(token) = token else {
            return Ok(self
                .pick(|_| true)
                .map(|i| self.to_replica(i, Reason::Satisfied)));
        };
        match self.check_token(&token) {
            Ok(true) => {}
            Ok(false) => return Err(Step::Older),
            // Before the first poll nothing is known: the primary, as for any read then.
            Err(ReplicaError::NotReady(_)) => return Ok(None),
            Err(e) => return Err(Step::Failed(e)),
        }
        let target = token.position();
        if let Some(i) = self.pick(|seen| seen.replay >= target) {
            return Ok(Some(self.to_replica(i, Reason::Satisfied)));
        }
        match self.wait_for(target, wait, Some(&token), false).await {
            Ok(Some((i, waited))) => Ok(Some(self.to_replica(i, Reason::Waited(waited)))),
            Ok(None) => Ok(None),
            Err(e) => Err(Step::Failed(e)),
        }
    }

    /// Waits up to `bound` for an in-rotation replica to replay `target`, asking the one
    /// furthest along, then the next, backing off from 1 ms to 20 ms. Returns the replica and
    /// how long it took. With `token`, a token ahead of the primary is refused after the first
    /// miss instead of waited for. When no replica is in rotation, a `patient` wait goes on
    /// (one may come back within the bound); an impatient one (a read, which has the primary)
    /// returns at once.
    pub(crate) async fn wait_for(
        &self,
        target: Lsn,
        bound: Duration,
        token: Option<&Token>,
        patient: bool,
    ) -> Result<Option<(usize, Duration)>, ReplicaError> {
        let started = self.inner.clock.monotonic();
        let outcome = self.wait_loop(target, bound, token, patient).await;
        let waited = self
            .inner
            .clock
            .monotonic()
            .saturating_duration_since(started);
        metrics::histogram!("onephase_replica_wait_seconds", "cluster" => self.inner.cluster.clone())
            .record(waited.as_secs_f64());
        outcome
    }

    async fn wait_loop(
        &self,
        target: Lsn,
        bound: Duration,
        token: Option<&Token>,
        patient: bool,
    ) -> Result<Option<(usize, Duration)>, ReplicaError> {
        let clock = &self.inner.clock;
        let started = clock.monotonic();
        let mut pause = Duration::from_millis(1);
        let mut checked_primary = token.is_none();
        loop {
            let candidates = self.by_replay();
            if candidates.is_empty() && !patient {
                return Ok(None);
            }
            for i in candidates {
                let replica = &self.inner.replicas[i];
                let Ok(Some(replay)) = sql::replay(&replica.name, &replica.pool).await else {
                    continue;
                };
                {
                    let mut view = self.view_mut();
                    let seen = &mut view.replicas[i];
                    seen.replay = seen.replay.max(replay);
                }
                if replay >= target {
                    let waited = clock.monotonic().saturating_duration_since(started);
                    return Ok(Some((i, waited)));
                }
            }
            if !checked_primary {
                if let Some(token) = token {
                    self.check_not_ahead(token).await?;
                }
                checked_primary = true;
            }
            let elapsed = clock.monotonic().saturating_duration_since(started);
            if elapsed >= bound {
                return Ok(None);
            }
            clock.sleep(pause.min(bound - elapsed)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// In-rotation replicas, furthest replay first.
    fn by_replay(&self) -> Vec<usize> {
        let view = self.view();
        let mut order: Vec<usize> = (0..self.inner.replicas.len())
            .filter(|&i| view.replicas[i].health.in_rotation())
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(view.replicas[i].replay));
        order
    }

    /// Waits up to `bound` for replicas to replay `token`, for a caller that reads elsewhere
    /// (another process, another language): the names of the in-rotation replicas that have.
    ///
    /// # Errors
    ///
    /// [`ReplicaError::NotReached`] after `bound`; a foreign token, or one ahead of the
    /// primary, at once; [`ReplicaError::Superseded`] for a token from before a failover.
    pub async fn wait(&self, token: &Token, bound: Duration) -> Result<Vec<String>, ReplicaError> {
        if !self.check_token(token)? {
            let view = self.view();
            return Err(ReplicaError::Superseded {
                token: *token,
                timeline: view.history.latest().map_or(0, |l| l.timeline),
            });
        }
        self.check_not_ahead(token).await?;
        let started = self.inner.clock.monotonic();
        let Some((first, _)) = self.wait_for(token.position(), bound, None, true).await? else {
            let waited = self
                .inner
                .clock
                .monotonic()
                .saturating_duration_since(started);
            let states: Vec<String> = self
                .status()
                .replicas
                .iter()
                .map(|r| format!("{} {}", r.name, r.state.as_str()))
                .collect();
            return Err(ReplicaError::NotReached {
                cluster: self.inner.cluster.clone(),
                token: *token,
                waited,
                replicas: states.join(", "),
            });
        };
        let view = self.view();
        let mut reached: Vec<String> = (0..self.inner.replicas.len())
            .filter(|&i| {
                i != first
                    && view.replicas[i].health.in_rotation()
                    && view.replicas[i].replay >= token.position()
            })
            .map(|i| self.inner.replicas[i].name.clone())
            .collect();
        reached.insert(0, self.inner.replicas[first].name.clone());
        Ok(reached)
    }
}

enum Step {
    Older,
    Failed(ReplicaError),
}

pub(crate) fn count(cluster: &str, policy: &'static str, to: &'static str) {
    metrics::counter!("onephase_replica_reads_total", "cluster" => cluster.to_owned(), "policy" => policy, "to" => to)
        .increment(1);
}

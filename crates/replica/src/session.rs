//! Monotonic reads: a session whose reads never see an older state than its last one.
//!
//! Two replicas with different lag, read in turn, show a reader a row, then the row as it was
//! before: time goes backwards. A [`Session`] keeps its reads on one server (a replica's replay
//! only moves forward) and, when that server leaves rotation, moves only to a server that has
//! replayed at least as far as the one it leaves *now* (read fresh, since a read may have seen
//! more than the monitor's last poll); if the old server cannot be read, to the primary, which
//! has everything. A session on the primary tries the replicas again once per poll interval.

use std::time::Instant;

use crate::error::ReplicaError;
use crate::route::{Reason, Route};
use crate::router::Router;
use crate::sql;
use crate::token::{Lsn, Token};

/// One reader's monotonic-reads state: its reads stay on one server and move only to one at
/// least as far along as the one they leave. Not shared between tasks: each reader keeps its
/// own.
#[derive(Debug, Clone, Default)]
pub struct Session {
    on: Option<On>,
    floor: Option<Token>,
    left_primary_try: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Replica(usize),
    Primary,
}

impl Session {
    /// A session that has read nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the session's reads see at least `token`'s writes (its own writes, or one it was
    /// told of): read-your-writes and monotonic reads together.
    pub fn observe(&mut self, token: Token) {
        self.floor = Some(match self.floor {
            Some(floor) => floor.max(token).unwrap_or(token),
            None => token,
        });
    }

    /// The position below which no read of this session goes.
    pub fn floor(&self) -> Option<Token> {
        self.floor
    }

    fn raise(&mut self, system: u64, timeline: u32, position: Lsn) {
        self.observe(Token::new(system, timeline, position));
    }
}

impl Router {
    /// Where the next read of `session` goes: never to an older state than its last read.
    /// See [`Session`].
    ///
    /// # Errors
    ///
    /// [`ReplicaError::Overloaded`] when it needs the primary and the fallback budget is spent.
    pub async fn route_monotonic(&self, session: &mut Session) -> Result<Route, ReplicaError> {
        const POLICY: &str = "monotonic";
        self.inner.budget.deposit();
        let (system, timeline) = {
            let view = self.view();
            match (view.system, view.history.latest()) {
                (Some(system), Some(latest)) => (system, latest.timeline),
                _ => {
                    return self.fallback(
                        POLICY,
                        Reason::Fallback,
                        "the cluster is not polled yet",
                    );
                }
            }
        };
        if session
            .floor
            .is_some_and(|f| f.timeline() != timeline || f.system() != system)
        {
            // A failover, or a session moved to another cluster: only the primary is certain.
            session.floor = None;
            session.on = Some(On::Primary);
        }
        let floor = |s: &Session| s.floor.map_or(Lsn(0), |f| f.position());
        match session.on {
            Some(On::Replica(i)) => {
                let stays = {
                    let view = self.view();
                    let seen = &view.replicas[i];
                    seen.health.in_rotation() && seen.replay >= floor(session)
                };
                if stays {
                    return Ok(self.keep(i));
                }
                // Leaving: what it shows now bounds what the last read saw.
                let replica = &self.inner.replicas[i];
                match sql::replay(&replica.name, &replica.pool).await {
                    Ok(Some(replay)) => session.raise(system, timeline, replay),
                    _ => {
                        session.on = Some(On::Primary);
                        return self.fallback(POLICY, Reason::Fallback, "its replica is gone");
                    }
                }
            }
            Some(On::Primary) => {
                let now = self.inner.clock.monotonic();
                let due = session.left_primary_try.is_none_or(|at| {
                    now.saturating_duration_since(at) >= self.inner.config.poll_interval
                });
                if !due {
                    return self.fallback(POLICY, Reason::Fallback, "no replica has caught up");
                }
                session.left_primary_try = Some(now);
                // Everything the last primary read saw is at or before the primary's position
                // now.
                let here = sql::take_token(&self.inner.primary).await?;
                session.observe(here);
            }
            None => {}
        }
        let target = floor(session);
        if let Some(i) = self.pick(|seen| seen.replay >= target) {
            session.on = Some(On::Replica(i));
            return Ok(self.keep(i));
        }
        if target > Lsn(0)
            && let Some((i, waited)) = self
                .wait_for(target, std::time::Duration::ZERO, None, false)
                .await?
        {
            session.on = Some(On::Replica(i));
            let mut route = self.keep(i);
            route.reason = Reason::Waited(waited);
            return Ok(route);
        }
        session.on = Some(On::Primary);
        self.fallback(POLICY, Reason::Fallback, "no replica has caught up")
    }

    fn keep(&self, i: usize) -> Route {
        crate::route::count(&self.inner.cluster, "monotonic", "replica");
        self.to_replica(i, Reason::Satisfied)
    }
}

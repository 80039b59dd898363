//! Replica health: what one poll saw, how stale that makes the replica, and whether it is in
//! rotation. Pure functions of their inputs, so every transition is tested without a server.
//!
//! **Staleness is measured, on the primary's clock.** Each poll of the primary records its
//! clock (`clock_timestamp()`) beside its WAL insert position; the heartbeat row the monitor
//! writes there is one more such pair that also reaches the replicas. A replica has everything
//! the primary had at the latest recorded instant whose position it has replayed (or whose
//! heartbeat it shows), so its staleness is at most the primary's time now minus that instant.
//! The primary's time now is its last reading plus the time elapsed here since, on this
//! process's monotonic clock: no two machines' clocks are compared, and an idle primary does
//! not look like a lagging replica (replay at the primary's position means staleness 0).
//!
//! **Hysteresis.** A replica leaves rotation at once when it is unreachable, promoted, paused,
//! not replaying while behind, of another cluster, or staler than `max_lag`; it comes back only
//! after `recover_polls` polls in a row that are good and no staler than half of `max_lag`, so a
//! replica hovering at the bound does not flap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::token::Lsn;

/// One reading of the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySample {
    /// When it was read, on this process's monotonic clock (the reply's arrival).
    pub at: Instant,
    /// The primary's clock, in microseconds since the Unix epoch.
    pub clock_us: i64,
    /// Its WAL insert position at that time.
    pub position: Lsn,
    /// Its timeline.
    pub timeline: u32,
}

/// One reading of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSample {
    /// When it was read, on this process's monotonic clock.
    pub at: Instant,
    /// `pg_is_in_recovery()`: false once it was promoted.
    pub in_recovery: bool,
    /// The cluster's system identifier, as the replica reports it.
    pub system: u64,
    /// `pg_last_wal_replay_lsn()`.
    pub replay: Option<Lsn>,
    /// `pg_is_wal_replay_paused()`.
    pub paused: bool,
    /// The heartbeat the replica shows, in microseconds of the primary's clock.
    pub heartbeat_us: Option<i64>,
}

/// Readings of the primary, oldest first, kept for `keep` (ten minutes by default).
#[derive(Debug, Clone)]
pub struct PrimaryHistory {
    samples: VecDeque<PrimarySample>,
    keep: Duration,
}

/// At most this many readings are kept, whatever `keep` says.
const MAX_SAMPLES: usize = 8192;

impl PrimaryHistory {
    /// An empty history keeping readings for `keep`.
    pub fn new(keep: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            keep,
        }
    }

    /// Adds a reading, forgetting those older than `keep`.
    pub fn record(&mut self, sample: PrimarySample) {
        if self
            .samples
            .back()
            .is_some_and(|last| last.timeline != sample.timeline)
        {
            // Positions of another timeline do not compare with this one's.
            self.samples.clear();
        }
        self.samples.push_back(sample);
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| sample.at.saturating_duration_since(s.at) > self.keep)
        {
            self.samples.pop_front();
        }
    }

    /// The newest reading.
    pub fn latest(&self) -> Option<&PrimarySample> {
        self.samples.back()
    }

    /// The primary's clock at `now`, in microseconds: its last reading plus the time elapsed
    /// here since.
    pub fn clock_at(&self, now: Instant) -> Option<i64> {
        let last = self.samples.back()?;
        let elapsed = now.saturating_duration_since(last.at).as_micros();
        Some(
            last.clock_us
                .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX)),
        )
    }

    /// The newest instant (primary clock, µs) whose position is at or before `replay`.
    fn newest_replayed(&self, replay: Lsn) -> Option<i64> {
        // Positions only grow within a timeline, so the last sample at or before `replay` is
        // found by binary search.
        let n = self.samples.partition_point(|s| s.position <= replay);
        n.checked_sub(1).map(|i| self.samples[i].clock_us)
    }
}

/// How stale `replica` was when it was read: the primary's time then, minus the newest primary
/// instant it is known to have (by replay position or by the heartbeat it shows). `None` when
/// nothing is known (no reading of the primary yet, or a replica older than every reading and
/// without a heartbeat).
pub fn staleness(history: &PrimaryHistory, replica: &ReplicaSample) -> Option<Duration> {
    let now = history.clock_at(replica.at)?;
    let latest = history.latest()?;
    if replica.replay.is_some_and(|r| r >= latest.position) {
        // Caught up with the newest reading: it has everything the primary had then, and the
        // primary wrote nothing the monitor saw since.
        return Some(Duration::ZERO);
    }
    let by_position = replica.replay.and_then(|r| history.newest_replayed(r));
    let known = by_position.max(replica.heartbeat_us)?;
    Some(Duration::from_micros(
        u64::try_from(now.saturating_sub(known)).unwrap_or(0),
    ))
}

/// Why a replica is out of rotation, or that it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not polled yet.
    Unknown,
    /// In rotation.
    Healthy,
    /// Staler than `max_lag`, or recovering (not yet `recover_polls` good polls).
    Lagging,
    /// Replay is paused (`pg_wal_replay_pause()`).
    Paused,
    /// Behind the primary and not replaying.
    Stalled,
    /// No longer in recovery: it was promoted, and its data no longer follows the primary.
    Promoted,
    /// It reports another system identifier than the primary: a replica of another cluster.
    Foreign,
    /// The last poll failed.
    Unreachable,
}

impl State {
    /// The state's name, as in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Lagging => "lagging",
            State::Paused => "paused",
            State::Stalled => "stalled",
            State::Promoted => "promoted",
            State::Foreign => "foreign",
            State::Unreachable => "unreachable",
        }
    }
}

/// The thresholds of [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A replica staler than this leaves rotation.
    pub max_lag: Duration,
    /// Good polls in a row (no staler than `max_lag / 2`) before it comes back.
    pub recover_polls: u32,
    /// Behind and not replaying for this long makes it stalled.
    pub stall_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(5),
            recover_polls: 3,
            stall_after: Duration::from_secs(3),
        }
    }
}

/// One replica's health over its polls. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    good_polls: u32,
    /// The last replay position and when it was first seen.
    replay_since: Option<(Lsn, Instant)>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: State::Unknown,
            good_polls: 0,
            replay_since: None,
        }
    }
}

impl Health {
    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether reads may go to it.
    pub fn in_rotation(&self) -> bool {
        self.state == State::Healthy
    }

    /// A poll failed.
    pub fn unreachable(&mut self) -> State {
        self.good_polls = 0;
        self.state = State::Unreachable;
        self.state
    }

    /// A poll saw `sample`, `staleness` stale, against `primary` (its latest reading).
    pub fn observe(
        &mut self,
        sample: &ReplicaSample,
        staleness: Option<Duration>,
        primary: &PrimarySample,
        system: u64,
        limits: &Thresholds,
    ) -> State {
        let replay = sample.replay.unwrap_or_default();
        match self.replay_since {
            Some((seen, _)) if seen == replay => {}
            _ => self.replay_since = Some((replay, sample.at)),
        }
        let behind = replay < primary.position;
        let unmoved_for = self.replay_since.map_or(Duration::ZERO, |(_, since)| {
            sample.at.saturating_duration_since(since)
        });
        let bad = if sample.system != system {
            Some(State::Foreign)
        } else if !sample.in_recovery {
            Some(State::Promoted)
        } else if sample.paused {
            Some(State::Paused)
        } else if behind && unmoved_for >= limits.stall_after {
            Some(State::Stalled)
        } else {
            match staleness {
                None => Some(State::Lagging),
                Some(s) if s > limits.max_lag => Some(State::Lagging),
                Some(_) => None,
            }
        };
        if let Some(bad) = bad {
            self.good_polls = 0;
            self.state = bad;
            return bad;
        }
        let calm = staleness.is_some_and(|s| s <= limits.max_lag / 2);
        if self.state == State::Healthy {
            return self.state;
        }
        self.good_polls = if calm { self.good_polls + 1 } else { 0 };
        // The first poll of a replica that is fine puts it in rotation: there is no flapping to
        // damp before it has ever been seen.
        if self.state == State::Unknown && calm || self.good_polls >= limits.recover_polls {
            self.state = State::Healthy;
            self.good_polls = 0;
        } else {
            self.state = State::Lagging;
        }
        self.state
    }
}

#[cfg(test)]
mod tests;

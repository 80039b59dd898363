//! The doctor's per-partition rules: what a window of readings says about one partition.
//!
//! A reading ([`Sample`]) is taken by the doctor at its own pace: the group's committed offset
//! and the partition's log end, at one instant. The rules look at a sliding window of them.
//! They follow Burrow's statuses (OK, WARN, STALL, STOP, REWIND) with two changes that fix what
//! Burrow's users complain of:
//!
//! - **No false STOP on an idle topic.** Burrow judges a partition by the time of the group's
//!   last *commit*; a client that commits only when its position moves stops committing on a
//!   quiet topic, and Burrow calls a caught-up consumer stopped. Here the readings are taken
//!   whether or not anyone commits, so a partition whose lag is zero now is [`Status::Ok`],
//!   however old the last commit.
//! - **WARN that fires.** Burrow warns only when the lag grew in *every* interval of the window;
//!   one noisy reading resets it, so a slowly drowning group never warns. Here the lag is
//!   growing when every reading of the newest third of the window is above every reading of the
//!   oldest third: noise smaller than a third of the window's growth does not hide it.
//!
//! STALL and STOP are told apart by whether the group has members, not by commit times: a
//! partition whose committed offset has not moved in the newest half of the window while the
//! group has consumers is stuck in a consumer (a poison message, a hung handler); one with lag
//! and nobody in the group is stopped. Half a window, not a whole one, so that a partition that
//! moved once and then stuck is seen before the move leaves the window.

use serde::Serialize;

/// One reading of a partition for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    /// When it was read, in Unix milliseconds on the doctor's clock.
    pub at_ms: i64,
    /// The group's committed offset: the next offset it will read. `None` when the group has
    /// never committed on this partition.
    pub committed: Option<i64>,
    /// The log end offset: the offset the next produced message will get.
    pub end: i64,
}

impl Sample {
    /// Messages written and not yet consumed; `None` without a committed offset. A committed
    /// offset past the end (the log was truncated or recreated) counts as zero lag.
    pub fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.end - c).max(0))
    }
}

/// A partition's status, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Status {
    /// Caught up, or consuming at least as fast as messages arrive.
    Ok,
    /// Consuming, but the lag has grown over the window: falling behind.
    Warn,
    /// The committed offset went backwards within the window: offsets were reset, or a
    /// consumer committed an old position.
    Rewind,
    /// Not moving while messages wait and the group has members: stuck inside a consumer.
    Stall,
    /// Not moving while messages wait and the group has no members: nobody is consuming.
    Stop,
}

impl Status {
    /// The lowercase name used in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Rewind => "rewind",
            Status::Stall => "stall",
            Status::Stop => "stop",
        }
    }

    /// Every status, best first.
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Warn,
        Status::Rewind,
        Status::Stall,
        Status::Stop,
    ];
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a partition has its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Reason {
    /// The newest reading has no lag.
    CaughtUp,
    /// The group has never committed on this partition.
    NoCommit,
    /// Fewer readings than the rules need to judge a trend; the lag is shown as read.
    TooFewSamples,
    /// The committed offset moved and the lag did not grow.
    Advancing,
    /// The committed offset moved, but every reading of the newest third of the window has more
    /// lag than every reading of the oldest third.
    LagGrowing {
        /// The lag at the oldest reading of the window.
        from: i64,
        /// The lag at the newest.
        to: i64,
    },
    /// The committed offset did not move in the newest half of the window (or, with nobody in
    /// the group, since it last changed) while messages waited.
    NotAdvancing {
        /// The offset it is stuck at: the message that is not getting done.
        offset: i64,
        /// How long the window shows it there, in milliseconds (since it last changed).
        for_ms: i64,
    },
    /// The committed offset went down between two readings.
    Rewound {
        /// The offset before.
        from: i64,
        /// The offset after.
        to: i64,
    },
}

/// The rules' verdict on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// The status.
    pub status: Status,
    /// Why.
    #[serde(flatten)]
    pub reason: Reason,
    /// The lag at the newest reading.
    pub lag: Option<i64>,
}

/// How many readings a window needs before a trend is judged (STALL, WARN). A partition with
/// lag and no consumers is STOP at once; one with consumers is STALL once its committed offset
/// has not moved in the newest half of the window (and in at least this many readings).
pub const MIN_SAMPLES: usize = 3;

/// Evaluates a window of readings, oldest first. `group_has_members` tells STALL from STOP.
///
/// An empty window is [`Status::Ok`] with [`Reason::TooFewSamples`].
pub fn evaluate(window: &[Sample], group_has_members: bool) -> Evaluation {
    let Some(newest) = window.last() else {
        return Evaluation {
            status: Status::Ok,
            reason: Reason::TooFewSamples,
            lag: None,
        };
    };
    let lag = newest.lag();
    let verdict = |status, reason| Evaluation {
        status,
        reason,
        lag,
    };
    if let Some((from, to)) = rewind(window) {
        return verdict(Status::Rewind, Reason::Rewound { from, to });
    }
    let Some(current) = lag else {
        return verdict(Status::Ok, Reason::NoCommit);
    };
    if current == 0 {
        return verdict(Status::Ok, Reason::CaughtUp);
    }
    // The newest run of readings with the newest committed offset: how long it has not moved.
    let run: Vec<&Sample> = window
        .iter()
        .rev()
        .take_while(|s| s.committed == newest.committed)
        .collect();
    let since = run.last().map_or(newest.at_ms, |s| s.at_ms);
    let stuck = Reason::NotAdvancing {
        offset: newest.committed.unwrap_or(0),
        for_ms: newest.at_ms - since,
    };
    if !group_has_members {
        return verdict(Status::Stop, stuck);
    }
    if window.len() < MIN_SAMPLES {
        return verdict(Status::Ok, Reason::TooFewSamples);
    }
    if run.len() >= MIN_SAMPLES.max(window.len().div_ceil(2)) {
        return verdict(Status::Stall, stuck);
    }
    if let Some((from, to)) = growing(window) {
        return verdict(Status::Warn, Reason::LagGrowing { from, to });
    }
    verdict(Status::Ok, Reason::Advancing)
}

/// The first decrease of the committed offset between consecutive readings.
fn rewind(window: &[Sample]) -> Option<(i64, i64)> {
    let mut previous: Option<i64> = None;
    for sample in window {
        if let Some(now) = sample.committed {
            if let Some(before) = previous
                && now < before
            {
                return Some((before, now));
            }
            previous = Some(now);
        }
    }
    None
}

/// `Some((first lag, last lag))` when every lag of the newest third of the window exceeds every
/// lag of the oldest third (the middle third is not compared, so that noise between neighbours
/// does not decide).
fn growing(window: &[Sample]) -> Option<(i64, i64)> {
    let lags: Vec<i64> = window.iter().filter_map(Sample::lag).collect();
    if lags.len() < MIN_SAMPLES {
        return None;
    }
    let third = lags.len() / 3;
    let older_max = lags[..third].iter().max()?;
    let newer_min = lags[lags.len() - third..].iter().min()?;
    (newer_min > older_max).then(|| (lags[0], lags[lags.len() - 1]))
}

#[cfg(test)]
mod tests;

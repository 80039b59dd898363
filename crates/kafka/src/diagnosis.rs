//! From a window of a group's observations to a diagnosis in words.
//!
//! Each [`Observation`] is what the doctor read about one group at one instant: its state, its
//! members and what they own, and every partition's committed offset, log end and the time of
//! the oldest waiting message. A [`GroupHistory`] keeps the observations of a sliding window;
//! [`diagnose`] evaluates each partition with the [`rules`], counts membership
//! changes (rebalances), and names the probable cause with the next step:
//!
//! | finding | what the window shows |
//! |---|---|
//! | [`FindingKind::EmptyGroup`] | messages wait and the group has no members |
//! | [`FindingKind::RebalanceStorm`] | the membership changed [`STORM_REBALANCES`] times or more |
//! | [`FindingKind::StuckPartition`] | a partition does not move while the group's others move or are caught up |
//! | [`FindingKind::GroupStalled`] | no partition moves or is caught up although the group has members |
//! | [`FindingKind::FallingBehind`] | the lag grows on most partitions that have lag, while they move |
//! | [`FindingKind::Rewind`] | a committed offset went backwards |
//! | [`FindingKind::UnknownGroup`] | no members and no committed offsets: a wrong name, or a group that never committed |
//! | [`FindingKind::Healthy`] | none of the above |
//!
//! Pure: no I/O and no clock; the collector (feature `client`) supplies the observations.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::rules::{self, Reason, Sample, Status};

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`'s partition `partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A member of a group as the broker describes it. Brokers that do not send the assignment
/// (see docs/kafka.md) leave `partitions` empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The member id the coordinator gave it (new at every join, unless static).
    pub id: String,
    /// The client id the consumer set.
    pub client_id: String,
    /// The host it connected from.
    pub host: String,
    /// The partitions assigned to it.
    pub partitions: Vec<TopicPartition>,
}

/// One partition at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reading {
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// The log end offset.
    pub end: i64,
    /// The timestamp (Unix ms) of the message at the committed offset: the oldest one waiting.
    /// `None` when nothing waits or it could not be read.
    pub waiting_since_ms: Option<i64>,
}

/// What the doctor read about a group at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// The group's state as the coordinator names it (`Stable`, `Empty`,
    /// `PreparingRebalance`, ...).
    pub state: String,
    /// Its members.
    pub members: Vec<Member>,
    /// Every partition the group owns or has committed on.
    pub partitions: BTreeMap<TopicPartition, Reading>,
}

impl Observation {
    /// Member ids, sorted: what a rebalance changes.
    fn membership(&self) -> BTreeSet<&str> {
        self.members.iter().map(|m| m.id.as_str()).collect()
    }
}

/// The observations of one group over a sliding window.
#[derive(Debug, Clone)]
pub struct GroupHistory {
    group: String,
    window_ms: i64,
    observations: VecDeque<Observation>,
}

impl GroupHistory {
    /// An empty history of `group` keeping `window_ms` of observations.
    pub fn new(group: impl Into<String>, window_ms: i64) -> Self {
        Self {
            group: group.into(),
            window_ms: window_ms.max(1),
            observations: VecDeque::new(),
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Adds an observation (newer than the last) and forgets those that left the window.
    pub fn record(&mut self, observation: Observation) {
        let newest = observation.at_ms;
        self.observations.push_back(observation);
        while self
            .observations
            .front()
            .is_some_and(|o| o.at_ms < newest - self.window_ms)
        {
            self.observations.pop_front();
        }
    }

    /// The observations in the window, oldest first.
    pub fn observations(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter()
    }
}

/// How many membership changes within the window make a rebalance storm.
pub const STORM_REBALANCES: u32 = 3;

/// A partition's line in a diagnosis.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset at the newest observation.
    pub committed: Option<i64>,
    /// The log end offset.
    pub end: i64,
    /// Messages waiting.
    pub lag: Option<i64>,
    /// How long the oldest waiting message has waited, in seconds (0 when nothing waits, even
    /// on a topic where nothing was produced for hours).
    pub lag_seconds: Option<f64>,
    /// The rules' status.
    pub status: Status,
    /// Why, with the figures the rule used.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub reason: Reason,
    /// The member that owns it, when the broker says.
    pub owner: Option<String>,
}

/// What kind of problem a finding names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FindingKind {
    /// Nothing wrong.
    Healthy,
    /// No members and no committed offsets.
    UnknownGroup,
    /// Messages wait and nobody is in the group.
    EmptyGroup,
    /// Members keep leaving and joining.
    RebalanceStorm,
    /// A partition does not move while the group's others move or are caught up.
    StuckPartition,
    /// No partition moves or is caught up although the group has members.
    GroupStalled,
    /// The lag grows on most partitions while they are consumed.
    FallingBehind,
    /// A committed offset went backwards.
    Rewind,
    /// Too few observations to judge trends.
    NotEnoughData,
}

/// A probable cause and the next step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finding {
    /// The kind.
    pub kind: FindingKind,
    /// What the readings show, with their figures.
    pub summary: String,
    /// What to do or look at next.
    pub next_step: String,
}

/// The doctor's report on one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnosis {
    /// The group.
    pub group: String,
    /// When the newest observation was made (Unix ms).
    pub at_ms: i64,
    /// The coordinator's state at the newest observation.
    pub state: String,
    /// The worst partition status.
    pub status: Status,
    /// Members at the newest observation.
    pub members: Vec<Member>,
    /// Membership changes seen within the window.
    pub rebalances: u32,
    /// The time the window's observations span, in milliseconds.
    pub window_ms: i64,
    /// How many observations it holds.
    pub observations: usize,
    /// Total messages waiting.
    pub lag: i64,
    /// The longest any waiting message has waited, in seconds.
    pub lag_seconds: f64,
    /// Messages the group committed per second over the window.
    pub consume_rate: f64,
    /// Messages produced per second to its partitions over the window.
    pub produce_rate: f64,
    /// One line per partition, worst first.
    pub partitions: Vec<PartitionReport>,
    /// Probable causes, most urgent first; [`FindingKind::Healthy`] alone when there are none.
    pub findings: Vec<Finding>,
}

/// Diagnoses a group from its history. `None` when the history is empty.
pub fn diagnose(history: &GroupHistory) -> Option<Diagnosis> {
    let newest = history.observations.back()?;
    let oldest = history.observations.front()?;
    let span_ms = newest.at_ms - oldest.at_ms;
    let has_members = !newest.members.is_empty();
    let owners = owners(newest);

    let mut partitions = Vec::new();
    for (tp, reading) in &newest.partitions {
        let window: Vec<Sample> = history
            .observations
            .iter()
            .filter_map(|o| {
                o.partitions.get(tp).map(|r| Sample {
                    at_ms: o.at_ms,
                    committed: r.committed,
                    end: r.end,
                })
            })
            .collect();
        let verdict = rules::evaluate(&window, has_members);
        let lag_seconds = match verdict.lag {
            Some(0) => Some(0.0),
            Some(_) => reading
                .waiting_since_ms
                .map(|t| (newest.at_ms - t).max(0) as f64 / 1000.0),
            None => None,
        };
        partitions.push(PartitionReport {
            topic: tp.topic.clone(),
            partition: tp.partition,
            committed: reading.committed,
            end: reading.end,
            lag: verdict.lag,
            lag_seconds,
            status: verdict.status,
            reason: verdict.reason,
            owner: owners.get(tp).cloned(),
        });
    }
    partitions.sort_by(|a, b| {
        b.status
            .cmp(&a.status)
            .then(b.lag.cmp(&a.lag))
            .then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)))
    });

    let rebalances = history
        .observations
        .iter()
        .zip(history.observations.iter().skip(1))
        .filter(|(a, b)| a.membership() != b.membership())
        .count();
    let rebalances = u32::try_from(rebalances).unwrap_or(u32::MAX);
    let (consume_rate, produce_rate) = rates(history);
    let mut diagnosis = Diagnosis {
        group: history.group.clone(),
        at_ms: newest.at_ms,
        state: newest.state.clone(),
        status: partitions
            .iter()
            .map(|p| p.status)
            .max()
            .unwrap_or(Status::Ok),
        members: newest.members.clone(),
        rebalances,
        window_ms: span_ms,
        observations: history.observations.len(),
        lag: partitions.iter().filter_map(|p| p.lag).sum(),
        lag_seconds: partitions
            .iter()
            .filter_map(|p| p.lag_seconds)
            .fold(0.0, f64::max),
        consume_rate,
        produce_rate,
        partitions,
        findings: Vec::new(),
    };
    diagnosis.findings = crate::findings::findings(&diagnosis);
    Some(diagnosis)
}

/// Which member owns each partition, by the newest observation.
fn owners(observation: &Observation) -> BTreeMap<TopicPartition, String> {
    let mut owners = BTreeMap::new();
    for member in &observation.members {
        for tp in &member.partitions {
            owners.insert(tp.clone(), member.id.clone());
        }
    }
    owners
}

/// Messages committed and produced per second: per partition, between the first reading of
/// the window that has it and the newest, summed over partitions.
fn rates(history: &GroupHistory) -> (f64, f64) {
    let Some(newest) = history.observations.back() else {
        return (0.0, 0.0);
    };
    let (mut consumed, mut produced) = (0.0, 0.0);
    for (tp, now) in &newest.partitions {
        let first = history
            .observations
            .iter()
            .find_map(|o| o.partitions.get(tp).map(|r| (o.at_ms, r)));
        let Some((since, then)) = first else { continue };
        let seconds = (newest.at_ms - since) as f64 / 1000.0;
        if seconds <= 0.0 {
            continue;
        }
        if let (Some(a), Some(b)) = (then.committed, now.committed) {
            consumed += (b - a).max(0) as f64 / seconds;
        }
        produced += (now.end - then.end).max(0) as f64 / seconds;
    }
    (consumed, produced)
}

#[cfg(test)]
mod tests;

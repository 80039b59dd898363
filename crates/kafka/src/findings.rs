//! The words of a diagnosis: each finding's summary with its figures, and the next step.

use crate::diagnosis::{Diagnosis, Finding, FindingKind, STORM_REBALANCES};
use crate::rules::{MIN_SAMPLES, Reason, Status};

fn finding(kind: FindingKind, summary: String, next_step: impl Into<String>) -> Finding {
    Finding {
        kind,
        summary,
        next_step: next_step.into(),
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.0} s", ms as f64 / 1000.0)
}

/// The findings for a diagnosis, most urgent first.
pub(crate) fn findings(d: &Diagnosis) -> Vec<Finding> {
    let mut out = Vec::new();
    let waiting: Vec<_> = d
        .partitions
        .iter()
        .filter(|p| p.lag.unwrap_or(0) > 0)
        .collect();
    let committed_any = d.partitions.iter().any(|p| p.committed.is_some());

    if d.members.is_empty() && !committed_any {
        out.push(finding(
            FindingKind::UnknownGroup,
            format!("group {} has no members and no committed offsets", d.group),
            "check the group name (the consumers' group.id); a group that has never committed \
             has nothing to diagnose until it does",
        ));
        return out;
    }
    if d.members.is_empty() && !waiting.is_empty() {
        out.push(finding(
            FindingKind::EmptyGroup,
            format!(
                "no consumer is in group {}; {} messages wait on {} partition(s){}",
                d.group,
                d.lag,
                waiting.len(),
                if waiting.iter().any(|p| p.lag_seconds.is_some()) {
                    format!(", the oldest for {:.0} s", d.lag_seconds)
                } else {
                    String::new()
                }
            ),
            "start the consumers; if they are running, check that they reach the brokers and \
             use this group.id",
        ));
    }
    if d.rebalances >= STORM_REBALANCES {
        let every = d.window_ms / i64::from(d.rebalances.max(1));
        out.push(finding(
            FindingKind::RebalanceStorm,
            format!(
                "the membership of group {} changed {} times in {}, about every {}; while it \
                 rebalances nobody consumes",
                d.group,
                d.rebalances,
                seconds(d.window_ms),
                seconds(every)
            ),
            format!(
                "a member that does not poll within max.poll.interval.ms is removed and rejoins: \
                 if {} is close to that setting, a handler runs inside the poll loop for longer \
                 (librdkafka logs MAXPOLL, the Java client 'consumer poll timeout has expired'); \
                 move slow work off the poll loop or raise the interval. Members that crash and \
                 restart rejoin too: static membership (group.instance.id) keeps their \
                 partitions across a restart",
                seconds(every)
            ),
        ));
    }
    let stalled: Vec<_> = d
        .partitions
        .iter()
        .filter(|p| p.status == Status::Stall)
        .collect();
    // Partitions the group is getting through: moving, or caught up. Beside one of those, a
    // stalled partition is held by something of its own (a message), not by the whole group.
    let moving = d
        .partitions
        .iter()
        .filter(|p| {
            matches!(
                p.reason,
                Reason::Advancing | Reason::LagGrowing { .. } | Reason::CaughtUp
            )
        })
        .count();
    if !stalled.is_empty() && moving > 0 {
        for p in &stalled {
            let Reason::NotAdvancing { offset, for_ms } = p.reason else {
                continue;
            };
            let owner = p
                .owner
                .as_deref()
                .map(|o| format!(" (owned by {o})"))
                .unwrap_or_default();
            out.push(finding(
                FindingKind::StuckPartition,
                format!(
                    "partition {}-{}{} has not moved from offset {} for {} while the group's \
                     other partitions advance or are caught up; {} messages wait behind it",
                    p.topic,
                    p.partition,
                    owner,
                    offset,
                    seconds(for_ms),
                    p.lag.unwrap_or(0)
                ),
                format!(
                    "a message that fails every time (poison) or a handler that hangs: read \
                     offset {offset} of {}-{} (kcat -C -t {} -p {} -o {offset} -c 1) and the \
                     consumer's logs for it; send messages that keep failing to a dead-letter \
                     topic so one message cannot hold its partition",
                    p.topic, p.partition, p.topic, p.partition
                ),
            ));
        }
    } else if !stalled.is_empty() {
        let longest = stalled
            .iter()
            .filter_map(|p| match p.reason {
                Reason::NotAdvancing { for_ms, .. } => Some(for_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        out.push(finding(
            FindingKind::GroupStalled,
            format!(
                "group {} has {} member(s) but none of its {} partition(s) with waiting messages \
                 moved for {}",
                d.group,
                d.members.len(),
                stalled.len(),
                seconds(longest)
            ),
            "every consumer is stuck: a dependency they all call is down or hangs, or they are \
             paused; look at what the handlers wait on",
        ));
    }
    let growing = d
        .partitions
        .iter()
        .filter(|p| p.status == Status::Warn)
        .count();
    if growing > 0 && growing * 2 >= waiting.len() {
        out.push(finding(
            FindingKind::FallingBehind,
            format!(
                "the lag grew on {growing} of {} partition(s) with waiting messages while they \
                 were consumed: the group commits {:.1} messages/s and producers write {:.1}/s",
                waiting.len(),
                d.consume_rate,
                d.produce_rate
            ),
            format!(
                "the consumers are too slow for the load: add consumers (useful up to the {} \
                 partitions), make the handler faster or process a partition's keys \
                 concurrently",
                d.partitions.len()
            ),
        ));
    }
    for p in d.partitions.iter().filter(|p| p.status == Status::Rewind) {
        if let Reason::Rewound { from, to } = p.reason {
            out.push(finding(
                FindingKind::Rewind,
                format!(
                    "the committed offset of {}-{} went back from {from} to {to}",
                    p.topic, p.partition
                ),
                "someone reset the group's offsets, or a consumer committed a position it held \
                 from before a rebalance; messages after the old offset are processed again",
            ));
        }
    }
    if out.is_empty() {
        out.push(finding(
            FindingKind::Healthy,
            format!(
                "every partition of group {} is caught up or keeping up ({:.1} messages/s \
                 consumed, {:.1}/s produced)",
                d.group, d.consume_rate, d.produce_rate
            ),
            "nothing to do",
        ));
    }
    if d.observations < MIN_SAMPLES {
        out.push(finding(
            FindingKind::NotEnoughData,
            format!(
                "judged from {} observation(s); stalls and growing lag need {MIN_SAMPLES}",
                d.observations
            ),
            "watch longer (--window, --watch)",
        ));
    }
    out
}

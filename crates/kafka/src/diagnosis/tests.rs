use std::collections::BTreeMap;

use super::{FindingKind, GroupHistory, Member, Observation, Reading, TopicPartition, diagnose};
use crate::rules::Status;

fn member(id: &str, partitions: &[i32]) -> Member {
    Member {
        id: id.to_owned(),
        client_id: "worker".to_owned(),
        host: "/10.0.0.7".to_owned(),
        partitions: partitions
            .iter()
            .map(|&p| TopicPartition::new("orders", p))
            .collect(),
    }
}

/// `readings[i]` are the (committed, end) of partitions 0.. at second `i`.
fn history(members: &[Vec<Member>], readings: &[Vec<(i64, i64)>]) -> GroupHistory {
    let mut history = GroupHistory::new("billing", 600_000);
    for (i, row) in readings.iter().enumerate() {
        let at_ms = 1_700_000_000_000 + 1_000 * i64::try_from(i).unwrap_or(0);
        let mut partitions = BTreeMap::new();
        for (p, &(committed, end)) in row.iter().enumerate() {
            partitions.insert(
                TopicPartition::new("orders", i32::try_from(p).unwrap_or(0)),
                Reading {
                    committed: Some(committed),
                    end,
                    waiting_since_ms: (end > committed).then_some(at_ms - 4_000),
                },
            );
        }
        let members = members[i.min(members.len() - 1)].clone();
        history.record(Observation {
            at_ms,
            state: if members.is_empty() {
                "Empty"
            } else {
                "Stable"
            }
            .to_owned(),
            members,
            partitions,
        });
    }
    history
}

fn kinds(history: &GroupHistory) -> Vec<FindingKind> {
    diagnose(history)
        .map(|d| d.findings.iter().map(|f| f.kind).collect())
        .unwrap_or_default()
}

#[test]
fn an_idle_caught_up_group_is_healthy_with_zero_time_lag() {
    let two = vec![member("a", &[0]), member("b", &[1])];
    let h = history(&[two], &vec![vec![(70, 70), (80, 80)]; 10]);
    let d = diagnose(&h).expect("observations");
    assert_eq!(d.status, Status::Ok);
    assert_eq!(kinds(&h), [FindingKind::Healthy]);
    assert!(d.partitions.iter().all(|p| p.lag_seconds == Some(0.0)));
    assert_eq!(d.partitions[0].owner.as_deref(), Some("a"));
}

#[test]
fn one_stuck_partition_is_named_with_its_offset_while_the_others_advance() {
    let two = vec![member("a", &[0, 1]), member("b", &[2])];
    let rows: Vec<_> = (0..8)
        .map(|i| vec![(41, 60 + i), (100 + 10 * i, 105 + 10 * i), (10 * i, 10 * i)])
        .collect();
    let h = history(&[two], &rows);
    let d = diagnose(&h).expect("observations");
    assert_eq!(d.status, Status::Stall);
    assert_eq!(kinds(&h), [FindingKind::StuckPartition]);
    let finding = &d.findings[0];
    assert!(finding.summary.contains("orders-0"), "{}", finding.summary);
    assert!(finding.summary.contains("offset 41"), "{}", finding.summary);
    assert!(
        finding.summary.contains("owned by a"),
        "{}",
        finding.summary
    );
    assert!(finding.next_step.contains("-o 41"), "{}", finding.next_step);
    assert_eq!(d.partitions[0].partition, 0, "worst first");
    assert_eq!(d.partitions[0].lag_seconds, Some(4.0));
}

#[test]
fn every_partition_stuck_is_the_group_stalled_not_one_poison_message() {
    let one = vec![member("a", &[0, 1])];
    let rows: Vec<_> = (0..5).map(|i| vec![(5, 9 + i), (7, 30 + i)]).collect();
    assert_eq!(kinds(&history(&[one], &rows)), [FindingKind::GroupStalled]);
}

#[test]
fn nobody_in_the_group_with_messages_waiting_is_an_empty_group() {
    let rows: Vec<_> = (0..4).map(|i| vec![(5, 9 + i), (7, 7)]).collect();
    let h = history(&[vec![]], &rows);
    let d = diagnose(&h).expect("observations");
    assert_eq!(d.status, Status::Stop);
    assert_eq!(kinds(&h), [FindingKind::EmptyGroup]);
}

#[test]
fn growing_lag_on_every_partition_is_falling_behind_with_both_rates() {
    let one = vec![member("a", &[0, 1])];
    let rows: Vec<_> = (0..9)
        .map(|i| vec![(10 * i, 20 * i + 5), (10 * i, 20 * i + 5)])
        .collect();
    let h = history(&[one], &rows);
    let d = diagnose(&h).expect("observations");
    assert_eq!(kinds(&h), [FindingKind::FallingBehind]);
    assert!((d.consume_rate - 20.0).abs() < 1e-9, "{}", d.consume_rate);
    assert!((d.produce_rate - 40.0).abs() < 1e-9, "{}", d.produce_rate);
}

#[test]
fn members_that_keep_changing_are_a_rebalance_storm_with_its_period() {
    let memberships: Vec<Vec<Member>> = (0..10)
        .map(|i| vec![member(&format!("a-{}", i / 2), &[0])])
        .collect();
    let rows: Vec<_> = (0..10).map(|i| vec![(i, i + 3)]).collect();
    let h = history(&memberships, &rows);
    let d = diagnose(&h).expect("observations");
    assert_eq!(d.rebalances, 4);
    assert!(kinds(&h).contains(&FindingKind::RebalanceStorm));
    let storm = d
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::RebalanceStorm)
        .expect("storm");
    assert!(
        storm.summary.contains("4 times in 9 s"),
        "{}",
        storm.summary
    );
}

#[test]
fn a_rewind_names_both_offsets() {
    let one = vec![member("a", &[0])];
    let rows = vec![vec![(50, 60)], vec![(55, 60)], vec![(3, 60)], vec![(9, 60)]];
    let h = history(&[one], &rows);
    assert_eq!(kinds(&h), [FindingKind::Rewind]);
    let d = diagnose(&h).expect("observations");
    assert!(d.findings[0].summary.contains("from 55 to 3"));
}

#[test]
fn a_group_with_nothing_committed_and_no_members_is_unknown() {
    let mut h = GroupHistory::new("typo", 60_000);
    h.record(Observation {
        at_ms: 0,
        state: "Dead".to_owned(),
        members: vec![],
        partitions: BTreeMap::new(),
    });
    assert_eq!(kinds(&h), [FindingKind::UnknownGroup]);
}

#[test]
fn few_observations_say_so() {
    let one = vec![member("a", &[0])];
    let h = history(&[one], &[vec![(5, 9)]]);
    assert_eq!(
        kinds(&h),
        [FindingKind::Healthy, FindingKind::NotEnoughData]
    );
}

#[test]
fn the_window_forgets_old_observations() {
    let mut h = GroupHistory::new("g", 5_000);
    for i in 0..20 {
        h.record(Observation {
            at_ms: i * 1_000,
            state: "Stable".to_owned(),
            members: vec![],
            partitions: BTreeMap::new(),
        });
    }
    let times: Vec<_> = h.observations().map(|o| o.at_ms).collect();
    assert_eq!(times, [14_000, 15_000, 16_000, 17_000, 18_000, 19_000]);
}

#[test]
fn a_stalled_partition_beside_caught_up_ones_is_stuck_not_the_group() {
    // The consumer finished partitions 1 and 2 before the window began and is held by one
    // message on partition 0: a poison message, not a dead group.
    let one = vec![member("a", &[0, 1, 2])];
    let rows: Vec<_> = (0..8)
        .map(|_| vec![(20, 206), (203, 203), (193, 193)])
        .collect();
    assert_eq!(
        kinds(&history(&[one], &rows)),
        [FindingKind::StuckPartition]
    );
}

use proptest::prelude::*;

use super::{MIN_SAMPLES, Reason, Sample, Status, evaluate};

/// Readings every `step_ms`, from `(committed, end)` pairs.
fn history(step_ms: i64, points: &[(i64, i64)]) -> Vec<Sample> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(committed, end))| Sample {
            at_ms: 1_000_000 + step_ms * i64::try_from(i).unwrap_or(0),
            committed: Some(committed),
            end,
        })
        .collect()
}

#[test]
fn a_caught_up_group_on_an_idle_topic_is_ok_however_long_ago_it_committed() {
    // Burrow's false STOP: nothing has been produced for an hour, so the consumer has had
    // nothing to commit. Readings show committed == end throughout.
    let window = history(60_000, &[(500, 500); 60]);
    let verdict = evaluate(&window, true);
    assert_eq!(verdict.status, Status::Ok);
    assert_eq!(verdict.reason, Reason::CaughtUp);
    // ... and with the consumers gone too: nothing waits, so nothing is stopped.
    assert_eq!(evaluate(&window, false).status, Status::Ok);
}

#[test]
fn a_partition_not_moving_while_messages_wait_is_stall_with_members_and_stop_without() {
    let window = history(1_000, &[(40, 90), (40, 95), (40, 99), (40, 120)]);
    let verdict = evaluate(&window, true);
    assert_eq!(verdict.status, Status::Stall);
    assert_eq!(
        verdict.reason,
        Reason::NotAdvancing {
            offset: 40,
            for_ms: 3_000
        }
    );
    assert_eq!(verdict.lag, Some(80));
    assert_eq!(evaluate(&window, false).status, Status::Stop);
    // With no members, one reading with lag is enough.
    assert_eq!(evaluate(&window[..1], false).status, Status::Stop);
    assert_eq!(evaluate(&window[..1], true).status, Status::Ok);
}

#[test]
fn growing_lag_warns_even_when_one_interval_shrinks() {
    // Burrow needs the lag to grow in every interval; the dip from 30 to 28 would hide this.
    let window = history(
        1_000,
        &[(0, 10), (5, 25), (10, 40), (22, 50), (25, 70), (30, 90)],
    );
    let lags: Vec<_> = window.iter().filter_map(Sample::lag).collect();
    assert_eq!(lags, [10, 20, 30, 28, 45, 60]);
    let verdict = evaluate(&window, true);
    assert_eq!(verdict.status, Status::Warn);
    assert_eq!(verdict.reason, Reason::LagGrowing { from: 10, to: 60 });
}

#[test]
fn a_rewind_is_reported_with_both_offsets() {
    let window = history(1_000, &[(100, 200), (150, 200), (20, 200), (30, 200)]);
    let verdict = evaluate(&window, true);
    assert_eq!(verdict.status, Status::Rewind);
    assert_eq!(verdict.reason, Reason::Rewound { from: 150, to: 20 });
}

#[test]
fn no_commit_and_no_readings_are_ok_and_say_so() {
    let window = [Sample {
        at_ms: 0,
        committed: None,
        end: 10,
    }];
    assert_eq!(evaluate(&window, true).reason, Reason::NoCommit);
    assert_eq!(evaluate(&[], true).reason, Reason::TooFewSamples);
}

fn points(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::vec((0i64..1_000, 0i64..1_000), len)
}

proptest! {
    /// Whatever came before, a partition with no lag at the newest reading and no rewind in
    /// the window is OK: the rules never call a caught-up consumer stopped or stalled.
    #[test]
    fn zero_lag_now_is_ok(
        mut raw in points(1..20),
        members in any::<bool>(),
        step in 1i64..600_000,
    ) {
        // Make the committed offsets non-decreasing and end the window caught up.
        raw.sort_by_key(|p| p.0);
        let last = raw.len() - 1;
        raw[last].1 = raw[last].0;
        for p in &mut raw {
            p.1 = p.1.max(p.0);
        }
        let verdict = evaluate(&history(step, &raw), members);
        prop_assert_eq!(verdict.status, Status::Ok);
        prop_assert_eq!(verdict.lag, Some(0));
    }

    /// Any decrease of the committed offset is a rewind, whatever else the window shows.
    #[test]
    fn any_decrease_is_a_rewind(raw in points(2..20), members in any::<bool>()) {
        let decreased = raw.windows(2).any(|w| w[1].0 < w[0].0);
        let verdict = evaluate(&history(1_000, &raw), members);
        prop_assert_eq!(verdict.status == Status::Rewind, decreased);
    }

    /// A committed offset that stays put while lag is waiting is STALL with members and STOP
    /// without, once the window has enough readings.
    #[test]
    fn a_fixed_offset_with_lag_is_stall_or_stop(
        offset in 0i64..1_000,
        ends in prop::collection::vec(1i64..1_000, MIN_SAMPLES..20),
        members in any::<bool>(),
    ) {
        let raw: Vec<_> = ends.iter().map(|e| (offset, offset + e)).collect();
        let verdict = evaluate(&history(1_000, &raw), members);
        let expected = if members { Status::Stall } else { Status::Stop };
        prop_assert_eq!(verdict.status, expected);
        let is_stuck_at_offset = matches!(verdict.reason, Reason::NotAdvancing { offset: o, .. } if o == offset);
        prop_assert!(is_stuck_at_offset);
    }

    /// Steady growth of the lag with noise warns as long as the noise (peak to peak) is below a
    /// third of the growth over the window; a shrinking lag never warns.
    #[test]
    fn noisy_growth_warns_and_shrinking_does_not(
        slope in 5i64..50,
        noise in prop::collection::vec(-1.0f64..1.0, 6..30),
        members in any::<bool>(),
    ) {
        let n = i64::try_from(noise.len()).unwrap_or(6);
        let amplitude = (slope * n) as f64 / 3.0 - 2.0;
        let mut raw = Vec::new();
        for (i, wobble) in noise.iter().enumerate() {
            let i = i64::try_from(i).unwrap_or(0);
            let committed = 1_000 + 10 * i;
            let lag = 100 + slope * i + (wobble * amplitude / 2.0) as i64;
            raw.push((committed, committed + lag.max(1)));
        }
        let verdict = evaluate(&history(1_000, &raw), members);
        // With nobody in the group, waiting messages are a stop, whatever the trend.
        let expected = if members { Status::Warn } else { Status::Stop };
        prop_assert_eq!(verdict.status, expected);

        let shrinking: Vec<_> = raw.iter().rev().enumerate()
            .map(|(i, &(_, end))| (1_000 + 10 * i64::try_from(i).unwrap_or(0), end.max(1_000 + 10 * n)))
            .collect();
        let shrinking_verdict = evaluate(&history(1_000, &shrinking), members);
        prop_assert_ne!(shrinking_verdict.status, Status::Warn);
    }

    /// The rules never panic and the lag they report is the newest reading's.
    #[test]
    fn total(raw in prop::collection::vec((prop::option::of(-5i64..1_000), -5i64..1_000), 0..30),
             members in any::<bool>()) {
        let window: Vec<_> = raw.iter().enumerate().map(|(i, &(committed, end))| Sample {
            at_ms: i64::try_from(i).unwrap_or(0) * 500,
            committed,
            end,
        }).collect();
        let verdict = evaluate(&window, members);
        prop_assert_eq!(verdict.lag, window.last().and_then(Sample::lag));
    }
}

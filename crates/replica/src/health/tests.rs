use super::*;
use proptest::prelude::*;

const SYSTEM: u64 = 42;

fn history(start: Instant, points: &[(u64, i64, u64)]) -> PrimaryHistory {
    let mut history = PrimaryHistory::new(Duration::from_secs(600));
    for &(ms, clock_ms, position) in points {
        history.record(PrimarySample {
            at: start + Duration::from_millis(ms),
            clock_us: clock_ms * 1000,
            position: Lsn(position),
            timeline: 1,
        });
    }
    history
}

fn replica(at: Instant, replay: u64, heartbeat_ms: Option<i64>) -> ReplicaSample {
    ReplicaSample {
        at,
        in_recovery: true,
        system: SYSTEM,
        replay: Some(Lsn(replay)),
        paused: false,
        heartbeat_us: heartbeat_ms.map(|ms| ms * 1000),
    }
}

#[test]
fn caught_up_replica_is_not_stale_even_on_an_idle_primary() {
    let t0 = Instant::now();
    let h = history(t0, &[(0, 1_000_000, 100), (10_000, 1_010_000, 100)]);
    // A heartbeat ten seconds old, but nothing was written since: not stale.
    let r = replica(t0 + Duration::from_millis(10_050), 100, Some(1_000_000));
    assert_eq!(staleness(&h, &r), Some(Duration::ZERO));
}

#[test]
fn staleness_is_the_primary_time_since_the_newest_replayed_reading() {
    let t0 = Instant::now();
    let h = history(t0, &[(0, 5_000, 100), (100, 5_100, 200), (200, 5_200, 300)]);
    // Replayed 200 (the reading at primary time 5,100 ms), read at local 250 ms, when the
    // primary's clock says 5,250: 150 ms stale.
    let r = replica(t0 + Duration::from_millis(250), 250, None);
    assert_eq!(staleness(&h, &r), Some(Duration::from_millis(150)));
    // A newer heartbeat wins over the position.
    let r = replica(t0 + Duration::from_millis(250), 250, Some(5_180));
    assert_eq!(staleness(&h, &r), Some(Duration::from_millis(70)));
    // Older than every reading and no heartbeat: unknown.
    let r = replica(t0 + Duration::from_millis(250), 50, None);
    assert_eq!(staleness(&h, &r), None);
}

#[test]
fn a_new_timeline_forgets_the_old_positions() {
    let t0 = Instant::now();
    let mut h = history(t0, &[(0, 0, 1000)]);
    h.record(PrimarySample {
        at: t0 + Duration::from_millis(10),
        clock_us: 10_000,
        position: Lsn(500),
        timeline: 2,
    });
    assert_eq!(h.samples.len(), 1);
}

fn primary(at: Instant, position: u64) -> PrimarySample {
    PrimarySample {
        at,
        clock_us: 0,
        position: Lsn(position),
        timeline: 1,
    }
}

#[test]
fn leaves_at_once_and_comes_back_after_calm_polls() {
    let limits = Thresholds::default();
    let t0 = Instant::now();
    let mut health = Health::default();
    let mut at = t0;
    let mut poll = |health: &mut Health, replay: u64, stale_ms: u64| {
        at += Duration::from_millis(100);
        let sample = replica(at, replay, None);
        health.observe(
            &sample,
            Some(Duration::from_millis(stale_ms)),
            &primary(at, replay + 1),
            SYSTEM,
            &limits,
        )
    };
    assert_eq!(poll(&mut health, 1, 10), State::Healthy);
    assert_eq!(poll(&mut health, 2, 6_000), State::Lagging);
    // Below max_lag but above half of it: still out.
    assert_eq!(poll(&mut health, 3, 4_000), State::Lagging);
    assert_eq!(poll(&mut health, 4, 100), State::Lagging);
    assert_eq!(poll(&mut health, 5, 100), State::Lagging);
    assert_eq!(poll(&mut health, 6, 100), State::Healthy);
    assert!(health.in_rotation());
}

#[test]
fn paused_promoted_foreign_and_stalled_replicas_leave_rotation() {
    let limits = Thresholds::default();
    let t0 = Instant::now();
    let fine = Some(Duration::ZERO);
    let mut health = Health::default();
    let mut sample = replica(t0, 10, None);
    sample.paused = true;
    assert_eq!(
        health.observe(&sample, fine, &primary(t0, 10), SYSTEM, &limits),
        State::Paused
    );
    sample.paused = false;
    sample.in_recovery = false;
    assert_eq!(
        health.observe(&sample, fine, &primary(t0, 10), SYSTEM, &limits),
        State::Promoted
    );
    sample.in_recovery = true;
    sample.system = 7;
    assert_eq!(
        health.observe(&sample, fine, &primary(t0, 10), SYSTEM, &limits),
        State::Foreign
    );
    // Behind the primary, replay not moving for stall_after.
    let mut health = Health::default();
    let sample = replica(t0, 10, None);
    health.observe(&sample, fine, &primary(t0, 20), SYSTEM, &limits);
    let later = replica(t0 + limits.stall_after, 10, None);
    assert_eq!(
        health.observe(&later, fine, &primary(later.at, 20), SYSTEM, &limits),
        State::Stalled
    );
}

proptest! {
    /// Staleness is never negative, never more than the primary's time since the oldest
    /// reading, and a replica further along is never staler.
    #[test]
    fn further_replay_is_never_staler(
        steps in proptest::collection::vec((1u64..500, 0u64..10_000), 1..40),
        a in 0u64..400_000, b in 0u64..400_000, read_after in 0u64..1_000,
    ) {
        let t0 = Instant::now();
        let mut points = Vec::new();
        let (mut ms, mut position) = (0u64, 0u64);
        for (dt, dp) in steps {
            ms += dt;
            position += dp;
            points.push((ms, 1_000_000 + ms as i64, position));
        }
        let h = history(t0, &points);
        let at = t0 + Duration::from_millis(ms + read_after);
        let (lo, hi) = (a.min(b), a.max(b));
        let s_lo = staleness(&h, &replica(at, lo, None));
        let s_hi = staleness(&h, &replica(at, hi, None));
        if let (Some(s_lo), Some(s_hi)) = (s_lo, s_hi) {
            prop_assert!(s_hi <= s_lo);
        }
        if s_lo.is_some() {
            prop_assert!(s_hi.is_some());
        }
        if let Some(s) = s_hi {
            prop_assert!(s <= Duration::from_millis(ms + read_after));
        }
    }
}

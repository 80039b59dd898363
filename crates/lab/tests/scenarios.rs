//! Every scenario of the lab: the naive way breaks the scenario's invariant, onephase keeps it,
//! the same seed replays the same figures, and the HTML page holds every scenario.

use onephase_lab::{Scenario, run};

#[test]
fn the_same_seed_replays_the_same_run() {
    for scenario in Scenario::ALL {
        if matches!(scenario, Scenario::FencedLock | Scenario::SagaCompensation) {
            // On the real clock with timed steps: their verdicts are checked below, and a
            // reader's count of what it saw depends on the machine.
            continue;
        }
        assert_eq!(run(scenario, 9), run(scenario, 9), "{}", scenario.name());
    }
}

#[test]
fn every_scenario_shows_the_naive_way_breaking_its_invariant_and_onephase_keeping_it() {
    for scenario in Scenario::ALL {
        let report = run(scenario, 4);
        assert!(report.passed(), "{}", report.table());
        assert!(!report.invariant.naive_holds, "{}", report.table());
        assert_eq!(report.post, scenario.post());
        assert!(!report.story.is_empty(), "{}", scenario.name());
        let chart = report.chart.as_ref().expect("a timeline");
        assert_eq!(
            chart.naive.len(),
            chart.onephase.len(),
            "{}",
            scenario.name()
        );
        assert!(
            chart.naive.iter().chain(&chart.onephase).any(|v| *v > 0.0),
            "{}",
            scenario.name()
        );
    }
}

#[test]
fn the_rate_limits_hold_their_stated_bounds() {
    let burst = run(Scenario::BoundaryBurst, 1);
    let most = burst.get("most admitted in any 1 s").expect("row");
    assert_eq!(
        (most.naive, most.onephase),
        (200.0, 100.0),
        "{}",
        burst.table()
    );
    let nodes = run(Scenario::LocalLimits, 1);
    let most = nodes.get("most admitted in any 1 s").expect("row");
    assert!(most.naive >= 899.0, "{}", nodes.table());
    assert!(most.onephase <= 342.0, "{}", nodes.table());
}

#[test]
fn a_lapsed_holder_never_writes_through_the_fence() {
    let report = run(Scenario::FencedLock, 1);
    let landed = report
        .get("writes of a lapsed holder that landed")
        .expect("row");
    assert_eq!(
        (landed.naive, landed.onephase),
        (6.0, 0.0),
        "{}",
        report.table()
    );
    let end = report.get("the counter at the end").expect("row");
    let made = report.get("increments made").expect("row");
    assert_eq!(end.onephase, made.onephase, "{}", report.table());
    assert!(end.naive < made.naive, "{}", report.table());
}

#[test]
fn the_page_holds_every_scenario() {
    let reports: Vec<_> = [Scenario::Stampede, Scenario::BoundaryBurst]
        .into_iter()
        .map(|s| run(s, 2))
        .collect();
    let page = onephase_lab::html(&reports);
    for r in &reports {
        assert!(
            page.contains(&format!("id=\"{}\"", r.scenario)),
            "{}",
            r.scenario
        );
    }
    assert_eq!(page.matches("<svg").count(), 2, "one chart each");
}

#[test]
fn the_outbox_loses_no_event_and_invents_none() {
    let report = run(Scenario::DualWrite, 5);
    let lost = report.get("events lost").expect("row");
    let phantom = report.get("phantom events").expect("row");
    assert!(
        lost.naive > 0.0 && phantom.naive > 0.0,
        "{}",
        report.table()
    );
    assert_eq!(
        (lost.onephase, phantom.onephase),
        (0.0, 0.0),
        "{}",
        report.table()
    );
    let committed = report.get("orders committed").expect("row");
    let published = report.get("events published").expect("row");
    assert_eq!(committed.onephase, published.onephase, "{}", report.table());
}

#[test]
fn a_failed_refund_waits_for_the_operator_instead_of_vanishing() {
    let report = run(Scenario::SagaCompensation, 3);
    let unnoticed = report.get("of those, known to nobody").expect("row");
    let parked = report.get("runs that waited for an operator").expect("row");
    let left = report
        .get("customers charged for an order never placed")
        .expect("row");
    assert!(unnoticed.naive > 0.0, "{}", report.table());
    assert_eq!(unnoticed.naive, left.naive, "{}", report.table());
    assert_eq!(
        (unnoticed.onephase, left.onephase),
        (0.0, 0.0),
        "{}",
        report.table()
    );
    assert_eq!(
        parked.onephase,
        unnoticed.naive,
        "every refused order parked: {}",
        report.table()
    );
    let seen = report.get("reads that saw").expect("row");
    assert!(
        seen.naive > 0.0 && seen.onephase > 0.0,
        "no isolation either way: {}",
        report.table()
    );
}

#[test]
fn work_left_in_a_table_stays_in_its_requests_trace() {
    let report = run(Scenario::TraceContext, 8);
    let joined = report
        .get("participant calls in their request's trace")
        .expect("row");
    assert_eq!(
        (joined.naive, joined.onephase),
        (0.0, 100.0),
        "{}",
        report.table()
    );
}

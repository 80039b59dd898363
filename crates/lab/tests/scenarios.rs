//! Every scenario of the lab: the naive way breaks the scenario's invariant, onephase keeps it,
//! the same seed replays the same figures, and the HTML page holds every scenario.

use onephase_lab::{Engines, Scenario, run, run_with};
use onephase_testkit::{Engine, engine_url};

/// The engines the scenarios about an engine run on, where the environment names them.
fn engines() -> Engines {
    Engines {
        postgres: engine_url(Engine::PostgresPrepared),
        ..Engines::default()
    }
}

/// Whether `scenario` can run here: it needs no engine, or its engine is configured. The
/// replica scenarios run in `replica_lab`, one at a time with the other replica suites.
fn runs_here(scenario: Scenario, engines: &Engines) -> bool {
    if is_replica(scenario) {
        return false;
    }
    !matches!(
        scenario,
        Scenario::TwoPhaseCommit | Scenario::SkippedEvent | Scenario::OnlineMove
    ) || engines.postgres.is_some()
}

fn is_replica(scenario: Scenario) -> bool {
    matches!(
        scenario,
        Scenario::ReplicaReadYourWrites
            | Scenario::MonotonicReads
            | Scenario::TokenAcrossServices
            // On a Kafka-compatible broker, in kafka_lab.
            | Scenario::GroupThatStopped
    )
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for scenario in Scenario::ALL {
        if matches!(
            scenario,
            Scenario::FencedLock
                | Scenario::SagaCompensation
                | Scenario::TwoPhaseCommit
                | Scenario::Webhooks
                | Scenario::SkippedEvent
                | Scenario::ReadYourWrites
                | Scenario::OnlineMove
        ) {
            // On the real clock with timed steps: their verdicts are checked below, and a
            // reader's count of what it saw depends on the machine.
            continue;
        }
        assert_eq!(run(scenario, 9), run(scenario, 9), "{}", scenario.name());
    }
}

#[test]
fn every_scenario_shows_the_naive_way_breaking_its_invariant_and_onephase_keeping_it() {
    let engines = engines();
    for scenario in Scenario::ALL {
        if !runs_here(scenario, &engines) {
            continue;
        }
        let report = run_with(scenario, 4, &engines);
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

#[test]
fn a_dead_two_phase_coordinator_blocks_the_account_and_a_saga_does_not() {
    let engines = engines();
    if engines.postgres.is_none() {
        return;
    }
    let report = run_with(Scenario::TwoPhaseCommit, 1, &engines);
    println!("{}", report.table());
    let timed_out = report
        .get("requests that timed out waiting for a lock")
        .expect("row");
    assert!(timed_out.naive > 0.0, "{}", report.table());
    assert_eq!(timed_out.onephase, 0.0, "{}", report.table());
    let unavailable = report
        .get("seconds the account could not be written")
        .expect("row");
    assert!(unavailable.naive >= 2.0, "{}", report.table());
    let undone = report.get("transfers undone").expect("row");
    assert_eq!(
        (undone.naive, undone.onephase),
        (1.0, 1.0),
        "{}",
        report.table()
    );
    let done = report.get("transfers completed").expect("row");
    assert_eq!(done.onephase, 19.0, "{}", report.table());
    let drift = report.get("money created or lost").expect("row");
    assert_eq!(
        (drift.naive, drift.onephase),
        (0.0, 0.0),
        "{}",
        report.table()
    );
}

#[test]
fn without_its_engine_the_two_phase_scenario_says_what_it_needs() {
    let report = run(Scenario::TwoPhaseCommit, 1);
    let needs = report.needs.as_deref().expect("needs an engine");
    assert!(needs.contains("max_prepared_transactions > 0"), "{needs}");
    assert!(!report.passed());
    assert!(report.rows.is_empty());
}

#[test]
fn a_server_without_prepared_transactions_is_named_with_what_to_do() {
    let Some(url) = engine_url(Engine::Postgres) else {
        return;
    };
    let engines = Engines {
        postgres: Some(url.clone()),
        ..Engines::default()
    };
    let report = run_with(Scenario::TwoPhaseCommit, 1, &engines);
    let statement = &report.invariant.statement;
    assert!(!report.passed(), "{statement}");
    assert!(
        statement.contains("max_prepared_transactions = 0") && statement.contains(&url),
        "{statement}"
    );
    // It ran and stopped: an error, not a missing engine, and no figures made up.
    assert!(report.ran() && report.rows.is_empty(), "{report:?}");
    let error = report.error.as_deref().expect("the error is kept");
    assert!(statement.ends_with(error), "{statement} / {error}");
    assert!(
        report.table().contains("could not run: "),
        "{}",
        report.table()
    );
}

#[test]
fn webhooks_arrive_once_signed_and_at_a_bounded_rate() {
    let report = run(Scenario::Webhooks, 1);
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    let lost = report.get("events never applied").expect("row");
    assert!(
        lost.naive > 0.0 && lost.onephase == 0.0,
        "{}",
        report.table()
    );
    let twice = report.get("events applied twice or more").expect("row");
    assert!(
        twice.naive > 0.0 && twice.onephase == 0.0,
        "{}",
        report.table()
    );
    let forged = report.get("forged requests applied").expect("row");
    assert_eq!(
        (forged.naive, forged.onephase),
        (20.0, 0.0),
        "{}",
        report.table()
    );
    let refused = report.get("forged requests refused").expect("row");
    assert_eq!(refused.onephase, 20.0, "{}", report.table());
    let down = report
        .get("most requests in one 100 ms while the receiver was down")
        .expect("row");
    assert!(
        down.naive > 10.0 && down.onephase <= 10.0,
        "{}",
        report.table()
    );
}

#[test]
fn adding_a_partition_moves_the_minimum_and_a_growing_key_piles_on_one_range() {
    let node = run(Scenario::AddingANode, 3);
    let moved = node.get("keys moved adding a 9th partition").unwrap();
    assert!(moved.naive > 80.0, "{}", node.table());
    assert!(
        (moved.onephase - 100.0 / 9.0).abs() < 1.0,
        "{}",
        node.table()
    );
    let rendezvous = node.get("keys moved, rendezvous").unwrap();
    assert!(
        (rendezvous.onephase - 100.0 / 9.0).abs() < 1.0,
        "{}",
        node.table()
    );

    let range = run(Scenario::HotRange, 3);
    let newest = range.get("new writes on the busiest partition").unwrap();
    assert_eq!(newest.naive, 100.0, "{}", range.table());
    assert!(newest.onephase < 2.0 * 100.0 / 8.0, "{}", range.table());
    let spread = range.get("partitions taking new writes").unwrap();
    assert_eq!(
        (spread.naive, spread.onephase),
        (1.0, 8.0),
        "{}",
        range.table()
    );
}

#[test]
fn copy_then_switch_loses_writes_and_the_online_move_loses_none() {
    let engines = engines();
    if engines.postgres.is_none() {
        return;
    }
    let report = run_with(Scenario::OnlineMove, 5, &engines);
    println!("{}", report.table());
    let lost = report.get("writes lost").expect("row");
    assert!(lost.naive > 0.0, "{}", report.table());
    assert_eq!(lost.onephase, 0.0, "{}", report.table());
    let both = report.get("rows in both shards").expect("row");
    assert_eq!(both.onephase, 0.0, "{}", report.table());
    let acknowledged = report.get("writes acknowledged").expect("row");
    assert!(acknowledged.onephase > 100.0, "{}", report.table());
}

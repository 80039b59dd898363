//! The replica scenarios on a real PostgreSQL primary and two streaming replicas
//! (scripts/pg-replica.sh): the naive reads break each invariant, onephase keeps it. One at a
//! time with the other replica suites, which pause and delay the same replicas.

use onephase_lab::{Engines, Scenario, run_with};
use onephase_testkit::{Engine, engine_url};

#[test]
fn replica_scenarios_break_the_naive_reads_and_keep_onephases() {
    let Some(replicas) = engine_url(Engine::PostgresReplicas) else {
        return;
    };
    let engines = Engines {
        replicas: Some(replicas),
        ..Engines::default()
    };
    for scenario in [
        Scenario::ReplicaReadYourWrites,
        Scenario::MonotonicReads,
        Scenario::TokenAcrossServices,
    ] {
        let report = run_with(scenario, 4, &engines);
        println!("{}", report.table());
        assert!(report.ran(), "{}", report.table());
        assert!(report.passed(), "{}", report.table());
        assert!(!report.invariant.naive_holds, "{}", report.table());
        assert_eq!(report.post, Some(4));
        let chart = report.chart.as_ref().expect("a chart");
        assert_eq!(
            chart.naive.len(),
            chart.onephase.len(),
            "{}",
            scenario.name()
        );
    }
}

#[test]
fn without_replicas_each_scenario_says_what_it_needs() {
    for scenario in [
        Scenario::ReplicaReadYourWrites,
        Scenario::MonotonicReads,
        Scenario::TokenAcrossServices,
    ] {
        let report = run_with(scenario, 1, &Engines::default());
        assert!(!report.ran());
        let needs = report.needs.clone().unwrap_or_default();
        assert!(needs.contains("--replicas"), "{needs}");
    }
}

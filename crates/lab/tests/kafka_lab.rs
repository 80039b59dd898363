//! The consumer group that stopped, on a real Kafka-compatible broker: the naive consumer
//! breaks the invariant (a rebalance storm and a stuck partition, named by the doctor), the
//! onephase runtime keeps it.

use onephase_lab::{Engines, Scenario, run_with};
#[cfg(not(feature = "kafka"))]
use onephase_testkit::Engine;

#[cfg(feature = "kafka")]
#[test]
fn the_group_that_stopped_keeps_consuming_with_onephase() {
    let Some(brokers) = onephase_testkit::engine_url(onephase_testkit::Engine::Kafka) else {
        return;
    };
    let engines = Engines {
        kafka: Some(brokers),
        ..Engines::default()
    };
    let report = run_with(Scenario::GroupThatStopped, 4, &engines);
    println!("{}", report.table());
    assert!(report.ran(), "{}", report.table());
    assert!(report.passed(), "{}", report.table());
    assert!(!report.invariant.naive_holds, "{}", report.table());
    assert_eq!(report.post, Some(2));
    let row = |name: &str| report.get(name).map(|r| (r.naive, r.onephase));
    assert_eq!(
        row("poison message in the dead-letter topic"),
        Some((0.0, 1.0))
    );
    let storm = row("doctor finds rebalance_storm").unwrap_or_default();
    let stuck = row("doctor finds stuck_partition").unwrap_or_default();
    assert!(
        storm.0 + stuck.0 >= 1.0,
        "the doctor names the naive group's failure: {}",
        report.table()
    );
    assert_eq!((storm.1, stuck.1), (0.0, 0.0), "{}", report.table());
    let chart = report.chart.as_ref().expect("a chart");
    assert_eq!(chart.naive.len(), chart.onephase.len());
}

#[test]
fn without_a_broker_the_scenario_says_what_it_needs() {
    let report = run_with(Scenario::GroupThatStopped, 4, &Engines::default());
    assert!(!report.ran());
    assert!(
        report.needs.as_deref().is_some_and(|n| n.contains("Kafka")),
        "{}",
        report.table()
    );
}

#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_lab_suite() {
    onephase_testkit::engine_not_built(Engine::Kafka, "onephase-lab", "kafka");
}

//! The thundering-herd scenarios, with their bounds asserted. The figures are counts on a
//! simulated clock, never wall-clock timings.

use onephase_lab::{Report, Scenario, run};

fn figures(scenario: Scenario) -> Report {
    let report = run(scenario, 42);
    println!("{}", report.table());
    report
}

fn row<'a>(report: &'a Report, metric: &str) -> &'a onephase_lab::Row {
    report
        .get(metric)
        .unwrap_or_else(|| panic!("{} has no row {metric:?}", report.scenario))
}

#[test]
fn stampede_one_origin_call_for_a_thousand_readers_and_no_waits_at_steady_load() {
    let r = figures(Scenario::Stampede);
    let burst = row(&r, "burst: origin calls");
    assert!(burst.naive >= 990.0, "naive burst: {}", burst.naive);
    assert_eq!(burst.onephase, 1.0);
    let waited = row(&r, "steady: readers that waited");
    assert!(
        waited.naive >= 400.0,
        "naive steady waits: {}",
        waited.naive
    );
    assert_eq!(waited.onephase, 0.0, "XFetch refreshes before expiry");
    let calls = row(&r, "steady: origin calls");
    // One load per 10 s ttl, refreshed a little early: at most 8 in 60 s (first load included).
    assert!(
        calls.onephase <= 8.0,
        "onephase steady calls: {}",
        calls.onephase
    );
    assert!(calls.naive >= 50.0 * calls.onephase, "{calls:?}");
}

#[test]
fn retry_storm_a_budget_holds_amplification_to_one_point_two() {
    let r = figures(Scenario::RetryStorm);
    let amplification = row(&r, "attempts per request during the outage");
    assert!(amplification.naive >= 3.0, "{amplification:?}");
    assert!(amplification.onephase <= 1.2, "{amplification:?}");
    let recovery = row(&r, "recovery after");
    assert!(recovery.onephase <= recovery.naive, "{recovery:?}");
}

#[test]
fn reconnect_flood_jitter_flattens_the_peak() {
    let r = figures(Scenario::ReconnectFlood);
    let peak = row(&r, "peak reconnects per 100 ms");
    assert_eq!(peak.naive, 1000.0);
    assert!(peak.onephase * 2.0 <= peak.naive, "{peak:?}");
    let back = row(&r, "peak reconnects per 100 ms once the server is back");
    assert!(back.onephase * 5.0 <= back.naive, "{back:?}");
}

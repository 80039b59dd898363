//! The lab's report as one self-contained HTML page: no script, no style sheet or font from
//! anywhere else, charts drawn as inline SVG by the dashboard's own chart code.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::report::{Report, figure, verdict};

const NAIVE: &str = "#d92d20";
const ONEPHASE: &str = "#1570ef";

const STYLE: &str = "
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; color: #1d2939; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.5rem; border-top: 1px solid #eaecf0; padding-top: 1rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eaecf0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #067647; font-weight: 600; } .fail { color: #b42318; font-weight: 600; } .skip { color: #475467; font-weight: 600; }
.story { font-size: 1.05rem; } .setup, .meta { color: #475467; }
figure.chart { margin: .75rem 0; } figure.chart svg { height: 140px; }
code { background: #f2f4f7; padding: 0 .25rem; border-radius: 3px; } figcaption { font-size: .85rem; color: #475467; }
";

/// The reports as an HTML page: a summary of every invariant first, then each scenario's
/// story, numbers, invariant and chart.
pub fn html(reports: &[Report]) -> String {
    html_with(reports, html! {})
}

/// [`html()`], with `header` above the title (the dashboard puts its links and the form that
/// runs the lab there).
pub fn html_with(reports: &[Report], header: Markup) -> String {
    let failed = reports.iter().filter(|r| r.ran() && !r.passed()).count();
    let not_run = reports.iter().filter(|r| !r.ran()).count();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "onephase failure lab" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (header)
                h1 { "The failure lab" }
                p.meta {
                    (reports.len()) " scenarios, each run the naive way and with onephase on the same inputs. "
                    @if failed == 0 {
                        span.pass { "onephase kept every invariant." }
                    } @else {
                        span.fail { "onephase broke " (failed) " invariant(s)." }
                    }
                    @if not_run > 0 {
                        " " span.skip { (not_run) " not run: their engine was not given." }
                    }
                }
                table {
                    thead { tr { th { "scenario" } th { "post" } th { "invariant" } th { "naive" } th { "onephase" } } }
                    tbody {
                        @for r in reports {
                            tr {
                                td { a href={ "#" (r.scenario) } { (r.scenario) } }
                                td { (r.post.map(|p| p.to_string()).unwrap_or_default()) }
                                td { (r.invariant.statement) }
                                @if r.ran() {
                                    td { (badge(r.invariant.naive_holds)) }
                                    td { (badge(r.invariant.holds)) }
                                } @else {
                                    td.skip { "not run" } td.skip { "not run" }
                                }
                            }
                        }
                    }
                }
                @for r in reports { (section(r)) }
            }
        }
    }
    .into_string()
}

fn section(r: &Report) -> Markup {
    html! {
        section id=(r.scenario) {
            h2 { (r.scenario) " (" (r.source()) ")" }
            p.story { (r.story) }
            @if let Some(needs) = &r.needs {
                p.skip { "Not run: it needs " (needs) "." }
            } @else if let Some(error) = &r.error {
                p.skip { span.fail { "Could not run" } ": " (error) "." }
            } @else {
                (measured(r))
            }
        }
    }
}

fn measured(r: &Report) -> Markup {
    html! {
            p.setup { (r.setup) ". " code { "onephase lab " (r.scenario) " --seed " (r.seed) } " replays this run." }
            table {
                thead { tr { th { "metric" } th.n { "naive" } th.n { "onephase" } } }
                tbody {
                    @for row in &r.rows {
                        tr { td { (row.metric) } td.n { (figure(row.naive)) } td.n { (figure(row.onephase)) } }
                    }
                }
            }
            p {
                "Invariant: " (r.invariant.statement) ". Naive " (badge(r.invariant.naive_holds))
                ", onephase " (badge(r.invariant.holds)) "."
            }
            @if let Some(chart) = &r.chart {
                (onephase_chart::line(
                    &chart.title,
                    &format!(
                        "{} points, one per {}",
                        chart.naive.len().max(chart.onephase.len()),
                        chart.step
                    ),
                    &chart.unit,
                    &[
                        ("naive", NAIVE, chart.naive.iter().copied().map(Some).collect()),
                        ("onephase", ONEPHASE, chart.onephase.iter().copied().map(Some).collect()),
                    ],
                ))
            }
    }
}

fn badge(holds: bool) -> Markup {
    html! { span class=(if holds { "pass" } else { "fail" }) { (verdict(holds)) } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    #[test]
    fn the_page_holds_every_scenario_its_verdict_and_its_chart_and_nothing_from_elsewhere() {
        let mut a = Report::new("alpha", 3, "setup a.");
        a.row("calls", 1000.0, 1.0);
        a.invariant("at most 1 call", false, true);
        a.chart(
            "calls per 100 ms",
            "",
            std::time::Duration::from_millis(100),
            vec![0.0, 1000.0],
            vec![1.0, 0.0],
        );
        let mut b = Report::new("beta <b>", 3, "setup b.");
        b.invariant("never", true, false);
        let mut c = Report::new("gamma", 3, "setup c.");
        c.not_run_for_want_of("an engine");
        let page = html(&[a, b, c]);
        assert!(page.contains("Not run: it needs an engine."), "{page}");
        assert!(page.contains("1 not run"), "{page}");
        assert!(
            page.contains(r#"id="alpha""#) && page.contains("<polyline"),
            "{page}"
        );
        assert!(page.contains("beta &lt;b&gt;"), "text is escaped: {page}");
        assert!(page.contains("onephase broke 1 invariant(s)"), "{page}");
        assert!(page.contains("2 points, one per 100 ms"), "{page}");
        for outside in ["<script", "http://", "https://", "<link"] {
            assert!(!page.contains(outside), "{outside} in {page}");
        }
    }
}

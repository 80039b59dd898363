//! A diagnosis as text for a terminal.

use std::fmt::Write as _;

use crate::diagnosis::Diagnosis;

/// Renders `d`: a header line, the findings, then a table of partitions.
pub fn text(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "group {}  state {}  status {}  members {}  rebalances {} in {:.0} s  lag {} ({:.1} s)",
        d.group,
        d.state,
        d.status.as_str().to_uppercase(),
        d.members.len(),
        d.rebalances,
        d.window_ms as f64 / 1000.0,
        d.lag,
        d.lag_seconds
    );
    for f in &d.findings {
        let _ = writeln!(out, "  * {}", f.summary);
        let _ = writeln!(out, "    next: {}", f.next_step);
    }
    let _ = writeln!(
        out,
        "  {:<32} {:>12} {:>12} {:>10} {:>9}  {:<6} owner",
        "partition", "committed", "end", "lag", "lag s", "status"
    );
    for p in &d.partitions {
        let committed = p.committed.map_or("-".to_owned(), |c| c.to_string());
        let lag = p.lag.map_or("-".to_owned(), |l| l.to_string());
        let lag_s = p.lag_seconds.map_or("-".to_owned(), |s| format!("{s:.1}"));
        let _ = writeln!(
            out,
            "  {:<32} {:>12} {:>12} {:>10} {:>9}  {:<6} {}",
            format!("{}-{}", p.topic, p.partition),
            committed,
            p.end,
            lag,
            lag_s,
            p.status.as_str().to_uppercase(),
            p.owner.as_deref().unwrap_or("-")
        );
    }
    out
}

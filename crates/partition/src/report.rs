//! An [`Analysis`] as text for a terminal: the sample, the hot keys, a table of candidates and
//! a histogram of each candidate's partitions.

use std::fmt::Write as _;

use crate::{Analysis, Candidate};

/// Width of a histogram bar at the largest load.
const BAR: usize = 40;

/// The whole analysis as text; `histograms` adds one per candidate.
pub fn text(analysis: &Analysis, histograms: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} keys, {} distinct; {:.1}% of consecutive keys increase{}",
        analysis.keys,
        analysis.distinct,
        analysis.increasing_share * 100.0,
        if analysis.monotonic {
            " (monotonic: a range scheme sends every new write to its last range)"
        } else {
            ""
        }
    );
    if analysis.hot_keys.is_empty() {
        let _ = writeln!(out, "\nno key certainly repeats: no hot key");
    } else {
        let _ = writeln!(
            out,
            "\nhot keys (no scheme puts less than a key's share on one partition; salt the ones above 1/N):"
        );
        for hot in &analysis.hot_keys {
            let _ = writeln!(
                out,
                "  {:>6.2}%  {:<32} {} (± {})",
                hot.share * 100.0,
                hot.hit.key,
                hot.hit.count,
                hot.hit.error
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<11} {:>5} {:>7} {:>9} {:>10} {:>11} {:>10}",
        "scheme", "N", "skew", "largest", "top tenth", "new writes", "moved N+1"
    );
    for c in &analysis.candidates {
        let _ = writeln!(
            out,
            "{:<11} {:>5} {:>7.2} {:>8.1}% {:>9.1}% {:>10.1}% {:>9.1}%",
            c.scheme.kind(),
            c.loads.len(),
            c.skew,
            c.max_share * 100.0,
            c.top_tenth_share * 100.0,
            c.new_writes_max_share * 100.0,
            c.moved_on_growth * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\nskew: largest partition over the mean. new writes: the newest part of the sample on \
         its busiest partition. moved N+1: keys that change partition when one is added."
    );
    if histograms {
        for c in &analysis.candidates {
            out.push('\n');
            out.push_str(&histogram(c));
        }
    }
    out
}

/// One candidate's load per partition as bars.
pub fn histogram(candidate: &Candidate) -> String {
    let mut out = format!(
        "{} with {} partitions:\n",
        candidate.scheme.kind(),
        candidate.loads.len()
    );
    let max = candidate.loads.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = candidate.loads.iter().sum::<u64>().max(1);
    for (i, load) in candidate.loads.iter().enumerate() {
        let width = (*load as f64 / max as f64 * BAR as f64).round() as usize;
        let _ = writeln!(
            out,
            "  {i:>4} {:<BAR$} {:>5.1}%",
            "#".repeat(width),
            *load as f64 / total as f64 * 100.0
        );
    }
    out
}

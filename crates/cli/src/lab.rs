//! `onephase lab`: list the failure scenarios; run one, several or all of them, naive beside
//! onephase; print the figures and the invariants; write the HTML report.

use std::path::PathBuf;

use crate::output::outln;
use anyhow::{Context, bail};
use clap::Args;
use onephase_lab::{Scenario, run};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Scenarios to run by name, or `all`; without any, the lab lists them.
    scenarios: Vec<String>,
    /// Seed for every random draw: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the reports as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the reports as one self-contained HTML page (charts inline, nothing
    /// fetched from anywhere).
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

pub fn lab(args: LabArgs) -> anyhow::Result<()> {
    if args.scenarios.is_empty() {
        if args.report.is_some() {
            bail!("name the scenarios to report on, or `all`");
        }
        list(args.json)?;
        return Ok(());
    }
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        if name == "all" {
            scenarios.extend(Scenario::ALL);
            continue;
        }
        match Scenario::from_name(name) {
            Some(s) => scenarios.push(s),
            None => {
                let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                bail!(
                    "unknown scenario {name:?}; the lab has: {} (or all); `onephase lab` lists them",
                    known.join(", ")
                );
            }
        }
    }
    scenarios.dedup();
    let reports: Vec<_> = scenarios.into_iter().map(|s| run(s, args.seed)).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            outln!("{}", report.table());
        }
    }
    if let Some(path) = &args.report {
        std::fs::write(path, onephase_lab::html(&reports))
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        eprintln!("the report is in {}", path.display());
    }
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} ({})", r.scenario, r.invariant.statement))
        .collect();
    if !failed.is_empty() {
        bail!(
            "onephase broke the invariant of {}: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// One line per scenario, by post.
fn list(json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = Scenario::ALL
            .iter()
            .map(
                |s| serde_json::json!({"name": s.name(), "post": s.post(), "summary": s.summary()}),
            )
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = Scenario::ALL
        .iter()
        .map(|s| s.name().len())
        .max()
        .unwrap_or(0);
    outln!("POST  {:width$}  FAILURE", "SCENARIO");
    for s in Scenario::ALL {
        outln!("{:>4}  {:width$}  {}", s.post(), s.name(), s.summary());
    }
    outln!(
        "\n`onephase lab NAME` runs one and `onephase lab all` every one; `--report lab.html` writes the page."
    );
    Ok(())
}

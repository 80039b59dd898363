//! `onephase lab`: run failure scenarios locally, naive beside onephase, and print the figures.

use crate::output::outln;
use anyhow::bail;
use clap::Args;
use onephase_lab::{Scenario, run};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Scenarios to run: stampede, retry-storm, reconnect-flood (default: all of them).
    scenarios: Vec<String>,
    /// Seed for every random draw: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the reports as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn lab(args: LabArgs) -> anyhow::Result<()> {
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        match Scenario::from_name(name) {
            Some(s) => scenarios.push(s),
            None => {
                let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                bail!(
                    "unknown scenario {name:?}; the lab has: {}",
                    known.join(", ")
                );
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    let reports: Vec<_> = scenarios.into_iter().map(|s| run(s, args.seed)).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in reports {
            outln!("{}", report.table());
        }
    }
    Ok(())
}

//! `onephase lab`: list the failure scenarios; run one, several or all of them, naive beside
//! onephase; print the figures and the invariants; write the HTML report.

use std::path::PathBuf;

use crate::client::UsageError;
use crate::output::outln;
use anyhow::{Context, bail};
use clap::Args;
use onephase_lab::{Engines, Scenario, run_with};

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
    /// A PostgreSQL server with `max_prepared_transactions > 0`, where `two-phase-commit`
    /// makes two databases of its own (`onephase_lab_bank_a`, `onephase_lab_bank_b`), as
    /// `online-move` does (`onephase_lab_shard_a`, `onephase_lab_shard_b`) and `skipped-event`
    /// one. Without it those scenarios are skipped by `all`, and fail when named.
    #[arg(long, value_name = "URL", env = "ONEPHASE_LAB_POSTGRES_URL")]
    postgres: Option<String>,
    /// A PostgreSQL primary and two streaming replicas, comma-separated, primary first, for
    /// the replica scenarios (`replica-read-your-writes`, `monotonic-reads`,
    /// `token-across-services`). They set `recovery_min_apply_delay` on the replicas for their
    /// run and reset it after: use a cluster of your own. Without it they are skipped by `all`.
    #[arg(long, value_name = "URLS", env = "ONEPHASE_LAB_REPLICAS")]
    replicas: Option<String>,
    /// A Kafka-compatible broker (HOST:PORT) for `kafka-group-that-stopped`, in a build with
    /// the feature `kafka`. It makes two topics and groups of its own per run. Without it the
    /// scenario is skipped by `all`.
    #[arg(long, value_name = "HOST:PORT", env = "ONEPHASE_LAB_KAFKA")]
    kafka: Option<String>,
    /// Run on the engines: `dual-write` on PostgreSQL (`--postgres`) and NATS JetStream
    /// (`--nats`), with this executable started as the relay and killed with SIGKILL; and a
    /// scenario whose engine is missing fails instead of being skipped.
    #[arg(long)]
    engines: bool,
    /// NATS with JetStream, for `--engines`.
    #[arg(
        long,
        value_name = "URL",
        env = "ONEPHASE_LAB_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
}

pub fn lab(args: LabArgs) -> anyhow::Result<()> {
    if args.scenarios.is_empty() {
        if args.report.is_some() {
            return Err(usage("name the scenarios to report on, or `all`"));
        }
        list(args.json)?;
        return Ok(());
    }
    let mut scenarios = Vec::new();
    // The scenarios asked for by name: one of them that cannot run is a failure.
    let mut named = Vec::new();
    for name in &args.scenarios {
        if name == "all" {
            scenarios.extend(Scenario::ALL);
            continue;
        }
        match Scenario::from_name(name) {
            Some(s) => {
                scenarios.push(s);
                named.push(s);
            }
            None => {
                let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                return Err(usage(format!(
                    "unknown scenario {name:?}; the lab has: {} (or all); `onephase lab` lists them",
                    known.join(", ")
                )));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    scenarios.retain(|s| seen.insert(*s));
    if args.engines && args.postgres.is_none() {
        return Err(usage(
            "--engines needs a PostgreSQL server: --postgres URL (or ONEPHASE_LAB_POSTGRES_URL); two-phase-commit needs it to have max_prepared_transactions > 0, as the one scripts/engines.sh starts on 127.0.0.1:5433 has",
        ));
    }
    let engines = Engines {
        postgres: args.postgres.clone(),
        nats: args.engines.then(|| args.nats.clone()),
        onephase: if args.engines {
            Some(
                std::env::current_exe()
                    .context("cannot find this executable to run as the relay")?,
            )
        } else {
            None
        },
        replicas: args.replicas.clone(),
        kafka: args.kafka.clone(),
    };
    let reports: Vec<_> = scenarios
        .into_iter()
        .map(|s| run_with(s, args.seed, &engines))
        .collect();
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
    // `all` runs what it can; a scenario named, or any under --engines, must run.
    let required =
        |r: &onephase_lab::Report| args.engines || named.iter().any(|s| s.name() == r.scenario);
    let mut failures = Vec::new();
    for r in &reports {
        match (&r.needs, &r.error) {
            (Some(needs), _) if required(r) => {
                failures.push(format!("{} did not run: it needs {needs}", r.scenario));
            }
            (Some(needs), _) => eprintln!("skipped {}: it needs {needs}", r.scenario),
            (None, Some(error)) => {
                failures.push(format!("{} could not run: {error}", r.scenario));
            }
            (None, None) if !r.passed() => failures.push(format!(
                "{}: onephase broke its invariant ({})",
                r.scenario, r.invariant.statement
            )),
            (None, None) => {}
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// A command line the lab cannot use: exit status 2.
fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
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
        let post = s
            .post()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        outln!("{post:>4}  {:width$}  {}", s.name(), s.summary());
    }
    outln!(
        "\n`onephase lab NAME` runs one and `onephase lab all` every one; `--report lab.html` writes the page."
    );
    Ok(())
}

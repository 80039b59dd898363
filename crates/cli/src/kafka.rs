//! `onephase kafka ...`: the consumer-group doctor, run here against the brokers, and the
//! groups a running server watches.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::client::{Client, ServerArgs};
use crate::lease::parse_duration;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Diagnose consumer groups: state, members, rebalances, each partition's lag in messages
    /// and seconds and its status, then the probable cause and the next step.
    ///
    /// Observes every --interval for --window, then prints; with --watch, keeps observing and
    /// prints after every observation over a sliding window.
    Doctor {
        /// Bootstrap brokers: HOST:PORT, or several separated by commas.
        #[arg(long, env = "ONEPHASE_KAFKA_BROKERS")]
        brokers: String,
        /// A group to diagnose (repeatable); without one, every group the brokers list.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A topic to read for every group beyond those its members own (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// How long to observe before the first diagnosis [default: 10s; 5m with --watch].
        #[arg(long, value_parser = parse_duration)]
        window: Option<Duration>,
        /// Time between observations.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
        /// Keep observing until interrupted.
        #[arg(long)]
        watch: bool,
        /// How long one request to the brokers may take.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The groups a running server watches ([[kafka.watch]]), worst first.
    Status,
}

/// Runs one `kafka` subcommand.
pub async fn run(command: KafkaCommand, server: &ServerArgs) -> anyhow::Result<()> {
    match command {
        KafkaCommand::Status => status(server).await,
        KafkaCommand::Doctor {
            brokers,
            groups,
            topics,
            window,
            interval,
            watch,
            timeout,
        } => {
            let window = window.unwrap_or(if watch {
                Duration::from_secs(300)
            } else {
                Duration::from_secs(10)
            });
            doctor::run(
                DoctorArgs {
                    brokers,
                    groups,
                    topics,
                    window,
                    interval,
                    watch,
                    timeout,
                },
                server.json,
            )
            .await
        }
    }
}

async fn status(server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let status = client
        .send(reqwest::Method::GET, "/v1/kafka/groups")
        .await?
        .context("the server answered without a status")?;
    if server.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let watches = status["watches"].as_array().cloned().unwrap_or_default();
    if watches.is_empty() {
        outln!("no Kafka cluster is watched (configure [[kafka.watch]]; see docs/kafka.md)");
    }
    for watch in watches {
        if let Some(error) = watch["error"].as_str() {
            outln!("{}: {error}", watch["brokers"].as_str().unwrap_or("?"));
        }
        for group in watch["groups"].as_array().cloned().unwrap_or_default() {
            outln!(
                "{}  {}  status {}  members {}  rebalances {}  lag {} ({} s)",
                group["group"].as_str().unwrap_or("?"),
                group["state"].as_str().unwrap_or("?"),
                group["status"].as_str().unwrap_or("?").to_uppercase(),
                group["members"].as_array().map_or(0, Vec::len),
                group["rebalances"],
                group["lag"],
                group["lag_seconds"]
            );
            for finding in group["findings"].as_array().cloned().unwrap_or_default() {
                outln!("  * {}", finding["summary"].as_str().unwrap_or(""));
                outln!("    next: {}", finding["next_step"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

/// What `kafka doctor` was asked, with the window's default applied.
pub struct DoctorArgs {
    pub brokers: String,
    pub groups: Vec<String>,
    pub topics: Vec<String>,
    pub window: Duration,
    pub interval: Duration,
    pub watch: bool,
    pub timeout: Duration,
}

#[cfg(feature = "kafka")]
mod doctor {

    use onephase_kafka::doctor::report;
    use onephase_kafka::{Doctor, DoctorConfig};

    use crate::output::outln;
    use crate::progress::Waiting;

    pub async fn run(args: super::DoctorArgs, json: bool) -> anyhow::Result<()> {
        let config = DoctorConfig::new(&args.brokers)
            .with_groups(args.groups)
            .with_topics(args.topics)
            .with_interval(args.interval)
            .with_window(args.window.max(args.interval))
            .with_timeout(args.timeout);
        let doctor = Doctor::connect(config).await?;
        let rounds = (args.window.as_millis() / args.interval.as_millis().max(1)).max(1) + 1;
        let waiting = Waiting::new(format!("observing for {} s", args.window.as_secs()));
        let mut diagnoses = Vec::new();
        for round in 0..rounds {
            diagnoses = doctor.observe().await?;
            waiting.say(format!("observation {} of {rounds}", round + 1));
            if round + 1 < rounds {
                tokio::time::sleep(args.interval).await;
            }
        }
        drop(waiting);
        print(&diagnoses, json)?;
        if !args.watch {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(args.interval) => {}
            }
            print(&doctor.observe().await?, json)?;
        }
    }

    fn print(diagnoses: &[onephase_kafka::diagnosis::Diagnosis], json: bool) -> anyhow::Result<()> {
        if json {
            outln!("{}", serde_json::to_string(diagnoses)?);
            return Ok(());
        }
        if diagnoses.is_empty() {
            outln!("no consumer group found (name one with --group)");
        }
        for d in diagnoses {
            outln!("{}", report::text(d));
        }
        Ok(())
    }
}

#[cfg(not(feature = "kafka"))]
mod doctor {

    pub async fn run(args: super::DoctorArgs, _json: bool) -> anyhow::Result<()> {
        let _ = (
            args.brokers,
            args.groups,
            args.topics,
            args.window,
            args.interval,
            args.watch,
            args.timeout,
        );
        Err(crate::client::UsageError(
            "this onephase was built without Kafka support: build it with `cargo install \
             onephase --features kafka` (librdkafka needs a C toolchain)"
                .to_owned(),
        )
        .into())
    }
}

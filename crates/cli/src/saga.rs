//! `onephase saga ...`: register definitions, start runs, and operate runs over a running
//! server's HTTP API.

use crate::output::outln;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{Client, ServerArgs, answer, encode, list, print};
use crate::lease::parse_duration;
use crate::progress::{Waiting, left};

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Register a definition from a JSON or TOML file (admin token).
    Register {
        /// The definition file (`.toml` is sent as TOML, anything else as JSON).
        file: PathBuf,
    },
    /// Start a run.
    Start {
        /// The saga's name.
        saga: String,
        /// The input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Starting again with the same key returns the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The definition version (default: the latest).
        #[arg(long, value_name = "VERSION")]
        saga_version: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Runs, newest first; `--state needs-operator` shows the ones waiting for you.
    List {
        /// Only runs in this state (running, compensating, completed, compensated,
        /// needs-operator, aborted).
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this saga.
        #[arg(long)]
        saga: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One run: its steps and its history.
    Show {
        /// The run's id.
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Try a parked run's failed compensation again (admin token).
    Retry {
        /// The run's id.
        id: String,
        /// Why (kept in the run's history with your token's name).
        #[arg(long)]
        note: String,
    },
    /// Mark a parked run's failed step as resolved by hand (admin token).
    Resolve {
        /// The run's id.
        id: String,
        /// The step whose compensation (or retriable action) failed.
        step: String,
        /// What you did by hand (kept in the run's history with your token's name).
        #[arg(long)]
        note: String,
    },
    /// Give up on a parked run's compensation; the run ends aborted (admin token).
    Abort {
        /// The run's id.
        id: String,
        /// Why (kept in the run's history with your token's name).
        #[arg(long)]
        note: String,
    },
}

/// Waiting for a run to come to rest.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until the run completes, is compensated or aborted, or needs an operator, showing
    /// where it is meanwhile; then print it. The exit status is 0 only if it completed.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long: `30s`, `5m`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration, requires = "wait")]
    timeout: Duration,
}

/// The states a run rests in: it ended, or it waits for an operator.
const RESTING: [&str; 4] = ["completed", "compensated", "aborted", "needs_operator"];

const RUN_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("SAGA", "saga"),
    ("V", "version"),
    ("STATE", "state"),
    ("CREATED", "created_at"),
    ("ERROR", "error"),
];

fn print_run(json: bool, run: &Value) {
    if json {
        outln!("{}", serde_json::to_string_pretty(run).unwrap_or_default());
        return;
    }
    outln!(
        "run {} ({} v{}): {}",
        run["id"].as_str().unwrap_or("?"),
        run["saga"].as_str().unwrap_or("?"),
        run["version"],
        run["state"].as_str().unwrap_or("?")
    );
    if let Some(error) = run["error"].as_str() {
        outln!("error: {error}");
    }
    outln!();
    print(
        false,
        &run["steps"],
        &[
            ("STEP", "step"),
            ("PHASE", "phase"),
            ("STATUS", "status"),
            ("ATTEMPTS", "attempts"),
            ("LAST ERROR", "last_error"),
        ],
    );
    outln!();
    print(
        false,
        &run["history"],
        &[
            ("AT", "at"),
            ("EVENT", "event"),
            ("STEP", "step"),
            ("PHASE", "phase"),
            ("ATTEMPT", "attempt"),
            ("MS", "elapsed_ms"),
            ("BY", "actor"),
            ("DETAIL", "detail"),
        ],
    );
}

/// Runs one `saga` subcommand.
pub async fn run(command: SagaCommand, server: &ServerArgs) -> anyhow::Result<()> {
    match command {
        SagaCommand::Register { file } => register(server, &file).await?,
        SagaCommand::Start {
            saga,
            input,
            idempotency_key,
            saga_version,
            wait,
        } => {
            let input: Value = serde_json::from_str(&input).context("--input is not valid JSON")?;
            let body = json!({"input": input, "version": saga_version});
            let started = start(server, &saga, &body, idempotency_key.as_deref()).await?;
            if wait.wait {
                let id = started["id"]
                    .as_str()
                    .context("the server answered without an id")?;
                return rested(server, id, wait.timeout).await;
            }
        }
        SagaCommand::List { state, saga, limit } => {
            let mut path = format!("/v1/saga-runs?limit={limit}");
            if let Some(state) = state {
                path.push_str(&format!("&state={}", encode(&state)));
            }
            if let Some(saga) = saga {
                path.push_str(&format!("&saga={}", encode(&saga)));
            }
            list(server, &path, RUN_COLUMNS).await?;
        }
        SagaCommand::Show { id, wait } if wait.wait => {
            return rested(server, &id, wait.timeout).await;
        }
        SagaCommand::Show { id, .. } => {
            let path = format!("/v1/saga-runs/{}", encode(&id));
            let run = Client::new(server)?
                .send(reqwest::Method::GET, &path)
                .await?
                .unwrap_or_default();
            print_run(server.json, &run);
        }
        SagaCommand::Retry { id, note } => {
            let run = operate(server, &format!("{}/retry", encode(&id)), note).await?;
            outln!("{id}: {} again", run["state"].as_str().unwrap_or("?"));
        }
        SagaCommand::Resolve { id, step, note } => {
            let action = format!("{}/steps/{}/resolve", encode(&id), encode(&step));
            let run = operate(server, &action, note).await?;
            outln!(
                "{id}: step {step} resolved by hand; the run is {}",
                run["state"].as_str().unwrap_or("?")
            );
        }
        SagaCommand::Abort { id, note } => {
            operate(server, &format!("{}/abort", encode(&id)), note).await?;
            outln!("{id}: aborted");
        }
    }
    Ok(())
}

/// An operator action on a run (`<id>/retry`, `<id>/abort`, ...) with its note; the run after.
async fn operate(server: &ServerArgs, action: &str, note: String) -> anyhow::Result<Value> {
    Ok(Client::new(server)?
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/saga-runs/{action}"),
            &json!({"note": note}),
        )
        .await?
        .unwrap_or_default())
}

/// Registers the definition in `file` (TOML when it ends in `.toml`, JSON otherwise).
async fn register(server: &ServerArgs, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let content_type = if file.extension().is_some_and(|e| e == "toml") {
        "application/toml"
    } else {
        "application/json"
    };
    let registered = Client::new(server)?
        .send_body(
            reqwest::Method::POST,
            "/v1/sagas",
            Some((content_type, bytes)),
            &[],
        )
        .await?
        .unwrap_or_default();
    answer(server.json, &registered, |a| {
        let verb = if a["created"] == json!(true) {
            "registered"
        } else {
            "already registered (same document)"
        };
        format!("{} version {}: {verb}", a["name"], a["version"])
    });
    Ok(())
}

/// Starts a run of `saga`; says whether its idempotency key made it a repeat.
async fn start(
    server: &ServerArgs,
    saga: &str,
    body: &Value,
    key: Option<&str>,
) -> anyhow::Result<Value> {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let path = format!("/v1/sagas/{}/runs", encode(saga));
    let started = Client::new(server)?
        .send_json_with(reqwest::Method::POST, &path, body, &headers)
        .await?
        .unwrap_or_default();
    answer(server.json, &started, |a| {
        let how = if a["created"] == json!(true) {
            "started"
        } else {
            "already started by this idempotency key"
        };
        format!(
            "{}: {how} (version {}, {})",
            a["id"].as_str().unwrap_or("?"),
            a["version"],
            a["state"].as_str().unwrap_or("?")
        )
    });
    Ok(started)
}

/// Polls run `id` until it rests or `timeout` passes, saying where it is on standard error;
/// prints it, and fails unless it completed.
async fn rested(server: &ServerArgs, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let path = format!("/v1/saga-runs/{}", encode(id));
    let deadline = Instant::now() + timeout;
    let waiting = Waiting::new(format!("run {id}: {}", left(timeout)));
    let run = loop {
        let run = client
            .send(reqwest::Method::GET, &path)
            .await?
            .unwrap_or_default();
        let state = run["state"].as_str().unwrap_or("?").to_owned();
        if RESTING.contains(&state.as_str()) {
            break run;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            drop(waiting);
            print_run(server.json, &run);
            anyhow::bail!(
                "run {id} is still {state} after {} s: `onephase saga show {id}` says where it is",
                timeout.as_secs()
            );
        }
        let last = run["history"].as_array().and_then(|h| h.last());
        let at = last
            .map(|e| {
                let step = e["step"]
                    .as_str()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                format!(", last {}{step}", e["event"].as_str().unwrap_or("?"))
            })
            .unwrap_or_default();
        waiting.say(format!("run {id}: {state}{at}, {}", left(remaining)));
        tokio::time::sleep(POLL.min(remaining)).await;
    };
    drop(waiting);
    print_run(server.json, &run);
    match run["state"].as_str() {
        Some("completed") => Ok(()),
        other => anyhow::bail!("run {id} ended {}", other.unwrap_or("?")),
    }
}

/// How often a waiting command asks again.
const POLL: Duration = Duration::from_millis(500);

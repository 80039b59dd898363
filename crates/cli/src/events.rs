//! `onephase events ...`: append, read and tail streams, and operate projections (define,
//! status, retry, skip, rebuild with a progress bar, explain, wait) over a running server's
//! HTTP API.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ServerArgs, UsageError, answer, encode, print};
use crate::lease::parse_duration;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Append one event to a stream, checking its version.
    Append {
        /// The stream: CATEGORY-ID, such as order-42.
        stream: String,
        /// The event's type.
        #[arg(long = "type")]
        event_type: String,
        /// Its data, as JSON.
        #[arg(long)]
        data: String,
        /// The version the stream must be at: any, no_stream, or a number.
        #[arg(long, default_value = "any")]
        expected_version: String,
    },
    /// Read a stream, oldest first.
    Read {
        /// The stream.
        stream: String,
        /// Events after this version.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// As the stream was at this global position.
        #[arg(long)]
        as_of_position: Option<u64>,
    },
    /// Print events in global order after a position; with --follow, keep printing new ones.
    Tail {
        /// Start after this global position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only streams of this category.
        #[arg(long)]
        category: Option<String>,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// Every projection with its lag, parked ones first.
    Projections,
    /// Define a document projection from a JSON definition (a file, or - for standard input).
    Define {
        /// The projection.
        name: String,
        /// The definition's file.
        file: String,
    },
    /// Retry the event a parked projection stopped on.
    Retry {
        /// The projection.
        name: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Skip the event a parked projection stopped on.
    Skip {
        /// The projection.
        name: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Rebuild a projection blue/green, showing its progress until it switches live.
    Rebuild {
        /// The projection.
        name: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// The events that built one row of a projection.
    Explain {
        /// The projection.
        name: String,
        /// The row key.
        key: String,
    },
    /// Wait until a projection has applied a position (an append's `position`).
    Wait {
        /// The projection.
        name: String,
        /// The position.
        position: u64,
        /// How long to wait.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Forget a data subject: its personal fields read as null from now on.
    Forget {
        /// The subject.
        subject: String,
    },
}

fn expected(text: &str) -> anyhow::Result<Value> {
    match text {
        "any" | "no_stream" => Ok(json!(text)),
        n => n.parse::<u64>().map(|n| json!(n)).map_err(|_| {
            UsageError(format!(
                "--expected-version {n:?}: use any, no_stream or a number"
            ))
            .into()
        }),
    }
}

/// Runs one `events` subcommand.
pub async fn run(command: EventsCommand, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match command {
        EventsCommand::Append {
            stream,
            event_type,
            data,
            expected_version,
        } => {
            let data: Value = serde_json::from_str(&data)
                .map_err(|e| UsageError(format!("--data is not JSON: {e}")))?;
            let body = json!({
                "expected_version": expected(&expected_version)?,
                "events": [{"type": event_type, "data": data}],
            });
            let path = format!("/v1/events/streams/{}", encode(&stream));
            let appended = client
                .send_json(Method::POST, &path, &body)
                .await?
                .context("no answer")?;
            answer(server.json, &appended, |a| {
                format!(
                    "appended to {stream} at position {} (stream version {})",
                    a["position"], a["streams"][0]["version"]
                )
            });
        }
        EventsCommand::Read {
            stream,
            after,
            limit,
            as_of_position,
        } => {
            let mut path = format!(
                "/v1/events/streams/{}?after={after}&limit={limit}",
                encode(&stream)
            );
            if let Some(p) = as_of_position {
                path.push_str(&format!("&as_of_position={p}"));
            }
            let events = client.send(Method::GET, &path).await?.unwrap_or_default();
            print(
                server.json,
                &events,
                &[
                    ("VERSION", "version"),
                    ("POSITION", "position"),
                    ("TYPE", "type"),
                    ("DATA", "data"),
                    ("RECORDED", "recorded_at"),
                ],
            );
        }
        EventsCommand::Tail {
            after,
            category,
            follow,
        } => tail(&client, server.json, after, category, follow).await?,
        EventsCommand::Projections => {
            let list = client
                .send(Method::GET, "/v1/events/projections")
                .await?
                .unwrap_or_default();
            print(
                server.json,
                &list,
                &[
                    ("NAME", "name"),
                    ("GEN", "generation"),
                    ("ROLE", "role"),
                    ("POSITION", "position"),
                    ("LAG", "lag_events"),
                    ("LAG_S", "lag_seconds"),
                    ("PARKED_AT", "parked_position"),
                    ("ERROR", "parked_error"),
                ],
            );
        }
        EventsCommand::Define { name, file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let definition: Value = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("{file} is not JSON: {e}")))?;
            let path = format!("/v1/events/projections/{}", encode(&name));
            let defined = client
                .send_json(Method::PUT, &path, &definition)
                .await?
                .context("no answer")?;
            answer(server.json, &defined, |d| {
                format!(
                    "{name}: generation {} carries this definition",
                    d["generation"]
                )
            });
        }
        EventsCommand::Retry { name, reason } => {
            operator(&client, server.json, &name, "retry", &reason).await?
        }
        EventsCommand::Skip { name, reason } => {
            operator(&client, server.json, &name, "skip", &reason).await?
        }
        EventsCommand::Rebuild {
            name,
            reason,
            no_wait,
        } => {
            let path = format!("/v1/events/projections/{}/rebuild", encode(&name));
            let started = client
                .send_json(Method::POST, &path, &json!({"reason": reason}))
                .await?
                .context("no answer")?;
            let generation = started["position"].as_u64().unwrap_or(0);
            if no_wait {
                answer(server.json, &started, |_| {
                    format!("{name}: rebuilding as generation {generation}")
                });
            } else {
                follow_rebuild(&client, &name, generation).await?;
                answer(server.json, &started, |_| {
                    format!("{name}: generation {generation} is live")
                });
            }
        }
        EventsCommand::Explain { name, key } => {
            let path = format!(
                "/v1/events/projections/{}/explain?key={}",
                encode(&name),
                encode(&key)
            );
            let why = client
                .send(Method::GET, &path)
                .await?
                .context("no answer")?;
            if server.json {
                outln!("{why}");
            } else {
                outln!(
                    "row {key:?} of {name} (generation {}) was built by:",
                    why["generation"]
                );
                print(
                    false,
                    &why["events"],
                    &[
                        ("POSITION", "position"),
                        ("STREAM", "stream"),
                        ("VERSION", "version"),
                        ("TYPE", "type"),
                        ("DATA", "data"),
                    ],
                );
            }
        }
        EventsCommand::Wait {
            name,
            position,
            timeout,
        } => {
            let path = format!("/v1/events/projections/{}/wait", encode(&name));
            let body = json!({"position": position, "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)});
            let reached = client
                .send_json(Method::POST, &path, &body)
                .await?
                .context("no answer")?;
            answer(server.json, &reached, |r| {
                format!(
                    "{name} has applied position {position} (it is at {})",
                    r["position"]
                )
            });
        }
        EventsCommand::Forget { subject } => {
            let path = format!("/v1/events/subjects/{}/forget", encode(&subject));
            let forgotten = client
                .send(Method::POST, &path)
                .await?
                .context("no answer")?;
            answer(server.json, &forgotten, |f| {
                format!(
                    "forgot {subject}: personal fields of {} events now read as null",
                    f["events"]
                )
            });
        }
    }
    Ok(())
}

async fn operator(
    client: &Client,
    json: bool,
    name: &str,
    action: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let path = format!("/v1/events/projections/{}/{action}", encode(name));
    let acted = client
        .send_json(Method::POST, &path, &json!({"reason": reason}))
        .await?
        .context("no answer")?;
    answer(json, &acted, |a| {
        format!("{name}: {action} done; at position {}", a["position"])
    });
    Ok(())
}

async fn tail(
    client: &Client,
    json: bool,
    mut after: u64,
    category: Option<String>,
    follow: bool,
) -> anyhow::Result<()> {
    loop {
        let mut path = format!("/v1/events/all?after={after}&limit=1000");
        if let Some(c) = &category {
            path.push_str(&format!("&category={}", encode(c)));
        }
        let batch = client.send(Method::GET, &path).await?.unwrap_or_default();
        let events = batch.as_array().cloned().unwrap_or_default();
        for e in &events {
            after = e["position"].as_u64().unwrap_or(after);
            if json {
                outln!("{e}");
            } else {
                outln!(
                    "{:>8} {} v{} {} {}",
                    e["position"],
                    e["stream"].as_str().unwrap_or_default(),
                    e["version"],
                    e["type"].as_str().unwrap_or_default(),
                    e["data"]
                );
            }
        }
        if events.len() < 1000 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Shows the rebuild's generation catching up (position of head, rate, ETA) until it is live.
async fn follow_rebuild(client: &Client, name: &str, generation: u64) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} events, {per_sec}, ETA {eta} {msg}")
    {
        bar.set_style(style);
    }
    let path = format!("/v1/events/projections/{}", encode(name));
    loop {
        let status = client.send(Method::GET, &path).await?.unwrap_or_default();
        let tracks = status.as_array().cloned().unwrap_or_default();
        let Some(track) = tracks
            .iter()
            .find(|t| t["generation"].as_u64() == Some(generation))
        else {
            bar.finish_and_clear();
            anyhow::bail!("generation {generation} of {name} is gone: another rebuild replaced it");
        };
        bar.set_length(track["head"].as_u64().unwrap_or(0));
        bar.set_position(track["position"].as_u64().unwrap_or(0));
        if let Some(error) = track["parked_error"].as_str() {
            bar.finish_and_clear();
            anyhow::bail!(
                "the rebuild parked at position {}: {error}; fix it, then `onephase events retry {name}` or `skip`",
                track["parked_position"]
            );
        }
        if track["role"] == "live" {
            bar.finish_and_clear();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! `onephase lease ...`: acquire, renew, release and list fenced leases over a running
//! server's HTTP API.

use crate::output::outln;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, ServerArgs, answer, encode, print};
use crate::progress::counting_down;

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Acquire a lease and print its fencing token.
    Acquire {
        /// The lease's name.
        name: String,
        /// How long the grant lasts unless renewed: `500ms`, `30s`, `5m`, `1h` (plain numbers
        /// are seconds).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ttl: Duration,
        /// Wait this long for a held lease instead of failing at once.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Who is asking (default: this host's name and process id).
        #[arg(long)]
        holder: Option<String>,
    },
    /// Renew a lease with its token.
    Renew {
        /// The lease's name.
        name: String,
        /// The grant's fencing token.
        fencing_token: u64,
        /// The new TTL from now.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Release a lease with its token.
    Release {
        /// The lease's name.
        name: String,
        /// The grant's fencing token.
        fencing_token: u64,
    },
    /// Every lease: holder while held, latest token, expiry.
    List,
}

/// `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cli".to_owned());
    format!("{host}:{}", std::process::id())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `POST /v1/leases/{name}/{action}` with `body`; the grant it answers.
async fn lease_action(
    server: &ServerArgs,
    name: &str,
    action: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let path = format!("/v1/leases/{}/{action}", encode(name));
    Client::new(server)?
        .send_json(reqwest::Method::POST, &path, body)
        .await?
        .context("the server answered without a grant")
}

/// Runs one `lease` subcommand.
pub async fn run(command: LeaseCommand, server: &ServerArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        LeaseCommand::Acquire {
            name,
            ttl,
            wait,
            holder,
        } => {
            let body = json!({
                "holder": holder.unwrap_or_else(default_holder),
                "ttl_ms": millis(ttl),
                "wait_ms": wait.map(millis),
            });
            let acquiring = lease_action(server, &name, "acquire", &body);
            let grant = match wait.filter(|w| !w.is_zero()) {
                Some(wait) => {
                    counting_down(&format!("waiting for lease {name}"), wait, acquiring).await?
                }
                None => acquiring.await?,
            };
            answer(server.json, &grant, |grant| {
                format!(
                    "acquired {name} as {} with token {} until {}",
                    grant["holder"].as_str().unwrap_or_default(),
                    grant["token"],
                    grant["expires_at"].as_str().unwrap_or_default()
                )
            });
        }
        LeaseCommand::Renew {
            name,
            fencing_token: token,
            ttl,
        } => {
            let body = json!({ "token": token, "ttl_ms": millis(ttl) });
            let grant = lease_action(server, &name, "renew", &body).await?;
            answer(server.json, &grant, |grant| {
                format!(
                    "renewed {name} (token {token}) until {}",
                    grant["expires_at"].as_str().unwrap_or_default()
                )
            });
        }
        LeaseCommand::Release {
            name,
            fencing_token: token,
        } => {
            Client::new(server)?
                .send_json(
                    Method::POST,
                    &format!("/v1/leases/{}/release", encode(&name)),
                    &json!({ "token": token }),
                )
                .await?;
            if !server.json {
                outln!("released {name} (token {token})");
            }
        }
        LeaseCommand::List => {
            let leases = Client::new(server)?
                .send(Method::GET, "/v1/leases")
                .await?
                .unwrap_or_default();
            print(
                server.json,
                &leases,
                &[
                    ("NAME", "name"),
                    ("HOLDER", "holder"),
                    ("TOKEN", "token"),
                    ("EXPIRES", "expires_at"),
                ],
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "-1s", "1d", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

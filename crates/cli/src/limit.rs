//! `onephase limit ...`: check keys against a running server's rate-limit policies, and list
//! them.

use crate::output::outln;
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, ServerArgs, encode, print};

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Check a key against a policy (spends `--cost` units if admitted). Exits 1 when refused.
    Check {
        /// The policy's name.
        policy: String,
        /// What is limited: a client id, an IP address...
        key: String,
        /// Units to spend.
        #[arg(long, default_value_t = 1)]
        cost: u64,
    },
    /// Every policy, with the server's decision counts.
    Policies,
}

pub async fn run(command: LimitCommand, server: &ServerArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        LimitCommand::Check { policy, key, cost } => {
            let decision = Client::new(server)?
                .send_json(
                    Method::POST,
                    &format!("/v1/limits/{}/check", encode(&policy)),
                    &json!({"key": key, "cost": cost}),
                )
                .await?
                .context("the server answered without a decision")?;
            let allowed = decision["allowed"] == json!(true);
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&decision)?);
            } else if allowed {
                outln!(
                    "allowed: {} of {} left, full again in {} ms",
                    decision["remaining"],
                    decision["limit"],
                    decision["reset_ms"]
                );
            } else {
                outln!(
                    "refused: retry after {} ms",
                    decision["retry_after_ms"].as_u64().unwrap_or_default()
                );
            }
            if let Some(fallback) = decision["fallback"].as_str() {
                eprintln!("note: the limit's store did not answer ({fallback})");
            }
            if !allowed {
                std::process::exit(1);
            }
        }
        LimitCommand::Policies => {
            let mut policies = Client::new(server)?
                .send(Method::GET, "/v1/limits")
                .await?
                .unwrap_or_default();
            if let Some(list) = policies.as_array_mut() {
                for p in list {
                    let spec = &p["spec"];
                    let chunk = spec["chunk"]
                        .as_u64()
                        .map(|c| format!(", leased in chunks of {c}"))
                        .unwrap_or_default();
                    p["rule"] = json!(format!(
                        "{} {} per {} ms{chunk}",
                        spec["algorithm"].as_str().unwrap_or_default(),
                        spec["limit"],
                        spec["period_ms"]
                    ));
                }
            }
            print(
                server.json,
                &policies,
                &[
                    ("NAME", "name"),
                    ("RULE", "rule"),
                    ("SOURCE", "source"),
                    ("STORE", "store"),
                    ("DECISIONS", "decisions"),
                    ("REFUSED", "rejections"),
                ],
            );
        }
    }
    Ok(())
}

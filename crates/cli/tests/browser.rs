//! The dashboard and the lab's report in a real browser: Debian's Chromium, headless, driven
//! by Playwright. `tests/browser/dashboard.mjs`, against `onephase serve`: an operator signs
//! in, sees the dead letter, opens the endpoint, presses replay and sees the delivery succeed;
//! the layout must not overflow 800 px. `tests/browser/lab.mjs`, on the page `onephase lab all
//! --report` writes: every scenario with its numbers, verdicts and chart, nothing fetched.
//!
//! scripts/test.sh installs Chromium and the script's locked dependencies and sets
//! `ONEPHASE_CHROMIUM` and `ONEPHASE_BROWSER_NODE`. With `ONEPHASE_SCREENSHOTS=DIR` the script
//! also writes the pages it saw (the docs' screenshots come from there).

mod common;
#[path = "../../webhook/tests/common/mod.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use common::serve_with;
use onephase_testkit::tool_path;
use serde_json::{Value, json};
use tokio::process::Command;

/// Chromium, Node.js and the scripts' folder with its locked dependencies.
struct Browser {
    chromium: PathBuf,
    node: PathBuf,
    scripts: PathBuf,
}

impl Browser {
    /// The tools, or `None` (the suite is skipped, and says so) where they are not installed.
    fn found() -> anyhow::Result<Option<Self>> {
        let (Some(chromium), Some(node)) = (
            tool_path("ONEPHASE_CHROMIUM", "Chromium"),
            tool_path("ONEPHASE_BROWSER_NODE", "Node.js for the browser test"),
        ) else {
            return Ok(None);
        };
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        ensure!(
            scripts.join("node_modules/playwright-core").is_dir(),
            "tests/browser has no node_modules: `npm ci` there (scripts/test.sh does)"
        );
        Ok(Some(Self {
            chromium,
            node,
            scripts,
        }))
    }

    /// Runs `script` with `env` (and `CHROMIUM`, and `SCREENSHOTS` from
    /// `ONEPHASE_SCREENSHOTS`); it must end saying `browser: ok`.
    async fn run(&self, script: &str, env: &[(&str, String)]) -> anyhow::Result<()> {
        let mut command = Command::new(&self.node);
        command
            .arg(script)
            .current_dir(&self.scripts)
            .env("CHROMIUM", &self.chromium)
            .envs(env.iter().map(|(k, v)| (*k, v)));
        if let Ok(dir) = std::env::var("ONEPHASE_SCREENSHOTS") {
            command.env("SCREENSHOTS", dir);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("{script} did not finish within 120 s"))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains("browser: ok"),
            "{script} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

#[tokio::test]
async fn an_operator_replays_a_dead_letter_from_the_dashboard() -> anyhow::Result<()> {
    let Some(browser) = Browser::found()? else {
        return Ok(());
    };

    // A receiver that fails the first attempt and accepts the rest; one attempt per delivery,
    // so the first is a dead letter at once.
    let rx = receiver::TestReceiver::start().await;
    rx.script(|_, n| receiver::Answer::status(if n == 0 { 500 } else { 200 }));
    let dir = tempfile::tempdir()?;
    let server = serve_with(
        dir.path(),
        "[webhook]\nallow_networks = [\"127.0.0.0/8\"]\nschedule_secs = [0]\njitter = 0.0\n\
         poll_interval_ms = 20\n",
    )
    .await?;
    let token = server
        .token
        .clone()
        .context("the first start prints a token")?;
    let http = reqwest::Client::new();
    let endpoint: Value = http
        .post(format!("{}/v1/webhooks/endpoints", server.base))
        .bearer_auth(&token)
        .json(&json!({"url": rx.url("hooks"), "description": "billing receiver"}))
        .send()
        .await?
        .json()
        .await?;
    let endpoint_id = endpoint["id"]
        .as_str()
        .context("an endpoint id")?
        .to_owned();
    http.post(format!("{}/v1/webhooks/messages", server.base))
        .bearer_auth(&token)
        .json(&json!({"event_type": "invoice.paid", "payload": {"invoice": 42}}))
        .send()
        .await?
        .error_for_status()?;
    let dead_url = format!(
        "{}/v1/webhooks/dead-letters?endpoint_id={endpoint_id}",
        server.base
    );
    let mut dead = 0;
    for _ in 0..400 {
        let list: Value = http
            .get(&dead_url)
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        dead = list.as_array().map_or(0, Vec::len);
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(dead == 1, "no dead letter to replay");

    browser
        .run(
            "dashboard.mjs",
            &[
                ("BASE_URL", server.base.clone()),
                ("TOKEN", token.clone()),
                ("ENDPOINT_ID", endpoint_id.clone()),
            ],
        )
        .await?;
    ensure!(
        rx.arrivals().len() >= 2,
        "the replay never reached the receiver"
    );
    server.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn the_lab_report_shows_every_scenario_with_its_chart() -> anyhow::Result<()> {
    let Some(browser) = Browser::found()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("lab.html");
    let mut lab = Command::new(env!("CARGO_BIN_EXE_onephase"));
    lab.args(["lab", "all", "--report"]).arg(&report);
    // Every scenario, the ones about an engine too, where the engine is here.
    match onephase_testkit::engine_url(onephase_testkit::Engine::PostgresPrepared) {
        Some(url) => lab.env("ONEPHASE_LAB_POSTGRES_URL", url),
        None => lab.env_remove("ONEPHASE_LAB_POSTGRES_URL"),
    };
    let ran = lab.output().await?;
    ensure!(
        ran.status.success(),
        "onephase lab all: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_onephase"))
        .args(["lab", "--json"])
        .output()
        .await?;
    let names: Vec<String> = serde_json::from_slice::<Value>(&listed.stdout)?
        .as_array()
        .context("the list")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();

    browser
        .run(
            "lab.mjs",
            &[
                ("REPORT", report.display().to_string()),
                ("SCENARIOS", names.join(",")),
            ],
        )
        .await?;
    Ok(())
}

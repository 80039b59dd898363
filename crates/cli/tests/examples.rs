//! The quickstarts in `examples/python` and `examples/typescript`, run end to end against a
//! real `onephase serve` and real PostgreSQL databases: a service in another language writes
//! its outbox rows in its own transaction, runs a saga, sends and verifies a webhook, makes a
//! fenced write under a lease, checks a rate limit, and consumes its events once through an
//! inbox. Each example asserts its own steps and prints `quickstart: ok`.
//!
//! scripts/test.sh prepares the interpreters: a virtual environment with the Python example's
//! requirements (`ONEPHASE_EXAMPLES_PYTHON`) and the TypeScript example built with its locked
//! dependencies (`ONEPHASE_EXAMPLES_NODE`).

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use common::serve_with;
use onephase_testkit::{TestDb, tool_path};
use tokio::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Starts a server whose relay publishes the app database's outbox to the embedded log, and
/// runs `program args` in `cwd` against it; checks what it printed.
async fn quickstart(program: &Path, args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let (Some(app), Some(consumer)) = (TestDb::postgres().await, TestDb::postgres().await) else {
        return Ok(()); // the PostgreSQL suite is skipped (and said so)
    };
    let dir = tempfile::tempdir()?;
    let toml = format!(
        "[[outbox.relay]]\nname = \"orders\"\nsource = \"{}\"\nsink = \"log\"\n\
         [saga]\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 20\n\
         [webhook]\nallow_networks = [\"127.0.0.0/8\"]\n",
        app.url()
    );
    let server = serve_with(dir.path(), &toml).await?;
    let token = server
        .token
        .clone()
        .context("the first start prints a token")?;
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("ONEPHASE_URL", &server.base)
        .env("ONEPHASE_TOKEN", &token)
        .env("APP_DATABASE_URL", app.url())
        .env("CONSUMER_DATABASE_URL", consumer.url())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.lines().last() == Some("quickstart: ok"),
        "{program:?} {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for said in [
        "committed together",
        "saga",
        "compensated the reservation",
        "signature verified",
        "a stale token was refused",
        "applied the event once",
    ] {
        ensure!(
            stdout.contains(said),
            "the quickstart did not say {said:?}:\n{stdout}"
        );
    }
    server.terminate().await?;
    app.close().await?;
    consumer.close().await?;
    Ok(())
}

#[tokio::test]
async fn the_python_quickstart_runs_end_to_end() -> anyhow::Result<()> {
    let Some(python) = tool_path("ONEPHASE_EXAMPLES_PYTHON", "Python example") else {
        return Ok(());
    };
    let dir = examples().join("python");
    quickstart(&python, &["quickstart.py"], &dir).await
}

#[tokio::test]
async fn the_typescript_quickstart_runs_end_to_end() -> anyhow::Result<()> {
    let Some(node) = tool_path("ONEPHASE_EXAMPLES_NODE", "TypeScript example") else {
        return Ok(());
    };
    let dir = examples().join("typescript");
    ensure!(
        dir.join("dist/quickstart.js").is_file(),
        "examples/typescript is not built: `npm ci && npm run build` there (scripts/test.sh does)"
    );
    quickstart(&node, &["dist/quickstart.js"], &dir).await
}

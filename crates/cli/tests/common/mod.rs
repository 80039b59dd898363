//! What the fault tests share: a `onephase serve` child on a fixed port that can be killed and
//! started again on the same address.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_onephase");

/// A port that was free a moment ago, so that restarts can listen on the same address.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `onephase serve --config <config>` on `port`, logging at `log` to this test's stderr.
pub fn spawn_server(config: &Path, port: u16, log: &str) -> anyhow::Result<Child> {
    Ok(Command::new(BIN)
        .args(["serve", "--log", log, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(config)
        .env_remove("ONEPHASE_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// Waits (up to 20 s) until `base` answers `/healthz`.
pub async fn wait_until_up(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..400 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the server did not come up at {base}")
}

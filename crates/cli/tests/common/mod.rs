//! What the tests of the binary share: `onephase serve` as a child process, on a free port
//! with what it printed kept (its admin token, its log lines), or on a fixed port that can be
//! killed and started again on the same address.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
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

/// A `onephase serve` child process and what it printed.
pub struct Serve {
    pub child: Child,
    pub base: String,
    pub token: Option<String>,
    /// Every log line (JSON) it wrote to standard error so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Writes `toml` as `dir/onephase.toml` and starts `onephase serve` in `dir` with it.
pub async fn serve_with(dir: &Path, toml: &str) -> anyhow::Result<Serve> {
    let path = dir.join("onephase.toml");
    std::fs::write(&path, toml)?;
    let path = path.display().to_string();
    serve(dir, &["--config", &path]).await
}

/// Starts `onephase serve` in `dir` on a free port and waits until it listens.
pub async fn serve(dir: &Path, extra: &[&str]) -> anyhow::Result<Serve> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .current_dir(dir)
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await? {
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                bail!("a log line is not JSON: {line}");
            };
            if let Some(addr) = event["fields"]["addr"].as_str() {
                return Ok(format!("http://{addr}"));
            }
        }
        bail!(
            "the server exited before listening: {}",
            logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
        )
    })
    .await
    .context("the server did not listen within 30 s")??;
    // The token banner is printed before the server listens, so it is already in the pipe.
    let mut token = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(200), stdout.next_line()).await
    {
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("op_")) {
            token = Some(t.trim_matches('\'').to_owned());
            break;
        }
    }
    // Keep reading stderr so the child never blocks on a full pipe, and keep the lines.
    let kept = Arc::clone(&logs);
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    Ok(Serve {
        child,
        base,
        token,
        logs,
    })
}

impl Serve {
    /// The log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("running child")?;
        // The shell's builtin kill: present wherever sh is, unlike /bin/kill.
        let status = std::process::Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        Ok(
            tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .context("no exit within 20 s of SIGTERM")??,
        )
    }
}

/// A client that sends the server's admin token.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn of(server: &Serve) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::new(),
            base: server.base.clone(),
            token: server
                .token
                .clone()
                .context("the first start prints a token")?,
        })
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// GETs `path` as text, signed in to the dashboard with this token.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("onephase_session={}", self.token))
            .send()
            .await?
            .text()
            .await?)
    }
}

/// Polls `check` every 50 ms for up to `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

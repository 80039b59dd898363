//! The `onephase` binary as a user runs it: in an empty directory, with no settings.

mod common;
#[path = "../../saga/tests/common/mod.rs"]
mod participants;
#[path = "../../webhook/tests/common/mod.rs"]
mod receiver;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::serve;
use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_onephase");

async fn onephase(dir: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("ONEPHASE_STORE")
        .env_remove("ONEPHASE_CONFIG")
        // The lab's engines are given on the command line, or missing on purpose.
        .env_remove("ONEPHASE_LAB_POSTGRES_URL")
        .env_remove("ONEPHASE_LAB_NATS_URL")
        .env_remove("ONEPHASE_LAB_REPLICAS")
        .output()
        .await?)
}

#[tokio::test]
async fn serve_with_no_settings_runs_on_sqlite_and_stops_cleanly_on_sigterm() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let token = server
        .token
        .clone()
        .context("the first start prints an admin token")?;
    ensure!(
        dir.path().join("onephase.db").exists(),
        "the default store is ./onephase.db"
    );

    let http = reqwest::Client::new();
    let health = http.get(format!("{}/healthz", server.base)).send().await?;
    ensure!(health.status() == 200);
    let me: Value = http
        .get(format!("{}/v1/whoami", server.base))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    ensure!(me["role"] == "admin", "{me}");
    let status = server.terminate().await?;
    ensure!(status.success(), "exit status after SIGTERM: {status}");

    // The second start finds the token and prints none.
    let again = serve(dir.path(), &[]).await?;
    ensure!(
        again.token.is_none(),
        "a second start printed another admin token"
    );
    again.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn token_commands_manage_the_store_the_server_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let migrate = onephase(dir.path(), &["migrate"]).await?;
    ensure!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let created = onephase(
        dir.path(),
        &["token", "create", "--name", "ci", "--role", "admin"],
    )
    .await?;
    ensure!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout)?.trim().to_owned();
    ensure!(token.starts_with("op_"), "{token}");

    let duplicate = onephase(dir.path(), &["token", "create", "--name", "ci"]).await?;
    ensure!(!duplicate.status.success());
    ensure!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    // A store with a token already: no bootstrap token, and the CLI's token works.
    let server = serve(dir.path(), &[]).await?;
    ensure!(server.token.is_none());
    let me: Value = reqwest::Client::new()
        .get(format!("{}/v1/whoami", server.base))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    ensure!(me["name"] == "ci", "{me}");

    let listed = onephase(dir.path(), &["token", "list"]).await?;
    ensure!(String::from_utf8_lossy(&listed.stdout).contains("ci"));
    let revoked = onephase(dir.path(), &["token", "revoke", "ci"]).await?;
    ensure!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let after = reqwest::Client::new()
        .get(format!("{}/v1/whoami", server.base))
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(after.status() == 401, "a revoked token still works");
    server.terminate().await?;

    let config_only = onephase(
        dir.path(),
        &["token", "create", "--name", "bot", "--config-only"],
    )
    .await?;
    let text = String::from_utf8(config_only.stdout)?;
    ensure!(
        text.contains("[[auth.tokens]]") && text.contains("sha256 = "),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn configuration_errors_name_the_problem_and_exit_non_zero() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bad.toml"), "lisen = \"127.0.0.1:1\"\n")?;
    let out = onephase(dir.path(), &["serve", "--config", "bad.toml"]).await?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("bad.toml") && stderr.contains("lisen"),
        "{stderr}"
    );

    let out = onephase(dir.path(), &["serve", "--store", "mysql://x"]).await?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("sqlite:"));

    let out = onephase(
        dir.path(),
        &["token", "create", "--name", "x", "--role", "root"],
    )
    .await?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("admin or client"));

    let help = onephase(dir.path(), &["--help"]).await?;
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "migrate", "token", "ONEPHASE_"] {
        ensure!(text.contains(word), "--help lacks {word}: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn flags_override_the_environment_which_overrides_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("onephase.toml"),
        "store = \"sqlite://from-file.db\"\n",
    )?;
    let run = |env_store: Option<&'static str>, flag: Option<&'static str>| {
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .args(["migrate", "--config", "onephase.toml"])
            .env_remove("ONEPHASE_STORE");
        if let Some(store) = env_store {
            command.env("ONEPHASE_STORE", store);
        }
        if let Some(store) = flag {
            command.args(["--store", store]);
        }
        command.output()
    };
    run(None, None).await?;
    ensure!(dir.path().join("from-file.db").exists());
    run(Some("sqlite://from-env.db"), None).await?;
    ensure!(dir.path().join("from-env.db").exists());
    run(Some("sqlite://from-env2.db"), Some("sqlite://from-flag.db")).await?;
    ensure!(dir.path().join("from-flag.db").exists());
    ensure!(!dir.path().join("from-env2.db").exists());
    Ok(())
}

#[tokio::test]
async fn outbox_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // An application database with its own outbox table, created by `migrate --outbox`.
    let app_db = format!("sqlite://{}", dir.path().join("app.db").display());
    let migrated = onephase(dir.path(), &["migrate", "--outbox", &app_db]).await?;
    ensure!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let app = onephase_store::Store::connect(&app_db).await?;
    let bad = uuid::Uuid::now_v7();
    let good = uuid::Uuid::now_v7();
    let sqlite = app.as_sqlite().context("sqlite")?;
    // Different keys: a dead row holds back the later rows of its own key.
    for (id, topic, key) in [(bad, "no spaces allowed", "k1"), (good, "app.events", "k2")] {
        sqlx::query("INSERT INTO onephase_outbox (id, topic, key, payload) VALUES (?1, ?2, ?3, '{\"ok\":true}')")
            .bind(id.to_string())
            .bind(topic)
            .bind(key)
            .execute(sqlite.writer())
            .await?;
    }
    app.close().await;
    std::fs::write(
        dir.path().join("onephase.toml"),
        format!(
            "[[outbox.relay]]\nname = \"app\"\nsource = \"{app_db}\"\nsink = \"log\"\nmax_attempts = 1\n"
        ),
    )?;
    let server = serve(dir.path(), &["--config", "onephase.toml"]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let client = |args: &[&str]| {
        let mut all = vec!["outbox"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        async move {
            let output = Command::new(BIN)
                .args(&all)
                .current_dir(dir)
                .env("ONEPHASE_SERVER", base)
                .env("ONEPHASE_TOKEN", token)
                .output()
                .await?;
            anyhow::Ok(output)
        }
    };
    // The good row is relayed to the embedded log; the bad one is dead-lettered.
    let mut tail = String::new();
    for _ in 0..100 {
        let out = client(&["tail", "app.events"]).await?;
        tail = String::from_utf8_lossy(&out.stdout).into_owned();
        if tail.contains(&good.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(tail.contains(&good.to_string()), "tail: {tail}");
    let status = client(&["status"]).await?;
    let status_text = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.status.success() && status_text.contains("app") && status_text.contains("LAG"),
        "{status_text}"
    );
    let dead = client(&["dead", "app", "--json"]).await?;
    let rows: Value = serde_json::from_slice(&dead.stdout)?;
    ensure!(rows[0]["id"] == bad.to_string(), "{rows}");
    let retried = client(&["retry", "app", &bad.to_string()]).await?;
    ensure!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    // With one attempt allowed it is dead again at once; then it is discarded for good.
    let mut discarded = false;
    for _ in 0..100 {
        if client(&["discard", "app", &bad.to_string()])
            .await?
            .status
            .success()
        {
            discarded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(discarded, "the retried row never became discardable");
    let dead = client(&["dead", "app", "--json"]).await?;
    let rows: Value = serde_json::from_slice(&dead.stdout)?;
    ensure!(rows.as_array().is_some_and(Vec::is_empty), "{rows}");
    // An unknown relay and a bad token are clear errors with a non-zero exit.
    let unknown = client(&["dead", "nope"]).await?;
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    ensure!(
        !unknown.status.success() && stderr.contains("no relay named"),
        "{stderr}"
    );
    let unauthorized = Command::new(BIN)
        .args([
            "outbox",
            "status",
            "--server",
            &server.base,
            "--token",
            "op_wrong",
        ])
        .output()
        .await?;
    ensure!(!unauthorized.status.success(), "a wrong token was accepted");
    ensure!(server.terminate().await?.success());
    Ok(())
}

#[tokio::test]
async fn saga_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let parts = participants::Participants::start().await?;
    std::fs::write(
        dir.path().join("order.json"),
        participants::order_definition(&parts.base(), 1, 2000),
    )?;
    std::fs::write(
        dir.path().join("onephase.toml"),
        "[saga]\nallow_networks = [\"127.0.0.0/8\"]\n",
    )?;
    let server = serve(dir.path(), &["--config", "onephase.toml"]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let saga = |args: Vec<String>| {
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        async move {
            let output = Command::new(BIN)
                .arg("saga")
                .args(&args)
                .current_dir(dir)
                .env("ONEPHASE_SERVER", base)
                .env("ONEPHASE_TOKEN", token)
                .output()
                .await?;
            anyhow::Ok(output)
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let registered = saga(args(&["register", "order.json"])).await?;
    ensure!(
        registered.status.success() && text(&registered).contains("registered"),
        "{}",
        text(&registered)
    );
    let input = participants::order_input(7, Some("ship"), Some("reserve"), &[], 0).to_string();
    let started = saga(args(&[
        "start",
        "order",
        "--input",
        &input,
        "--idempotency-key",
        "o-7",
        "--json",
    ]))
    .await?;
    ensure!(started.status.success(), "{}", text(&started));
    let started: Value = serde_json::from_slice(&started.stdout)?;
    let id = started["id"].as_str().context("id")?.to_owned();
    let mismatch = saga(args(&[
        "start",
        "order",
        "--input",
        "{}",
        "--idempotency-key",
        "o-7",
    ]))
    .await?;
    ensure!(!mismatch.status.success(), "{}", text(&mismatch));
    let unknown = saga(args(&["start", "nope"])).await?;
    ensure!(
        !unknown.status.success() && text(&unknown).contains("no saga"),
        "{}",
        text(&unknown)
    );

    // The run parks waiting for an operator; `list --state needs-operator` shows it.
    let mut listed = String::new();
    for _ in 0..1200 {
        let out = saga(args(&["list", "--state", "needs-operator"])).await?;
        listed = text(&out);
        if listed.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(
        listed.contains(&id) && listed.contains("needs_operator"),
        "{listed}"
    );
    let shown = saga(args(&["show", &id])).await?;
    let shown = text(&shown);
    ensure!(
        shown.contains("run_needs_operator") && shown.contains("compensation"),
        "{shown}"
    );
    let retried = saga(args(&["retry", &id, "--note", "inventory redeployed"])).await?;
    ensure!(retried.status.success(), "{}", text(&retried));
    // It fails again (the plan says forever); resolve it by hand.
    let mut resolved = None;
    for _ in 0..1200 {
        let out = saga(args(&[
            "resolve",
            &id,
            "reserve",
            "--note",
            "released in the admin UI",
        ]))
        .await?;
        if out.status.success() {
            resolved = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let resolved = resolved.context("the retried run never parked again")?;
    ensure!(text(&resolved).contains("resolved"), "{}", text(&resolved));
    let mut state = String::new();
    for _ in 0..1200 {
        let out = saga(args(&["show", &id, "--json"])).await?;
        let run: Value = serde_json::from_slice(&out.stdout)?;
        state = run["state"].as_str().unwrap_or_default().to_owned();
        if state == "compensated" {
            let history = run["history"].to_string();
            ensure!(history.contains("released in the admin UI"), "{history}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(state == "compensated", "{state}");
    let abort = saga(args(&["abort", &id, "--note", "too late"])).await?;
    ensure!(
        !abort.status.success() && text(&abort).contains("not needs_operator"),
        "{}",
        text(&abort)
    );
    ensure!(server.terminate().await?.success());
    Ok(())
}

/// Runs `onephase <command> <args>` against the server at `base`; whether it succeeded, and
/// what it printed (stdout, then stderr).
async fn client_command(
    dir: &Path,
    base: &str,
    token: &str,
    command: &str,
    args: &[String],
) -> anyhow::Result<(bool, String)> {
    let output = Command::new(BIN)
        .arg(command)
        .args(args)
        .current_dir(dir)
        .env_remove("ONEPHASE_CONFIG")
        .env("ONEPHASE_SERVER", base)
        .env("ONEPHASE_TOKEN", token)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[tokio::test]
async fn webhook_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("onephase.toml"),
        "[webhook]\nallow_networks = [\"127.0.0.0/8\"]\nschedule_secs = [0]\npoll_interval_ms = 20\n",
    )?;
    let rx = receiver::TestReceiver::start().await;
    rx.script(|path, _| receiver::Answer::status(if path == "down" { 500 } else { 200 }));
    let server = serve(dir.path(), &["--config", "onephase.toml"]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let webhook = |args: Vec<String>| {
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        async move { client_command(&dir, &base, &token, "webhook", &args).await }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (ok, created) = webhook(args(&[
        "endpoints",
        "create",
        &rx.url("ok"),
        "--event-type",
        "a.b",
        "--json",
    ]))
    .await?;
    ensure!(ok, "{created}");
    let created: Value = serde_json::from_str(&created)?;
    let ok_id = created["endpoint"]["id"].as_str().context("id")?.to_owned();
    ensure!(
        created["keys"][0]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("whsec_")),
        "{created}"
    );
    let (ok, created) = webhook(args(&["endpoints", "create", &rx.url("down")])).await?;
    ensure!(
        ok && created.contains("the receiver verifies with: whsec_"),
        "{created}"
    );
    let down_id = created
        .split(':')
        .next()
        .context("an id")?
        .trim()
        .to_owned();
    let (refused, text) =
        webhook(args(&["endpoints", "create", "http://169.254.169.254/x"])).await?;
    ensure!(!refused && text.contains("169.254.169.254"), "{text}");

    let (ok, sent) = webhook(args(&[
        "send",
        "a.b",
        "--payload",
        r#"{"n":1}"#,
        "--idempotency-key",
        "k-1",
    ]))
    .await?;
    ensure!(ok && sent.contains("recorded for 2 endpoint(s)"), "{sent}");
    let id = sent.split(':').next().context("an id")?.trim().to_owned();
    let (ok, again) = webhook(args(&[
        "send",
        "a.b",
        "--payload",
        r#"{"n":1}"#,
        "--idempotency-key",
        "k-1",
    ]))
    .await?;
    ensure!(
        ok && again.contains(&id) && again.contains("already sent"),
        "{again}"
    );
    let (ok, bad) = webhook(args(&["send", "a.b", "--payload", "{nope"])).await?;
    ensure!(!ok && bad.contains("--payload"), "{bad}");

    let mut shown = String::new();
    for _ in 0..1200 {
        shown = webhook(args(&["show", &id])).await?.1;
        if !shown.contains("pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(
        shown.contains("delivered") && shown.contains("dead"),
        "{shown}"
    );
    let (_, attempts) = webhook(args(&["attempts", "--message", &id])).await?;
    ensure!(
        attempts.contains("200") && attempts.contains("500"),
        "{attempts}"
    );
    let (_, dead) = webhook(args(&["dead"])).await?;
    ensure!(dead.contains(&down_id), "{dead}");

    // Replayed to a receiver that still fails: the wait sees it go dead again, and says so.
    let replay_and_wait = args(&[
        "replay",
        "--endpoint",
        &down_id,
        "--wait",
        "--timeout",
        "20s",
    ]);
    let (ok, replayed) = webhook(replay_and_wait.clone()).await?;
    ensure!(
        !ok && replayed.contains("1 deliveries went to the dead letters again"),
        "{replayed}"
    );
    rx.script(|_, _| receiver::Answer::status(200));
    let (ok, replayed) = webhook(replay_and_wait).await?;
    ensure!(
        ok && replayed.contains("1 deliveries pending again")
            && replayed.contains("nothing pending any more"),
        "{replayed}"
    );
    let (ok, replayed) = webhook(args(&[
        "replay",
        "--message",
        &id,
        "--include-delivered",
        "--wait",
    ]))
    .await?;
    ensure!(
        ok && replayed.contains("2 deliveries pending again")
            && replayed.contains("nothing pending any more"),
        "{replayed}"
    );
    let (ok, text) = webhook(args(&["replay", "--endpoint", &down_id, "--timeout", "5s"])).await?;
    ensure!(
        !ok && text.contains("--wait"),
        "--timeout without --wait: {text}"
    );
    let (ok, rotated) = webhook(args(&[
        "endpoints",
        "rotate",
        &ok_id,
        "--overlap-secs",
        "60",
    ]))
    .await?;
    ensure!(ok && rotated.contains("whsec_"), "{rotated}");
    let (_, keys) = webhook(args(&["endpoints", "keys", &ok_id])).await?;
    ensure!(keys.matches("whsec_").count() == 2, "{keys}");
    let (ok, _) = webhook(args(&[
        "endpoints",
        "disable",
        &down_id,
        "--reason",
        "maintenance",
    ]))
    .await?;
    ensure!(ok);
    let (_, listed) = webhook(args(&["endpoints", "list"])).await?;
    ensure!(
        listed.contains("maintenance") && listed.contains(&ok_id),
        "{listed}"
    );
    let (ok, _) = webhook(args(&["endpoints", "enable", &down_id])).await?;
    ensure!(ok);
    let (ok, _) = webhook(args(&["endpoints", "delete", &down_id])).await?;
    ensure!(ok);
    let (missing, text) = webhook(args(&["endpoints", "show", &down_id])).await?;
    ensure!(!missing && text.contains("no endpoint"), "{text}");
    let status = server.terminate().await?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn lease_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let lease = |args: &[&str]| {
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        async move { client_command(&dir, &base, &token, "lease", &args).await }
    };
    let (ok, granted) = lease(&[
        "acquire", "nightly", "--ttl", "30s", "--holder", "cron-1", "--json",
    ])
    .await?;
    ensure!(ok, "{granted}");
    let grant: Value = serde_json::from_str(&granted)?;
    let first = grant["token"].as_u64().context("a token")?;
    let (held, text) = lease(&["acquire", "nightly", "--ttl", "30s", "--wait", "200ms"]).await?;
    ensure!(!held && text.contains("cron-1"), "{text}");
    let (ok, text) = lease(&["renew", "nightly", &first.to_string(), "--ttl", "1m"]).await?;
    ensure!(ok && text.contains("renewed"), "{text}");
    let (ok, listed) = lease(&["list"]).await?;
    ensure!(
        ok && listed.contains("nightly") && listed.contains("cron-1"),
        "{listed}"
    );
    let (theirs, text) = lease(&["release", "nightly", &(first + 1).to_string()]).await?;
    ensure!(!theirs && text.contains("no longer held"), "{text}");
    let (bad, text) = lease(&["acquire", "nightly", "--ttl", "1d"]).await?;
    ensure!(!bad && text.contains("unknown unit"), "{text}");
    let (ok, text) = lease(&["release", "nightly", &first.to_string()]).await?;
    ensure!(ok && text.contains("released"), "{text}");
    let (ok, granted) = lease(&["acquire", "nightly", "--holder", "cron-2", "--json"]).await?;
    ensure!(ok, "{granted}");
    let grant: Value = serde_json::from_str(&granted)?;
    ensure!(grant["token"].as_u64() > Some(first), "{grant}");
    let status = server.terminate().await?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn events_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = serve(dir.path(), &[]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let events = |args: &[&str]| {
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        async move { client_command(&dir, &base, &token, "events", &args).await }
    };
    std::fs::write(
        dir.path().join("customers.json"),
        r#"{"category": "order", "key": {"field": "customer"}, "handlers": {"OrderPlaced": "count"}}"#,
    )?;
    let (ok, text) = events(&["define", "customers", "customers.json"]).await?;
    ensure!(ok && text.contains("generation 1"), "{text}");
    let placed = r#"{"customer":"c-1","total":12345678901234567890}"#;
    let (ok, text) = events(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        placed,
        "--expected-version",
        "no_stream",
        "--json",
    ])
    .await?;
    ensure!(ok, "{text}");
    let position = serde_json::from_str::<Value>(&text)?["position"]
        .as_u64()
        .context("position")?;
    let (conflict, text) = events(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        placed,
        "--expected-version",
        "no_stream",
    ])
    .await?;
    ensure!(!conflict && text.contains("is at version 1"), "{text}");
    let (bad, text) = events(&[
        "append",
        "order-1",
        "--type",
        "T",
        "--data",
        "{}",
        "--expected-version",
        "soon",
    ])
    .await?;
    ensure!(
        !bad && text.contains("use any, no_stream or a number"),
        "{text}"
    );
    let (ok, text) = events(&[
        "wait",
        "customers",
        &position.to_string(),
        "--timeout",
        "10s",
    ])
    .await?;
    ensure!(ok && text.contains("has applied position"), "{text}");
    let (ok, text) = events(&["read", "order-1"]).await?;
    ensure!(ok && text.contains("12345678901234567890"), "{text}");
    let (ok, text) = events(&["explain", "customers", "c-1"]).await?;
    ensure!(
        ok && text.contains("order-1") && text.contains("OrderPlaced"),
        "{text}"
    );
    let (ok, text) = events(&["rebuild", "customers", "--reason", "new code"]).await?;
    ensure!(ok && text.contains("generation 2 is live"), "{text}");
    let (ok, text) = events(&["projections"]).await?;
    ensure!(
        ok && text.contains("customers") && text.contains("live"),
        "{text}"
    );
    let (ok, text) = events(&["tail"]).await?;
    ensure!(ok && text.contains("order-1"), "{text}");
    let (missing, text) = events(&["retry", "customers", "--reason", "nothing parked"]).await?;
    ensure!(!missing && text.contains("not parked"), "{text}");
    let status = server.terminate().await?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn limit_commands_talk_to_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("onephase.toml"),
        "[[limit.policy]]\nname = \"signup\"\nalgorithm = \"sliding_log\"\nlimit = 2\nperiod_ms = 60000\n",
    )?;
    let server = serve(dir.path(), &["--config", "onephase.toml"]).await?;
    let token = server.token.clone().context("bootstrap token")?;
    let limit = |args: &[&str]| {
        let (base, token) = (server.base.clone(), token.clone());
        let dir = dir.path().to_owned();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        async move { client_command(&dir, &base, &token, "limit", &args).await }
    };
    let (ok, text) = limit(&["check", "signup", "10.0.0.7"]).await?;
    ensure!(ok && text.contains("allowed: 1 of 2 left"), "{text}");
    let (ok, text) = limit(&["check", "signup", "10.0.0.7"]).await?;
    ensure!(ok && text.contains("allowed: 0 of 2 left"), "{text}");
    let (refused, text) = limit(&["check", "signup", "10.0.0.7"]).await?;
    ensure!(!refused && text.contains("refused: retry after"), "{text}");
    let (bad, text) = limit(&["check", "nothing", "k"]).await?;
    ensure!(!bad && text.contains("no rate-limit policy"), "{text}");
    let (bad, text) = limit(&["check", "signup", "k", "--cost", "3"]).await?;
    ensure!(!bad && text.contains("cost 3"), "{text}");
    let (ok, text) = limit(&["policies"]).await?;
    ensure!(
        ok && text.contains("signup") && text.contains("sliding_log 2 per 60000 ms"),
        "{text}"
    );
    let status = server.terminate().await?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn lab_prints_its_scenarios_and_names_the_ones_it_has() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = onephase(dir.path(), &["lab", "stampede", "retry-storm", "--json"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: Vec<_> = reports
        .as_array()
        .context("an array of reports")?
        .iter()
        .map(|r| r["scenario"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["stampede", "retry-storm"]);
    let burst = &reports[0]["rows"][0];
    assert_eq!(burst["metric"], "burst: origin calls");
    assert_eq!(burst["onephase"], 1.0);

    let table = onephase(dir.path(), &["lab", "reconnect-flood", "--seed", "4"]).await?;
    let text = String::from_utf8(table.stdout)?;
    assert!(text.contains("| peak reconnects per 100 ms |"), "{text}");

    // Without a name, the list: one line per scenario, by post.
    let listed = onephase(dir.path(), &["lab"]).await?;
    let text = String::from_utf8(listed.stdout)?;
    assert!(listed.status.success(), "{text}");
    for line in [
        "   1  fenced-lock",
        "   6  stampede",
        "  11  boundary-burst",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }

    // A report: one page, every scenario asked for, its verdict, no script.
    let page = dir.path().join("lab.html");
    let page_arg = page.display().to_string();
    let reported = onephase(
        dir.path(),
        &[
            "lab",
            "boundary-burst",
            "local-limits",
            "--report",
            &page_arg,
        ],
    )
    .await?;
    assert!(
        reported.status.success(),
        "{}",
        String::from_utf8_lossy(&reported.stderr)
    );
    let html = std::fs::read_to_string(&page)?;
    assert!(
        html.contains(r#"id="boundary-burst""#) && html.contains(r#"id="local-limits""#),
        "{html}"
    );
    assert!(html.contains("onephase kept every invariant") && !html.contains("<script"));
    let unwritable = onephase(
        dir.path(),
        &[
            "lab",
            "boundary-burst",
            "--report",
            "/nonexistent/dir/lab.html",
        ],
    )
    .await?;
    assert_eq!(unwritable.status.code(), Some(1));
    let err = String::from_utf8(unwritable.stderr)?;
    assert!(
        err.contains("cannot write the report to /nonexistent/dir/lab.html"),
        "{err}"
    );

    let unknown = onephase(dir.path(), &["lab", "stampedes"]).await?;
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8(unknown.stderr)?;
    assert!(
        err.contains("unknown scenario \"stampedes\"") && err.contains("retry-storm"),
        "{err}"
    );
    Ok(())
}

/// The figure of `metric` in a JSON report: (naive, onephase).
fn figure(report: &Value, metric: &str) -> anyhow::Result<(f64, f64)> {
    let row = report["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .find(|r| r["metric"].as_str().is_some_and(|m| m.starts_with(metric)))
        .with_context(|| format!("no row {metric:?} in {report}"))?;
    Ok((
        row["naive"].as_f64().context("naive")?,
        row["onephase"].as_f64().context("onephase")?,
    ))
}

#[tokio::test]
async fn lab_on_engines_kills_the_relay_and_holds_two_phase_commit_to_account() -> anyhow::Result<()>
{
    use onephase_testkit::{Engine, engine_url};
    let (Some(postgres), Some(nats)) = (
        engine_url(Engine::PostgresPrepared),
        engine_url(Engine::Nats),
    ) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args([
            "lab",
            "dual-write",
            "two-phase-commit",
            "--engines",
            "--json",
        ])
        .args(["--postgres", &postgres, "--nats", &nats])
        .current_dir(dir.path())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    let reports: Value = serde_json::from_slice(&out.stdout)?;
    let (dual, two_phase) = (&reports[0], &reports[1]);
    ensure!(
        dual["setup"]
            .as_str()
            .is_some_and(|s| s.contains("NATS JetStream")),
        "{dual}"
    );
    // The relay process was really killed, and nothing was lost or made up for it.
    ensure!(
        figure(dual, "relay processes killed")? == (0.0, 3.0),
        "{dual}"
    );
    let (lost_naive, lost) = figure(dual, "events lost")?;
    let (phantom_naive, phantom) = figure(dual, "phantom events")?;
    ensure!(lost_naive > 0.0 && phantom_naive > 0.0, "{dual}");
    ensure!(lost == 0.0 && phantom == 0.0, "{dual}");
    let (committed_naive, committed) = figure(dual, "orders committed")?;
    ensure!(
        committed_naive == committed,
        "the same fates on both: {dual}"
    );
    ensure!(figure(dual, "events published")?.1 == committed, "{dual}");

    let (blocked_naive, blocked) = figure(two_phase, "requests that timed out")?;
    ensure!(blocked_naive > 0.0 && blocked == 0.0, "{two_phase}");
    ensure!(two_phase["invariant"]["holds"] == true, "{two_phase}");

    // Without a PostgreSQL server, --engines says what it needs and runs nothing.
    let refused = onephase(dir.path(), &["lab", "dual-write", "--engines"]).await?;
    ensure!(refused.status.code() == Some(2), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(err.contains("--engines needs a PostgreSQL server"), "{err}");
    Ok(())
}

#[tokio::test]
async fn lab_all_skips_a_scenario_whose_engine_is_missing_and_naming_it_fails() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let named = onephase(dir.path(), &["lab", "two-phase-commit"]).await?;
    ensure!(named.status.code() == Some(1), "{named:?}");
    let err = String::from_utf8_lossy(&named.stderr);
    ensure!(
        err.contains(
            "two-phase-commit did not run: it needs a PostgreSQL server with max_prepared_transactions > 0"
        ) && !err.contains("skipped"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&named.stdout);
    ensure!(text.contains("not run: it needs"), "{text}");

    // `all` runs the rest, says which one it skipped and why, and succeeds.
    let all = onephase(dir.path(), &["lab", "all", "--json"]).await?;
    let err = String::from_utf8_lossy(&all.stderr);
    ensure!(all.status.success(), "{err}");
    ensure!(
        err.contains("skipped two-phase-commit: it needs a PostgreSQL server"),
        "{err}"
    );
    let reports: Value = serde_json::from_slice(&all.stdout)?;
    let reports = reports.as_array().context("an array of reports")?;
    ensure!(reports.len() == 22, "{reports:?}");
    let need_engines = [
        "kafka-group-that-stopped",
        "two-phase-commit",
        "skipped-event",
        "online-move",
        "replica-read-your-writes",
        "monotonic-reads",
        "token-across-services",
    ];
    for r in reports {
        let ran = r["needs"].is_null();
        let scenario = r["scenario"].as_str().unwrap_or_default();
        ensure!(
            ran != need_engines.contains(&scenario),
            "only the scenarios that need PostgreSQL or its replicas are skipped: {r}"
        );
        ensure!(
            !ran || r["invariant"]["holds"] == true,
            "onephase keeps every invariant: {r}"
        );
    }
    Ok(())
}

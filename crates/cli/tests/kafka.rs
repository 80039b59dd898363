//! `onephase kafka doctor` against the real broker, and `onephase serve` watching groups
//! (`[[kafka.watch]]`): the API, `onephase kafka status`, the dashboard panel, and bad input.

mod common;

#[cfg(feature = "kafka")]
mod suite {
    use std::time::{Duration, Instant};

    use anyhow::{Context, ensure};
    use onephase_testkit::{Engine, engine_url};
    use serde_json::Value;

    use super::common::*;

    const BIN: &str = env!("CARGO_BIN_EXE_onephase");

    async fn onephase(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<std::process::Output> {
        Ok(tokio::process::Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .await?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_doctor_diagnoses_from_the_command_line() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let out = onephase(
            &[
                "kafka",
                "doctor",
                "--brokers",
                &brokers,
                "--group",
                "cli-nobody",
                "--window",
                "1s",
                "--interval",
                "500ms",
            ],
            &[],
        )
        .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(text.contains("group cli-nobody"), "{text}");
        ensure!(
            text.contains("no members and no committed offsets"),
            "{text}"
        );

        let out = onephase(
            &[
                "--json",
                "kafka",
                "doctor",
                "--brokers",
                &brokers,
                "--group",
                "cli-nobody",
                "--window",
                "500ms",
                "--interval",
                "500ms",
            ],
            &[],
        )
        .await?;
        let json: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
        ensure!(json[0]["group"] == "cli-nobody", "{json}");
        ensure!(json[0]["findings"][0]["kind"] == "unknown_group", "{json}");

        // Brokers that do not answer: a clear error, exit 1, within the timeout.
        let started = Instant::now();
        let out = onephase(
            &[
                "kafka",
                "doctor",
                "--brokers",
                "127.0.0.1:1",
                "--timeout",
                "2s",
            ],
            &[],
        )
        .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "{:?} {err}", out.status);
        ensure!(err.contains("127.0.0.1:1"), "{err}");
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );

        // A duration that is not one is a usage error.
        let out = onephase(
            &["kafka", "doctor", "--brokers", &brokers, "--window", "soon"],
            &[],
        )
        .await?;
        ensure!(out.status.code() == Some(2), "{:?}", out.status);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_watches_groups() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let server = serve_with(
            dir.path(),
            &format!(
                "[[kafka.watch]]\nbrokers = \"{brokers}\"\ngroups = [\"served-nobody\"]\n\
                 interval_ms = 200\nwindow_ms = 5000\n\
                 [[kafka.watch]]\nbrokers = \"127.0.0.1:1\"\ngroups = [\"unreachable\"]\n"
            ),
        )
        .await?;
        let api = Api::of(&server)?;
        eventually(Duration::from_secs(20), "the group is observed", || async {
            Ok(
                api.get("/v1/kafka/groups").await?["watches"][0]["groups"][0]["group"]
                    == "served-nobody",
            )
        })
        .await?;
        let all = api.get("/v1/kafka/groups").await?;
        ensure!(all["watches"][0]["error"].is_null(), "{all}");
        ensure!(
            all["watches"][1]["error"].is_string(),
            "an unreachable cluster says so: {all}"
        );
        let one = api.get("/v1/kafka/groups/served-nobody").await?;
        ensure!(one["findings"][0]["kind"] == "unknown_group", "{one}");
        let (status, body) = api
            .send(reqwest::Method::GET, "/v1/kafka/groups/never-watched", None)
            .await?;
        ensure!(status == 404, "{status} {body}");
        ensure!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("never-watched")),
            "{body}"
        );

        let token = server.token.clone().unwrap_or_default();
        let out = onephase(
            &["kafka", "status"],
            &[
                ("ONEPHASE_SERVER", &server.base),
                ("ONEPHASE_TOKEN", &token),
            ],
        )
        .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{text}");
        ensure!(text.contains("served-nobody"), "{text}");
        ensure!(
            text.contains("127.0.0.1:1:"),
            "the unreachable watch is listed: {text}"
        );

        let page = api.text("/").await?;
        ensure!(
            page.contains("Kafka groups") && page.contains("served-nobody"),
            "{page}"
        );
        server.terminate().await?;

        // A watch with an interval out of range is refused at start, naming the key.
        let bad = tempfile::tempdir()?;
        let refused = serve_with(
            bad.path(),
            &format!("[[kafka.watch]]\nbrokers = \"{brokers}\"\ninterval_ms = 0\n"),
        )
        .await;
        let message = format!("{:#}", refused.err().context("interval 0 was accepted")?);
        ensure!(message.contains("kafka.watch.interval_ms"), "{message}");
        Ok(())
    }
}

#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_cli_suite() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Kafka, "onephase (cli)", "kafka");
}

//! Every route of the OpenAPI document, called wrongly on purpose: without a token, with a
//! client token on admin routes, with malformed bodies, paths and queries. Every answer must be
//! a problem document whose (status, type) pair is one docs/server.md lists, and admin routes
//! must refuse a client token before they read anything else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::{Context, ensure};
use onephase_server::{Server, ServerConfig};
use reqwest::Method;
use serde_json::Value;

/// The (status, type) pairs docs/server.md documents.
fn documented() -> BTreeMap<u16, BTreeSet<String>> {
    let page = include_str!("../../../docs/server.md");
    let mut pairs: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    let section = &page[page.find("## Errors").unwrap_or(0)..];
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(status), Some(types)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        for t in types.split('`').skip(1).step_by(2) {
            pairs.entry(status).or_default().insert(t.to_owned());
        }
    }
    pairs
}

struct Answer {
    status: u16,
    kind: String,
    body: String,
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut request = http.request(method.clone(), format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await?;
    if status >= 400 {
        ensure!(
            content_type == "application/problem+json",
            "{method} {path}: {status} as {content_type:?}: {body}"
        );
    }
    let kind = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Answer { status, kind, body })
}

#[tokio::test]
async fn every_route_answers_every_mistake_with_a_documented_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: format!("sqlite://{}", dir.path().join("routes.db").display()),
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await?;
    let base = format!("http://{}", server.local_addr());
    let admin = server.bootstrap_token().context("admin token")?.to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "shop", "role": "client"}))
        .send()
        .await?
        .json()
        .await?;
    let client = created["token"]
        .as_str()
        .context("client token")?
        .to_owned();

    let doc = serde_json::to_value(onephase_server::openapi())?;
    let documented = documented();
    let mut checked = 0;
    let mut check = |method: &Method, path: &str, a: &Answer| -> anyhow::Result<()> {
        checked += 1;
        if a.status >= 400 {
            ensure!(
                documented
                    .get(&a.status)
                    .is_some_and(|types| types.contains(&a.kind)),
                "{method} {path}: {} {:?} is not a documented pair: {}",
                a.status,
                a.kind,
                a.body
            );
        }
        Ok(())
    };
    for (template, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let responses = op["responses"].as_object().context("responses")?;
            let admin_only = responses.contains_key("403");
            let has_body = op.get("requestBody").is_some();
            let has_limit = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "limit"));
            // Path parameters that name nothing (and are not even UUIDs where one is due).
            let path = template
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        "no-such-thing"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/");

            let a = call(&http, &base, &method, &path, None, None).await?;
            if template.starts_with("/v1/") {
                ensure!(
                    a.status == 401 && a.kind == "urn:onephase:problem:unauthenticated",
                    "{method} {template} without a token: {} {}",
                    a.status,
                    a.body
                );
            }
            check(&method, &path, &a)?;

            if admin_only {
                // Whatever else is wrong, a client token learns only that it may not.
                for body in [None, Some("{"), Some("[]"), Some(r#"{"zz": 1}"#)] {
                    let a = call(&http, &base, &method, &path, Some(&client), body).await?;
                    ensure!(
                        a.status == 403 && a.kind == "urn:onephase:problem:forbidden",
                        "{method} {template} with a client token and body {body:?}: {} {}",
                        a.status,
                        a.body
                    );
                    check(&method, &path, &a)?;
                }
            }
            if has_body {
                for body in ["{", "[]", r#"{"zz": 1}"#, r#"{"limit": -1}"#] {
                    let a = call(&http, &base, &method, &path, Some(&admin), Some(body)).await?;
                    check(&method, &path, &a)?;
                }
                // A malformed body on a route that exists is malformed JSON, never a 5xx.
                let real = template.replace("{topic}", "t").replace("{policy}", "p");
                if !real.contains('{') {
                    let a = call(&http, &base, &method, &real, Some(&admin), Some("{")).await?;
                    ensure!(
                        a.status == 400 && a.kind == "urn:onephase:problem:malformed-json",
                        "{method} {real} with a malformed body: {} {}",
                        a.status,
                        a.body
                    );
                }
            }
            if has_limit && method == Method::GET {
                let real = template.replace("{topic}", "t").replace("{name}", "r");
                for query in ["limit=zzz", "limit=-1", "limit=0", "limit=100000"] {
                    let target = format!("{real}?{query}");
                    let a = call(&http, &base, &method, &target, Some(&admin), None).await?;
                    check(&method, &target, &a)?;
                    if !real.contains('{') && real != "/v1/relays/r/dead" {
                        ensure!(
                            a.status == 400 && a.kind == "urn:onephase:problem:invalid-input",
                            "{method} {target}: {} {}",
                            a.status,
                            a.body
                        );
                    }
                }
            }
        }
    }
    // Paging cursors that name nothing are refused, not read as "from the newest".
    for target in [
        "/v1/webhooks/messages?before=zzz",
        "/v1/webhooks/attempts?before=-1",
        "/v1/saga-runs?before=zzz",
    ] {
        let a = call(&http, &base, &Method::GET, target, Some(&admin), None).await?;
        ensure!(
            a.status == 400 && a.kind == "urn:onephase:problem:invalid-input",
            "{target}: {} {}",
            a.status,
            a.body
        );
    }
    // No route, wrong method, too large.
    let a = call(
        &http,
        &base,
        &Method::GET,
        "/v1/nothing",
        Some(&admin),
        None,
    )
    .await?;
    check(&Method::GET, "/v1/nothing", &a)?;
    let a = call(&http, &base, &Method::DELETE, "/healthz", None, None).await?;
    ensure!(a.status == 405, "{}", a.body);
    check(&Method::DELETE, "/healthz", &a)?;
    let huge = format!(r#"{{"payload": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let a = call(
        &http,
        &base,
        &Method::POST,
        "/v1/outbox/t",
        Some(&admin),
        Some(&huge),
    )
    .await?;
    ensure!(
        a.status == 413 && a.kind == "urn:onephase:problem:body-too-large",
        "{} {}",
        a.status,
        a.body
    );
    ensure!(checked > 100, "{checked} answers checked");
    let _ = stop.send(());
    task.await??;
    Ok(())
}

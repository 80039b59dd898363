//! The OpenAPI document as client generators and validators read it: valid OpenAPI 3.1, every
//! operation with its own id, every error answer a problem document.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use serde_json::Value;

fn document() -> anyhow::Result<Value> {
    Ok(serde_json::to_value(onephase_server::openapi())?)
}

/// Every (method, path) with its operation.
fn operations(doc: &Value) -> anyhow::Result<Vec<(String, String, Value)>> {
    let paths = doc["paths"].as_object().context("paths")?;
    let mut out = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().context("a path item")? {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    Ok(out)
}

#[test]
fn every_operation_has_its_own_id() -> anyhow::Result<()> {
    let doc = document()?;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (method, path, op) in operations(&doc)? {
        let id = op["operationId"]
            .as_str()
            .with_context(|| format!("{method} {path} has no operationId"))?
            .to_owned();
        if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
            anyhow::bail!("operationId {id:?} names both {other} and {method} {path}");
        }
    }
    ensure!(seen.len() > 40, "{} operations", seen.len());
    Ok(())
}

#[test]
fn every_error_answer_is_a_problem_document() -> anyhow::Result<()> {
    let doc = document()?;
    for (method, path, op) in operations(&doc)? {
        for (status, response) in op["responses"].as_object().context("responses")? {
            if status.starts_with('4') || status.starts_with('5') {
                let content = response["content"].as_object();
                ensure!(
                    content.is_some_and(|c| c.contains_key("application/problem+json")),
                    "{method} {path} {status}: {response}"
                );
            }
        }
    }
    Ok(())
}

/// The reference validator of the OpenAPI specifications' ecosystem (Python's
/// openapi-spec-validator), which client generators' users run: the document must pass it.
#[test]
fn the_reference_validator_accepts_the_document() -> anyhow::Result<()> {
    let Some(validator) =
        onephase_testkit::tool_path("ONEPHASE_OPENAPI_VALIDATOR", "openapi-spec-validator")
    else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document()?)?)?;
    let output = std::process::Command::new(&validator).arg(&file).output()?;
    ensure!(
        output.status.success(),
        "{}: {}{}",
        validator.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

//! Sagas as data: a JSON or TOML document whose actions and compensations are HTTP calls.
//!
//! ```
//! use onephase_saga::SagaSpec;
//!
//! let spec = SagaSpec::from_json(r#"{
//!   "name": "order", "version": 1,
//!   "steps": [
//!     {"name": "reserve", "kind": "compensatable",
//!      "action": {"method": "POST", "url": "http://inventory/reservations",
//!                 "body": {"sku": "{{input.sku}}", "qty": "{{input.qty}}"}},
//!      "compensation": {"method": "DELETE",
//!                       "url": "http://inventory/reservations/{{steps.reserve.output.id}}"}},
//!     {"name": "charge", "kind": "pivot",
//!      "action": {"method": "POST", "url": "http://payments/charges",
//!                 "body": {"amount": "{{input.amount}}"}, "timeout_ms": 2000}}
//!   ]
//! }"#)?;
//! let definition = spec.compile(&reqwest::Client::new())?;
//! assert_eq!(definition.version(), 1);
//! # Ok::<(), onephase_saga::DefinitionError>(())
//! ```
//!
//! Each step invocation sends `Idempotency-Key: <run-id>/<step>/<action|compensation>` (plus
//! `Onephase-Saga-Run`, `Onephase-Saga-Step`, `Onephase-Attempt` and `Fencing-Token`, the
//! fence of the orchestrator's claim: per run it only grows, so a participant that refuses a
//! token lower than one it saw for the run, as `onephase_lease::FenceLayer` does, cannot be
//! reached by an orchestrator paused past its claim), and the W3C `traceparent` of the
//! attempt's span when the run was started within a trace. The response status
//! decides the outcome: `success` statuses (default `2xx`) store the response body (JSON, or
//! text) as the step's output; `retry` statuses (default 408, 425, 429 and `5xx`), connection
//! errors and timeouts are retried; every other status is a refusal (`fail`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use onephase_core::json::RawJson;
use onephase_core::{Backoff, Jitter};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod document;

use document::{Attempts, CallSpec, SpecDoc, StatusPattern, StepSpec};
#[cfg(feature = "openapi")]
pub use document::{
    CallDocument, DefaultsDocument, KindDocument, MethodDocument, ParallelDocument, SagaDocument,
    StageDocument, StepDocument,
};

use crate::definition::{Definition, DefinitionError, Policy, StepDef, StepKind};
use crate::invoke::{Call, Invoke, StepError};
use crate::template::{BodyTemplate, Ref, Template};

/// Largest response body kept as a step's output.
const MAX_OUTPUT: usize = 1024 * 1024;

/// A definition document, parsed but not yet compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaSpec {
    raw: Value,
    doc: SpecDoc,
    stages: Vec<Vec<StepSpec>>,
}

fn spec_error(name: Option<&str>, message: impl Into<String>) -> DefinitionError {
    DefinitionError::new(name, message)
}

impl SagaSpec {
    /// Parses a JSON document.
    pub fn from_json(text: &str) -> Result<Self, DefinitionError> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| spec_error(None, format!("not valid JSON: {e}")))?;
        Self::from_value(raw)
    }

    /// Parses a TOML document (steps as `[[steps]]`, a parallel group as
    /// `[[steps]]` with `parallel = [...]`).
    pub fn from_toml(text: &str) -> Result<Self, DefinitionError> {
        let raw: toml::Value =
            toml::from_str(text).map_err(|e| spec_error(None, format!("not valid TOML: {e}")))?;
        let raw = serde_json::to_value(raw)
            .map_err(|e| spec_error(None, format!("TOML not representable as JSON: {e}")))?;
        Self::from_value(raw)
    }

    /// Parses an already decoded document.
    pub fn from_value(mut raw: Value) -> Result<Self, DefinitionError> {
        // Call bodies are passed to participants as written.
        onephase_core::json::integers_from_whole_floats(&mut raw, &["body"]);
        let doc: SpecDoc = serde_json::from_value(raw.clone())
            .map_err(|e| spec_error(raw_name(&raw), e.to_string()))?;
        let name = Some(doc.name.as_str());
        let mut stages = Vec::new();
        for (i, entry) in doc.steps.iter().enumerate() {
            let stage = match entry.get("parallel") {
                Some(group) => {
                    if entry.as_object().is_some_and(|o| o.len() > 1) {
                        return Err(spec_error(
                            name,
                            format!("steps[{i}]: a parallel group has only the field `parallel`"),
                        ));
                    }
                    let steps: Vec<Value> = serde_json::from_value(group.clone())
                        .map_err(|e| spec_error(name, format!("steps[{i}].parallel: {e}")))?;
                    steps
                        .into_iter()
                        .enumerate()
                        .map(|(j, s)| {
                            serde_json::from_value::<StepSpec>(s).map_err(|e| {
                                spec_error(name, format!("steps[{i}].parallel[{j}]: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => vec![
                    serde_json::from_value::<StepSpec>(entry.clone())
                        .map_err(|e| spec_error(name, format!("steps[{i}]: {e}")))?,
                ],
            };
            stages.push(stage);
        }
        Ok(Self { raw, doc, stages })
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.doc.name
    }

    /// Where its calls go: each action's and compensation's URL as written, placeholders
    /// replaced by `x` (the scheme, host and port are always literal, so this is where a call
    /// can go, whatever a run's input).
    pub fn destinations(&self) -> Vec<String> {
        self.stages
            .iter()
            .flatten()
            .flat_map(|s| std::iter::once(&s.action).chain(s.compensation.as_ref()))
            .filter_map(|call| Template::parse(&call.url).ok().map(|t| t.skeleton()))
            .collect()
    }

    /// Its version.
    pub fn version(&self) -> u32 {
        self.doc.version
    }

    /// The document as JSON (TOML documents converted).
    pub fn to_value(&self) -> &Value {
        &self.raw
    }

    /// SHA-256 of the document's canonical JSON (keys sorted): two registrations of one
    /// version must have the same digest.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.raw.to_string().as_bytes()))
    }

    /// Validates the whole definition (step kinds and order, templates and what they refer
    /// to, statuses, limits) and builds it, its calls made with `client`.
    pub fn compile(&self, client: &reqwest::Client) -> Result<Definition, DefinitionError> {
        self.compile_guarded(client, None)
    }

    /// [`compile`](Self::compile), with calls to a URL whose host is a literal address sent
    /// only where `permits` allows (names are the client's resolver's to check): a call to
    /// another address fails without being sent.
    pub fn compile_guarded(
        &self,
        client: &reqwest::Client,
        permits: Option<Permits>,
    ) -> Result<Definition, DefinitionError> {
        let name = self.doc.name.as_str();
        let d = self.doc.defaults.clone().unwrap_or_default();
        check_ms(
            "defaults",
            &[d.timeout_ms, d.backoff_base_ms, d.backoff_cap_ms],
        )
        .map_err(|m| spec_error(Some(name), m))?;
        let mut compiler = Compiler {
            name,
            client,
            permits,
            stage_of: self
                .stages
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.iter().map(move |st| (st.name.as_str(), i)))
                .collect(),
            required_input: Vec::new(),
            base: Duration::from_millis(d.backoff_base_ms.unwrap_or(100)),
            cap: Duration::from_millis(d.backoff_cap_ms.unwrap_or(30_000)),
        };
        let mut stages = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let mut defs = Vec::new();
            for step in stage {
                let action_default = Policy {
                    timeout: Duration::from_millis(d.timeout_ms.unwrap_or(30_000)),
                    max_attempts: match (step.kind, d.action_max_attempts) {
                        (_, Some(a)) if step.kind != StepKind::Retriable => a.get(),
                        (StepKind::Retriable, _) => None,
                        _ => Some(5),
                    },
                    backoff: backoff(compiler.base, compiler.cap)
                        .map_err(|m| compiler.error(format!("defaults: {m}")))?,
                };
                let compensation_default = Policy {
                    max_attempts: d.compensation_max_attempts.map_or(Some(10), Attempts::get),
                    ..action_default
                };
                let (action, action_policy) =
                    compiler.call(&step.action, (step, i, "action"), action_default)?;
                let (compensation, compensation_policy) = match &step.compensation {
                    Some(c) => {
                        let at = (step, i, "compensation");
                        let (call, policy) = compiler.call(c, at, compensation_default)?;
                        (Some(std::sync::Arc::new(call) as _), policy)
                    }
                    None => (None, compensation_default),
                };
                defs.push(StepDef {
                    name: step.name.as_str().into(),
                    kind: step.kind,
                    action: std::sync::Arc::new(action),
                    action_policy,
                    compensation,
                    compensation_policy,
                });
            }
            stages.push(defs);
        }
        Definition::new(name, self.doc.version, stages, compiler.required_input)
    }
}

/// What compiling a definition's calls needs and collects.
struct Compiler<'a> {
    name: &'a str,
    client: &'a reqwest::Client,
    permits: Option<Permits>,
    /// Each step's stage index.
    stage_of: BTreeMap<&'a str, usize>,
    /// The input paths the templates read.
    required_input: Vec<Vec<String>>,
    /// The definition's backoff defaults.
    base: Duration,
    cap: Duration,
}

impl Compiler<'_> {
    fn error(&self, message: String) -> DefinitionError {
        spec_error(Some(self.name), message)
    }

    /// Compiles one call of `step` (in stage `stage`, as `phase`) and its policy over `default`.
    fn call(
        &mut self,
        spec: &CallSpec,
        (step, stage, phase): (&StepSpec, usize, &str),
        default: Policy,
    ) -> Result<(HttpCall, Policy), DefinitionError> {
        let at = format!("step {:?} {phase}", step.name);
        check_ms(
            &at,
            &[spec.timeout_ms, spec.backoff_base_ms, spec.backoff_cap_ms],
        )
        .map_err(|m| self.error(m))?;
        let call = HttpCall::compile(spec, self.client.clone(), self.permits.clone())
            .map_err(|m| self.error(format!("{at}: {m}")))?;
        for r in call.refs() {
            self.check_ref(r, &at, (step, stage, phase))?;
        }
        let policy = Policy {
            timeout: spec
                .timeout_ms
                .map_or(default.timeout, Duration::from_millis),
            max_attempts: spec
                .max_attempts
                .map_or(default.max_attempts, Attempts::get),
            backoff: backoff(
                spec.backoff_base_ms
                    .map_or(self.base, Duration::from_millis),
                spec.backoff_cap_ms.map_or(self.cap, Duration::from_millis),
            )
            .map_err(|m| self.error(format!("{at}: {m}")))?,
        };
        Ok((call, policy))
    }

    /// Records an input path a template reads; refuses a step output that is not there yet.
    fn check_ref(
        &mut self,
        r: &Ref,
        at: &str,
        (step, stage, phase): (&StepSpec, usize, &str),
    ) -> Result<(), DefinitionError> {
        match r {
            Ref::Input(path) if !self.required_input.contains(path) => {
                self.required_input.push(path.clone());
            }
            Ref::Step(other, _) => {
                let Some(&j) = self.stage_of.get(other.as_str()) else {
                    return Err(self.error(format!(
                        "{at}: template reads steps.{other}, but there is no step {other:?}"
                    )));
                };
                let own = other == &step.name && phase == "compensation";
                if j >= stage && !own {
                    return Err(self.error(format!(
                        "{at}: template reads the output of step {other:?}, which has not run yet at this point (only earlier stages{} can be read)",
                        if phase == "compensation" {
                            " and the step's own action"
                        } else {
                            ""
                        }
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Longest timeout or backoff a definition may set: one day.
const MAX_MS: u64 = 86_400_000;

fn raw_name(raw: &Value) -> Option<&str> {
    raw.get("name").and_then(Value::as_str)
}

fn check_ms(at: &str, values: &[Option<u64>]) -> Result<(), String> {
    match values.iter().flatten().find(|v| **v == 0 || **v > MAX_MS) {
        Some(v) => Err(format!(
            "{at}: {v} ms is out of range: timeouts and backoffs are 1 to {MAX_MS} ms (one day)"
        )),
        None => Ok(()),
    }
}

fn backoff(base: Duration, cap: Duration) -> Result<Backoff, String> {
    Backoff::new(base, cap, Jitter::Full).map_err(|e| e.to_string())
}

/// The URL as a template. Where a call goes is the definition's choice, never the input's:
/// every placeholder must come after the scheme, host and port, so that no value of a run
/// (which a client token chooses) can send the orchestrator elsewhere.
fn url_template(text: &str) -> Result<Template, String> {
    if !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err(format!(
            "url {text:?} must start with http:// or https:// (placeholders may follow the host)"
        ));
    }
    let url = Template::parse(text)?;
    if let Some(first) = text.find("{{") {
        let after_scheme = text.find("://").map_or(0, |i| i + 3);
        let authority_end = text[after_scheme..]
            .find(['/', '?', '#'])
            .map(|i| after_scheme + i);
        if authority_end.is_none_or(|end| first < end) {
            return Err(format!(
                "url {text:?} has a placeholder in its scheme, host or port: placeholders may only follow the host (write it out, as in http://inventory:8080/items/{{{{input.sku}}}})"
            ));
        }
    }
    match reqwest::Url::parse(&url.skeleton()) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        Ok(_) => Err(format!("url {text:?} has no host")),
        Err(e) => Err(format!("url {text:?} is not a valid URL: {e}")),
    }
}

/// The extra headers as templates: valid names, none the orchestrator sets, none twice, and
/// values HTTP allows.
fn header_templates<'a>(
    headers: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(reqwest::header::HeaderName, Template)>, String> {
    let mut templates = Vec::new();
    let mut seen = HashSet::new();
    for (name, value) in headers {
        let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not a valid HTTP header name"))?;
        if header == "idempotency-key"
            || header == "fencing-token"
            || header == onephase_trace::TRACEPARENT
            || name.to_ascii_lowercase().starts_with("onephase-")
        {
            return Err(format!(
                "header {name:?} is set by the orchestrator and cannot be templated"
            ));
        }
        let template = Template::parse(value)?;
        if reqwest::header::HeaderValue::from_str(&template.skeleton()).is_err() {
            return Err(format!(
                "header {name:?}: its value has a character HTTP headers do not allow (a line break or another control character)"
            ));
        }
        if !seen.insert(header.clone()) {
            return Err(format!("header {header} is given twice"));
        }
        templates.push((header, template));
    }
    Ok(templates)
}

/// The success, retry and fail statuses, defaults filled in; a status the definition puts in
/// two lists is ambiguous.
type Statuses = (Vec<StatusPattern>, Vec<StatusPattern>, Vec<StatusPattern>);

fn statuses(spec: &CallSpec) -> Result<Statuses, String> {
    let success = spec
        .success
        .clone()
        .unwrap_or(vec![StatusPattern::Class(2)]);
    let retry = spec.retry.clone().unwrap_or(vec![
        StatusPattern::Code(408),
        StatusPattern::Code(425),
        StatusPattern::Code(429),
        StatusPattern::Class(5),
    ]);
    let fail = spec.fail.clone().unwrap_or_default();
    for code in 100..=599 {
        let lists: Vec<&str> = [("success", &success), ("retry", &retry), ("fail", &fail)]
            .iter()
            .filter(|(_, l)| l.iter().any(|p| p.matches(code)))
            .map(|(n, _)| *n)
            .collect();
        let user_given = |n: &str| match n {
            "success" => spec.success.is_some(),
            "retry" => spec.retry.is_some(),
            _ => spec.fail.is_some(),
        };
        if lists.len() > 1 && lists.iter().all(|n| user_given(n)) {
            return Err(format!(
                "status {code} is in both `{}` and `{}`",
                lists[0], lists[1]
            ));
        }
    }
    Ok((success, retry, fail))
}

/// Which addresses calls may go to.
pub type Permits = std::sync::Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>;

/// An HTTP action or compensation.
#[derive(Clone, derive_more::Debug)]
pub struct HttpCall {
    method: reqwest::Method,
    url: Template,
    #[debug(skip)]
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    #[debug(skip)]
    body: Option<BodyTemplate>,
    #[debug(skip)]
    success: Vec<StatusPattern>,
    #[debug(skip)]
    retry: Vec<StatusPattern>,
    /// Explicit refusals; they win over the default classes they fall in.
    #[debug(skip)]
    fail: Vec<StatusPattern>,
    #[debug(skip)]
    client: reqwest::Client,
    #[debug(skip)]
    permits: Option<Permits>,
}

impl HttpCall {
    fn compile(
        spec: &CallSpec,
        client: reqwest::Client,
        permits: Option<Permits>,
    ) -> Result<Self, String> {
        let method = match spec.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                reqwest::Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?
            }
            other => {
                return Err(format!(
                    "method {other:?} is not GET, POST, PUT, PATCH or DELETE"
                ));
            }
        };
        let url = url_template(&spec.url)?;
        let headers = header_templates(spec.headers.iter().flatten())?;
        let body = spec.body.as_ref().map(BodyTemplate::parse).transpose()?;
        if spec.timeout_ms == Some(0) {
            return Err("timeout_ms must be above zero".into());
        }
        let (success, retry, fail) = statuses(spec)?;
        Ok(Self {
            method,
            url,
            headers,
            body,
            success,
            retry,
            fail,
            client,
            permits,
        })
    }

    fn refs(&self) -> Vec<&Ref> {
        let mut refs: Vec<&Ref> = self.url.refs().collect();
        refs.extend(self.headers.iter().flat_map(|(_, t)| t.refs()));
        if let Some(b) = &self.body {
            refs.extend(b.refs());
        }
        refs
    }

    fn classify(&self, status: u16) -> Outcome {
        if self.fail.iter().any(|p| p.matches(status)) {
            Outcome::Fail
        } else if self.success.iter().any(|p| p.matches(status)) {
            Outcome::Success
        } else if self.retry.iter().any(|p| p.matches(status)) {
            Outcome::Retry
        } else {
            Outcome::Fail
        }
    }

    async fn perform(self, call: Call) -> Result<RawJson, StepError> {
        // A template that cannot be rendered sends nothing: a definite failure.
        let url = self
            .url
            .render(&call, true)
            .map_err(|e| StepError::fail(format!("url: {e}")))?;
        if let Some(permits) = &self.permits
            && let Some(ip) = reqwest::Url::parse(&url).ok().and_then(|u| {
                u.host_str()?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            && !permits(ip)
        {
            return Err(StepError::fail(format!(
                "refusing to call {url}: {ip} is an internal address participants may not be at (allow its network with saga.allow_networks); nothing was sent"
            )));
        }
        let mut request = self
            .client
            .request(self.method.clone(), &url)
            .header("Idempotency-Key", &call.idempotency_key)
            .header("Onephase-Saga-Run", call.run_id.to_string())
            .header("Onephase-Saga-Step", &*call.step)
            .header("Onephase-Attempt", call.attempt.to_string())
            .header("Fencing-Token", call.fencing_token.to_string());
        if let Some(traceparent) = &call.traceparent {
            request = request.header(onephase_trace::TRACEPARENT, traceparent);
        }
        for (name, template) in &self.headers {
            let value = template
                .render(&call, false)
                .map_err(|e| StepError::fail(format!("header {name}: {e}")))?;
            // A value from the input with a line break would make an invalid request: a
            // definite failure, never a retry.
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                StepError::fail(format!(
                    "header {name}: the rendered value has a character HTTP headers do not allow (a line break or another control character); nothing was sent"
                ))
            })?;
            request = request.header(name, value);
        }
        if let Some(body) = &self.body {
            let body = body
                .render(&call)
                .map_err(|e| StepError::fail(format!("body: {e}")))?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.get().to_owned());
        }
        let response = request.send().await.map_err(|e| {
            let message = format!("{} {url}: {}", self.method, error_chain(&e));
            // A request that could not even be built will not build next time either.
            if e.is_builder() {
                StepError::fail(message)
            } else {
                StepError::retry(message)
            }
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| {
            StepError::retry(format!("{} {url}: reading the response: {e}", self.method))
        })?;
        // A JSON answer is kept as written (every digit of its numbers); any other answer as
        // a JSON string.
        let output = if bytes.is_empty() || bytes.len() > MAX_OUTPUT {
            RawJson::null()
        } else {
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| RawJson::parse(text).ok())
                .unwrap_or_else(|| {
                    RawJson::from(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
                })
        };
        let describe = || {
            let body = match output.get() {
                "null" => String::new(),
                text if text.starts_with('"') => format!(
                    ": {}",
                    truncate(
                        &serde_json::from_str::<String>(text).unwrap_or_default(),
                        300
                    )
                ),
                text => format!(": {}", truncate(text, 300)),
            };
            format!("{} {url} answered {status}{body}", self.method)
        };
        match self.classify(status) {
            Outcome::Success => Ok(output),
            Outcome::Retry => Err(StepError::retry(describe())),
            Outcome::Fail => Err(StepError::fail(describe())),
        }
    }
}

enum Outcome {
    Success,
    Retry,
    Fail,
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Invoke for HttpCall {
    fn invoke(&self, call: Call) -> BoxFuture<'static, Result<RawJson, StepError>> {
        self.clone().perform(call).boxed()
    }
}

/// Serialize the document back (used when storing it).
impl Serialize for SagaSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::SagaSpec;

    #[test]
    fn whole_floats_read_as_integers_except_in_call_bodies() {
        let spec = SagaSpec::from_value(json!({
            "name": "s", "version": 2.0,
            "steps": [{"name": "a", "kind": "pivot",
                       "action": {"method": "POST", "url": "http://x/a", "timeout_ms": 1000.0,
                                  "body": {"price": 2.0}}}]
        }))
        .expect("2.0 is version 2");
        assert_eq!(spec.version(), 2);
        assert_eq!(
            spec.to_value()["steps"][0]["action"]["body"],
            json!({"price": 2.0}),
            "a body is sent as written"
        );
    }

    #[test]
    fn the_headers_the_orchestrator_sets_cannot_be_templated() {
        for name in [
            "Idempotency-Key",
            "fencing-token",
            "traceparent",
            "Onephase-Attempt",
        ] {
            let spec = SagaSpec::from_value(json!({
                "name": "s", "version": 1,
                "steps": [{"name": "a", "kind": "pivot",
                           "action": {"method": "POST", "url": "http://x/a",
                                      "headers": {name: "{{input.x}}"}}}]
            }))
            .expect("the document parses");
            let error = spec
                .compile(&reqwest::Client::new())
                .expect_err("a header the orchestrator sets is refused");
            assert!(
                error.to_string().contains("set by the orchestrator"),
                "{name}: {error}"
            );
        }
    }
}

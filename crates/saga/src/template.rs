//! Templates for HTTP steps: `{{ path }}` placeholders in URLs, header values and JSON bodies.
//!
//! Paths:
//! - `input`, `input.a.b`, `input.items.0`: the run's input;
//! - `steps.<name>.output`, `steps.<name>.output.a`: an earlier step's output;
//! - `saga.id`, `saga.name`, `saga.version`;
//! - `call.idempotency_key`, `call.attempt`, and `call.action_key`: the idempotency key of
//!   the step's action, which a compensation can send so that the participant finds what to
//!   undo even when the action's outcome was never recorded (its output is then missing).
//!
//! In a JSON body, a string that is exactly one placeholder becomes the value itself (a number
//! stays a number, with every digit it was written with); elsewhere values are interpolated as
//! text (strings as they are, other values as JSON). In URLs every interpolated value is
//! percent-encoded.

use onephase_core::json::RawJson;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::invoke::Call;

/// What a placeholder reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ref {
    Input(Vec<String>),
    Step(String, Vec<String>),
    SagaId,
    SagaName,
    SagaVersion,
    IdempotencyKey,
    ActionKey,
    Attempt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Ref),
}

/// A parsed string template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// Characters left as they are in a URL component: RFC 3986 unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn parse_ref(path: &str) -> Result<Ref, String> {
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "placeholder {{{{{path}}}}} has an empty path segment"
        ));
    }
    let rest = |from: usize| segments[from..].iter().map(|s| (*s).to_owned()).collect();
    match segments.as_slice() {
        ["input", ..] => Ok(Ref::Input(rest(1))),
        ["steps", step, "output", ..] => Ok(Ref::Step((*step).to_owned(), rest(3))),
        ["saga", "id"] => Ok(Ref::SagaId),
        ["saga", "name"] => Ok(Ref::SagaName),
        ["saga", "version"] => Ok(Ref::SagaVersion),
        ["call", "idempotency_key"] => Ok(Ref::IdempotencyKey),
        ["call", "action_key"] => Ok(Ref::ActionKey),
        ["call", "attempt"] => Ok(Ref::Attempt),
        _ => Err(format!(
            "placeholder {{{{{path}}}}} is not input[.field...], steps.<step>.output[.field...], saga.id, saga.name, saga.version, call.idempotency_key, call.action_key or call.attempt"
        )),
    }
}

impl Template {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed placeholder in {s:?}: '{{{{' without '}}}}'"))?;
            parts.push(Part::Ref(parse_ref(after[..close].trim())?));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("stray '}}}}' in {s:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The template with every placeholder replaced by `x`: what its fixed parts look like.
    pub(crate) fn skeleton(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Ref(_) => "x",
            })
            .collect()
    }

    pub(crate) fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Text(_) => None,
        })
    }

    /// The single placeholder this template consists of, if that is all it is.
    fn sole_ref(&self) -> Option<&Ref> {
        match self.parts.as_slice() {
            [Part::Ref(r)] => Some(r),
            _ => None,
        }
    }

    /// Renders to text; with `url`, interpolated values are percent-encoded.
    pub(crate) fn render(&self, call: &Call, url: bool) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Ref(r) => {
                    let value = resolve(r, call)?;
                    let text = if value.get().starts_with('"') {
                        serde_json::from_str::<String>(value.get()).map_err(|e| e.to_string())?
                    } else {
                        value.get().to_owned()
                    };
                    if url {
                        out.extend(utf8_percent_encode(&text, COMPONENT));
                    } else {
                        out.push_str(&text);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A JSON body template: every string inside is a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BodyTemplate {
    Str(Template),
    Array(Vec<BodyTemplate>),
    Object(Vec<(String, BodyTemplate)>),
    Literal(Value),
}

impl BodyTemplate {
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => BodyTemplate::Str(Template::parse(s)?),
            Value::Array(items) => BodyTemplate::Array(
                items
                    .iter()
                    .map(BodyTemplate::parse)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => BodyTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), BodyTemplate::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => BodyTemplate::Literal(other.clone()),
        })
    }

    pub(crate) fn refs(&self) -> Vec<&Ref> {
        match self {
            BodyTemplate::Str(t) => t.refs().collect(),
            BodyTemplate::Array(items) => items.iter().flat_map(BodyTemplate::refs).collect(),
            BodyTemplate::Object(fields) => fields.iter().flat_map(|(_, v)| v.refs()).collect(),
            BodyTemplate::Literal(_) => Vec::new(),
        }
    }

    /// Renders to JSON text: values from the input and outputs are copied as they were
    /// written, so a number keeps every digit.
    pub(crate) fn render(&self, call: &Call) -> Result<RawJson, String> {
        let mut out = String::new();
        self.render_into(call, &mut out)?;
        RawJson::parse(&out).map_err(|e| format!("the rendered body is not JSON: {e}"))
    }

    fn render_into(&self, call: &Call, out: &mut String) -> Result<(), String> {
        match self {
            BodyTemplate::Str(t) => match t.sole_ref() {
                Some(r) => out.push_str(resolve(r, call)?.get()),
                None => out.push_str(&json_string(&t.render(call, false)?)),
            },
            BodyTemplate::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render_into(call, out)?;
                }
                out.push(']');
            }
            BodyTemplate::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&json_string(key));
                    out.push(':');
                    value.render_into(call, out)?;
                }
                out.push('}');
            }
            BodyTemplate::Literal(v) => out.push_str(&v.to_string()),
        }
        Ok(())
    }
}

fn json_string(s: &str) -> String {
    // Serializing a string cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn resolve(r: &Ref, call: &Call) -> Result<RawJson, String> {
    let sub = |json: &RawJson, path: &[String]| {
        onephase_core::json::lookup(json.as_raw(), path).map(|v| RawJson::from(v.to_owned()))
    };
    match r {
        Ref::Input(path) => sub(&call.input_json, path)
            .ok_or_else(|| format!("the input has no value at input.{}", path.join("."))),
        Ref::Step(step, path) => {
            let output = call.outputs_json.get(step).ok_or_else(|| {
                format!("step {step:?} has no output (it has not succeeded in this run)")
            })?;
            sub(output, path).ok_or_else(|| {
                format!(
                    "the output of step {step:?} has no value at {}",
                    if path.is_empty() {
                        "its root".to_owned()
                    } else {
                        path.join(".")
                    }
                )
            })
        }
        Ref::SagaId => Ok(Value::String(call.run_id.to_string()).into()),
        Ref::SagaName => Ok(Value::String(call.saga.to_string()).into()),
        Ref::SagaVersion => Ok(Value::from(call.version).into()),
        Ref::IdempotencyKey => Ok(Value::String(call.idempotency_key.clone()).into()),
        Ref::ActionKey => Ok(Value::String(Call::key_for(
            call.run_id,
            &call.step,
            crate::invoke::Phase::Action,
        ))
        .into()),
        Ref::Attempt => Ok(Value::from(call.attempt).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::invoke::Phase;

    fn call() -> Call {
        let mut outputs = BTreeMap::new();
        outputs.insert("reserve".to_owned(), json!({"id": "r/1", "n": 3}));
        Call {
            run_id: Uuid::nil(),
            saga: "order".into(),
            version: 2,
            step: "charge".into(),
            phase: Phase::Action,
            attempt: 1,
            fencing_token: 1,
            idempotency_key: "k".into(),
            input: Arc::new(json!({"order": {"id": 42, "sku": "a b"}, "items": [1, 2]})),
            input_json: Arc::new(
                RawJson::parse(
                    r#"{"order": {"id": 42, "sku": "a b", "big": 123456789012345678901234567890},
                        "items": [1, 2]}"#,
                )
                .expect("JSON"),
            ),
            outputs_json: Arc::new(
                outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), RawJson::from(v)))
                    .collect(),
            ),
            outputs: Arc::new(outputs),
            traceparent: None,
        }
    }

    #[test]
    fn urls_encode_values_and_bodies_keep_types() {
        let url =
            Template::parse("http://x/orders/{{input.order.sku}}/{{ steps.reserve.output.id }}")
                .expect("valid");
        assert_eq!(
            url.render(&call(), true).expect("renders"),
            "http://x/orders/a%20b/r%2F1"
        );
        let body = BodyTemplate::parse(&json!({
            "order": "{{input.order.id}}",
            "label": "order {{input.order.id}} v{{saga.version}}",
            "second": "{{input.items.1}}",
            "fixed": true,
        }))
        .expect("valid");
        assert_eq!(
            body.render(&call()).expect("renders").to_value(),
            json!({"order": 42, "label": "order 42 v2", "second": 2, "fixed": true})
        );
        // A number is passed on with every digit, alone or inside text.
        let big =
            BodyTemplate::parse(&json!({"n": "{{input.order.big}}", "t": "#{{input.order.big}}"}))
                .expect("valid");
        assert_eq!(
            big.render(&call()).expect("renders").get(),
            r##"{"n":123456789012345678901234567890,"t":"#123456789012345678901234567890"}"##
        );
    }

    #[test]
    fn bad_templates_and_missing_values_say_where() {
        assert!(Template::parse("{{input").unwrap_err().contains("unclosed"));
        assert!(
            Template::parse("{{nope.x}}")
                .unwrap_err()
                .contains("is not input")
        );
        assert!(
            Template::parse("{{input..a}}")
                .unwrap_err()
                .contains("empty path")
        );
        let t = Template::parse("{{input.missing}}").expect("valid");
        assert!(
            t.render(&call(), false)
                .unwrap_err()
                .contains("input.missing")
        );
        let t = Template::parse("{{steps.ship.output}}").expect("valid");
        assert!(t.render(&call(), false).unwrap_err().contains("\"ship\""));
    }
}

//! The definition document as it is parsed, and (with the `openapi` feature) as JSON Schema
//! states it: the same types, so that the published schema cannot drift from what the parser
//! accepts. The server also checks what a schema cannot: steps in the order compensatable,
//! pivot, retriable; a compensation exactly on the compensatable steps; unique step names;
//! templates that read only earlier steps.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[cfg(feature = "openapi")]
use crate::definition::StepKind;

/// A saga definition document, as JSON Schema can state it. The server also checks what it
/// cannot: steps in the order compensatable, pivot, retriable; a compensation exactly on the
/// compensatable steps; unique step names; templates that read only earlier steps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SagaDocument))]
#[serde(deny_unknown_fields)]
pub struct SpecDoc {
    /// The saga's name.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,128}$"))]
    pub(super) name: String,
    /// The version: each (name, version) holds one document forever.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2_147_483_647))]
    pub(super) version: u32,
    /// Defaults for every call.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<DefaultsDocument>))]
    pub(super) defaults: Option<Defaults>,
    /// Stages in order: a step, or a parallel group of steps of one kind.
    // Parsed one by one, so that an error names the stage.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Vec<StageDocument>, min_items = 1)
    )]
    pub(super) steps: Vec<Value>,
}

/// Defaults for every call of a definition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = DefaultsDocument))]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Per attempt (default 30000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) timeout_ms: Option<u64>,
    /// Attempts of an action (default 5; retriable steps: unlimited).
    #[cfg_attr(feature = "openapi", schema(schema_with = attempts_schema))]
    pub(super) action_max_attempts: Option<Attempts>,
    /// Attempts of a compensation before the run waits for an operator (default 10).
    #[cfg_attr(feature = "openapi", schema(schema_with = attempts_schema))]
    pub(super) compensation_max_attempts: Option<Attempts>,
    /// First backoff (default 100).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) backoff_base_ms: Option<u64>,
    /// Largest backoff (default 30000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) backoff_cap_ms: Option<u64>,
}

/// A count of attempts, or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Attempts {
    /// At most this many.
    Count(u32),
    /// No limit.
    Unlimited(Unlimited),
}

/// The word `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unlimited {
    /// `"unlimited"`.
    Unlimited,
}

impl Attempts {
    pub(super) fn get(self) -> Option<u32> {
        match self {
            Attempts::Count(n) => Some(n),
            Attempts::Unlimited(_) => None,
        }
    }
}

/// One step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = StepDocument))]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Part of idempotency keys.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub(super) name: String,
    /// Its kind.
    #[cfg_attr(feature = "openapi", schema(value_type = KindDocument))]
    pub(super) kind: crate::definition::StepKind,
    /// The action.
    #[cfg_attr(feature = "openapi", schema(value_type = CallDocument))]
    pub(super) action: CallSpec,
    /// The compensation: required for compensatable steps, refused for the others.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<CallDocument>))]
    pub(super) compensation: Option<CallSpec>,
}

/// An HTTP call; strings may hold `{{ path }}` placeholders.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CallDocument))]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// The method.
    #[cfg_attr(feature = "openapi", schema(value_type = MethodDocument))]
    pub(super) method: String,
    /// An http:// or https:// URL; `{{ path }}` placeholders may stand in its path and query.
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,4})?(/([A-Za-z0-9._~!$&'()*+,;=:@%/?#-]|\{\{ ?input(\.[A-Za-z0-9_-]+)* ?\}\})*)?$"
        )
    )]
    pub(super) url: String,
    /// Extra headers (not `Idempotency-Key` or `Onephase-*`, which the orchestrator sets).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = call_headers_schema))]
    pub(super) headers: Option<BTreeMap<String, String>>,
    /// A JSON body template: any JSON value.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub(super) body: Option<Value>,
    /// Per attempt.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) timeout_ms: Option<u64>,
    /// A number, or "unlimited".
    #[cfg_attr(feature = "openapi", schema(schema_with = attempts_schema))]
    pub(super) max_attempts: Option<Attempts>,
    /// First backoff.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) backoff_base_ms: Option<u64>,
    /// Largest backoff.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub(super) backoff_cap_ms: Option<u64>,
    /// Statuses (100 to 599, or "2xx"-style classes) that mean success; default ["2xx"].
    #[cfg_attr(feature = "openapi", schema(schema_with = statuses_schema))]
    pub(super) success: Option<Vec<StatusPattern>>,
    /// Statuses that mean try again; default [408, 425, 429, "5xx"].
    #[cfg_attr(feature = "openapi", schema(schema_with = statuses_schema))]
    pub(super) retry: Option<Vec<StatusPattern>>,
    /// Statuses that mean refused (applied nothing); they win over the defaults.
    #[cfg_attr(feature = "openapi", schema(schema_with = statuses_schema))]
    pub(super) fail: Option<Vec<StatusPattern>>,
}

/// A status code (`409`) or a class (`"4xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusPattern {
    /// One status.
    Code(u16),
    /// Every status of a class: 2 for `2xx`.
    Class(u16),
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u16),
            S(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "a status is a code from 100 to 599 or a class \"1xx\" to \"5xx\"",
            )
        };
        match Raw::deserialize(d)? {
            Raw::N(n) if (100..=599).contains(&n) => Ok(StatusPattern::Code(n)),
            Raw::S(s) => match s.as_bytes() {
                [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    Ok(StatusPattern::Class(u16::from(c - b'0')))
                }
                _ => Err(bad()),
            },
            Raw::N(_) => Err(bad()),
        }
    }
}

impl StatusPattern {
    pub(super) fn matches(self, status: u16) -> bool {
        match self {
            StatusPattern::Code(c) => c == status,
            StatusPattern::Class(c) => status / 100 == c,
        }
    }
}

/// The definition document's schema, under the names the API has published.
#[cfg(feature = "openapi")]
pub type SagaDocument = SpecDoc;
/// Defaults for every call of a definition.
#[cfg(feature = "openapi")]
pub type DefaultsDocument = Defaults;
/// One step.
#[cfg(feature = "openapi")]
pub type StepDocument = StepSpec;
/// An HTTP call.
#[cfg(feature = "openapi")]
pub type CallDocument = CallSpec;

/// Step kinds, as the document spells them.
#[cfg(feature = "openapi")]
pub type KindDocument = StepKind;

// The parser reads each stage as JSON first (to name it in errors), so this type exists for
// the schema alone.
/// A stage: one step, or `{"parallel": [steps]}`.
#[cfg(feature = "openapi")]
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum StageDocument {
    /// One step.
    Step(Box<StepDocument>),
    /// Steps of one kind run at once.
    Parallel(ParallelDocument),
}

/// A parallel group.
#[cfg(feature = "openapi")]
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ParallelDocument {
    /// The steps.
    #[schema(min_items = 1)]
    parallel: Vec<StepDocument>,
}

// The parser takes the method as text and names a bad one.
/// HTTP methods a step may use.
#[cfg(feature = "openapi")]
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(clippy::upper_case_acronyms, dead_code)]
pub enum MethodDocument {
    /// GET
    GET,
    /// POST
    POST,
    /// PUT
    PUT,
    /// PATCH
    PATCH,
    /// DELETE
    DELETE,
}

/// A positive count or `"unlimited"`, or null.
#[cfg(feature = "openapi")]
fn attempts_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(i64::from(i32::MAX))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["unlimited"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    Schema::OneOf(one_of)
}

/// A list of status codes (100 to 599) and classes ("1xx" to "5xx"), or null.
#[cfg(feature = "openapi")]
fn statuses_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
    };
    let status = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(100))
                .maximum(Some(599)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[1-5][xX][xX]$")),
        );
    Schema::Array(
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(status)
            .build(),
    )
}

/// HTTP header names (RFC 9110 tokens) to values of visible ASCII, spaces and tabs.
#[cfg(feature = "openapi")]
fn call_headers_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[\\t\\x20-\\x7e]*$")),
        ))
        .build()
}

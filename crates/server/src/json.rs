//! `ApiJson<T>`: axum's `Json` extractor, with every rejection turned into a problem document
//! that says what was wrong with the body.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::problem::Problem;

/// A JSON request body (and, as a response, a JSON body).
///
/// Rejections become problem documents: a missing or wrong `Content-Type` is 415, a body that
/// is not JSON is 400, JSON of the wrong shape (or not an object) is 422 with serde's
/// description of the field,
/// and a body over the server's limit is 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let path = req.uri().path().to_owned();
        // Read as raw JSON, not as a `Value`: a payload or a saga's input keeps every digit
        // of its numbers (a `Value` would turn 123456789012345678901234567890 into a float).
        let body = match axum::Json::<Box<RawValue>>::from_request(req, state).await {
            Ok(axum::Json(body)) => body,
            Err(rejection) => return Err(problem_for(rejection).with_instance(path)),
        };
        // Every request body is an object; serde would otherwise read a struct from an array.
        if !body.get().trim_start().starts_with('{') {
            return Err(invalid_body("the body must be a JSON object").with_instance(path));
        }
        let first =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(body.get()));
        let error = match first {
            Ok(value) => return Ok(Self(value)),
            Err(e) => e,
        };
        // JSON does not tell 2.0 from 2, but serde refuses a float where it wants an integer:
        // try again with the body's own whole floats as integers. Members that carry the
        // caller's data are left as written.
        match with_whole_floats_as_integers(body.get(), &["payload", "input"]) {
            Some(text) => {
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
                    .map(Self)
                    .map_err(|e| refused(&e.to_string()).with_instance(path))
            }
            None => Err(refused(&error.to_string()).with_instance(path)),
        }
    }
}

/// `object` with its top-level whole floats (`5.0`) written as integers, except in `untouched`
/// members; `None` if there were none to rewrite.
fn with_whole_floats_as_integers(object: &str, untouched: &[&str]) -> Option<String> {
    let members: Vec<(String, Box<RawValue>)> =
        serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(object)
            .ok()?
            .into_iter()
            .collect();
    let mut changed = false;
    let mut text = String::with_capacity(object.len());
    text.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(name).ok()?);
        text.push(':');
        let raw = value.get().trim();
        let float = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && raw.contains(['.', 'e', 'E']);
        match float.then(|| serde_json::from_str::<serde_json::Value>(raw)) {
            Some(Ok(mut n)) if !untouched.contains(&name.as_str()) => {
                onephase_core::json::integers_from_whole_floats(&mut n, &[]);
                changed |= n.is_i64() || n.is_u64();
                text.push_str(&n.to_string());
            }
            _ => text.push_str(raw),
        }
    }
    text.push('}');
    changed.then_some(text)
}

/// A body that serde refused: 400 `invalid-input` when a field's value is out of its range
/// (a negative or too large number), 422 `invalid-body` when the JSON has the wrong shape (an
/// unknown, missing or mistyped field), the same rule the handlers' own checks follow.
fn refused(detail: &str) -> Problem {
    if detail.contains("invalid value: integer") || detail.contains("invalid value: floating point")
    {
        Problem::from_kind(
            onephase_core::ErrorKind::InvalidInput,
            format!("a value is out of range: {detail}"),
        )
    } else {
        invalid_body(detail)
    }
}

fn invalid_body(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "Invalid body",
        format!("the JSON does not match the expected shape: {detail}"),
    )
}

fn problem_for(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with the header `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {}", source_text(&e)),
        ),
        JsonRejection::JsonDataError(e) => invalid_body(&source_text(&e)),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::for_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than the server's limit (the `body_limit` setting)",
            )
        }
        other => Problem::for_status(other.status(), other.body_text()),
    }
}

/// The innermost error's message: serde's, without axum's prefix.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

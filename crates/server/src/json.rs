//! `ApiJson<T>`: axum's `Json` extractor, with every rejection turned into a problem document
//! that says what was wrong with the body.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
        let mut value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(problem_for(rejection).with_instance(path)),
        };
        // Every request body is an object; serde would otherwise read a struct from an array.
        let serde_json::Value::Object(fields) = &mut value else {
            return Err(invalid_body("the body must be a JSON object").with_instance(path));
        };
        // Whole floats read as integers in the body's own fields only: nested values
        // (a payload, a saga's input) are the caller's data and are kept as written.
        fields
            .values_mut()
            .filter(|v| v.is_number())
            .for_each(|v| onephase_core::json::integers_from_whole_floats(v, &[]));
        serde_path_to_error::deserialize(value)
            .map(Self)
            .map_err(|e| invalid_body(&e.to_string()).with_instance(path))
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
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                "the body is larger than the server's limit (the `body_limit` setting)",
            )
        }
        other => Problem::from_status(other.status(), other.body_text()),
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

//! RFC 9457 problem documents: the one shape every error from the API takes.
//!
//! Library errors say what kind of failure they are through [`Classify`]; this module maps the
//! kind to a status code once, so every capability answers errors the same way.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use derive_setters::Setters;
use onephase_core::{Classify, ErrorKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
///
/// `type` is a URN naming the problem (`urn:onephase:problem:<slug>`), or `about:blank` when
/// the HTTP status says everything; `title` is the same for every occurrence of a type;
/// `detail` explains this occurrence and, where it can, what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[serde(rename = "type")]
    #[schema(example = "urn:onephase:problem:unauthenticated")]
    pub type_uri: String,
    /// A short summary of the problem type.
    #[schema(example = "Unauthenticated")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 401)]
    pub status: u16,
    /// What went wrong this time, and what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "send the header `Authorization: Bearer <token>`")]
    pub detail: Option<String>,
    /// The request path this problem occurred on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[setters(generate, strip_option, into)]
    pub instance: Option<String>,
}

impl Problem {
    /// A problem of type `urn:onephase:problem:<slug>`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!("urn:onephase:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    /// A problem the status code fully describes (`type` is `about:blank`, `title` the reason
    /// phrase).
    pub fn from_status(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            type_uri: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    /// The problem for an error of `kind`, with the error's message as detail.
    pub fn from_kind(kind: ErrorKind, detail: impl Into<String>) -> Self {
        let (status, title) = status_of(kind);
        Self::new(status, slug_of(kind), title, detail)
    }

    /// The problem for an error response the framework produced (a path or query that does
    /// not parse, a wrong method, ...), typed by its status with the same types the API's own
    /// errors use, so that a status always comes with the same `type`.
    pub fn for_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let kind = match status {
            StatusCode::BAD_REQUEST => Some(ErrorKind::InvalidInput),
            StatusCode::UNAUTHORIZED => Some(ErrorKind::Unauthenticated),
            StatusCode::FORBIDDEN => Some(ErrorKind::Forbidden),
            StatusCode::CONFLICT => Some(ErrorKind::Conflict),
            StatusCode::PAYLOAD_TOO_LARGE => Some(ErrorKind::TooLarge),
            StatusCode::SERVICE_UNAVAILABLE => Some(ErrorKind::Unavailable),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                return Self::new(
                    status,
                    "unsupported-media-type",
                    "Unsupported media type",
                    detail,
                );
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                return Self::new(status, "invalid-body", "Invalid body", detail);
            }
            _ => None,
        };
        match kind {
            Some(kind) => Self::from_kind(kind, detail),
            None => Self::from_status(status, detail),
        }
    }

    /// The problem for any classified error. Internal errors keep their message out of the
    /// response (it may name hosts or SQL) and log it instead.
    pub fn from_error<E: Classify + std::fmt::Display>(error: &E) -> Self {
        let kind = error.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %error, "internal error");
            return Self::from_kind(kind, "the server failed; the error is in its log");
        }
        if let Some(specific) = error.specific() {
            let status =
                StatusCode::from_u16(specific.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Self::new(status, specific.slug, specific.title, error.to_string());
        }
        Self::from_kind(kind, error.to_string())
    }

    /// The status code as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Every library error becomes its problem document with `?` in a handler: the one mapping
/// from [`Classify`] to RFC 9457.
impl<E: Classify + std::fmt::Display> From<E> for Problem {
    fn from(error: E) -> Self {
        Self::from_error(&error)
    }
}

/// The `type` slug of each kind of error: `urn:onephase:problem:<slug>`.
fn slug_of(kind: ErrorKind) -> &'static str {
    match kind {
        // One type for every 413, whether the whole body or a payload inside it is too large.
        ErrorKind::TooLarge => "body-too-large",
        other => other.as_str(),
    }
}

/// The status code and title for each kind of error.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "Invalid input"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "Conflict"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Body too large"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"onephase\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_error_status() {
        for kind in ErrorKind::ALL {
            let problem = Problem::from_kind(kind, "x");
            assert!(problem.status >= 400, "{kind}");
            assert!(problem.type_uri.ends_with(slug_of(kind)));
        }
    }

    #[test]
    fn serializes_type_and_omits_empty_members() {
        let p = Problem::from_status(StatusCode::NOT_FOUND, "no route");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], "Not Found");
        assert!(json.get("instance").is_none());
    }
}

//! The error answers many routes share, for their OpenAPI description: a route lists its own
//! (200, 400, 404, 409, ...) and one of these for the rest.

#![allow(dead_code)] // Read by the OpenAPI derive only.

use utoipa::IntoResponses;

use crate::problem::Problem;

/// Any route behind the bearer token.
#[derive(IntoResponses)]
pub(crate) enum AuthErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
}

/// An admin-only route.
#[derive(IntoResponses)]
pub(crate) enum AdminErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Not an admin token
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// A route that takes a JSON body.
#[derive(IntoResponses)]
pub(crate) enum JsonErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Body is not JSON
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
    /// JSON of the wrong shape
    #[response(status = 422, content_type = "application/problem+json")]
    WrongShape(Problem),
}

/// An admin-only route that takes a JSON body.
#[derive(IntoResponses)]
pub(crate) enum AdminJsonErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Not an admin token
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// Body is not JSON
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
    /// JSON of the wrong shape
    #[response(status = 422, content_type = "application/problem+json")]
    WrongShape(Problem),
}

/// An admin-only route with a JSON body whose 422 says more (the route lists it).
#[derive(IntoResponses)]
pub(crate) enum AdminBodyErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Not an admin token
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// Body is not JSON
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
}

/// A route with a JSON body whose 422 says more (the route lists it).
#[derive(IntoResponses)]
pub(crate) enum BodyErrors {
    /// Missing or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Body is not JSON
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
}

//! Signing in to the dashboard.
//!
//! The dashboard shows operational detail (runs and their errors, endpoint URLs, lease
//! holders) and acts on it, so every page needs a session, on loopback too. A session is the
//! API token itself, kept in an `HttpOnly`, `SameSite=Strict` cookie: scripts cannot read it,
//! other sites cannot send it, every server behind one load balancer accepts it, and revoking
//! the token ends the session at once (each request authenticates it again).
//!
//! Every action is a form `POST` carrying a CSRF token derived from the session token (a hash
//! no other site can compute); a request without the right one changes nothing. Pages forbid
//! framing, so an action button cannot be clicked through another site's page.

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth::{Caller, Role, constant_time_eq, hash_token};
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "onephase_session";
/// How long a session lasts without signing in again.
const MAX_AGE_SECS: u64 = 12 * 3600;

/// Who is looking at a dashboard page: the token's caller and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The signed-in token's name and role.
    pub caller: Caller,
    /// What every form of this session sends back.
    pub csrf: String,
}

impl Viewer {
    /// Whether this viewer may act (retry, replay, enable, ...), not only look.
    pub fn is_admin(&self) -> bool {
        self.caller.role == Role::Admin
    }

    /// Refuses a form whose CSRF token is not this session's, or a viewer who is not an admin.
    pub fn may_act(&self, csrf: &str) -> Result<(), (StatusCode, &'static str)> {
        if !constant_time_eq(csrf, &self.csrf) {
            return Err((
                StatusCode::FORBIDDEN,
                "this form is not from this session (reload the page and try again); nothing changed",
            ));
        }
        if !self.is_admin() {
            return Err((
                StatusCode::FORBIDDEN,
                "this session's token has role client: it may look, not act; nothing changed",
            ));
        }
        Ok(())
    }
}

/// The CSRF token of a session: a hash of its token under a purpose of its own.
fn csrf_for(token: &str) -> String {
    hash_token(&format!("onephase dashboard csrf {token}"))[..32].to_owned()
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

async fn viewer(parts: &Parts, state: &AppState) -> Option<Viewer> {
    let token = session_token(&parts.headers)?;
    let caller = state.tokens().authenticate(&token).await.ok()?;
    Some(Viewer {
        caller,
        csrf: csrf_for(&token),
    })
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match viewer(parts, state).await {
            Some(viewer) => Ok(viewer),
            // The page's refresh script sees the redirect and reloads into the sign-in form.
            None => Err(Redirect::to("/dashboard/sign-in").into_response()),
        }
    }
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    /// An API token (`op_...`).
    token: String,
}

/// A form that only confirms an action: the session's CSRF token.
#[derive(Debug, Deserialize)]
pub struct Confirm {
    /// The CSRF token.
    pub csrf: String,
}

fn secure(headers: &HeaderMap) -> bool {
    // Behind a TLS proxy the cookie must not travel over plain HTTP; on a loopback HTTP
    // address it could not be set at all if it were marked Secure.
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let text = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("onephase_session=; Max-Age=0"))
}

fn form(error: Option<&str>) -> Markup {
    super::layout(
        "Sign in",
        None,
        html! {
            section.panel.narrow {
                h2 { "Sign in" }
                @if let Some(error) = error { p.bad { (error) } }
                form method="post" action="/dashboard/sign-in" {
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="current-password" required placeholder="op_...";
                    button type="submit" { "Sign in" }
                }
                p.hint {
                    "The first start of " code { "onephase serve" } " printed an admin token; "
                    code { "onephase token create --name NAME" } " makes more. A client token may look; an admin token may also act."
                }
            }
        },
    )
}

/// `GET /dashboard/sign-in`.
pub async fn sign_in_form() -> Markup {
    form(None)
}

/// `POST /dashboard/sign-in`: a valid token starts a session; anything else shows the form
/// again with why.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form_data): Form<SignIn>,
) -> Response {
    let token = form_data.token.trim();
    match state.tokens().authenticate(token).await {
        Ok(_) => {
            let mut response = Redirect::to("/").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                cookie(token, MAX_AGE_SECS, secure(&headers)),
            );
            response
        }
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            form(Some(&format!("not signed in: {e}"))),
        )
            .into_response(),
    }
}

/// `POST /dashboard/sign-out`: ends the session (the token itself stays valid).
pub async fn sign_out(
    viewer: Viewer,
    headers: HeaderMap,
    Form(confirm): Form<Confirm>,
) -> Response {
    if !constant_time_eq(&confirm.csrf, &viewer.csrf) {
        return (StatusCode::FORBIDDEN, "this form is not from this session").into_response();
    }
    let mut response = Redirect::to("/dashboard/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, secure(&headers)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_csrf_is_per_token() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; onephase_session=op_abc; b=2"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("op_abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("onephase_session="),
        );
        assert_eq!(session_token(&headers), None);
        assert_ne!(csrf_for("op_a"), csrf_for("op_b"));
        assert_eq!(csrf_for("op_a").len(), 32);
    }
}

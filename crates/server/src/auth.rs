//! Bearer tokens for `/v1/*`.
//!
//! A token is `op_` followed by 64 hex digits (256 random bits). Only its SHA-256 is kept: in
//! the `onephase_api_tokens` table for tokens created with `onephase token create` or
//! `POST /v1/tokens`, or in the configuration file for tokens managed outside onephase. A
//! plain hash suffices, without a slow KDF, because the secret is random rather than chosen by
//! a person: nobody can guess it from its hash.
//!
//! On the first start against a store that has never had a token, and with none configured,
//! the server creates one admin token and prints it once (see [`Tokens::bootstrap_admin`]).

use std::fmt;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use onephase_core::{Classify, ErrorKind};
use onephase_store::sqlx;
use onephase_store::{Store, StoreError, on_store};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::problem::Problem;
use crate::state::AppState;

const TOKEN_PREFIX: &str = "op_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including managing tokens.
    Admin,
    /// Every capability API, but not token management.
    Client,
}

impl Role {
    /// `"admin"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }

    /// A role read back from the tokens table, where anything else means corruption.
    fn from_row(s: &str) -> Result<Self, AuthError> {
        s.parse().map_err(AuthError::Corrupt)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "client" => Ok(Role::Client),
            other => Err(format!("unknown role {other:?}: use admin or client")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a token is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// In the store: created by `onephase token create` or the API.
    Store,
    /// In the configuration file, by hash.
    Config,
}

impl TokenSource {
    /// `"store"` or `"config"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Store => "store",
            TokenSource::Config => "config",
        }
    }
}

/// A token defined in the configuration file: its name, role and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredToken {
    /// The token's name, reported by `/v1/whoami`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lowercase hex SHA-256 of the token, as printed by `onephase token create --config-only`.
    pub sha256: String,
}

/// The authenticated caller of a request, available to handlers as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
    /// Where the token is defined.
    pub source: TokenSource,
}

impl Caller {
    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Client => Err(AuthError::Forbidden(format!(
                "token {:?} has role client; this needs an admin token",
                self.name
            ))),
        }
    }
}

/// The caller of an admin route: an extractor that answers 403 for any other token.
///
/// Put it first among a handler's arguments. Axum runs extractors in order, so the role is
/// checked before the path, query or body is read: a client token learns nothing about an
/// admin route's validation (the same 403 whatever it sends).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let path = parts.uri.path().to_owned();
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(AuthError::MissingToken)
            .and_then(|caller| caller.require_admin().map(|()| caller))
            .map_err(|e| Problem::from_error(&e).with_instance(path))?;
        Ok(Admin(caller))
    }
}

/// A token's metadata, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it is defined.
    pub source: TokenSource,
    /// When it was created (store tokens only).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// Why authentication or token management failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "missing bearer token: send `Authorization: Bearer <token>` (the server printed an \
         admin token on its first start; `onephase token create` makes more)"
    )]
    MissingToken,
    /// The header is there but is not a bearer token.
    #[error("the Authorization header must be `Bearer <token>`")]
    MalformedHeader,
    /// The token is unknown or revoked.
    #[error("the bearer token is not valid: it is unknown or was revoked")]
    InvalidToken,
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A token name is malformed.
    #[error("invalid token name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    /// A token with this name exists.
    #[error(
        "a token named {0:?} already exists (revoked tokens keep their names); choose another name"
    )]
    Duplicate(String),
    /// No token with this name.
    #[error("no token named {0:?}")]
    NotFound(String),
    /// A configured hash is not 64 hex digits.
    #[error("configured token {0:?}: sha256 must be 64 lowercase hex digits")]
    BadConfiguredHash(String),
    /// The tokens table holds something this code cannot read.
    #[error("token table is corrupt: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::MissingToken | AuthError::MalformedHeader | AuthError::InvalidToken => {
                ErrorKind::Unauthenticated
            }
            AuthError::Forbidden(_) => ErrorKind::Forbidden,
            AuthError::InvalidName(_) | AuthError::BadConfiguredHash(_) => ErrorKind::InvalidInput,
            AuthError::Duplicate(_) => ErrorKind::Conflict,
            AuthError::NotFound(_) => ErrorKind::NotFound,
            AuthError::Corrupt(_) => ErrorKind::Internal,
            AuthError::Store(e) => e.kind(),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        Problem::from_error(&self).into_response()
    }
}

fn query_error(what: &'static str) -> impl Fn(sqlx::Error) -> AuthError {
    move |source| AuthError::Store(StoreError::Query { what, source })
}

/// A new random token: `op_` and 64 hex digits.
pub fn generate_token(rng: &mut impl Rng) -> String {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    format!("{TOKEN_PREFIX}{}", hex::encode(secret))
}

/// The lowercase hex SHA-256 of a token, as stored and as configured.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn validate_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName(name.to_owned()))
    }
}

/// Compares two equal-length hex strings without an early exit.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token registry: configured tokens plus the store's table.
#[derive(Debug, Clone)]
pub struct Tokens {
    store: Store,
    configured: Vec<ConfiguredToken>,
}

type TokenRow = (String, String, OffsetDateTime, Option<OffsetDateTime>);

impl Tokens {
    /// A registry over `store` and the tokens configured by hash.
    pub fn new(store: Store, configured: Vec<ConfiguredToken>) -> Result<Self, AuthError> {
        for token in &configured {
            validate_name(&token.name)?;
            let hash_ok = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hash_ok {
                return Err(AuthError::BadConfiguredHash(token.name.clone()));
            }
        }
        Ok(Self { store, configured })
    }

    /// Who `token` belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::InvalidToken);
        }
        let hash = hash_token(token);
        if let Some(c) = self
            .configured
            .iter()
            .find(|c| constant_time_eq(&c.sha256, &hash))
        {
            return Ok(Caller {
                name: c.name.clone(),
                role: c.role,
                source: TokenSource::Config,
            });
        }
        let sql = "SELECT name, role FROM onephase_api_tokens \
                   WHERE token_sha256 = $1 AND revoked_at IS NULL";
        let row: Option<(String, String)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(sql).bind(&hash).fetch_optional(pool).await
        })
        .map_err(query_error("token lookup"))?;
        let (name, role) = row.ok_or(AuthError::InvalidToken)?;
        Ok(Caller {
            name,
            role: Role::from_row(&role)?,
            source: TokenSource::Store,
        })
    }

    /// Records `token` (from [`generate_token`]) under `name`, keeping only its hash. The
    /// caller shows the secret to its owner once; it cannot be recovered afterwards.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<TokenInfo, AuthError> {
        validate_name(name)?;
        if self.configured.iter().any(|c| c.name == name) {
            return Err(AuthError::Duplicate(name.to_owned()));
        }
        let inserted = self.insert(name, role, &hash_token(token), now).await?;
        if !inserted {
            return Err(AuthError::Duplicate(name.to_owned()));
        }
        let info = TokenInfo {
            name: name.to_owned(),
            role,
            source: TokenSource::Store,
            created_at: Some(now),
            revoked_at: None,
        };
        Ok(info)
    }

    /// Inserts a token unless its name is taken; returns whether it was inserted.
    async fn insert(
        &self,
        name: &str,
        role: Role,
        hash: &str,
        now: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        let sql = "INSERT INTO onephase_api_tokens (name, role, token_sha256, created_at) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING";
        let result = on_store!(self.store.db(), pool => {
            sqlx::query(sql)
                .bind(name)
                .bind(role.as_str())
                .bind(hash)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(query_error("token insert"))?;
        Ok(result == 1)
    }

    /// Every token, configured ones first, then the store's by name, revoked ones included.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let sql =
            "SELECT name, role, created_at, revoked_at FROM onephase_api_tokens ORDER BY name";
        let rows: Vec<TokenRow> =
            on_store!(read self.store.db(), pool => sqlx::query_as(sql).fetch_all(pool).await)
                .map_err(query_error("token list"))?;
        let configured = self.configured.iter().map(|c| TokenInfo {
            name: c.name.clone(),
            role: c.role,
            source: TokenSource::Config,
            created_at: None,
            revoked_at: None,
        });
        let stored = rows
            .into_iter()
            .map(|(name, role, created_at, revoked_at)| {
                Ok(TokenInfo {
                    name,
                    role: Role::from_row(&role)?,
                    source: TokenSource::Store,
                    created_at: Some(created_at),
                    revoked_at,
                })
            })
            .collect::<Result<Vec<_>, AuthError>>()?;
        Ok(configured.chain(stored).collect())
    }

    /// Revokes the store token `name`. Revoking twice is not an error; an unknown name is.
    pub async fn revoke(&self, name: &str, now: OffsetDateTime) -> Result<(), AuthError> {
        if self.configured.iter().any(|c| c.name == name) {
            return Err(AuthError::Forbidden(format!(
                "token {name:?} is defined in the configuration file; remove it there"
            )));
        }
        let sql = "UPDATE onephase_api_tokens SET revoked_at = COALESCE(revoked_at, $2) \
                   WHERE name = $1";
        let affected = on_store!(self.store.db(), pool => {
            sqlx::query(sql)
                .bind(name)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(query_error("token revoke"))?;
        if affected == 0 {
            return Err(AuthError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    /// On a store that has never held a token, with none configured, records `token` as the
    /// admin token `admin` and returns true: the caller prints it once. Returns false
    /// otherwise, including when every token was revoked: that was an operator's choice.
    ///
    /// Safe when several servers start at once on one PostgreSQL: the insert is conditional on
    /// the name, so exactly one of them creates and prints the token.
    pub async fn bootstrap_admin(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        if !self.configured.is_empty() {
            return Ok(false);
        }
        let sql = "SELECT COUNT(*) FROM onephase_api_tokens";
        let count: i64 =
            on_store!(self.store.db(), pool => sqlx::query_scalar(sql).fetch_one(pool).await)
                .map_err(query_error("token count"))?;
        if count > 0 {
            return Ok(false);
        }
        self.insert("admin", Role::Admin, &hash_token(token), now)
            .await
    }
}

/// Middleware for `/v1/*`: authenticates the bearer token and puts the [`Caller`] in the
/// request's extensions, or answers 401 with a problem document.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let token = match request.headers().get(AUTHORIZATION) {
        None => Err(AuthError::MissingToken),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedHeader),
    };
    let caller = match token {
        Ok(token) => state.tokens().authenticate(token).await,
        Err(e) => Err(e),
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => Problem::from_error(&e).with_instance(path).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn tokens_are_prefixed_random_and_hash_to_64_hex() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = generate_token(&mut rng);
        let b = generate_token(&mut rng);
        assert_ne!(a, b);
        assert!(a.starts_with("op_") && a.len() == 67);
        assert_eq!(hash_token(&a).len(), 64);
        assert!(constant_time_eq(&hash_token(&a), &hash_token(&a)));
        assert!(!constant_time_eq(&hash_token(&a), &hash_token(&b)));
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("ci-runner.1").is_ok());
        for bad in ["", "has space", "x".repeat(65).as_str(), "ünï"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
